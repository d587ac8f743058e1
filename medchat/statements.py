"""Statement sets: questions whose reference answer comes with the statements it must contain.

    items = load_statement_set("kqa")                 # or a JSONL in K-QA's format
    fields = judge_answers(judge, answers, must, nice)  # per-answer verdicts and the two scores
    summary = summarize_statements(results, seed=0)   # comprehensiveness and hallucination

K-QA's format (assets/data/kqa/questions_w_answers.jsonl), one JSON object a line:
`Question`, `Free_form_answer` (the reference answer), `Must_have` and `Nice_to_have` (lists of
statements). Field names are matched without regard to case, so `question`/`must_have` work.

Comprehensiveness: the share of an answer's must-have statements that the judge finds entailed.
Hallucination: the share of all its statements (must-have and nice-to-have) that the judge
finds contradicted. A verdict the judge could not give ("unparsed") is left out of both shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medchat import metrics
from medchat.errors import MedchatError
from medchat.settings import REPO_ROOT

KQA = REPO_ROOT / "assets" / "data" / "kqa" / "questions_w_answers.jsonl"
NAMED_SETS = {"kqa": KQA}
MUST, NICE = "must_have", "nice_to_have"
SIDE_FIELDS = ("verdicts", "comprehensiveness", "hallucination")


def resolve_statement_set(name_or_path: str) -> str:
    """A named set ("kqa") as its shipped file; anything else unchanged."""
    return str(NAMED_SETS[name_or_path]) if name_or_path in NAMED_SETS else name_or_path


def statement_columns(frame: pd.DataFrame) -> tuple[str, str | None] | None:
    """(the must-have column, the nice-to-have column or None), or None without statements."""
    lower = {str(c).lower(): c for c in frame.columns}
    if MUST not in lower:
        return None
    return lower[MUST], lower.get(NICE)


def _statement_list(value, what: str, row: int) -> list[str]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise MedchatError(
            f"Row {row}: {what} is {type(value).__name__}, not a list of statements; write it "
            'as a JSON list of strings, e.g. ["Statin therapy lowers LDL cholesterol."].'
        )
    return [s.strip() for s in value if s.strip()]


def statements_of(frame: pd.DataFrame) -> list[tuple[list[str], list[str]]] | None:
    """(must-have, nice-to-have) statement lists per row, or None when the data has none."""
    columns = statement_columns(frame)
    if columns is None:
        return None
    must_col, nice_col = columns
    out = []
    for i, (_, row) in enumerate(frame.iterrows(), start=1):
        must = _statement_list(row[must_col], must_col, i)
        nice = _statement_list(row[nice_col], nice_col, i) if nice_col else []
        out.append((must, nice))
    return out


def load_statement_set(name_or_path: str | Path) -> pd.DataFrame:
    """A statement set as a frame: question, answer, key, must_have, nice_to_have (lists).

    A MedchatError names a file without a must-have column or with a malformed list.
    """
    from medchat.data import load_pairs

    source = resolve_statement_set(str(name_or_path))
    frame, _ = load_pairs(source)
    lists = statements_of(frame)
    if lists is None:
        raise MedchatError(
            f"{source!r} has no Must_have column; give K-QA's format: Question, "
            "Free_form_answer, Must_have and Nice_to_have (lists of statements)."
        )
    out = frame[["question", "answer", "key"]].copy()
    out[MUST] = [m for m, _ in lists]
    out[NICE] = [n for _, n in lists]
    return out


def judge_answers(judge, answers: Sequence[str], statements: Sequence[tuple[list, list]]):
    """Per answer: {"verdicts", "comprehensiveness", "hallucination"}, one judge call for all
    (answer, statement) pairs. Verdicts are aligned with must-have then nice-to-have."""
    pairs, spans = [], []
    for answer, (must, nice) in zip(answers, statements, strict=True):
        start = len(pairs)
        pairs += [(answer, s) for s in [*must, *nice]]
        spans.append((start, len(must), len(nice)))
    judgements = judge.judge(pairs) if pairs else []
    out = []
    for start, n_must, n_nice in spans:
        found = judgements[start : start + n_must + n_nice]
        verdicts = [j.verdict for j in found]
        out.append(
            {
                "verdicts": verdicts,
                "scores": [j.entailed_score for j in found],
                **shares(verdicts, n_must),
            }
        )
    return out


def shares(verdicts: Sequence[str], n_must: int) -> dict:
    """comprehensiveness and hallucination of one answer's verdicts (must-have first); None
    where no statement of the kind got a verdict."""
    judged_must = [v for v in verdicts[:n_must] if v != "unparsed"]
    judged = [v for v in verdicts if v != "unparsed"]
    return {
        "comprehensiveness": (
            sum(v == "entailed" for v in judged_must) / len(judged_must) if judged_must else None
        ),
        "hallucination": (
            sum(v == "contradicted" for v in judged) / len(judged) if judged else None
        ),
        "unparsed": len(verdicts) - len(judged),
    }


def statement_fields(judge, rows: pd.DataFrame, texts: dict[str, list[str]]) -> list[dict]:
    """The results.jsonl fields of a batch of statement-set rows: must_have, nice_to_have, and
    per side its verdicts, entailment scores, comprehensiveness, hallucination, unparsed."""
    lists = statements_of(rows) or [([], [])] * len(rows)
    sides = list(texts)
    judged = judge_answers(judge, [a for side in sides for a in texts[side]], lists * len(sides))
    records = []
    for i, (must, nice) in enumerate(lists):
        record: dict = {MUST: must, NICE: nice}
        for k, side in enumerate(sides):
            for name, value in judged[k * len(lists) + i].items():
                record[f"{side}_{name}"] = value
        records.append(record)
    return records


def summarize_statements(results: pd.DataFrame, judge: dict | None, *, seed: int = 0) -> dict:
    """summary.json's "statements": the judge (name, identity, agreement), statement counts,
    and per side and paired (tuned - base) comprehensiveness and hallucination."""
    must = results[MUST].map(len)
    nice = results[NICE].map(len)
    out: dict = {
        "judge": judge,
        "items": len(results),
        "must_have": int(must.sum()),
        "nice_to_have": int(nice.sum()),
        "items_without_must_have": int((must == 0).sum()),
    }
    for side in ("base", "tuned"):
        out[side] = {
            name: metrics.describe(results[f"{side}_{name}"].astype(float), seed=seed)
            for name in ("comprehensiveness", "hallucination")
        }
        out[side]["unparsed"] = int(results[f"{side}_unparsed"].sum())
    out["paired"] = {}
    for name in ("comprehensiveness", "hallucination"):
        base = results[f"base_{name}"].astype(float)
        tuned = results[f"tuned_{name}"].astype(float)
        keep = base.notna() & tuned.notna()
        out["paired"][name] = (
            metrics.paired_summary(base[keep], tuned[keep], seed=seed) if keep.any() else None
        )
    return out


def run_judge(folder: Path | str) -> str | None:
    """The statement judge a run folder names: config.json's `judge` (offline or llm:<model>),
    else the judge's name in summary.json; None for a run without one (no statements, or
    --judge none)."""
    import json

    from medchat.evaluation import CONFIG, SUMMARY

    folder = Path(folder)
    for name, path in ((CONFIG, ("judge",)), (SUMMARY, ("statements", "judge", "name"))):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def report_lines(statements: dict) -> list[str]:
    """report.md's rows for the two statement scores, and the judge's line."""

    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    lines = []
    labels = {"comprehensiveness": "comprehensiveness (must-have entailed)",
              "hallucination": "hallucination (statements contradicted)"}  # fmt: skip
    for name, label in labels.items():
        base, tuned = statements["base"][name], statements["tuned"][name]
        p = statements["paired"][name] or {}
        lines.append(
            f"| {label} | {f(base['mean'])} | {f(tuned['mean'])} | "
            f"{f(p.get('mean_diff'), '+.3f')} [{f(p.get('ci_low'), '+.3f')}, "
            f"{f(p.get('ci_high'), '+.3f')}] | |"
        )
    return lines


def judge_line(statements: dict) -> str:
    judge = statements.get("judge") or {}
    agreement = judge.get("agreement") or {}
    kappa = agreement.get("kappa")
    trust = (
        f"Cohen's kappa {kappa:.2f} vs physicians on {agreement.get('n')} K-QA pairs "
        f"(physicians among themselves: "
        + ", ".join(f"{v:.2f}" for v in (agreement.get("physician_kappas") or {}).values())
        + ")"
        if kappa is not None
        else "agreement with physicians not measured"
    )
    return (
        f"- statement judge: {judge.get('identity', '?')}; {trust}; "
        f"{statements['must_have']} must-have and {statements['nice_to_have']} nice-to-have "
        "statements"
    )
