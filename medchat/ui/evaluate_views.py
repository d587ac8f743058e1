"""What the Evaluate tab shows of a run: the summary's cards, the run's details, the
per-question table and one question's answers with the judge's verdicts.

Each function takes a run's summary (a dict) or results (a DataFrame) and gives back HTML,
markdown or the table; none reads a file or draws a component (medchat.ui.evaluate does).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medchat.statements import MUST, NICE
from medchat.ui.common import esc, short_name, shown

ALL_TYPES = "All question types"
SORTS = (
    "Difference: fine-tuned ahead first",
    "Difference: base ahead first",
    "Run order",
)
TABLE_COLUMNS = ["key", "qtype", "base", "tuned", "difference", "question"]


def _num(x, spec: str = ".3f") -> str:
    try:
        return "n/a" if x is None or pd.isna(x) else format(x, spec)
    except (TypeError, ValueError):
        return "n/a"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _card(title: str, value: str, detail: str = "") -> str:
    return (
        f'<div class="metric-card"><div class="metric-title">{esc(title)}</div>'
        f'<div class="metric-value">{esc(value)}</div>'
        f'<div class="metric-detail">{esc(detail)}</div></div>'
    )


# Fewer questions than this and a bootstrap interval says little (with one question it is a
# single point): the cards show none, and say why.
MIN_CI_N = 10


def questions_text(n: int) -> str:
    return f"{n} question" if n == 1 else f"{n} questions"


def _ci(low, high, spec: str, n: int) -> str:
    if n < MIN_CI_N:
        return f"no 95% CI from {questions_text(n)} (an interval needs {MIN_CI_N})"
    return f"95% CI {_num(low, spec)} to {_num(high, spec)}"


def cards_html(summary: dict) -> str:
    """The summary's headline numbers as a row of cards; intervals only from MIN_CI_N
    questions up."""
    base, tuned = summary["base"], summary["tuned"]
    paired = summary["paired"]["cosine"]
    run = summary.get("run", {})
    n = int(summary.get("n") or 0)
    cards = [
        _card(
            "Base: mean cosine",
            _num(base["cosine"]["mean"]),
            _ci(base["cosine"]["ci_low"], base["cosine"]["ci_high"], ".3f", n),
        ),
        _card(
            "Fine-tuned: mean cosine",
            _num(tuned["cosine"]["mean"]),
            _ci(tuned["cosine"]["ci_low"], tuned["cosine"]["ci_high"], ".3f", n),
        ),
        _card(
            "Fine-tuned − base",
            _num(paired["mean_diff"], "+.3f"),
            _ci(paired["ci_low"], paired["ci_high"], "+.3f", n),
        ),
        _card(
            "Fine-tuned closer",
            _pct(paired["win_rate"]),
            f"of {questions_text(paired['n'])} (ties {_pct(paired['tie_rate'])})",
        ),
        _card(
            "Hit the token limit",
            f"{_pct(base['truncation_rate'])} → {_pct(tuned['truncation_rate'])}",
            f"base → fine-tuned, {run.get('max_new_tokens', '?')} tokens at most",
        ),
    ]
    cards += statement_cards(summary.get("statements"), n)
    if n < MIN_CI_N:
        verdict = (
            f"Too few questions for an interval ({n}; it needs {MIN_CI_N}): these numbers "
            "cannot tell the models apart."
        )
    elif paired["ci_low"] is None or paired["ci_high"] is None:
        verdict = "No interval could be computed."
    elif paired["ci_low"] <= 0 <= paired["ci_high"]:
        verdict = "The interval contains 0: no evidence of a difference on these questions."
    else:
        verdict = "The interval excludes 0."
    note = (
        f'<div class="metric-note">n = {esc(summary["n"])} · split {esc(run.get("split", "?"))}'
        f" · scored with {esc(short_name(str(summary.get('embedder', '?')).split(' (')[0]))}"
        f" · {esc(verdict)}</div>"
    )
    return f'<div class="metric-cards">{"".join(cards)}</div>{note}{run_details_html(summary)}'


def statement_cards(statements: dict | None, n: int) -> list[str]:
    """Comprehensiveness and hallucination (base → fine-tuned, the paired difference's
    interval), each naming the judge and its agreement with physicians."""
    if not statements:
        return []
    judge = statements.get("judge") or {}
    kappa = (judge.get("agreement") or {}).get("kappa")
    trust = f"κ {kappa:.2f} vs physicians" if kappa is not None else "agreement not measured"
    cards = []
    for name, title in (("comprehensiveness", "Must-have statements entailed"),
                        ("hallucination", "Statements contradicted")):  # fmt: skip
        paired = statements["paired"].get(name) or {}
        detail = (
            f"base → fine-tuned; difference {_num(paired.get('mean_diff'), '+.3f')}, "
            + _ci(paired.get("ci_low"), paired.get("ci_high"), "+.3f", n)
            + f"; judge {judge.get('name', '?')} ({trust})"
        )
        base, tuned = statements["base"][name]["mean"], statements["tuned"][name]["mean"]
        cards.append(_card(title, f"{_pct(base)} → {_pct(tuned)}", detail))
    return cards


# The run's technical record, shown on demand under the cards: summary key path, label.
RUN_DETAILS = (
    (("embedder",), "embedder"),
    (("run", "profile"), "profile"),
    (("run", "base_model"), "base model"),
    (("run", "adapter"), "adapter"),
    (("run", "data"), "data"),
    (("run", "limit"), "sample size asked for"),
    (("run", "retrieval"), "sources in the prompt"),
    (("run", "folder"), "run folder"),
    (("timing", "finished"), "finished"),
)


def run_details_html(summary: dict) -> str:
    """The paths, hashes and settings of a run in a collapsed details element."""
    items = []
    for path, label in RUN_DETAILS:
        value = summary
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value not in (None, "", {}):
            items.append(f"<li>{esc(label)}: <code>{esc(value)}</code></li>")
    if not items:
        return ""
    return (
        '<details class="run-details"><summary>Run details</summary>'
        f"<ul>{''.join(items)}</ul></details>"
    )


def table_frame(
    results: pd.DataFrame, search: str = "", qtype: str = ALL_TYPES, sort: str = ""
) -> pd.DataFrame:
    """The per-question table: filtered by text and question type, sorted."""
    if results.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    frame = results
    if qtype and qtype != ALL_TYPES and "qtype" in frame.columns:
        frame = frame[frame["qtype"].fillna("") == qtype]
    words = (search or "").strip().lower()
    if words:
        haystack = frame["question"].str.lower() + " " + frame["key"].str.lower()
        frame = frame[haystack.str.contains(words, regex=False)]
    if sort == SORTS[0]:
        frame = frame.sort_values("difference", ascending=False, kind="stable")
    elif sort == SORTS[1]:
        frame = frame.sort_values("difference", ascending=True, kind="stable")
    qtypes = frame["qtype"].fillna("") if "qtype" in frame.columns else ""
    return pd.DataFrame(
        {
            "key": frame["key"],
            "qtype": qtypes,
            "base": frame["base_cosine"].round(3),
            "tuned": frame["tuned_cosine"].round(3),
            "difference": frame["difference"].round(3),
            "question": frame["question"],
        }
    ).reset_index(drop=True)


def qtype_choices(results: pd.DataFrame) -> list[str]:
    if results.empty or "qtype" not in results.columns:
        return [ALL_TYPES]
    counts = results["qtype"].dropna().value_counts()
    return [ALL_TYPES, *counts.index.astype(str)]


# How the Evaluate tab shows a judge's verdict on one statement.
VERDICT_SHOWN = {
    "entailed": "✅ covered",
    "contradicted": "❌ contradicted",
    "neither": "▫️ not covered",
    "unparsed": "❔ no verdict",
}


def _statement_list(value) -> list[str]:
    if isinstance(value, list | tuple | np.ndarray):
        return [str(s) for s in value]
    return []


def verdicts_markdown(row, side: str, judge: str | None) -> str:
    """One side's statements with the judge's verdict on each (must-have first), headed by
    the judge's name and the counts; "" for a result without statements or verdicts."""
    statements = [("must-have", s) for s in _statement_list(row.get(MUST))]
    statements += [("nice-to-have", s) for s in _statement_list(row.get(NICE))]
    verdicts = _statement_list(row.get(f"{side}_verdicts"))
    if not statements or len(verdicts) != len(statements):
        return ""
    must = [v for (kind, _), v in zip(statements, verdicts, strict=True) if kind == "must-have"]
    judge = judge or "the run's judge"
    head = (
        f"**Statements, judged by {shown(judge)}:** "
        f"{sum(v == 'entailed' for v in must)} of {len(must)} must-have covered, "
        f"{sum(v == 'contradicted' for v in verdicts)} of {len(verdicts)} contradicted"
    )
    items = [
        f"- {VERDICT_SHOWN.get(v, shown(v))} · *{kind}*: {shown(text)}"
        for (kind, text), v in zip(statements, verdicts, strict=True)
    ]
    return "\n\n" + head + "\n\n" + "\n".join(items)


def item_markdown(
    results: pd.DataFrame, key: str, judge: str | None = None
) -> tuple[str, str, str, str]:
    """(question, reference, base answer, fine-tuned answer) of one result, as markdown; with
    statements, each answer is followed by `judge`'s verdict on each statement."""
    rows = results[results["key"] == key] if not results.empty else results
    if rows.empty:
        return "", "", "", ""
    row = rows.iloc[0]

    def answer(side: str) -> str:
        limit = " · stopped at the token limit" if row.get(f"{side}_hit_limit") else ""
        return (
            f"**cosine {_num(row.get(f'{side}_cosine'))}** · {row.get(f'{side}_tokens', '?')} "
            f"tokens{limit}\n\n{shown(row.get(f'{side}_answer'))}"
            + verdicts_markdown(row, side, judge)
        )

    qtype = row.get("qtype")
    tag = f" *({shown(qtype)})*" if isinstance(qtype, str) and qtype else ""
    return (
        f"**Question** `{key}`{tag}: {shown(row['question'])}",
        shown(row["reference"]),
        answer("base"),
        answer("tuned"),
    )
