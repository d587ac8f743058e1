"""Consumer-style training questions (train/consumer_style.py) and RAFT with the topic library.

The rewrites are pure functions of a seed; the topic RAFT builder searches the app's Library
cut to the training split, so no held-out passage and no "not covered" pointer reaches a
training prompt.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from medchat.data import DEFAULT_DATA, load_pairs, shorten_answer, split_by_group
from medchat.errors import MedchatError
from train.consumer_style import (
    KINDS,
    MIN_MISSPELT_LETTERS,
    misspell,
    misspell_word,
    rephrase,
    rewrite,
    rewrite_share,
)


@pytest.fixture(scope="module")
def medquad_train():
    df, _ = load_pairs(DEFAULT_DATA)
    return df, split_by_group(df, seed=0)


@pytest.fixture(scope="module")
def sample(medquad_train):
    """200 training questions with a focus name."""
    _, splits = medquad_train
    return splits["train"].dropna(subset=["focus"]).sample(200, random_state=0)


# -- the rewrites ------------------------------------------------------------------------------
def test_rewrites_are_deterministic_per_seed(sample):
    questions, foci = list(sample["question"]), list(sample["focus"])
    first, counts = rewrite_share(questions, foci, 0.4, seed=3)
    again, counts_again = rewrite_share(questions, foci, 0.4, seed=3)
    other, _ = rewrite_share(questions, foci, 0.4, seed=4)
    assert first == again and counts == counts_again
    assert other != first
    assert rewrite("What causes Gout ?", "Gout", seed=7) == rewrite(
        "What causes Gout ?", "Gout", seed=7
    )


def test_rewrites_change_the_share_asked_for(sample):
    questions, foci = list(sample["question"]), list(sample["focus"])
    out, counts = rewrite_share(questions, foci, 0.4, seed=0)
    changed = sum(a != b for a, b in zip(questions, out, strict=True))
    assert counts["rows"] == 200 and counts["rewritten"] == changed
    assert 76 <= changed <= 80  # round(0.4 * 200) chosen; nearly all of them change
    assert all(counts["kinds"][k] > 5 for k in KINDS)  # every kind is used
    assert rewrite_share(questions, foci, 0.0, seed=0) == (
        questions,
        {"rows": 200, "rewritten": 0, "kinds": dict.fromkeys(KINDS, 0)},
    )
    everything, counts = rewrite_share(questions, foci, 1.0, seed=0)
    assert counts["rewritten"] >= 195
    with pytest.raises(MedchatError, match="consumer_style_fraction"):
        rewrite_share(questions, foci, 1.5, seed=0)


def test_each_kind_of_rewrite():
    rng = random.Random(0)
    for _ in range(20):
        asked = rephrase("What is (are) Glaucoma ?", rng)
        assert "Glaucoma" in asked and "(are)" not in asked
    treatments = {rephrase("What are the treatments for Gout ?", rng) for _ in range(40)}
    assert "how do you treat Gout?" in treatments and "is there a cure for Gout?" in treatments
    assert rephrase("Who is at risk for Skin Cancer? ?", rng).count("?") == 1
    assert rephrase("Why is the sky blue?", rng) is None  # not a MedQuAD template
    # Misspelt: a letter dropped, doubled or swapped, never in a short word.
    assert misspell_word("gout", rng) == "gout"
    for word in ("glaucoma", "asthma", "arthritis", "aaaaa"):
        for _ in range(20):
            wrong = misspell_word(word, rng)
            assert wrong != word and abs(len(wrong) - len(word)) <= 1
            assert wrong[0] == word[0]
    text = "Is gout a risk for my hip and knee?"  # no word of 5 letters or more
    assert misspell(text, rng, count=2) == text
    text = "My mother was told she has glaucoma and an eye ulcer"
    for _ in range(20):
        wrong = misspell(text, rng, count=2).split()
        changed = [w for w, v in zip(text.split(), wrong, strict=True) if w != v]
        assert 1 <= len(changed) <= 2 and all(len(w) >= MIN_MISSPELT_LETTERS for w in changed)
    # Each kind shows in some rewrite.
    seen = [rewrite("What are the symptoms of Gout ?", "Gout", seed=s) for s in range(60)]
    assert all(r.kinds for r in seen)
    assert any(r.question[0].islower() for r in seen if "casual" in r.kinds)
    assert any(not r.question.endswith("?") for r in seen if "casual" in r.kinds)
    assert any(re.search(r"\b(I|My|my|i)\b", r.question) for r in seen if "story" in r.kinds)


def test_rewritten_questions_still_name_their_focus(sample):
    """The topic table (what the library recognises first) names the document's focus in most
    rewritten questions (measured: 0.945 of 200, misspelt and "it" after a story included)."""
    from medchat.retrieval import same_topic
    from medchat.retrieval.topics import Topics

    topics = Topics.load()
    named = 0
    for i, (question, focus) in enumerate(zip(sample["question"], sample["focus"], strict=True)):
        asked = rewrite(question, focus, seed=i).question
        named += any(
            same_topic(m.name, focus) or any(same_topic(d.focus, focus) for d in m.documents)
            for m in topics.find(asked)
        )
    assert named / len(sample) >= 0.9


@pytest.mark.slow
def test_topic_library_finds_the_focus_of_most_rewritten_questions(medquad_train, sample):
    """Searched as the app searches (the topic Library, training split only), a passage on the
    document's topic is among the first three for most rewritten questions (measured: 0.84 of
    200; 1.0 for the same questions as MedQuAD asks them)."""
    from medchat.retrieval import load_index, same_topic

    _, splits = medquad_train
    library = load_index(DEFAULT_DATA, method="topic").restricted(set(splits["train"]["key"]))
    found = 0
    for i, (question, focus) in enumerate(zip(sample["question"], sample["focus"], strict=True)):
        hits = library.search(rewrite(question, focus, seed=i).question, k=3)
        found += any(h.covered and same_topic(h.passage.title, focus) for h in hits)
    assert found / len(sample) >= 0.78


def test_training_rows_keep_medquad_answers(medquad_train):
    """A rewritten question changes the prompt only: every completion is the MedQuAD answer."""
    from medchat.profiles import resolve_profile
    from train.sft import ScriptArguments, build_datasets

    args = ScriptArguments(
        consumer_style_fraction=0.5,
        hpo_boilerplate="keep",
        max_train_samples=40,
        max_eval_samples=0,
        max_answer_words=60,
    )
    hpo: dict = {}
    train_ds, _, splits, _ = build_datasets(args, resolve_profile("smollm2-135m"), hpo)
    frame = splits["train"].sample(n=40, random_state=0)
    answers = sorted(shorten_answer(a, 60).strip() for a in frame["answer"])
    assert sorted(row["completion"][0]["content"] for row in train_ds) == answers
    asked = {row["prompt"][-1]["content"] for row in train_ds}
    as_medquad = asked & set(frame["question"])
    assert 18 <= len(as_medquad) <= 22  # half rewritten
    assert hpo["consumer_style"]["rows"] == 40 and hpo["consumer_style"]["rewritten"] >= 18
    with pytest.raises(MedchatError, match="consumer_style_fraction"):
        build_datasets(ScriptArguments(consumer_style_fraction=-0.1), None)


# -- RAFT with the topic library ---------------------------------------------------------------
@pytest.mark.slow  # a topic library over the training split (a minute): CI runs it
def test_topic_raft_prompts_hold_training_passages_only_and_no_pointers(medquad_train):
    from medchat.retrieval import citations
    from train.sft import RaftBuilder, ScriptArguments

    _, splits = medquad_train
    train = splits["train"]
    builder = RaftBuilder(
        ScriptArguments(retrieval=True, retrieval_method="topic", raft_gold_fraction=0.5), train
    )
    assert builder.index.method == "topic"
    training = set(train["key"])
    assert {p.key for p in builder.index.passages} == training
    # Questions on drugs the library names but holds no text for: the library answers them
    # with "not covered" pointers, which must stay out of the prompt.
    drug_questions = [
        "Can I take ibuprofen with lisinopril?",
        "What is the dose of metformin for an adult?",
        "Is it safe to take tylenol with warfarin?",
    ]
    assert any(not h.covered for q in drug_questions for h in builder.index.search(q, k=7))
    rows = list(train.sample(20, random_state=1).itertuples())
    asked = [(q, rows[i].key, rows[i].answer) for i, q in enumerate(drug_questions)]
    asked += [(r.question, r.key, r.answer) for r in rows]
    asked += [(rewrite(r.question, r.focus, seed=i).question, r.key, r.answer) for i, r in
              enumerate(rows)]  # fmt: skip
    gold = 0
    for i, (question, key, answer) in enumerate(asked):
        hits, trained = builder.example(question, key, answer, seed=i)
        # A pointer's passage is keyed "page:<source>:<id>", never a training row's key.
        assert all(h.covered for h in hits)
        assert all(h.passage.key in training for h in hits)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1)) and len(hits) <= 3
        if key in [h.passage.key for h in hits]:
            gold += 1
            assert citations(trained) == [[h.passage.key for h in hits].index(key) + 1]
    assert gold


# -- real patient questions beside MedQuAD (extra_train_file) ----------------------------------
def test_extra_rows_are_trained_on_as_given_and_never_split(tmp_path):
    from medchat.profiles import resolve_profile
    from train.sft import ScriptArguments, build_datasets

    extra = tmp_path / "patients.jsonl"
    patients = [
        {"id": "p1", "question": "can i take ibuprofen with my bp pills", "answer": "Ask first."},
        {"id": "p2", "question": "Is a rash after amoxicillin an allergy?", "answer": "Maybe."},
    ]
    extra.write_text("".join(json.dumps(p) + "\n" for p in patients), encoding="utf-8")
    args = ScriptArguments(
        hpo_boilerplate="keep",
        max_train_samples=10,
        max_eval_samples=0,
        extra_train_file=str(extra),
        extra_train_copies=2,
    )
    hpo: dict = {}
    train_ds, _, splits, _ = build_datasets(args, resolve_profile("smollm2-135m"), hpo)
    asked = [row["prompt"][-1]["content"] for row in train_ds]
    completions = [row["completion"][0]["content"] for row in train_ds]
    assert len(asked) == 10 + 2 * 2
    for p in patients:
        assert asked.count(p["question"]) == 2
        assert completions.count(p["answer"]) == 2
        for part in ("validation", "test"):
            assert p["question"] not in set(splits[part]["question"])
    assert hpo["extra_train"]["rows"] == 2 and hpo["extra_train"]["copies"] == 2
    assert len(hpo["extra_train"]["sha256"]) == 64
    with pytest.raises(MedchatError, match="without sources"):
        build_datasets(ScriptArguments(extra_train_file=str(extra), retrieval=True), None)
    with pytest.raises(MedchatError, match="extra_train_copies"):
        build_datasets(ScriptArguments(extra_train_file=str(extra), extra_train_copies=0), None)


def test_the_kqa_recipes_train_on_the_tuning_half_only(tmp_path):
    """Every recipe's extra rows are the answered questions of the consumer set's tuning half,
    written by the command its comment names: none of the report half is trained on."""
    import yaml

    from eval import consumer_set

    recipes = Path(__file__).resolve().parents[1] / "train/recipes"
    with_extra = [
        path
        for path in sorted(recipes.glob("*.yaml"))
        if "extra_train_file" in yaml.safe_load(path.read_text(encoding="utf-8"))
    ]
    assert {p.name for p in with_extra} >= {"smollm2-135m-kqa.yaml", "smollm2-135m-kqa-mix.yaml"}
    for path in with_extra:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert recipe["extra_train_file"] == "runs/kqa-tune-answered.jsonl", path.name
        text = path.read_text(encoding="utf-8")
        assert "python -m eval.consumer_set answered --half tune" in text, path.name
        assert "retrieval" not in recipe, path.name
    out = tmp_path / "tune.jsonl"
    assert consumer_set.main(["answered", "--half", "tune", "--out", str(out)]) == 0
    trained = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    halves = {r["id"]: r["half"] for r in consumer_set.questions()}
    assert len(trained) == 101
    assert {halves[r["id"]] for r in trained} == {"tune"}
