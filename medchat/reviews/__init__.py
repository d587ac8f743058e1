"""The review store: blind A/B votes (Compare), 1-4 ratings (Review), thumbs up/down (Chat).

    store = ReviewStore(settings.reviews_db)          # <data_dir>/reviews.sqlite
    store.add_vote(question=q, answer_a=a, answer_b=b, a_is="tuned", vote="A",
                   params={"temperature": 0.0}, model="smollm2-135m", adapter="medquad")
    store.add_rating(source="eval:2024-05-01-smollm2", item_id="17", side="tuned",
                     question=q, answer=a, rating=4, cosine=0.83)
    store.add_feedback(question=q, answer=a, liked=True, reviewer="anon-1f2e",
                       model="smollm2-135m", adapter="medquad", prompt=turn.record())
    store.add_rating(..., marks=[{"kind": "must_have", "statement": s, "mark": "covered",
                                  "judge": "offline", "judge_verdict": "entailed"}])
    store.export_csv("ratings", "ratings.csv")

Every vote, rating and thumb can record the prompt behind its answer (`prompt`, a
medchat.pipeline Turn.record()): `prompt_style` (PromptStyle.id: "legacy",
"sources:hybrid:k3-<hash>", ...), `sources_in_prompt` (1 when the prompt had a sources block,
0 when not) and `prompt_sources` (a JSON list of the passages in it, [{"key", "url"}] in
prompt order; "[]" when none). All three are NULL when unknown (rows saved before they were
recorded).

A rating of an answer whose question has statements (a statement set such as K-QA: what a good
answer must have and may have) carries the reviewer's mark on each statement: covered,
contradicted or missing (`statement_marks`, one row per statement, keyed by the rating's id),
with the automatic judge's verdict on the same statement from the run, so human and judge can
be compared without the run folder.

One SQLite file in WAL mode, one commit per write, so a row that a call returned an id for
survives the process being killed. The schema version lives in `PRAGMA user_version` and
`migrate()` upgrades older files in place. One connection is shared by the app's worker threads
behind a lock; other processes writing the same file wait on SQLite's busy timeout.

The package:
- `schema`: the values each column allows, each table's columns, the SQL of each schema version
  and `migrate`.
- `rows`: the checks that turn a caller's values into a row's (the prompt record, the marks).
- `store`: ReviewStore, its writes and its reads.
"""

from medchat.reviews.schema import (
    _SCHEMA_V1,
    FEEDBACK_COLUMNS,
    JUDGE_VERDICTS,
    MARK_COLUMNS,
    MARKS,
    MIGRATIONS,
    PROMPT_COLUMNS,
    RATING_COLUMNS,
    RATING_LABELS,
    SCHEMA_VERSION,
    SIDES,
    STATEMENT_KINDS,
    VOTE_COLUMNS,
    VOTES,
    WINNERS,
    migrate,
)
from medchat.reviews.store import BUSY_TIMEOUT_S, ReviewStore

__all__ = [
    "BUSY_TIMEOUT_S",
    "FEEDBACK_COLUMNS",
    "JUDGE_VERDICTS",
    "MARKS",
    "MARK_COLUMNS",
    "MIGRATIONS",
    "PROMPT_COLUMNS",
    "RATING_COLUMNS",
    "RATING_LABELS",
    "SCHEMA_VERSION",
    "SIDES",
    "STATEMENT_KINDS",
    "VOTES",
    "VOTE_COLUMNS",
    "WINNERS",
    "ReviewStore",
    "_SCHEMA_V1",
    "migrate",
]
