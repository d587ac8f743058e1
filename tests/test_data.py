"""Q&A data: loading several formats and column names, the shipped MedQuAD copy and its
identity, cleaning, the leak-free split and its round trip through split.json, the validation
sample and GARD's HPO boilerplate. The MedQuAD tests read the shipped file (a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medchat.data import (
    DEFAULT_DATA,
    clean_text,
    cut_hpo_boilerplate,
    file_sha256,
    handle_hpo_boilerplate,
    has_hpo_boilerplate,
    load_pairs,
    normalize_answer,
    normalize_question,
    read_split,
    sample_across,
    select_split,
    shipped_data_for,
    shorten_answer,
    split_by_group,
    template_answers,
    write_split,
)
from medchat.errors import MedchatError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_ADAPTER = REPO / "assets" / "adapters" / "smollm2-135m-medquad"
# The CSV the shipped parquet was converted from (present beside some checkouts only).
SHARED_CSV = REPO.parent / "shared" / "data" / "medquad" / "medquad.csv"
LAVITA_NAMES = {
    "qtype": "question_type",
    "focus": "question_focus",
    "source": "document_source",
    "url": "document_url",
    "qid": "question_id",
}


@pytest.fixture(scope="module")
def medquad_loaded():
    """(rows, LoadReport) of the shipped MedQuAD copy, read once for this module."""
    return load_pairs(DEFAULT_DATA)


@pytest.fixture(scope="module")
def medquad(medquad_loaded) -> pd.DataFrame:
    return medquad_loaded[0]


@pytest.fixture(scope="module")
def medquad_split(medquad) -> dict[str, pd.DataFrame]:
    return split_by_group(medquad, seed=0)


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


def test_medquad_split_has_no_leaks(medquad, medquad_split):
    splits = medquad_split
    test, validation, train = splits["test"], splits["validation"], splits["train"]
    assert 0.08 < len(test) / len(medquad) < 0.12
    assert 0.03 < len(validation) / len(medquad) < 0.07
    train_questions = set(train["question"].map(normalize_question))
    train_answers = set(train["answer"].map(normalize_answer))
    for held_out in (test, validation):
        assert not set(held_out["question"].map(normalize_question)) & train_questions
        # GHR and GARD repeat answers word for word under other questions ("Noonan syndrome 2"
        # and "... 4"); a split by question and document alone put 73 such test rows (seed 0)
        # beside their answer in train.
        assert held_out["answer"].map(normalize_answer).isin(train_answers).sum() == 0
    # A document spans two sides only through a template answer (one found in many documents,
    # such as GHR's inheritance paragraphs): its other rows all sit on one side.
    templates = template_answers(medquad)
    assert len(templates) >= 3
    specific = {}
    for name, frame in splits.items():
        keep = ~frame["answer"].map(normalize_answer).isin(templates) & frame["document_id"].notna()
        specific[name] = set(frame.loc[keep, "document_id"])
    assert not specific["test"] & specific["train"]
    assert not specific["validation"] & specific["train"]
    assert not specific["test"] & specific["validation"]


def test_medquad_validation_sample_covers_the_sources(medquad_split):
    validation = medquad_split["validation"]
    sources = set(validation["source"])
    assert len(sources) == 9
    # The first 200 validation rows in file order come from two sources.
    assert validation.head(200)["source"].nunique() <= 3
    sample = sample_across(validation, 200, seed=0)
    assert len(sample) == 200 and sample["key"].is_unique
    assert set(sample["source"]) == sources
    shares = sample["source"].value_counts() / 200
    expected = validation["source"].value_counts() / len(validation)
    assert (shares - expected).abs().max() < 0.02  # in proportion to each source's rows
    assert sample_across(validation, 200, seed=0)["key"].tolist() == sample["key"].tolist()
    assert set(sample_across(validation, 200, seed=1)["key"]) != set(sample["key"])
    # Without a source column: a seeded shuffle.
    plain = sample_across(validation.drop(columns="source"), 50, seed=0)
    assert len(plain) == 50 and set(plain["key"]) <= set(validation["key"])
    assert plain["key"].tolist() != validation["key"].head(50).tolist()


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


# -- the shipped MedQuAD copy and data identity ----------------------------------------------------
def test_shipped_medquad_loads_with_its_identity(medquad_loaded):
    df, report = medquad_loaded
    assert DEFAULT_DATA.relative_to(REPO).as_posix() == "assets/data/medquad.parquet"
    assert DEFAULT_DATA.stat().st_size < 8_000_000  # compressed: a few MB
    assert report.rows_read == 16407 and report.rows_kept == len(df) == 16359
    assert report.sha256 == file_sha256(DEFAULT_DATA) and report.hub_id is None
    assert {"qtype", "focus", "source", "url", "document_id", "qid"} <= set(df.columns)
    assert df["source"].nunique() == 9
    assert report.as_dict()["sha256"] == report.sha256  # what the records store


def test_shipped_data_is_found_by_its_sha256_or_its_csvs(medquad):
    record = json.loads((SHIPPED_ADAPTER / "medchat_training.json").read_text())
    assert shipped_data_for(file_sha256(DEFAULT_DATA)) == DEFAULT_DATA
    # The shipped adapter was trained on the CSV this file was converted from.
    assert shipped_data_for(record["data_sha256"]) == DEFAULT_DATA
    assert shipped_data_for("0" * 64) is None and shipped_data_for(None) is None
    if SHARED_CSV.is_file():  # where the CSV is at hand: the same rows, in the same order
        assert file_sha256(SHARED_CSV) == record["data_sha256"]
        csv_rows = load_pairs(SHARED_CSV)[0]
        pd.testing.assert_frame_equal(csv_rows, medquad, check_dtype=False)


def test_a_recorded_path_from_another_machine_resolves_to_the_shipped_copy(tmp_path):
    from medchat.evaluation import EvalConfig, resolve_data

    record = json.loads((SHIPPED_ADAPTER / "medchat_training.json").read_text())
    assert not Path(record["data_file"]).is_absolute()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    gone = str(tmp_path / "elsewhere" / "medquad.csv")
    (adapter / "medchat_training.json").write_text(
        json.dumps({"data_file": gone, "data_sha256": record["data_sha256"]})
    )
    config = EvalConfig(adapter=str(adapter))
    assert resolve_data(config, str(adapter)) == str(DEFAULT_DATA)
    # Another sha256: the recorded path comes back, and loading it fails with a clear error.
    (adapter / "medchat_training.json").write_text(
        json.dumps({"data_file": gone, "data_sha256": "0" * 64})
    )
    assert resolve_data(config, str(adapter)) == gone
    # The shipped adapter's own record resolves (to the CSV where it exists, else the copy).
    found = resolve_data(EvalConfig(adapter=str(SHIPPED_ADAPTER)), str(SHIPPED_ADAPTER))
    assert found in (str(DEFAULT_DATA), str(SHARED_CSV.resolve()))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_hub_column_names_are_mapped(tmp_path, medquad, suffix):
    rows = medquad.head(40).drop(columns="key")
    lavita = rows.rename(columns=LAVITA_NAMES)
    assert "question_type" in lavita.columns and "qtype" not in lavita.columns
    df, report = load_pairs(_write(lavita, tmp_path / f"lavita{suffix}"))
    for name in LAVITA_NAMES:
        assert df[name].tolist() == rows[name].tolist(), name
    assert not set(LAVITA_NAMES.values()) & set(df.columns)
    assert df["key"].tolist() == medquad.head(40)["key"].tolist()
    # A name that is already taken is left alone: both columns stay.
    both = rows.assign(question_type="other")
    df, _ = load_pairs(_write(both, tmp_path / f"both{suffix}"))
    assert df["qtype"].tolist() == rows["qtype"].tolist()
    assert set(df["question_type"]) == {"other"}


# -- GARD's Human Phenotype Ontology boilerplate ---------------------------------------------------
def test_cut_hpo_boilerplate_keeps_the_prose_and_the_signs(medquad):
    marked = medquad[medquad["answer"].map(has_hpo_boilerplate)]
    assert len(marked) == 2243 and set(marked["source"]) == {"GARD"}
    answer = marked.loc[marked["focus"] == "ABCD syndrome", "answer"].iloc[0]
    cut = cut_hpo_boilerplate(answer)
    assert cut.splitlines()[:4] == [
        "What are the signs and symptoms of ABCD syndrome?",
        "Signs and symptoms of ABCD syndrome can include:",
        "- Abnormal auditory evoked potentials",
        "- Aganglionic megacolon",
    ]
    assert "Human Phenotype Ontology" not in cut and "Orphanet" not in cut
    assert len(cut.split()) < len(answer.split()) / 3
    # Prose before the table is kept, and frequencies ("90%") leave the list.
    prose = marked[marked["focus"] == "Abetalipoproteinemia"]["answer"].iloc[0]
    cut = cut_hpo_boilerplate(prose)
    assert cut.startswith(prose[: prose.index("The Human Phenotype Ontology")].strip())
    assert "- Malabsorption" in cut.splitlines() and "%" not in cut
    assert cut_hpo_boilerplate("Gout is a kind of arthritis.") == "Gout is a kind of arthritis."


def test_an_answer_with_nothing_but_the_boilerplate_is_dropped(medquad):
    answer = medquad.loc[medquad["focus"] == "ABCD syndrome"].pipe(
        lambda f: f.loc[f["answer"].map(has_hpo_boilerplate), "answer"].iloc[0]
    )
    start = answer.index("Abnormal auditory evoked potentials")
    end = answer.index("The Human Phenotype Ontology (HPO)")
    empty_table = answer[:start] + answer[end:]
    assert has_hpo_boilerplate(empty_table) and cut_hpo_boilerplate(empty_table) == ""
    frame = pd.DataFrame({"question": ["a?", "b?"], "answer": [empty_table, answer]})
    kept, stats = handle_hpo_boilerplate(frame, "cut")
    assert stats == {"rows": 2, "cut": 1, "dropped": 1} and kept["question"].tolist() == ["b?"]


def test_hpo_modes_on_medquad(medquad):
    cut, stats = handle_hpo_boilerplate(medquad, "cut")
    assert stats == {"rows": 2243, "cut": 2243, "dropped": 0} and len(cut) == len(medquad)
    assert not cut["answer"].str.contains("The Human Phenotype Ontology").any()
    assert cut["key"].tolist() == medquad["key"].tolist()  # keys stay those of the data
    dropped, stats = handle_hpo_boilerplate(medquad, "drop")
    assert stats["dropped"] == 2243 and len(dropped) == len(medquad) - 2243
    kept, stats = handle_hpo_boilerplate(medquad, "keep")
    assert kept is medquad and stats["cut"] == stats["dropped"] == 0
    with pytest.raises(MedchatError, match="hpo_boilerplate 'trim' is unknown"):
        handle_hpo_boilerplate(medquad, "trim")
