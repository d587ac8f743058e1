"""The review store: votes, ratings, summaries, export, concurrency and the schema version."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
from datetime import datetime

import pytest

from medchat.errors import MedchatError
from medchat.reviews import (
    RATING_COLUMNS,
    RATING_LABELS,
    SCHEMA_VERSION,
    VOTE_COLUMNS,
    VOTES,
    ReviewStore,
)


@pytest.fixture
def store(tmp_path):
    with ReviewStore(tmp_path / "data" / "reviews.sqlite") as s:
        yield s


def vote(store, **overrides):
    fields = dict(
        question="What is anemia?",
        answer_a="A low red cell count.",
        answer_b="Too much iron.",
        a_is="tuned",
        vote="A",
        params={"temperature": 0.0, "max_new_tokens": 64},
        model="smollm2-135m",
        adapter="smollm2-135m-medquad",
        reviewer="ana",
    )
    fields.update(overrides)
    return store.add_vote(**fields)


def rate(store, **overrides):
    fields = dict(
        source="eval:run-1",
        item_id="7",
        side="tuned",
        question="What causes gout?",
        answer="Uric acid crystals in the joints.",
        rating=4,
    )
    fields.update(overrides)
    return store.add_rating(**fields)


def test_the_store_takes_the_four_votes_and_the_1_to_4_scale_and_nothing_else(tmp_path):
    with ReviewStore(tmp_path / "r.sqlite") as store:
        for choice in ("A", "B", "tie", "both_bad"):
            vote(store, vote=choice)
        assert [v["vote"] for v in store.votes()] == ["A", "B", "tie", "both_bad"]
        for wrong in ("C", "a", "", "better"):
            with pytest.raises(MedchatError, match="unknown"):
                vote(store, vote=wrong)
        for rating in (1, 2, 3, 4):
            rate(store, rating=rating, item_id=str(rating))
        assert sorted(r["rating"] for r in store.ratings()) == [1, 2, 3, 4]
        for wrong in (0, 5, -1):
            with pytest.raises(MedchatError, match="outside the scale"):
                rate(store, rating=wrong, item_id="x")
    # The TREC LiveQA names of the scale, as the Review tab labels its buttons.
    assert [RATING_LABELS[k] for k in (1, 2, 3, 4)] == [
        "Incorrect",
        "Related",
        "Incomplete",
        "Excellent",
    ]
    assert set(VOTES) == {"A", "B", "tie", "both_bad"}


def test_creates_parent_dirs_and_uses_wal(tmp_path):
    path = tmp_path / "a" / "b" / "reviews.sqlite"
    with ReviewStore(path):
        pass
    assert path.is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_vote_round_trips_every_field(store):
    vid = vote(store, a_is="base", vote="B", params={"top_p": 0.9, "seed": [1, 2]})
    [row] = store.votes()
    assert set(row) == set(VOTE_COLUMNS)
    assert row["id"] == vid
    assert row["question"] == "What is anemia?"
    assert row["answer_a"] == "A low red cell count."
    assert row["answer_b"] == "Too much iron."
    assert row["a_is"] == "base"
    assert row["vote"] == "B"
    assert row["winner"] == "tuned"
    assert row["params"] == {"top_p": 0.9, "seed": [1, 2]}
    assert row["model"] == "smollm2-135m"
    assert row["adapter"] == "smollm2-135m-medquad"
    assert row["reviewer"] == "ana"
    stamp = datetime.fromisoformat(row["created_at"])
    assert stamp.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    ("a_is", "choice", "winner"),
    [
        ("tuned", "A", "tuned"),
        ("tuned", "B", "base"),
        ("base", "A", "base"),
        ("base", "B", "tuned"),
        ("tuned", "tie", "tie"),
        ("base", "tie", "tie"),
        ("tuned", "both_bad", "both_bad"),
        ("base", "both_bad", "both_bad"),
    ],
)
def test_winner_is_derived_from_which_model_was_a(store, a_is, choice, winner):
    vote(store, a_is=a_is, vote=choice)
    assert store.votes()[0]["winner"] == winner


@pytest.mark.parametrize(
    "bad",
    [
        {"vote": "C"},
        {"vote": "a"},
        {"a_is": "A"},
        {"params": "temperature=0"},
        {"params": {"x": object()}},
        {"question": None},
    ],
)
def test_invalid_vote_raises_and_writes_nothing(store, bad):
    with pytest.raises(MedchatError):
        vote(store, **bad)
    assert store.votes() == []


def test_rating_round_trips_every_field(store):
    rid = rate(
        store,
        source="compare",
        item_id="q-3",
        side="base",
        rating=2,
        note="misses the dose",
        reviewer="ben",
        reference="Take 500 mg twice daily.",
        cosine=0.42,
    )
    [row] = store.ratings()
    assert set(row) == set(RATING_COLUMNS)
    assert row["id"] == rid
    assert (row["source"], row["item_id"], row["side"]) == ("compare", "q-3", "base")
    assert row["question"] == "What causes gout?"
    assert row["answer"] == "Uric acid crystals in the joints."
    assert row["rating"] == 2
    assert row["note"] == "misses the dose"
    assert row["reviewer"] == "ben"
    assert row["reference"] == "Take 500 mg twice daily."
    assert row["cosine"] == pytest.approx(0.42)
    assert row["created_at"] == row["updated_at"]
    assert datetime.fromisoformat(row["created_at"]).utcoffset().total_seconds() == 0


def test_rating_without_cosine_stores_none(store):
    rate(store)
    assert store.ratings()[0]["cosine"] is None


@pytest.mark.parametrize(
    "bad",
    [
        {"rating": 0},
        {"rating": 5},
        {"rating": -1},
        {"rating": 2.5},
        {"rating": "3"},
        {"rating": True},
        {"side": "A"},
        {"side": "Tuned"},
        {"source": ""},
        {"item_id": "  "},
        {"cosine": float("nan")},
        {"cosine": "0.5"},
    ],
)
def test_invalid_rating_raises_and_writes_nothing(store, bad):
    with pytest.raises(MedchatError):
        rate(store, **bad)
    assert store.ratings() == []


def test_second_rating_by_same_reviewer_replaces_the_first(store):
    first = rate(store, rating=1, note="wrong", reviewer="ana", cosine=0.1)
    second = rate(store, rating=4, note="on reflection, fine", reviewer="ana", cosine=0.2)
    assert second == first
    [row] = store.ratings()
    assert row["rating"] == 4
    assert row["note"] == "on reflection, fine"
    assert row["cosine"] == pytest.approx(0.2)


def test_different_reviewer_or_side_adds_a_rating(store):
    a = rate(store, reviewer="ana")
    b = rate(store, reviewer="ben")
    c = rate(store, reviewer="ana", side="base")
    d = rate(store, reviewer="ana", item_id="8")
    assert len({a, b, c, d}) == 4
    assert len(store.ratings()) == 4


def test_rated_keys_per_reviewer(store):
    rate(store, reviewer="ana", item_id="1", side="base")
    rate(store, reviewer="ana", item_id="1", side="tuned")
    rate(store, reviewer="ben", item_id="2", side="base")
    rate(store, reviewer="", source="compare", item_id="9", side="tuned")
    assert store.rated_keys("ana") == {("eval:run-1", "1", "base"), ("eval:run-1", "1", "tuned")}
    assert store.rated_keys("ben") == {("eval:run-1", "2", "base")}
    assert store.rated_keys() == {("compare", "9", "tuned")}
    assert store.rated_keys("nobody") == set()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_export_votes_csv(store, tmp_path):
    first = vote(store, question='Is "salt" bad,\nreally?', vote="tie")
    second = vote(store, a_is="base", vote="A", reviewer="")
    out = store.export_csv("votes", tmp_path / "out" / "votes.csv")
    assert out == tmp_path / "out" / "votes.csv"
    header, *rows = read_csv(out)
    assert header == list(VOTE_COLUMNS)
    assert len(rows) == 2
    by_name = [dict(zip(header, row, strict=True)) for row in rows]
    assert [int(r["id"]) for r in by_name] == [first, second]
    assert by_name[0]["question"] == 'Is "salt" bad,\nreally?'
    assert by_name[0]["winner"] == "tie"
    assert by_name[1]["winner"] == "base"
    assert json.loads(by_name[0]["params"]) == {"temperature": 0.0, "max_new_tokens": 64}


def test_export_ratings_csv(store, tmp_path):
    rate(store, item_id="1", rating=3, cosine=0.5, note="ok")
    rate(store, item_id="2", rating=1)
    header, *rows = read_csv(store.export_csv("ratings", tmp_path / "ratings.csv"))
    assert header == list(RATING_COLUMNS)
    by_name = [dict(zip(header, row, strict=True)) for row in rows]
    assert [(r["item_id"], r["rating"], r["note"]) for r in by_name] == [
        ("1", "3", "ok"),
        ("2", "1", ""),
    ]
    assert float(by_name[0]["cosine"]) == pytest.approx(0.5)
    assert by_name[1]["cosine"] == ""


def test_export_errors(store, tmp_path):
    with pytest.raises(MedchatError, match="'votes', 'ratings', 'statements' or 'feedback'"):
        store.export_csv("comments", tmp_path / "x.csv")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(MedchatError, match="writable path"):
        store.export_csv("votes", blocker / "votes.csv")


def test_unusable_paths_raise_medchat_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(MedchatError, match="MEDCHAT_DATA_DIR"):
        ReviewStore(blocker / "reviews.sqlite")
    with pytest.raises(MedchatError, match="is a folder"):
        ReviewStore(tmp_path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not an sqlite file at all, just some bytes" * 100)
    with pytest.raises(MedchatError, match="cannot be used"):
        ReviewStore(junk)


def test_concurrent_writes_from_eight_threads_all_land(tmp_path):
    path = tmp_path / "reviews.sqlite"
    # Two stores on one file: threads share a connection within a store, and the two
    # connections contend for SQLite's write lock like two app processes would.
    stores = [ReviewStore(path), ReviewStore(path)]
    per_thread = 25
    ids: list[int] = []
    errors: list[BaseException] = []
    ids_lock = threading.Lock()
    start = threading.Barrier(8)

    def work(t: int) -> None:
        s = stores[t % 2]
        try:
            start.wait()
            for i in range(per_thread):
                vid = vote(s, question=f"t{t} q{i}", a_is=("base", "tuned")[i % 2])
                rid = rate(s, item_id=f"{t}-{i}", reviewer=f"r{t}", rating=i % 4 + 1)
                with ids_lock:
                    ids.append(("vote", vid))
                    ids.append(("rating", rid))
        except BaseException as err:  # re-raised below in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with ReviewStore(path) as fresh:
        votes, ratings = fresh.votes(), fresh.ratings()
        assert fresh.integrity_ok()
    assert len(votes) == len(ratings) == 8 * per_thread
    assert {("vote", v["id"]) for v in votes} | {("rating", r["id"]) for r in ratings} == set(ids)
    assert {v["question"] for v in votes} == {f"t{t} q{i}" for t in range(8) for i in range(25)}
    for s in stores:
        s.close()


def test_schema_version_recorded_and_reopen_keeps_rows(tmp_path):
    path = tmp_path / "reviews.sqlite"
    with ReviewStore(path) as first:
        assert first.schema_version() == SCHEMA_VERSION == 4
        vid = vote(first)
        rid = rate(first)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    with ReviewStore(path) as again:
        assert again.schema_version() == SCHEMA_VERSION
        assert [v["id"] for v in again.votes()] == [vid]
        assert [r["id"] for r in again.ratings()] == [rid]
        assert again.integrity_ok()
        assert vote(again) == vid + 1


def test_migrates_an_empty_version_zero_file(tmp_path):
    path = tmp_path / "reviews.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE unrelated (x)")  # a version-0 file that already exists
    conn.commit()
    conn.close()
    with ReviewStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        vote(store)
        assert len(store.votes()) == 1


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "reviews.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(MedchatError, match="newer than this medchat"):
        ReviewStore(path)


def test_integrity_ok_on_a_healthy_store(store):
    vote(store)
    rate(store)
    assert store.integrity_ok() is True


def test_a_version_one_file_is_upgraded_in_place_keeping_its_rows(tmp_path):
    """A store written before schema 2 (no embedder column, no feedback table) opens, keeps
    every row, and its old ratings have no embedder (unknown), never a made-up one."""
    from medchat.reviews import _SCHEMA_V1

    path = tmp_path / "reviews.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_V1)
    conn.execute(
        "INSERT INTO ratings (created_at, updated_at, source, item_id, side, question, answer, "
        "rating, reviewer, cosine) "
        "VALUES ('t', 't', 'eval:r', '1', 'base', 'q', 'a', 3, 'ana', 0.5)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with ReviewStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        (old,) = store.ratings()
        assert (old["rating"], old["cosine"], old["embedder"]) == (3, 0.5, None)
        store.add_feedback(question="q", answer="a", liked=True, model="m", adapter="x")
        assert len(store.feedback()) == 1


def test_a_rating_names_the_embedder_of_its_cosine(store):
    rate(store, cosine=0.7, embedder="all-MiniLM-L6-v2 (sha256 53aa)", reviewer="ana")
    rate(store, cosine=None, embedder="ignored without a cosine", reviewer="bo")
    by_reviewer = {r["reviewer"]: r for r in store.ratings()}
    assert by_reviewer["ana"]["embedder"] == "all-MiniLM-L6-v2 (sha256 53aa)"
    assert by_reviewer["bo"]["embedder"] is None


def test_rating_counts_count_reviewers_not_rerates(store):
    rate(store, reviewer="ana", rating=2)
    rate(store, reviewer="ana", rating=3)  # a re-rate replaces, it does not add a reviewer
    rate(store, reviewer="bo")
    rate(store, reviewer="ana", side="base")
    assert store.rating_counts() == {
        ("eval:run-1", "7", "tuned"): 2,
        ("eval:run-1", "7", "base"): 1,
    }


def test_feedback_is_stored_and_exported(store, tmp_path):
    up = store.add_feedback(
        question="What is gout?", answer="A kind of arthritis.", liked=True,
        reviewer="anon-1", model="smollm2-135m", adapter="medquad",
    )  # fmt: skip
    down = store.add_feedback(
        question="What is gout?", answer="A virus.", liked=False, model="m", adapter="a"
    )
    assert down == up + 1
    rows = store.feedback()
    assert [(r["answer"], r["liked"], r["reviewer"]) for r in rows] == [
        ("A kind of arthritis.", True, "anon-1"),
        ("A virus.", False, ""),
    ]
    with pytest.raises(MedchatError, match="thumbs up"):
        store.add_feedback(question="q", answer="a", liked=1, model="m", adapter="a")
    out = store.export_csv("feedback", tmp_path / "fb.csv")
    with out.open(encoding="utf-8") as f:
        exported = list(csv.DictReader(f))
    assert [r["liked"] for r in exported] == ["True", "False"]


# ---- statement marks (schema 4) ----------------------------------------------------------------
MARKED = [
    {"kind": "must_have", "statement": "Gout is caused by uric acid crystals.", "mark": "covered",
     "judge": "offline", "judge_verdict": "entailed"},
    {"kind": "must_have", "statement": "Colchicine treats a flare.", "mark": "missing",
     "judge": "offline", "judge_verdict": "neither"},
    {"kind": "nice_to_have", "statement": "Alcohol can trigger a flare.", "mark": "contradicted",
     "judge": None, "judge_verdict": None},
]  # fmt: skip


def test_statement_marks_round_trip_with_their_rating(store):
    rid = rate(store, reviewer="ana", marks=MARKED)
    rate(store, reviewer="bo")  # no statements: no marks
    rows = store.statement_marks()
    assert [r["position"] for r in rows] == [0, 1, 2]
    for row, given in zip(rows, MARKED, strict=True):
        assert {k: row[k] for k in given} == given
        assert (row["rating_id"], row["reviewer"], row["source"], row["item_id"], row["side"]) == (
            rid, "ana", "eval:run-1", "7", "tuned",
        )  # fmt: skip


def test_rerating_replaces_the_marks_and_other_reviewers_keep_theirs(store):
    first = rate(store, reviewer="ana", marks=MARKED)
    rate(store, reviewer="bo", marks=MARKED[:1])
    again = rate(store, reviewer="ana", rating=2, marks=[MARKED[1] | {"mark": "covered"}])
    assert again == first
    by_reviewer = {}
    for row in store.statement_marks():
        by_reviewer.setdefault(row["reviewer"], []).append((row["statement"], row["mark"]))
    assert by_reviewer == {
        "ana": [("Colchicine treats a flare.", "covered")],
        "bo": [("Gout is caused by uric acid crystals.", "covered")],
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"mark": "partly"}, "covered, contradicted or"),
        ({"kind": "optional"}, "must_have or"),
        ({"judge_verdict": "yes"}, "judge verdict"),
        ({"statement": "  "}, "is empty"),
    ],
)
def test_a_bad_mark_is_refused_and_nothing_is_written(store, bad, message):
    with pytest.raises(MedchatError, match=message):
        rate(store, reviewer="ana", marks=[MARKED[0], MARKED[1] | bad])
    assert store.ratings() == [] and store.statement_marks() == []


def test_store_verdicts_are_the_judges_verdicts():
    from medchat.judges import UNPARSED, VERDICTS
    from medchat.reviews import JUDGE_VERDICTS

    assert (*VERDICTS, UNPARSED) == JUDGE_VERDICTS


def test_statement_marks_export_as_csv(store, tmp_path):
    rate(store, reviewer="ana", marks=MARKED)
    path = store.export_csv("statements", tmp_path / "statements.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["mark"] for r in rows] == ["covered", "missing", "contradicted"]
    assert rows[2]["judge_verdict"] == "" and rows[0]["judge"] == "offline"


def test_a_version_three_file_is_upgraded_in_place_keeping_its_rows(tmp_path):
    """A store written at schema 3 (no statement marks) opens at 4: its votes, ratings and
    thumbs are kept, its ratings have no marks, and new ratings can carry them."""
    from medchat.reviews import MIGRATIONS

    path = tmp_path / "reviews.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(3):
        MIGRATIONS[version](conn)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO ratings (created_at, updated_at, source, item_id, side, question, answer, "
        "rating, reviewer, cosine, embedder, prompt_style, sources_in_prompt, prompt_sources) "
        "VALUES ('t', 't', 'eval:r', '1', 'base', 'q', 'a', 3, 'ana', 0.5, 'e', 'legacy', 0, '[]')"
    )
    conn.execute(
        "INSERT INTO votes (created_at, question, answer_a, answer_b, a_is, vote, winner, params, "
        "model, adapter) VALUES ('t', 'q', 'a', 'b', 'base', 'A', 'base', '{}', 'm', 'x')"
    )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "ratings" in tables and "statement_marks" not in tables
    conn.close()
    with ReviewStore(path) as store:
        assert store.schema_version() == 4
        (old,) = store.ratings()
        assert (old["rating"], old["embedder"], old["prompt_style"]) == (3, "e", "legacy")
        assert len(store.votes()) == 1 and store.statement_marks() == []
        rid = store.add_rating(
            source="eval:r", item_id="1", side="base", question="q", answer="a", rating=4,
            reviewer="ana", marks=MARKED,
        )  # fmt: skip
        assert rid == old["id"]  # the same reviewer's rating of the same answer, replaced
        assert [m["mark"] for m in store.statement_marks()] == [
            "covered",
            "missing",
            "contradicted",
        ]
        assert store.integrity_ok()
