"""ReviewStore: the review database's one connection, its writes (a vote, a rating with its
statement marks, a thumb) and its reads (every row of a table, counts, the CSV export).

One commit per write, so a row that a call returned an id for survives the process being
killed; the connection is shared by the app's worker threads behind a lock.
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
from pathlib import Path
from typing import Any

from medchat.errors import MedchatError
from medchat.reviews.rows import checked_marks, checked_text, prompt_values, utc_now, winner
from medchat.reviews.schema import (
    FEEDBACK_COLUMNS,
    MARK_COLUMNS,
    PROMPT_COLUMNS,
    RATING_COLUMNS,
    RATING_LABELS,
    SIDES,
    VOTE_COLUMNS,
    VOTES,
    migrate,
)

BUSY_TIMEOUT_S = 10.0


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
            utc_now(),
            checked_text("question", question),
            checked_text("answer_a", answer_a),
            checked_text("answer_b", answer_b),
            a_is,
            vote,
            winner(a_is, vote),
            params_json,
            checked_text("model", model),
            checked_text("adapter", adapter),
            checked_text("reviewer", reviewer).strip(),
            *prompt_values(prompt),
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
        mark_rows = checked_marks(marks)
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
        source = checked_text("source", source).strip()
        item_id = checked_text("item_id", item_id).strip()
        if not source or not item_id:
            raise MedchatError("A rating needs a non-empty source and item_id.")
        has_cosine = cosine is not None
        now = utc_now()
        row = {
            "created_at": now,
            "updated_at": now,
            "source": source,
            "item_id": item_id,
            "side": side,
            "question": checked_text("question", question),
            "answer": checked_text("answer", answer),
            "rating": int(rating),
            "note": checked_text("note", note),
            "reviewer": checked_text("reviewer", reviewer).strip(),
            "reference": checked_text("reference", reference),
            "cosine": cosine,
            # No cosine, no embedder: the column says who computed the cosine.
            "embedder": (
                checked_text("embedder", embedder or "").strip() or None if has_cosine else None
            ),
            **dict(zip(PROMPT_COLUMNS, prompt_values(prompt), strict=True)),
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
            (checked_text("reviewer", reviewer).strip(),),
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
            utc_now(),
            checked_text("question", question),
            checked_text("answer", answer),
            int(liked),
            checked_text("reviewer", reviewer).strip(),
            checked_text("model", model),
            checked_text("adapter", adapter),
            *prompt_values(prompt),
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
