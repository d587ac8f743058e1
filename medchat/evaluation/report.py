"""A run's scores and how they are shown: summarize (summary.json from the results),
render_report (report.md) and similarity_png (the cosine plot).

    summary = summarize(results, embedder=embedder.name, seed=0)
    write_atomic(out / REPORT, render_report(summary))
    write_atomic(out / PLOT, similarity_png(results, embedder_name=summary["embedder"]))
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from medchat import metrics
from medchat.evaluation.folder import PLOT, SIDES


def summarize(
    results: pd.DataFrame, *, embedder: str, seed: int = 0, judge: dict | None = None
) -> dict:
    """summary.json's scores from a results frame (timing and run details are added apart);
    `judge` is the statement judge's info (name, identity, agreement) of a statement set."""
    summary: dict[str, Any] = {"embedder": embedder, "n": len(results)}
    for side in SIDES:
        summary[side] = {
            "cosine": metrics.describe(results[f"{side}_cosine"], seed=seed),
            "rouge_l": metrics.describe(results[f"{side}_rouge_l"], seed=seed),
            "tokens": metrics.describe(results[f"{side}_tokens"], seed=seed),
            "repetition": metrics.describe(results[f"{side}_repetition"], seed=seed),
            "truncation_rate": float(results[f"{side}_hit_limit"].astype(bool).mean()),
        }
    if "sources" in results.columns:
        n_sources = results["sources"].map(len)
        summary["retrieval"] = {
            "with_sources": float((n_sources > 0).mean()),
            "mean_sources": float(n_sources.mean()),
            "topic_hit": float(results["topic_hit"].astype(bool).mean()),
        }
        for side in SIDES:
            cited = results[f"{side}_citations"]
            valid = [
                sum(1 for c in cs if 1 <= c <= n) for cs, n in zip(cited, n_sources, strict=True)
            ]
            total = int(cited.map(len).sum())
            summary[side]["citing_share"] = float((cited.map(len) > 0).mean())
            summary[side]["citations_valid"] = sum(valid) / total if total else None
            summary[side]["not_covered_share"] = float(
                results[f"{side}_not_covered"].astype(bool).mean()
            )
            no_sources = n_sources == 0
            summary[side]["not_covered_when_no_source"] = (
                float(results.loc[no_sources, f"{side}_not_covered"].astype(bool).mean())
                if no_sources.any()
                else None
            )
    summary["paired"] = {
        name: metrics.paired_summary(results[f"base_{name}"], results[f"tuned_{name}"], seed=seed)
        for name in ("cosine", "rouge_l")
    }
    by_qtype: dict[str, dict] = {}
    if "qtype" in results.columns and results["qtype"].notna().any():
        qtypes = results["qtype"].fillna("(none)")
        for qtype, group in results.groupby(qtypes, sort=False):
            base, tuned = group["base_cosine"].mean(), group["tuned_cosine"].mean()
            by_qtype[str(qtype)] = {
                "n": len(group),
                "base": float(base),
                "tuned": float(tuned),
                "diff": float(tuned - base),
            }
        by_qtype = dict(sorted(by_qtype.items(), key=lambda kv: (-kv[1]["n"], kv[0])))
    summary["by_qtype"] = by_qtype
    if "base_verdicts" in results.columns:
        from medchat.statements import summarize_statements

        summary["statements"] = summarize_statements(results, judge, seed=seed)
    return summary


# -- report and plot ------------------------------------------------------------------------
def _f(x, spec: str = ".3f") -> str:
    return "n/a" if x is None or missing(x) else format(x, spec)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def render_report(summary: dict) -> str:
    """report.md: the run, a base-vs-tuned table, the breakdown by question type, timing."""
    run, timing = summary.get("run", {}), summary.get("timing", {})
    base, tuned, paired = summary["base"], summary["tuned"], summary["paired"]
    lines = [
        f"# Evaluation: {run.get('adapter', '?')}",
        "",
        f"- data: {run.get('data', '?')} (split {run.get('split', '?')}"
        + (f", sample of {run['limit']}" if run.get("limit") else "")
        + f"), n = {summary['n']}",
        f"- model: {run.get('base_model', '?')} (profile {run.get('profile', '?')}), greedy, "
        f"{run.get('max_new_tokens', '?')} new tokens at most",
        f"- embedder: {summary['embedder']}",
    ]
    if run.get("prompt_style"):
        lines.append(
            f"- prompt style: {run['prompt_style']} ("
            + ("with" if run.get("sources_in_prompt") else "without")
            + " NIH sources in the prompt)"
        )
    if run.get("split") == "all" and run.get("data_is_training"):
        lines.append("- note: split `all` includes rows the adapter was trained on")
    lines += [
        "",
        "| metric | base | tuned | tuned - base [95% CI] | tuned wins / ties |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("cosine", "cosine similarity"), ("rouge_l", "ROUGE-L F1")):
        p = paired[name]
        lines.append(
            f"| {label} | {_f(base[name]['mean'])} | {_f(tuned[name]['mean'])} | "
            f"{_f(p['mean_diff'], '+.3f')} [{_f(p['ci_low'], '+.3f')}, "
            f"{_f(p['ci_high'], '+.3f')}] | {_pct(p['win_rate'])} / {_pct(p['tie_rate'])} |"
        )
    lines += [
        f"| answer tokens (mean) | {_f(base['tokens']['mean'], '.1f')} | "
        f"{_f(tuned['tokens']['mean'], '.1f')} | | |",
        f"| hit the token limit | {_pct(base['truncation_rate'])} | "
        f"{_pct(tuned['truncation_rate'])} | | |",
        f"| repeated 3-grams (mean share) | {_f(base['repetition']['mean'])} | "
        f"{_f(tuned['repetition']['mean'])} | | |",
    ]
    if summary.get("statements"):
        from medchat.statements import judge_line, report_lines

        table = lines.index("| metric | base | tuned | tuned - base [95% CI] | tuned wins / ties |")
        lines.insert(table - 1, judge_line(summary["statements"]))
        lines += report_lines(summary["statements"])
    if summary.get("retrieval"):
        r = summary["retrieval"]
        lines += [
            f"| answers citing a source | {_pct(base.get('citing_share'))} | "
            f"{_pct(tuned.get('citing_share'))} | | |",
            f"| citations to a retrieved passage | {_pct(base.get('citations_valid'))} | "
            f"{_pct(tuned.get('citations_valid'))} | | |",
            f"| says its sources do not cover it | {_pct(base.get('not_covered_share'))} | "
            f"{_pct(tuned.get('not_covered_share'))} | | |",
            "",
            f"Retrieval ({run.get('retrieval', {}).get('method', '?')}, "
            f"k={run.get('retrieval', {}).get('k', '?')}, index of "
            f"{(run.get('index') or {}).get('passages', '?')} passages"
            + (
                f", restricted to {(run.get('index') or {}).get('restricted_to')}"
                if (run.get("index") or {}).get("restricted_to")
                else ""
            )
            + f"): {_pct(r['with_sources'])} of questions got a passage, "
            f"{_pct(r['topic_hit'])} one on their own topic.",
        ]
    if summary.get("by_qtype"):
        lines += [
            "",
            "Cosine similarity by question type:",
            "",
            "| qtype | n | base | tuned | tuned - base |",
            "|---|---|---|---|---|",
        ]
        for qtype, row in summary["by_qtype"].items():
            lines.append(
                f"| {qtype} | {row['n']} | {_f(row['base'])} | {_f(row['tuned'])} | "
                f"{_f(row['diff'], '+.3f')} |"
            )
    if timing:
        lines += [
            "",
            f"Time: generation {_f(timing.get('generation_seconds'), '.1f')} s "
            f"({_f(timing.get('answers_per_second'), '.2f')} answers/s), scoring "
            f"{_f(timing.get('scoring_seconds'), '.1f')} s "
            f"({_pct(timing.get('scoring_share'))} of generation + scoring); this sitting "
            f"{_f(timing.get('wall_seconds'), '.1f')} s wall "
            f"({_pct(timing.get('wall_scoring_share'))} scoring), "
            f"{timing.get('items_this_run', 0)} new and {timing.get('items_resumed', 0)} "
            "resumed questions.",
        ]
    lines += ["", f"![cosine similarity, base vs tuned]({PLOT})", ""]
    return "\n".join(lines)


def similarity_png(results: pd.DataFrame, *, embedder_name: str = "") -> bytes:
    """The two cosine distributions overlaid, and tuned against base per question, as PNG."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global figure state, thread-safe
    from matplotlib.ticker import MaxNLocator

    base = results["base_cosine"].to_numpy(dtype=float)
    tuned = results["tuned_cosine"].to_numpy(dtype=float)
    fig = Figure(figsize=(10, 4.2), dpi=100, layout="constrained", facecolor=PLOT_PAPER)
    hist, scatter = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    low = min(float(min(base.min(), tuned.min())) - 0.02, 0.0)
    bins = np.linspace(low, 1.0, 31)
    for values, label, color in ((base, "base", "tab:gray"), (tuned, "tuned", "tab:blue")):
        label = f"{label} (mean {values.mean():.3f})"
        hist.hist(values, bins=bins, alpha=0.55, color=color, label=label)
        hist.axvline(values.mean(), color=color, linestyle="--", linewidth=1.2)
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.set_xlabel("cosine similarity to the reference answer")
    hist.set_ylabel("questions")
    hist.legend(loc="upper left")
    hist.set_title(f"cosine similarity, n = {len(results)}")
    scatter.scatter(base, tuned, s=12, alpha=0.6, color="tab:blue")
    scatter.plot([low, 1.0], [low, 1.0], color="black", linewidth=0.8)
    scatter.set_xlim(low, 1.0)
    scatter.set_ylim(low, 1.0)
    scatter.set_aspect("equal")
    scatter.set_xlabel("base")
    scatter.set_ylabel("tuned")
    scatter.set_title("per question")
    scatter.text(
        0.03,
        0.95,
        "above the line: tuned closer",
        transform=scatter.transAxes,
        fontsize=8,
        va="top",
    )
    if embedder_name:
        fig.suptitle(f"embedder: {re.sub(r'[0-9a-f]{64}', _short_sha, embedder_name)}", fontsize=9)
    _on_paper(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=PLOT_PAPER, transparent=False)
    return buffer.getvalue()


# Plots are dark ink on an opaque white page: readable on a light or a dark app theme.
PLOT_PAPER = "white"
PLOT_INK = "#1f2937"


def _on_paper(fig) -> None:
    """Give every part of a figure explicit colours: dark ink on an opaque white page.

    Without this the PNG takes its colours from matplotlib's style and rcParams (a user's
    matplotlibrc, a dark style, transparent saving), and dark text on a transparent
    background disappears on a dark page.
    """
    from matplotlib.text import Text

    fig.set_facecolor(PLOT_PAPER)
    for ax in fig.axes:
        ax.set_facecolor(PLOT_PAPER)
        ax.tick_params(which="both", colors=PLOT_INK)
        for spine in ax.spines.values():
            spine.set_edgecolor(PLOT_INK)
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(PLOT_PAPER)
            legend.get_frame().set_edgecolor("#9ca3af")
    for text in fig.findobj(Text):
        text.set_color(PLOT_INK)


def _short_sha(match: re.Match) -> str:
    return match.group(0)[:12] + "..."


def missing(value) -> bool:
    """A value the data does not have: None, NaN or pandas' NA."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA
