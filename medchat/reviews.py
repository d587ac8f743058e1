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
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
BUSY_TIMEOUT_S = 10.0

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


class ReviewStore:
    """Votes and ratings in one SQLite file; safe to call from many threads at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MedchatError(
                f"Cannot create the folder for the review database {self.path} ({err}); "
                "set MEDCHAT_DATA_DIR to a writable folder."
            ) from err
        if self.path.is_dir():
            raise MedchatError(
                f"The review database path {self.path} is a folder; give a file path instead."
            )
        self._lock = threading.Lock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every write is exactly
            # one transaction and nothing is left open between calls.
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise self._error(err) from err
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        try:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            # Durability: in WAL mode a COMMIT appends the transaction to the -wal file with
            # write() before it returns, so the rows sit in the OS page cache and survive a
            # kill -9 of this process even with synchronous=NORMAL; NORMAL only risks the last
            # commits on power loss or an OS crash. FULL also fsyncs the WAL on every commit,
            # which makes a returned id durable against power loss too. Writes here happen at
            # human speed (one click, one row), so the fsync costs nothing anyone notices.
            self._conn.execute("PRAGMA synchronous = FULL")
            if mode.lower() != "wal":
                raise MedchatError(
                    f"The review database {self.path} cannot use WAL journal mode (got {mode!r}); "
                    "set MEDCHAT_DATA_DIR to a folder on a local disk."
                )
            migrate(self._conn, self.path)
        except sqlite3.Error as err:
            raise self._error(err) from err

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, err: sqlite3.Error) -> MedchatError:
        return MedchatError(
            f"The review database {self.path} cannot be used ({err}); "
            "set MEDCHAT_DATA_DIR to a writable folder with free space."
        )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One locked write transaction; committed when the block ends without an error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                raise self._error(err) from err
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise self._error(exc) from exc
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            try:
                cursor = self._conn.execute(sql, args)
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            except sqlite3.OperationalError as err:
                raise self._error(err) from err

    def _insert(self, table: str, columns: tuple[str, ...], row: tuple) -> int:
        """One row into `table` (our own constant names) in its own transaction; its id."""
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(row))})",
                row,
            )
            return cursor.lastrowid

    def schema_version(self) -> int:
        return self._read("PRAGMA user_version")[0]["user_version"]

    # ---- votes -------------------------------------------------------------------------------

    def add_vote(
        self,
        *,
        question: str,
        answer_a: str,
        answer_b: str,
        a_is: str,
        vote: str,
        params: dict,
        model: str,
        adapter: str,
        reviewer: str = "",
        prompt: Mapping[str, Any] | None = None,
    ) -> int:
        """Record one blind A/B vote; `a_is` says which model was shown as A; `prompt` the
        prompt both sides answered (Turn.record()). Returns its id."""
        if a_is not in SIDES:
            raise MedchatError(f"a_is is {a_is!r}; it must be 'base' or 'tuned'.")
        if vote not in VOTES:
            raise MedchatError(f"Vote {vote!r} is unknown; choose one of {', '.join(VOTES)}.")
        if not isinstance(params, dict):
            raise MedchatError(f"params must be a dict of generation settings, not {params!r}.")
        try:
            params_json = json.dumps(params, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise MedchatError(
                f"params cannot be saved as JSON ({err}); pass plain values."
            ) from err
        row = (
            _now(),
            _text("question", question),
            _text("answer_a", answer_a),
            _text("answer_b", answer_b),
            a_is,
            vote,
            _winner(a_is, vote),
            params_json,
            _text("model", model),
            _text("adapter", adapter),
            _text("reviewer", reviewer).strip(),
            *_prompt_values(prompt),
        )
        return self._insert("votes", VOTE_COLUMNS[1:], row)

    def votes(self) -> list[dict]:
        """Every vote, oldest first, with params decoded back to a dict."""
        rows = self._read(f"SELECT {', '.join(VOTE_COLUMNS)} FROM votes ORDER BY id")
        for row in rows:
            row["params"] = json.loads(row["params"])
        return rows

    # ---- ratings -----------------------------------------------------------------------------

    def add_rating(
        self,
        *,
        source: str,
        item_id: str,
        side: str,
        question: str,
        answer: str,
        rating: int,
        note: str = "",
        reviewer: str = "",
        reference: str = "",
        cosine: float | None = None,
        embedder: str | None = None,
        prompt: Mapping[str, Any] | None = None,
        marks: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Rate one answer 1-4 (RATING_LABELS). Returns the row id.

        `embedder` names the model that computed `cosine` (medchat.metrics.Embedder.name), so
        correlations are never pooled across embedders. `prompt`: the prompt behind the answer
        (Turn.record(); from the run or the vote), None when unknown. `marks`: for an answer
        whose question has statements, one dict per statement in the run's order (must-have
        first): `kind` (STATEMENT_KINDS), `statement`, `mark` (MARKS), and `judge` and
        `judge_verdict` (JUDGE_VERDICTS), the run's judge and its verdict, or None.

        A reviewer rating the same (source, item_id, side) again replaces the earlier rating in
        place: the id and created_at stay, every other field, the marks and updated_at take the
        new values.
        """
        mark_rows = _mark_rows(marks)
        if isinstance(rating, bool) or not isinstance(rating, numbers.Integral):
            raise MedchatError(f"Rating {rating!r} is not a whole number; give 1, 2, 3 or 4.")
        if int(rating) not in RATING_LABELS:
            raise MedchatError(f"Rating {rating} is outside the scale; give 1, 2, 3 or 4.")
        if side not in SIDES:
            raise MedchatError(f"Side {side!r} is unknown; it must be 'base' or 'tuned'.")
        if cosine is not None:
            if isinstance(cosine, bool) or not isinstance(cosine, numbers.Real):
                raise MedchatError(f"cosine {cosine!r} is not a number; pass a float or None.")
            cosine = float(cosine)
            if not math.isfinite(cosine):
                raise MedchatError(f"cosine is {cosine}; pass a finite number or None.")
        source = _text("source", source).strip()
        item_id = _text("item_id", item_id).strip()
        if not source or not item_id:
            raise MedchatError("A rating needs a non-empty source and item_id.")
        has_cosine = cosine is not None
        now = _now()
        row = {
            "created_at": now,
            "updated_at": now,
            "source": source,
            "item_id": item_id,
            "side": side,
            "question": _text("question", question),
            "answer": _text("answer", answer),
            "rating": int(rating),
            "note": _text("note", note),
            "reviewer": _text("reviewer", reviewer).strip(),
            "reference": _text("reference", reference),
            "cosine": cosine,
            # No cosine, no embedder: the column says who computed the cosine.
            "embedder": _text("embedder", embedder or "").strip() or None if has_cosine else None,
            **dict(zip(PROMPT_COLUMNS, _prompt_values(prompt), strict=True)),
        }
        key = ("source", "item_id", "side", "reviewer")
        replaced = [c for c in row if c not in key and c != "created_at"]
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO ratings ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in replaced),
                tuple(row.values()),
            )
            # lastrowid is not reliable after an upsert that updated, so look the row up.
            rating_id = conn.execute(
                "SELECT id FROM ratings WHERE source = ? AND item_id = ? AND side = ? "
                "AND reviewer = ?",
                tuple(row[c] for c in key),
            ).fetchone()[0]
            # The marks are part of the rating: a new rating replaces them all, in the same
            # transaction, so a rating is never stored with another rating's marks.
            conn.execute("DELETE FROM statement_marks WHERE rating_id = ?", (rating_id,))
            conn.executemany(
                "INSERT INTO statement_marks (rating_id, position, kind, statement, mark, judge, "
                "judge_verdict) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(rating_id, *m) for m in mark_rows],
            )
            return rating_id

    def ratings(self) -> list[dict]:
        """Every rating, in the order first rated."""
        return self._read(f"SELECT {', '.join(RATING_COLUMNS)} FROM ratings ORDER BY id")

    def statement_marks(self) -> list[dict]:
        """Every statement mark (MARK_COLUMNS), by rating then statement order, with the
        rating's source, item_id, side, reviewer and updated_at."""
        own = {"id", "rating_id", "position", "kind", "statement", "mark", "judge", "judge_verdict"}
        columns = [f"{'m' if c in own else 'r'}.{c}" for c in MARK_COLUMNS]
        return self._read(
            f"SELECT {', '.join(columns)} FROM statement_marks m "
            "JOIN ratings r ON r.id = m.rating_id ORDER BY m.rating_id, m.position"
        )

    def rating_counts(self) -> dict[tuple[str, str, str], int]:
        """{(source, item_id, side): how many reviewers rated that answer}."""
        rows = self._read(
            "SELECT source, item_id, side, COUNT(DISTINCT reviewer) AS n FROM ratings "
            "GROUP BY source, item_id, side"
        )
        return {(r["source"], r["item_id"], r["side"]): r["n"] for r in rows}

    def rated_keys(self, reviewer: str = "") -> set[tuple[str, str, str]]:
        """(source, item_id, side) already rated by `reviewer` ("" is the anonymous reviewer)."""
        rows = self._read(
            "SELECT source, item_id, side FROM ratings WHERE reviewer = ?",
            (_text("reviewer", reviewer).strip(),),
        )
        return {(r["source"], r["item_id"], r["side"]) for r in rows}

    # ---- chat feedback -----------------------------------------------------------------------

    def add_feedback(
        self,
        *,
        question: str,
        answer: str,
        liked: bool,
        reviewer: str = "",
        model: str,
        adapter: str,
        prompt: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a thumbs up (liked) or down on one chat answer; `prompt` the prompt behind
        it (Turn.record()). Returns its id.

        Only called when the person clicks a thumb: the chat itself is never stored.
        """
        if not isinstance(liked, bool):
            raise MedchatError(f"liked is {liked!r}; pass True (thumbs up) or False (down).")
        row = (
            _now(),
            _text("question", question),
            _text("answer", answer),
            int(liked),
            _text("reviewer", reviewer).strip(),
            _text("model", model),
            _text("adapter", adapter),
            *_prompt_values(prompt),
        )
        return self._insert("feedback", FEEDBACK_COLUMNS[1:], row)

    def feedback(self) -> list[dict]:
        """Every thumbs up/down, oldest first; liked is a bool."""
        rows = self._read(f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback ORDER BY id")
        for row in rows:
            row["liked"] = bool(row["liked"])
        return rows

    # ---- export and health -------------------------------------------------------------------

    def export_csv(self, kind: str, path: str | Path) -> Path:
        """Write every vote, rating, statement mark or thumb to a CSV file with a header row;
        returns the path."""
        if kind == "votes":
            columns, rows = VOTE_COLUMNS, self.votes()
            for row in rows:
                row["params"] = json.dumps(row["params"], sort_keys=True)
        elif kind == "ratings":
            columns, rows = RATING_COLUMNS, self.ratings()
        elif kind == "feedback":
            columns, rows = FEEDBACK_COLUMNS, self.feedback()
        elif kind == "statements":
            columns, rows = MARK_COLUMNS, self.statement_marks()
        else:
            raise MedchatError(
                f"Export kind {kind!r} is unknown; choose 'votes', 'ratings', 'statements' or "
                "'feedback'."
            )
        path = Path(path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        except OSError as err:
            raise MedchatError(
                f"Cannot write the {kind} export to {path} ({err}); choose a writable path."
            ) from err
        return path

    def integrity_ok(self) -> bool:
        """True when SQLite's full integrity check finds nothing wrong."""
        rows = self._read("PRAGMA integrity_check")
        return len(rows) == 1 and next(iter(rows[0].values())) == "ok"


def _prompt_values(prompt: Mapping[str, Any] | None) -> tuple[str | None, int | None, str | None]:
    """(prompt_style, sources_in_prompt, prompt_sources) of a Turn.record(); NULLs for None."""
    if prompt is None:
        return None, None, None
    if not isinstance(prompt, Mapping):
        raise MedchatError(f"prompt must be a Turn.record() dict, not {prompt!r}.")
    style = prompt.get("prompt_style")
    style = _text("prompt_style", style).strip() or None if style is not None else None
    had = prompt.get("sources_in_prompt")
    if had is not None and not isinstance(had, bool):
        raise MedchatError(f"sources_in_prompt is {had!r}; pass True, False or None.")
    sources = prompt.get("prompt_sources")
    if sources is None:
        sources = [] if had is False else None
    if sources is not None:
        if not isinstance(sources, list | tuple):
            raise MedchatError(f"prompt_sources must be a list of sources, not {sources!r}.")
        try:
            sources = json.dumps(list(sources), sort_keys=True)
        except (TypeError, ValueError) as err:
            raise MedchatError(
                f"prompt_sources cannot be saved as JSON ({err}); pass plain values."
            ) from err
    return style, None if had is None else int(had), sources


def _mark_rows(marks: Sequence[Mapping[str, Any]] | None) -> list[tuple]:
    """(position, kind, statement, mark, judge, judge_verdict) of each statement mark, checked."""
    if marks is None:
        return []
    if isinstance(marks, str | Mapping) or not isinstance(marks, Sequence):
        raise MedchatError(f"marks must be a list of statement marks, not {marks!r}.")
    rows = []
    for position, m in enumerate(marks):
        if not isinstance(m, Mapping):
            raise MedchatError(f"Statement mark {position + 1} is {m!r}, not a dict.")
        kind, mark, verdict = m.get("kind"), m.get("mark"), m.get("judge_verdict")
        if kind not in STATEMENT_KINDS:
            raise MedchatError(
                f"Statement {position + 1} is of kind {kind!r}; it must be must_have or "
                "nice_to_have."
            )
        if mark not in MARKS:
            raise MedchatError(
                f"Statement {position + 1} is marked {mark!r}; mark it covered, contradicted or "
                "missing."
            )
        if verdict is not None and verdict not in JUDGE_VERDICTS:
            raise MedchatError(
                f"Statement {position + 1} has judge verdict {verdict!r}; it must be one of "
                f"{', '.join(JUDGE_VERDICTS)} or None."
            )
        statement = _text("statement", m.get("statement")).strip()
        if not statement:
            raise MedchatError(f"Statement {position + 1} is empty; give its text.")
        judge = m.get("judge")
        judge = _text("judge", judge).strip() or None if judge is not None else None
        rows.append((position, kind, statement, mark, judge, verdict))
    return rows


def _winner(a_is: str, vote: str) -> str:
    if vote == "A":
        return a_is
    if vote == "B":
        return "tuned" if a_is == "base" else "base"
    return vote


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise MedchatError(f"{name} must be text, not {type(value).__name__}.")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
