"""How one batch of answers is scored (score_batch), and the statement judge of a run.

    records = score_batch(batch, answers, embedder, extra_columns, sources, judge)

Each record is one results.jsonl line (medchat.evaluation.folder.RESULT_FIELDS): both sides'
answers against the reference (cosine, ROUGE-L, length, repetition), with retrieval what each
side cited, and with a statement set each side's verdict on every statement.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medchat import metrics
from medchat.errors import MedchatError
from medchat.evaluation.config import EvalConfig
from medchat.evaluation.folder import SIDES
from medchat.evaluation.report import missing
from medchat.statements import statement_columns

NOT_COVERED_PATTERN = re.compile(r"(sources|they) do(es)? not cover", re.IGNORECASE)


def score_batch(
    batch: pd.DataFrame,
    answers: Sequence[dict],
    embedder: metrics.Embedder,
    extra_columns: Sequence[str] = (),
    sources: Sequence[Sequence[Any]] | None = None,
    judge=None,
) -> list[dict]:
    """results.jsonl records for one batch: both sides' answers scored against the reference;
    with `sources` (each question's retrieval hits), what each side cited; with a `judge` and a
    statement set, each side's verdict on every statement and its two statement scores."""
    from medchat.retrieval import citations, same_topic

    refs = batch["answer"].tolist()
    texts = {side: [a[side].text for a in answers] for side in SIDES}
    # One encode call for the batch: base answers, tuned answers and references together.
    cos = embedder.cosine(texts["base"] + texts["tuned"], refs + refs)
    cosine = {"base": cos[: len(refs)], "tuned": cos[len(refs) :]}
    records = []
    for i, (_, row) in enumerate(batch.iterrows()):
        record: dict[str, Any] = {
            "key": row["key"],
            "question": row["question"],
            "reference": row["answer"],
        }
        for side in SIDES:
            record[f"{side}_answer"] = texts[side][i]
        for side in SIDES:
            record[f"{side}_cosine"] = float(cosine[side][i])
        for side in SIDES:
            record[f"{side}_rouge_l"] = metrics.rouge_l_f1(texts[side][i], refs[i])
        for side in SIDES:
            record[f"{side}_tokens"] = int(answers[i][side].n_tokens)
        for side in SIDES:
            record[f"{side}_hit_limit"] = bool(answers[i][side].hit_limit)
        for side in SIDES:
            record[f"{side}_repetition"] = metrics.repeated_ngram_share(texts[side][i])
        for column in extra_columns:
            value = row[column]
            record[column] = None if missing(value) else str(value)
        if sources is not None:
            hits = sources[i]
            record["sources"] = [  # as numbered in the prompt
                {
                    "rank": n,
                    "key": h.passage.key,
                    "title": h.passage.title,
                    "url": h.passage.url,
                    "score": round(h.score, 4),
                }
                for n, h in enumerate(hits, 1)
            ]
            focus = "" if missing(row.get("focus")) else str(row.get("focus", ""))
            record["topic_hit"] = bool(focus) and any(
                same_topic(h.passage.title, focus) for h in hits
            )
            for side in SIDES:
                record[f"{side}_citations"] = citations(texts[side][i])
                record[f"{side}_not_covered"] = bool(NOT_COVERED_PATTERN.search(texts[side][i]))
        records.append(record)
    if judge is not None and statement_columns(batch) is not None:
        from medchat.statements import statement_fields

        for record, fields in zip(records, statement_fields(judge, batch, texts), strict=True):
            record.update(fields)
    return records


def judge_name(config: EvalConfig, rows: pd.DataFrame) -> str | None:
    """The statement judge a run names in its config: None without statements or with
    --judge none; "offline"; "llm:<model>" (the model as given, or the server's default)."""
    if statement_columns(rows) is None or config.judge == "none":
        return None
    if (config.judge or "offline") == "offline":
        return "offline"
    return f"llm:{config.judge_model or os.environ.get('MEDCHAT_JUDGE_MODEL') or 'default'}"


def make_run_judge(config: EvalConfig, name: str | None, embedder, previous, out: Path):
    """The run's statement judge (None without one); a resumed run must get the same judge."""
    if name is None:
        return None
    from medchat.judges import make_judge

    judge = make_judge(
        name.split(":")[0], embedder=embedder, url=config.judge_url, model=config.judge_model
    )
    recorded = ((previous or {}).get("judge_info") or {}).get("identity")
    if previous and recorded != judge.identity:
        raise MedchatError(
            f"Run folder {str(out)!r} was judged by {recorded!r}, not {judge.identity!r}, and one "
            "run never mixes two judges; use another --out."
        )
    return judge
