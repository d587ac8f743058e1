"""The study summary as the Review tab shows it to organisers: every figure of
medchat.review_stats.summarize in markdown, with its 95% CI or why it is missing.
"""

from __future__ import annotations

from medchat.reviews import SIDES
from medchat.ui.common import SIDE_NAMES, shown


def _fmt(fig: dict, spec: str = ".2f", pct: bool = False) -> str:
    """A figure of medchat.review_stats as 'value [low, high] (n = ..)', or why it is missing."""
    if fig.get("value") is None:
        return f"n/a ({fig.get('reason') or 'no data'})"

    def f(x: float) -> str:
        return f"{100 * x:.0f}%" if pct else format(x, spec)

    ci = f" [{f(fig['ci_low'])}, {f(fig['ci_high'])}]" if fig.get("ci_low") is not None else ""
    return f"**{f(fig['value'])}**{ci} (n = {fig['n']})"


def study_summary_markdown(summary: dict) -> str:
    """The organiser's view of medchat.review_stats.summarize: every figure with its 95% CI."""
    lines = ["#### Study summary (organisers only; raters never see it)"]
    ratings = summary["ratings"]
    if ratings["n"]:
        rows = ["| model | mean rating (1-4) | LiveQA avgScore (0-3) |", "|---|---|---|"]
        for side in SIDES:
            fig = ratings[side]
            rows.append(f"| {SIDE_NAMES[side]} | {_fmt(fig['mean'])} | {_fmt(fig['avg_score'])} |")
        lines.append("\n".join(rows))
    else:
        lines.append("No ratings yet.")
    votes = summary["votes"]
    if votes["n"]:
        c = votes["counts"]
        lines.append(
            f"Compare votes: {votes['n']} (fine-tuned better {c['tuned']}, base better "
            f"{c['base']}, tie {c['tie']}, both bad {c['both_bad']}). Fine-tuned win rate over "
            f"decisive votes: {_fmt(votes['win_rate'], pct=True)}"
        )
    else:
        lines.append("No compare votes yet.")
    agreement = summary["agreement"]
    alpha = agreement.get("krippendorff_alpha") or {}
    lines.append(f"Inter-rater agreement, Krippendorff's alpha (ordinal): {_fmt(alpha)}")
    kappas = agreement.get("weighted_kappa") or []
    if kappas:
        lines.append(
            "Weighted kappa per pair of reviewers: "
            + "; ".join(f"{shown(' & '.join(k['reviewers']))} {_fmt(k)}" for k in kappas)
        )
    per_embedder = summary.get("cosine_spearman") or {}
    for name, fig in sorted(per_embedder.items()):
        lines.append(f"Spearman of rating with cosine ({shown(name)}): {_fmt(fig)}")
    if summary.get("cosine_without_embedder"):
        lines.append(
            f"{summary['cosine_without_embedder']} ratings have a cosine of unknown embedder "
            "(saved before embedders were recorded) and are left out of the correlations."
        )
    lines += statement_summary_lines(summary.get("statements") or {})
    reviewers = summary.get("reviewers") or {}
    if reviewers:
        lines.append(
            "Per reviewer: "
            + ", ".join(
                f"{shown(name or 'anonymous')} {c['ratings']} ratings / {c['votes']} votes"
                for name, c in sorted(reviewers.items())
            )
        )
    return "\n\n".join(lines)


def statement_summary_lines(statements: dict) -> list[str]:
    """The statement part of the study summary: the reviewers' comprehensiveness and
    hallucination per model beside the judge's on the same statements, and the judge's kappa
    with the reviewers; nothing when no statement was marked."""
    if not statements.get("n"):
        return []
    judges = sorted({j for side in SIDES for j in statements[side].get("judge") or {}})
    head = "| model | reviewers: must-have covered | reviewers: contradicted |"
    head += "".join(f" {shown(j)}: must-have entailed | {shown(j)}: contradicted |" for j in judges)
    rows = [head, "|---" * (3 + 2 * len(judges)) + "|"]
    for side in SIDES:
        fig = statements[side]
        cells = [_fmt(fig["comprehensiveness"], pct=True), _fmt(fig["hallucination"], pct=True)]
        for j in judges:
            own = (fig.get("judge") or {}).get(j) or {}
            for name in ("comprehensiveness", "hallucination"):
                cells.append(_fmt(own[name], pct=True) if name in own else "n/a")
        rows.append(f"| {SIDE_NAMES[side]} | " + " | ".join(cells) + " |")
    lines = [
        f"Statements marked by reviewers: {statements['n']} on {statements['answers']} answers "
        "(n = marks; intervals resample answers; the judge's shares are on the same statements).",
        "\n".join(rows),
    ]
    for judge, fig in sorted((statements.get("judge_agreement") or {}).items()):
        agree = fig.get("agreement")
        extra = f", agreeing on {100 * agree:.0f}%" if agree is not None else ""
        lines.append(
            f"Judge {shown(judge)} vs reviewers, Cohen's kappa of covered vs not: "
            f"{_fmt(fig)}{extra}"
        )
    if statements.get("judge_agreement_reason"):
        lines.append(f"Judge vs reviewers: n/a ({statements['judge_agreement_reason']})")
    return lines
