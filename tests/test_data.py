"""Q&A data: loading several formats and column names, cleaning, the leak-free split and its
round trip through split.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medchat.data import (
    clean_text,
    load_pairs,
    normalize_question,
    read_split,
    select_split,
    shorten_answer,
    split_by_group,
    write_split,
)
from medchat.errors import MedchatError

MEDQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "medquad" / "medquad.csv"

ROWS = [
    {"Question": "What is glaucoma ?", "Answer": "An eye disease.  It damages   the optic nerve."},
    {"Question": "  What is glaucoma ?", "Answer": "An eye disease. It damages the optic nerve.  "},
    {"Question": "What causes asthma?", "Answer": ""},
    {"Question": "", "Answer": "An orphan answer."},
    {"Question": "Is flu contagious?", "Answer": "Yes, it spreads by droplets."},
    {"Question": "What is a cataract?", "Answer": "A clouding of the lens."},
]


def _write(frame: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".json":
        frame.to_json(path, orient="records")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    return path


# -- loading ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_load_formats_clean_and_count(tmp_path, suffix):
    frame = pd.DataFrame(ROWS).assign(focus="eyes")
    df, report = load_pairs(str(_write(frame, tmp_path / f"qa{suffix}")))
    # Two rows with an empty side go; the second glaucoma row is the first one after cleaning.
    assert (report.rows_read, report.empty_dropped, report.duplicates_dropped) == (6, 2, 1)
    assert report.rows_kept == len(df) == 3
    assert str(report) == "6 rows read, 2 empty and 1 duplicate pairs dropped, 3 kept"
    assert df["question"].tolist() == [
        "What is glaucoma ?",
        "Is flu contagious?",
        "What is a cataract?",
    ]
    assert df.loc[0, "answer"] == "An eye disease. It damages the optic nerve."
    assert "focus" in df.columns  # extra columns are kept
    assert df["key"].is_unique and df["key"].str.len().eq(16).all()


def test_keys_are_the_same_in_every_format(tmp_path):
    frame = pd.DataFrame(ROWS)
    keys = [
        load_pairs(str(_write(frame, tmp_path / f"qa{s}")))[0]["key"].tolist()
        for s in (".csv", ".jsonl", ".parquet")
    ]
    assert keys[0] == keys[1] == keys[2]


def test_lower_case_and_alias_column_names(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps({"input": "What is gout?", "output": "A kind of arthritis."})
        + "\n"
        + json.dumps({"input": "What is acne?", "output": "A skin condition."})
        + "\n"
    )
    df, report = load_pairs(str(path))
    assert df[["question", "answer"]].values.tolist() == [
        ["What is gout?", "A kind of arthritis."],
        ["What is acne?", "A skin condition."],
    ]
    assert report.rows_kept == 2


def test_column_flags(tmp_path):
    frame = pd.DataFrame({"asked": ["What is gout?"], "reply": ["A kind of arthritis."]})
    path = _write(frame, tmp_path / "qa.csv")
    df, _ = load_pairs(str(path), question_column="asked", answer_column="reply")
    assert df[["question", "answer"]].values.tolist() == [["What is gout?", "A kind of arthritis."]]


def test_column_flags_beside_a_column_named_question(tmp_path):
    frame = pd.DataFrame(
        {"asked": ["What is gout?"], "reply": ["A kind of arthritis."], "question": ["decoy"]}
    )
    path = _write(frame, tmp_path / "qa.csv")
    df, _ = load_pairs(str(path), question_column="asked", answer_column="reply")
    assert df[["question", "answer"]].values.tolist() == [["What is gout?", "A kind of arthritis."]]


def test_missing_columns(tmp_path):
    path = _write(pd.DataFrame({"title": ["x"], "body": ["y"]}), tmp_path / "qa.csv")
    with pytest.raises(MedchatError, match=r"no question column.*title, body.*--question_column"):
        load_pairs(str(path))
    with pytest.raises(MedchatError, match=r"Column 'asked' is not in the data"):
        load_pairs(str(path), question_column="asked", answer_column="body")


def test_missing_file(tmp_path):
    with pytest.raises(MedchatError, match="does not exist"):
        load_pairs(str(tmp_path / "nope.csv"))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(MedchatError, match="is empty"):
        load_pairs(str(path))
    header_only = tmp_path / "header.csv"
    header_only.write_text("question,answer\n")
    with pytest.raises(MedchatError, match="has no rows"):
        load_pairs(str(header_only))


def test_only_empty_pairs(tmp_path):
    path = _write(
        pd.DataFrame({"question": ["  ", "Why?"], "answer": ["x", None]}), tmp_path / "a.csv"
    )
    with pytest.raises(MedchatError, match="no non-empty"):
        load_pairs(str(path))


def test_unreadable_and_unknown_files(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(MedchatError, match="Could not read"):
        load_pairs(str(bad))
    other = tmp_path / "notes.txt"
    other.write_text("question,answer\n")
    with pytest.raises(MedchatError, match="unknown type"):
        load_pairs(str(other))
    with pytest.raises(MedchatError, match="is a folder"):
        load_pairs(str(tmp_path))


def test_clean_text_and_normalize_question():
    assert clean_text("Symptoms include:    - pain    - redness  \r\n\r\n  see a   doctor") == (
        "Symptoms include:\n- pain\n- redness\nsee a doctor"
    )
    assert clean_text(None) == "" and clean_text(float("nan")) == ""
    assert normalize_question("What is (are) Glaucoma ?") == "what is glaucoma"
    assert normalize_question("what is glaucoma") == normalize_question("What is  GLAUCOMA?!")


# -- splitting ------------------------------------------------------------------------------------
def _grouped_frame(n_docs: int = 60) -> pd.DataFrame:
    """Documents with several questions each, plus the same question asked in other documents."""
    rows = []
    for d in range(n_docs):
        for kind in ("What is", "What causes", "How to treat"):
            rows.append(
                {"question": f"{kind} condition {d}?", "answer": f"{kind} answer {d}.", "doc": d}
            )
        # The same question, worded slightly differently, answered by another document.
        rows.append(
            {"question": f"what is (are) condition {d}", "answer": f"Other {d}.", "doc": d + 1000}
        )
    frame = pd.DataFrame(rows).rename(columns={"doc": "document_id"})
    frame["key"] = [f"k{i}" for i in range(len(frame))]
    return frame


def _sides_of(splits: dict[str, pd.DataFrame], column) -> dict:
    seen: dict = {}
    for side, frame in splits.items():
        for value in column(frame):
            seen.setdefault(value, set()).add(side)
    return seen


def test_split_keeps_groups_on_one_side():
    df = _grouped_frame()
    splits = split_by_group(df, seed=0, validation_fraction=0.1, test_fraction=0.2)
    assert sum(len(s) for s in splits.values()) == len(df)
    keys = pd.concat([s["key"] for s in splits.values()])
    assert keys.is_unique and set(keys) == set(df["key"])
    for name in ("test", "validation", "train"):
        assert len(splits[name]) > 0
    assert len(splits["test"]) == pytest.approx(0.2 * len(df), abs=8)
    questions = _sides_of(splits, lambda f: f["question"].map(normalize_question))
    documents = _sides_of(splits, lambda f: f["document_id"])
    assert all(len(sides) == 1 for sides in questions.values())
    assert all(len(sides) == 1 for sides in documents.values())


def test_split_without_document_id_groups_by_question():
    df = _grouped_frame().drop(columns="document_id")
    splits = split_by_group(df, seed=3)
    questions = _sides_of(splits, lambda f: f["question"].map(normalize_question))
    assert all(len(sides) == 1 for sides in questions.values())
    # "What is condition 7?" and "what is (are) condition 7" are one group.
    assert normalize_question("What is condition 7?") == normalize_question(
        "what is (are) condition 7"
    )


def test_split_is_seeded():
    df = _grouped_frame()
    first = split_by_group(df, seed=1)
    again = split_by_group(df, seed=1)
    other = split_by_group(df, seed=2)
    for name in first:
        assert first[name]["key"].tolist() == again[name]["key"].tolist()
    assert set(first["test"]["key"]) != set(other["test"]["key"])


def test_split_that_leaves_a_side_empty():
    one_document = pd.DataFrame(
        {
            "question": ["What is gout?", "What causes gout?", "How is gout treated?"],
            "answer": ["A", "B", "C"],
            "document_id": ["d1", "d1", "d1"],
            "key": ["a", "b", "c"],
        }
    )
    with pytest.raises(MedchatError, match="leaves .*train.* empty"):
        split_by_group(one_document, seed=0)
    with pytest.raises(MedchatError, match="add up to 1"):
        split_by_group(_grouped_frame(), validation_fraction=0.5, test_fraction=0.5)


@pytest.mark.skipif(not MEDQUAD.is_file(), reason="the shared MedQuAD CSV is not present")
def test_medquad_split_has_no_leaks():
    df, report = load_pairs(str(MEDQUAD))
    assert report.rows_read == 16407 and report.rows_kept > 16000
    splits = split_by_group(df, seed=0)
    test, train = splits["test"], splits["train"]
    assert not set(test["document_id"]) & set(train["document_id"])
    assert not set(test["question"].map(normalize_question)) & set(
        train["question"].map(normalize_question)
    )
    assert 0.08 < len(test) / len(df) < 0.12


# -- split.json ---------------------------------------------------------------------------------
def test_write_read_select_round_trip(tmp_path):
    df = _grouped_frame()
    splits = split_by_group(df, seed=0)
    write_split(tmp_path / "split.json", splits, source="qa.csv", seed=0)
    split = read_split(tmp_path)  # the folder that holds split.json
    assert split["source"] == "qa.csv" and split["seed"] == 0
    assert split["sizes"] == {name: len(frame) for name, frame in splits.items()}
    shuffled = df.sample(frac=1.0, random_state=9)
    for name in ("test", "validation"):
        rows = select_split(shuffled, split, name)
        assert set(rows["key"]) == set(splits[name]["key"])
        assert len(rows) == len(splits[name])


def test_split_file_errors(tmp_path):
    with pytest.raises(MedchatError, match="No split.json"):
        read_split(tmp_path)
    split = {"test": ["zzz"], "validation": []}
    with pytest.raises(MedchatError, match="None of the 1 test rows"):
        select_split(_grouped_frame(), split, "test")
    with pytest.raises(MedchatError, match="no 'train' side"):
        select_split(_grouped_frame(), split, "train")


# -- answers for training --------------------------------------------------------------------------
def test_shorten_answer_ends_at_a_sentence():
    answer = (
        "Glaucoma damages the optic nerve. It often has no early symptoms at all. "
        "Treatment lowers the pressure inside the eye with drops, laser or surgery."
    )
    short = shorten_answer(answer, 15)
    assert short == "Glaucoma damages the optic nerve. It often has no early symptoms at all."
    assert len(short.split()) <= 15
    assert shorten_answer(answer, 200) == answer
    assert shorten_answer(answer, 0) == answer


def test_shorten_answer_without_a_late_sentence_end():
    answer = "Short. " + " ".join(f"word{i}" for i in range(40))
    short = shorten_answer(answer, 10)
    assert short.endswith(".") and len(short.split()) == 10
    assert short.startswith("Short. word0")
