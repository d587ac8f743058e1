"""The review database's tables: the values each column allows, the columns each table has,
and the migrations that build a new file and upgrade an older one in place.

The schema version lives in `PRAGMA user_version`; `migrate()` takes a file from the version it
finds to SCHEMA_VERSION in one transaction, MIGRATIONS[v] taking version v to v + 1.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from medchat.errors import MedchatError

VOTES = ("A", "B", "tie", "both_bad")
# The TREC LiveQA medical judgement scale.
RATING_LABELS = {1: "Incorrect", 2: "Related", 3: "Incomplete", 4: "Excellent"}
SIDES = ("base", "tuned")
WINNERS = ("base", "tuned", "tie", "both_bad")

# A reviewer's mark on one statement, and the kinds of statement (medchat.statements).
MARKS = ("covered", "contradicted", "missing")
STATEMENT_KINDS = ("must_have", "nice_to_have")
# What a statement judge can say (medchat.judges.VERDICTS and UNPARSED; a test keeps them equal).
JUDGE_VERDICTS = ("entailed", "contradicted", "neither", "unparsed")

SCHEMA_VERSION = 4

VOTE_COLUMNS = (
    "id",
    "created_at",
    "question",
    "answer_a",
    "answer_b",
    "a_is",
    "vote",
    "winner",
    "params",
    "model",
    "adapter",
    "reviewer",
    "prompt_style",
    "sources_in_prompt",
    "prompt_sources",
)
RATING_COLUMNS = (
    "id",
    "created_at",
    "updated_at",
    "source",
    "item_id",
    "side",
    "question",
    "answer",
    "rating",
    "note",
    "reviewer",
    "reference",
    "cosine",
    "embedder",
    "prompt_style",
    "sources_in_prompt",
    "prompt_sources",
)
FEEDBACK_COLUMNS = (
    "id",
    "created_at",
    "question",
    "answer",
    "liked",
    "reviewer",
    "model",
    "adapter",
    "prompt_style",
    "sources_in_prompt",
    "prompt_sources",
)
PROMPT_COLUMNS = ("prompt_style", "sources_in_prompt", "prompt_sources")
# statement_marks() rows: the mark's own columns, with its rating's answer and reviewer.
MARK_COLUMNS = (
    "id",
    "rating_id",
    "source",
    "item_id",
    "side",
    "reviewer",
    "position",
    "kind",
    "statement",
    "mark",
    "judge",
    "judge_verdict",
    "updated_at",
)

_SCHEMA_V1 = """
CREATE TABLE votes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    question   TEXT NOT NULL,
    answer_a   TEXT NOT NULL,
    answer_b   TEXT NOT NULL,
    a_is       TEXT NOT NULL CHECK (a_is IN ('base', 'tuned')),
    vote       TEXT NOT NULL CHECK (vote IN ('A', 'B', 'tie', 'both_bad')),
    winner     TEXT NOT NULL CHECK (winner IN ('base', 'tuned', 'tie', 'both_bad')),
    params     TEXT NOT NULL,
    model      TEXT NOT NULL,
    adapter    TEXT NOT NULL,
    reviewer   TEXT NOT NULL DEFAULT ''
);
CREATE TABLE ratings (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    source     TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    side       TEXT NOT NULL CHECK (side IN ('base', 'tuned')),
    question   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    rating     INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 4),
    note       TEXT NOT NULL DEFAULT '',
    reviewer   TEXT NOT NULL DEFAULT '',
    reference  TEXT NOT NULL DEFAULT '',
    cosine     REAL,
    UNIQUE (source, item_id, side, reviewer)
);
"""


# Version 2: the embedder that computed a rating's cosine (NULL when unknown: ratings saved
# before it was recorded), and thumbs up/down on chat answers.
_SCHEMA_V2 = """
ALTER TABLE ratings ADD COLUMN embedder TEXT;
CREATE TABLE feedback (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    question   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    liked      INTEGER NOT NULL CHECK (liked IN (0, 1)),
    reviewer   TEXT NOT NULL DEFAULT '',
    model      TEXT NOT NULL,
    adapter    TEXT NOT NULL
);
"""


# Version 3: the prompt behind each vote, rating and thumb: its style, whether it had a
# sources block, and the passages in it (NULL when unknown: rows saved before).
_SCHEMA_V3 = "".join(
    f"ALTER TABLE {table} ADD COLUMN prompt_style TEXT;\n"
    f"ALTER TABLE {table} ADD COLUMN sources_in_prompt INTEGER "
    "CHECK (sources_in_prompt IN (0, 1));\n"
    f"ALTER TABLE {table} ADD COLUMN prompt_sources TEXT;\n"
    for table in ("votes", "ratings", "feedback")
)


# Version 4: a reviewer's covered / contradicted / missing mark on each statement of a rated
# answer (statement sets), with the run's judge and its verdict on the same statement (NULL
# when the run had no judge). `position` orders the statements as the run does: must-have
# first, then nice-to-have. Rows go and come with their rating (add_rating replaces them).
_SCHEMA_V4 = """
CREATE TABLE statement_marks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    rating_id     INTEGER NOT NULL REFERENCES ratings (id),
    position      INTEGER NOT NULL CHECK (position >= 0),
    kind          TEXT NOT NULL CHECK (kind IN ('must_have', 'nice_to_have')),
    statement     TEXT NOT NULL,
    mark          TEXT NOT NULL CHECK (mark IN ('covered', 'contradicted', 'missing')),
    judge         TEXT,
    judge_verdict TEXT CHECK (judge_verdict IN ('entailed', 'contradicted', 'neither', 'unparsed')),
    UNIQUE (rating_id, position)
)
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    _run_script(conn, _SCHEMA_V1)


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    _run_script(conn, _SCHEMA_V2)


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    _run_script(conn, _SCHEMA_V3)


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    _run_script(conn, _SCHEMA_V4)


# MIGRATIONS[v] upgrades a file at schema version v to v + 1; version 0 is an empty file.
MIGRATIONS = {0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}


def migrate(conn: sqlite3.Connection, path: Path | str = "") -> int:
    """Upgrade the schema to SCHEMA_VERSION in one transaction; returns the version found.

    `conn` must be in autocommit mode (isolation_level=None).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise MedchatError(
                f"The review database {path} has schema version {found}, newer than this "
                f"medchat understands ({SCHEMA_VERSION}); upgrade medchat or use another data dir."
            )
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
            # PRAGMA takes no parameters; the value is our own int.
            conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
