"""The study as a dataset: votes, ratings and statement marks as CSV and Parquet, with a
README.md dataset card whose `configs:` make `datasets.load_dataset(folder, "ratings")` work.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medchat.errors import MedchatError
from medchat.review_stats.tables import (
    MARK_FIELDS,
    NOT_TEXT,
    RATING_FIELDS,
    VOTE_FIELDS,
    Rows,
    as_frame,
    ratings_frame,
    store_rows,
)
from medchat.reviews import ReviewStore


def export(
    store_or_frames: ReviewStore | str | Path | tuple[Rows, Rows] | tuple[Rows, Rows, Rows],
    out_dir: str | Path,
    *,
    embedders: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write votes, ratings and statement marks as CSV and Parquet plus a README.md dataset
    card; returns the paths.

    `store_or_frames` is a ReviewStore, a reviews.sqlite path or (ratings, votes[, marks]). The
    card's `configs:` make `datasets.load_dataset(str(out_dir), "ratings")` (or "votes",
    "statements") work.
    """
    if isinstance(store_or_frames, tuple):
        ratings, votes, *rest = store_or_frames
        marks = rest[0] if rest else ()
    else:
        ratings, votes, marks = store_rows(store_or_frames)
    tables = {
        "votes": as_frame(votes, VOTE_FIELDS),
        "ratings": ratings_frame(ratings, embedders or {}),
        "statements": as_frame(marks, MARK_FIELDS),
    }
    all_fields = {"votes": VOTE_FIELDS, "ratings": RATING_FIELDS, "statements": MARK_FIELDS}
    out = Path(out_dir).expanduser()
    paths: dict[str, Path] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in tables.items():
            fields = all_fields[name]
            schema = pa.schema([(col, NOT_TEXT.get(col, pa.string())) for col in fields])
            frame = frame[list(fields)].astype(object).where(frame[list(fields)].notna(), None)
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            paths[f"{name}.parquet"] = out / f"{name}.parquet"
            pq.write_table(table, paths[f"{name}.parquet"])
            paths[f"{name}.csv"] = out / f"{name}.csv"
            frame.to_csv(paths[f"{name}.csv"], index=False)
        paths["README.md"] = out / "README.md"
        paths["README.md"].write_text(
            _card(len(tables["votes"]), len(tables["ratings"]), len(tables["statements"])),
            encoding="utf-8",
        )
    except OSError as err:
        raise MedchatError(
            f"Cannot write the review export to {out} ({err}); choose a writable folder."
        ) from err
    return paths


def _card(n_votes: int, n_ratings: int, n_marks: int) -> str:
    def table(fields: Mapping[str, Any]) -> str:
        rows = [f"| `{k}` | {NOT_TEXT.get(k, 'string')} | {v} |" for k, v in fields.items()]
        return "\n".join(["| field | type | meaning |", "|---|---|---|", *rows])

    return f"""---
configs:
- config_name: ratings
  data_files: ratings.parquet
- config_name: votes
  data_files: votes.parquet
- config_name: statements
  data_files: statements.parquet
---
# medchat review study

Human reviews of a base and a fine-tuned medical chat model. ratings ({n_ratings} rows): single
answers rated on the TREC LiveQA 1-4 scale; votes ({n_votes} rows): blind A/B votes; statements
({n_marks} rows): for answers to questions with physician statements (K-QA), the rater's mark
on each statement (covered, contradicted or missing) beside the automatic judge's verdict. Load
one with `datasets.load_dataset("<this folder>", "ratings")`, `"votes"` or `"statements"`; the
same rows are in the CSVs.

**These reviews are not medical advice.** They are opinions about machine-written answers,
which may be wrong or unsafe; ask a clinician about any health question.

## ratings

{table(RATING_FIELDS)}

## votes

{table(VOTE_FIELDS)}

## statements

One row per statement of a rated answer; `rating_id` joins it to its rating. Comprehensiveness
is the share of `must_have` marks that are `covered`, hallucination the share of all marks that
are `contradicted`.

{table(MARK_FIELDS)}
"""
