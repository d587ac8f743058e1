"""The study's tables as the statistics and the export read them: each table's fields and
what they mean (the dataset card's words), the store's rows as DataFrames, and the embedder
behind each run's cosines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from medchat.errors import MedchatError
from medchat.reviews import RATING_LABELS, ReviewStore

Rows = pd.DataFrame | Sequence[Mapping[str, Any]]
SCALE = tuple(sorted(RATING_LABELS))  # (1, 2, 3, 4)
UNIT = ["source", "item_id", "side"]  # one answer; each reviewer rates it at most once

# Field meanings, for the dataset card; every field not in NOT_TEXT is text.
NOT_TEXT = {
    "id": pa.int64(),
    "rating": pa.int64(),
    "cosine": pa.float64(),
    "sources_in_prompt": pa.int64(),
    "rating_id": pa.int64(),
    "position": pa.int64(),
}
# The prompt behind an answer (medchat.reviews), in every table.
PROMPT_FIELDS = {
    "prompt_style": "The prompt style the answer was written with (medchat.prompts "
    "PromptStyle.id: legacy, plain-<hash> or sources:<method>:k<k>-<hash>); null when unknown.",
    "sources_in_prompt": "1 when the prompt had a block of NIH sources, 0 when not; null when "
    "unknown.",
    "prompt_sources": "The NIH passages in the prompt, in order, as JSON [{key, url}]; [] when "
    "none; null when unknown.",
}
VOTE_FIELDS = {
    "id": "Row id in the review store.",
    "created_at": "When the vote was cast (UTC, ISO 8601).",
    "question": "The question both models answered.",
    "answer_a": "The answer shown as A.",
    "answer_b": "The answer shown as B.",
    "a_is": "Which model wrote answer A: base or tuned (hidden from the voter).",
    "vote": "What the voter picked: A, B, tie or both_bad.",
    "winner": "The vote mapped to models: base, tuned, tie or both_bad.",
    "params": "Generation settings used for both answers, as JSON (seed: the sampling seed).",
    "model": "The base model's name.",
    "adapter": "The fine-tuned adapter that makes the tuned model.",
    "reviewer": "The voter: signed-in username, typed name, or anon-<id> of a browser session.",
    **PROMPT_FIELDS,
}
RATING_FIELDS = {
    "id": "Row id in the review store.",
    "created_at": "When the answer was first rated (UTC, ISO 8601).",
    "updated_at": "When this reviewer last changed the rating (UTC, ISO 8601).",
    "source": "Where the answer came from: `eval:<run name>` or `compare`.",
    "item_id": "The question's key in the run, or the vote id for compare.",
    "side": "Which model wrote the answer: base or tuned (hidden from the rater).",
    "question": "The question.",
    "answer": "The rated answer.",
    "rating": "TREC LiveQA scale: " + ", ".join(f"{k} {v}" for k, v in RATING_LABELS.items()),
    "note": "The rater's free-text note.",
    "reviewer": "The rater: signed-in username, typed name, or anon-<id> of a browser session.",
    "reference": "The reference answer shown to the rater; empty when none.",
    "cosine": "Cosine similarity of answer and reference; null when none.",
    "embedder": "The embedder that computed cosine; null when unknown.",
    **PROMPT_FIELDS,
}

MARK_FIELDS = {
    "id": "Row id of the mark in the review store.",
    "rating_id": "The `id` of the rating (ratings table) this mark was saved with.",
    "source": "Where the answer came from: `eval:<run name>`.",
    "item_id": "The question's key in the run.",
    "side": "Which model wrote the answer: base or tuned (hidden from the rater).",
    "reviewer": "The rater: signed-in username, typed name, or anon-<id> of a browser session.",
    "position": "The statement's place in the question's list (0 first): must-have statements "
    "first, then nice-to-have, as in the run's verdicts.",
    "kind": "must_have (a good answer must say it) or nice_to_have (it may say it).",
    "statement": "The statement, as written by the physicians of the statement set (K-QA).",
    "mark": "The rater's judgment: covered (the answer says it), contradicted (the answer says "
    "something that cannot be true with it) or missing (the answer does not say it).",
    "judge": "The run's automatic statement judge (offline or llm:<model>); null without one.",
    "judge_verdict": "That judge's verdict on the same answer and statement: entailed, "
    "contradicted, neither or unparsed; null without a judge. Never shown to the rater.",
    "updated_at": "When the rater last saved this rating and its marks (UTC, ISO 8601).",
}


def store_rows(store: ReviewStore | str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(ratings, votes, statement marks) of a store or a reviews.sqlite path."""
    if isinstance(store, ReviewStore):
        return store.ratings(), store.votes(), store.statement_marks()
    path = Path(store).expanduser()
    if not path.is_file():
        raise MedchatError(f"There is no review database at {path}; give the reviews.sqlite path.")
    with ReviewStore(path) as opened:
        return opened.ratings(), opened.votes(), opened.statement_marks()


def as_frame(rows: Rows, fields: Mapping[str, Any]) -> pd.DataFrame:
    """The rows as a DataFrame with at least the store's columns (missing ones are null)."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for col in fields:
        if col not in frame.columns:
            frame[col] = None
    if "params" in fields:  # the store decodes params to a dict; tables keep the JSON text
        frame["params"] = [
            p if p is None or isinstance(p, str) else json.dumps(p, sort_keys=True)
            for p in frame["params"]
        ]
    frame["reviewer"] = frame["reviewer"].fillna("").astype(str)
    return frame


def ratings_frame(rows: Rows, embedders: Mapping[str, str]) -> pd.DataFrame:
    """Ratings checked to be on the 1-4 scale, with embedder filled from {source: name}."""
    r = as_frame(rows, RATING_FIELDS)
    r["rating"] = pd.to_numeric(r["rating"])
    if not r["rating"].isin(SCALE).all():
        raise MedchatError(f"Ratings must be whole numbers in {SCALE}; the store's scale is 1-4.")
    r["rating"] = r["rating"].astype("int64")
    r["cosine"] = pd.to_numeric(r["cosine"]).astype("float64")
    r["embedder"] = r["embedder"].where(r["embedder"].notna(), r["source"].map(embedders))
    return r


def run_embedders(*runs_dirs: str | Path) -> dict[str, str]:
    """{"eval:<run name>": embedder} from the summary.json of each finished evaluation run."""
    from medchat.evaluation import SUMMARY, list_runs

    found = {}
    for folder in list_runs(*runs_dirs):
        summary = folder / SUMMARY
        if summary.is_file():
            name = json.loads(summary.read_text(encoding="utf-8")).get("embedder")
            if name:
                found[f"eval:{folder.name}"] = str(name)
    return found
