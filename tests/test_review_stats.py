"""Study statistics and the dataset export, checked against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
from sklearn.metrics import cohen_kappa_score

from medchat.errors import MedchatError
from medchat.review_stats import (
    export,
    run_embedders,
    summarize,
    summarize_store,
    weighted_kappa,
)
from medchat.reviews import RATING_COLUMNS, ReviewStore


def rating(item: str, side: str, value: int, reviewer: str = "", **extra) -> dict:
    return (
        {"source": "eval:run", "item_id": item, "side": side, "rating": value}
        | {
            "reviewer": reviewer,
            "question": f"q{item}",
            "answer": f"{side} answer {item}",
            "cosine": None,
        }
        | extra
    )


def vote(winner: str, reviewer: str = "") -> dict:
    return {"winner": winner, "reviewer": reviewer, "a_is": "base", "vote": "A"}


def two_reviewers(a: list[int], b: list[int]) -> list[dict]:
    rows = [rating(str(i), "tuned", x, "ann") for i, x in enumerate(a)]
    return rows + [rating(str(i), "tuned", y, "bob") for i, y in enumerate(b)]


# ---- ratings ---------------------------------------------------------------------------------


def test_mean_and_trec_avg_score_per_side():
    rows = [rating("1", "base", 1), rating("2", "base", 2), rating("3", "base", 4)]
    rows += [rating("1", "tuned", 3), rating("2", "tuned", 4)]
    out = summarize(rows, [], n_boot=500)["ratings"]
    assert out["n"] == 5
    assert out["base"]["mean"]["value"] == pytest.approx(7 / 3)
    assert out["base"]["avg_score"]["value"] == pytest.approx(4 / 3)  # (0 + 1 + 3) / 3
    assert out["tuned"]["avg_score"]["value"] == pytest.approx(2.5)
    assert out["base"]["mean"]["n"] == 3 and out["tuned"]["mean"]["n"] == 2
    low, high = out["base"]["mean"]["ci_low"], out["base"]["mean"]["ci_high"]
    # avgScore is the rating minus 1, interval included.
    assert out["base"]["avg_score"]["ci_low"] == pytest.approx(low - 1)
    assert 1 <= low <= 7 / 3 <= high <= 4 and low < high


def test_bootstrap_is_seeded_and_contains_the_mean():
    rows = [rating(str(i), "tuned", 1 + (i * 7) % 4) for i in range(30)]
    first = summarize(rows, [], seed=3)["ratings"]["tuned"]["mean"]
    again = summarize(rows, [], seed=3)["ratings"]["tuned"]["mean"]
    other = summarize(rows, [], seed=4)["ratings"]["tuned"]["mean"]
    assert first == again
    assert (first["ci_low"], first["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert first["ci_low"] < first["value"] < first["ci_high"]


def test_bootstrap_resamples_answers_not_single_ratings():
    # Two answers, each rated by two reviewers who agree: any resample of answers has a mean
    # of 1, 2.5 or 4, so the interval ends there; resampling single ratings could not tell.
    rows = two_reviewers([1, 4], [1, 4])
    mean = summarize(rows, [], n_boot=2000)["ratings"]["tuned"]["mean"]
    assert mean["n"] == 4 and mean["answers"] == 2
    assert (mean["ci_low"], mean["ci_high"]) == (1.0, 4.0)


def test_empty_side_and_single_answer_give_reasons():
    out = summarize([rating("1", "tuned", 3)], [])["ratings"]
    assert out["base"]["mean"]["value"] is None and out["base"]["mean"]["n"] == 0
    assert "no ratings" in out["base"]["mean"]["reason"]
    assert out["tuned"]["mean"]["value"] == 3 and out["tuned"]["mean"]["ci_low"] is None
    assert "at least 2 answers" in out["tuned"]["mean"]["reason"]


# ---- votes -----------------------------------------------------------------------------------


def test_win_rate_leaves_ties_and_both_bad_out():
    votes = [vote("tuned")] * 3 + [vote("base")] + [vote("tie")] * 2 + [vote("both_bad")]
    out = summarize([], votes, n_boot=500)["votes"]
    assert out["n"] == 7
    assert out["counts"] == {"base": 1, "tuned": 3, "tie": 2, "both_bad": 1}
    assert out["win_rate"]["value"] == pytest.approx(0.75) and out["win_rate"]["n"] == 4
    assert 0 <= out["win_rate"]["ci_low"] <= 0.75 <= out["win_rate"]["ci_high"] <= 1
    assert out["tie_share"]["value"] == pytest.approx(2 / 7)
    assert out["both_bad_share"]["value"] == pytest.approx(1 / 7)


def test_win_rate_without_decisive_votes_is_none():
    out = summarize([], [vote("tie"), vote("both_bad")])["votes"]
    assert out["win_rate"]["value"] is None and out["win_rate"]["n"] == 0
    assert "no vote" in out["win_rate"]["reason"]
    assert summarize([], [])["votes"]["tie_share"]["reason"] == "no votes"


# ---- agreement -------------------------------------------------------------------------------


def test_perfect_agreement_gives_alpha_and_kappa_one():
    out = summarize(two_reviewers([1, 2, 3, 4], [1, 2, 3, 4]), [])["agreement"]
    assert out["krippendorff_alpha"]["value"] == pytest.approx(1.0)
    assert out["krippendorff_alpha"]["n"] == 4
    [pair] = out["weighted_kappa"]
    assert pair["reviewers"] == ["ann", "bob"]
    assert pair["value"] == pytest.approx(1.0) and pair["n"] == 4


def test_alpha_matches_hand_computation():
    # Answers rated (1,1), (2,2), (4,4), (2,4): coincidences o11 = o22 = o44 = 2, o24 = o42 = 1;
    # n1 = 2, n2 = 3, n4 = 3, n = 8. Ordinal delta^2(c,k) = (n_c + ... + n_k - (n_c + n_k)/2)^2:
    # d12 = 2.5^2, d14 = 5.5^2, d24 = 3^2. alpha = 1 - (n - 1) * sum(o * d) / sum(n_c n_k d)
    # = 1 - 7 * (2 * 9) / (2 * (6 * 6.25 + 6 * 30.25 + 9 * 9)) = 0.79 (the interval level: 0.708).
    out = summarize(two_reviewers([1, 2, 4, 2], [1, 2, 4, 4]), [])["agreement"]
    assert out["krippendorff_alpha"]["value"] == pytest.approx(1 - 7 * 18 / 600)
    assert out["krippendorff_alpha"]["n"] == 4 and out["krippendorff_alpha"]["reviewers"] == 2


def test_weighted_kappa_matches_hand_computation():
    # Observed: one disagreement (3 vs 4) of weight 1 in 3 items -> 1/3. Expected: margins 1/3
    # each; sum of (a - b)^2 over a in {1,2,3}, b in {1,2,4} is 21, so 21/9. 1 - (1/3)/(21/9).
    assert weighted_kappa([1, 2, 3], [1, 2, 4]) == pytest.approx(6 / 7)
    assert weighted_kappa([1, 2], [2, 1]) == pytest.approx(-1.0)
    a, b = [1, 2, 3, 4, 2, 3, 1], [2, 2, 4, 3, 1, 3, 1]
    assert weighted_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))
    assert math.isnan(weighted_kappa([2, 2], [2, 2]))


def test_kappa_per_pair_needs_two_shared_answers():
    rows = two_reviewers([1, 2, 3], [1, 2, 4]) + [rating("0", "tuned", 4, "cat")]
    out = summarize(rows, [])["agreement"]
    assert [p["reviewers"] for p in out["weighted_kappa"]] == [["ann", "bob"]]
    assert out["weighted_kappa"][0]["value"] == pytest.approx(6 / 7)
    # Only the first answer has a third rating; alpha still counts all three shared answers.
    assert out["krippendorff_alpha"]["n"] == 3 and out["krippendorff_alpha"]["reviewers"] == 3


def test_one_reviewer_gives_none_with_reason():
    rows = [rating(str(i), "base", 1 + i % 4, "ann") for i in range(6)]
    out = summarize(rows, [])["agreement"]
    assert out["krippendorff_alpha"]["value"] is None
    assert "2 named reviewers" in out["krippendorff_alpha"]["reason"]
    assert out["weighted_kappa"] == [] and out["weighted_kappa_reason"]


def test_anonymous_ratings_are_left_out_of_agreement():
    rows = [rating("1", "tuned", 2, "ann"), rating("1", "tuned", 4, "")]
    out = summarize(rows, [])["agreement"]
    assert out["anonymous_ratings_left_out"] == 1
    assert out["krippendorff_alpha"]["value"] is None


def test_constant_ratings_give_none_not_an_error():
    out = summarize(two_reviewers([3, 3], [3, 3]), [])["agreement"]
    assert out["krippendorff_alpha"]["value"] is None
    assert "undefined" in out["krippendorff_alpha"]["reason"]
    assert out["weighted_kappa"][0]["value"] is None


# ---- reviewers and cosine --------------------------------------------------------------------


def test_reviewer_counts():
    rows = two_reviewers([1, 2], [3, 4]) + [rating("9", "base", 2, "")]
    out = summarize(rows, [vote("tuned", "bob"), vote("tie", "dan")])["reviewers"]
    assert out == {
        "": {"ratings": 1, "votes": 0},
        "ann": {"ratings": 2, "votes": 0},
        "bob": {"ratings": 2, "votes": 1},
        "dan": {"ratings": 0, "votes": 1},
    }


def test_each_embedder_gets_its_own_correlation():
    # Cosine rises with rating under e1 and falls under e2; pooled, the two would cancel out.
    rows = [
        rating(str(i), "tuned", r, source="eval:a", cosine=0.1 * r)
        for i, r in enumerate([1, 2, 3, 4])
    ]
    rows += [
        rating(str(i), "tuned", r, source="eval:b", cosine=1 - 0.1 * r)
        for i, r in enumerate([1, 2, 3, 4])
    ]
    rows += [rating("x", "base", 2, source="compare", cosine=0.5)]
    out = summarize(rows, [], embedders={"eval:a": "e1", "eval:b": "e2"}, n_boot=300)
    rho = out["cosine_spearman"]
    assert set(rho) == {"e1", "e2"}
    assert rho["e1"]["value"] == pytest.approx(1.0) and rho["e1"]["n"] == 4
    assert rho["e2"]["value"] == pytest.approx(-1.0) and rho["e2"]["n"] == 4
    assert rho["e1"]["ci_low"] == pytest.approx(1.0) and rho["e2"]["ci_high"] == pytest.approx(-1)
    assert out["cosine_without_embedder"] == 1


def test_embedder_column_wins_and_spearman_handles_ties():
    # Ranks with ties: ratings 1,1,2,3 -> 1.5,1.5,3,4; cosines 0.2,0.1,0.3,0.4 -> 2,1,3,4.
    # rho = Pearson of the ranks = 4.5 / sqrt(4.5 * 5).
    values = [(1, 0.2), (1, 0.1), (2, 0.3), (3, 0.4)]
    rows = [rating(str(i), "base", r, cosine=c, embedder="e1") for i, (r, c) in enumerate(values)]
    out = summarize(rows, [], embedders={"eval:run": "other"}, n_boot=300)["cosine_spearman"]
    assert list(out) == ["e1"]
    assert out["e1"]["value"] == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_ratings_off_the_scale_are_refused():
    with pytest.raises(MedchatError, match="1-4"):
        summarize([rating("1", "base", 5)], [])


def test_run_embedders_reads_each_run_summary(tmp_path):
    for name, summary in (("r1", {"embedder": "bge-small"}), ("r2", {}), ("r3", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        if summary is not None:
            (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert run_embedders(tmp_path) == {"eval:r1": "bge-small"}


def test_too_few_cosines_give_none():
    rows = [rating(str(i), "base", 1 + i, cosine=0.5 + i / 10) for i in range(2)]
    out = summarize(rows, [], embedders={"eval:run": "e1"})["cosine_spearman"]["e1"]
    assert out["value"] is None and out["n"] == 2 and "at least 3" in out["reason"]


# ---- the store and the export ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with ReviewStore(tmp_path / "reviews.sqlite") as opened:
        for i, (a, b) in enumerate([(1, 2), (3, 3), (4, 4)]):
            for who, value in (("ann", a), ("bob", b)):
                opened.add_rating(
                    source="eval:run1",
                    item_id=str(i),
                    side="tuned",
                    question=f"q{i}",
                    answer=f"a{i}",
                    rating=value,
                    reviewer=who,
                    cosine=0.2 * value,
                )
        opened.add_rating(
            source="compare", item_id="1", side="base", question="q", answer="a", rating=2
        )
        for winner_vote in ("A", "B", "tie"):
            opened.add_vote(
                question="q",
                answer_a="a",
                answer_b="b",
                a_is="base",
                vote=winner_vote,
                params={"temperature": 0.0},
                model="m",
                adapter="ad",
                reviewer="ann",
            )
        yield opened


def test_summarize_store_reads_the_store(store, tmp_path):
    out = summarize_store(store, embedders={"eval:run1": "e1"}, n_boot=200)
    assert out["ratings"]["tuned"]["mean"]["n"] == 6
    assert out["votes"]["counts"]["tuned"] == 1 and out["votes"]["win_rate"]["value"] == 0.5
    assert out["cosine_spearman"]["e1"]["value"] == pytest.approx(1.0)
    assert out["agreement"]["krippendorff_alpha"]["n"] == 3
    by_path = summarize_store(tmp_path / "reviews.sqlite", embedders={"eval:run1": "e1"})
    assert by_path["reviewers"] == out["reviewers"]
    with pytest.raises(MedchatError, match="no review database"):
        summarize_store(tmp_path / "missing.sqlite")


def test_export_loads_with_datasets(store, tmp_path):
    datasets = pytest.importorskip("datasets")
    out_dir = tmp_path / "export"
    paths = export(store, out_dir, embedders={"eval:run1": "e1"})
    assert set(paths) == {
        "votes.csv",
        "votes.parquet",
        "ratings.csv",
        "ratings.parquet",
        "statements.csv",
        "statements.parquet",
        "README.md",
    }
    card = paths["README.md"].read_text()
    assert card.startswith("---\nconfigs:") and "not medical advice" in card
    assert "| `cosine` |" in card and "| `winner` |" in card
    cache = str(tmp_path / "hf-cache")

    votes = datasets.load_dataset(
        "parquet", data_files=str(paths["votes.parquet"]), cache_dir=cache
    )["train"]
    assert votes.num_rows == 3 and votes["winner"] == ["base", "tuned", "tie"]
    assert votes[0]["params"] == '{"temperature": 0.0}'

    ratings = datasets.load_dataset(str(out_dir), "ratings", cache_dir=cache)["train"]
    assert ratings.num_rows == 7
    assert set(ratings.column_names) == {*RATING_COLUMNS, "embedder"}
    assert sorted(ratings["rating"]) == [1, 2, 2, 3, 3, 4, 4]
    by_source = {r["source"]: r for r in ratings}
    assert by_source["compare"]["cosine"] is None and by_source["compare"]["embedder"] is None
    assert by_source["eval:run1"]["embedder"] == "e1"
    voted = datasets.load_dataset(str(out_dir), "votes", cache_dir=cache)["train"]
    assert voted.num_rows == 3 and "a_is" in voted.column_names


def test_export_of_empty_frames_keeps_the_columns(tmp_path):
    pa_parquet = pytest.importorskip("pyarrow.parquet")
    paths = export(([], []), tmp_path / "empty")
    table = pa_parquet.read_table(paths["ratings.parquet"])
    assert table.num_rows == 0 and "rating" in table.column_names
    assert str(table.schema.field("rating").type) == "int64"


# ---- statements: the reviewers' marks and the judge's verdicts --------------------------------


def mark(item, side, reviewer, kind, given, verdict, judge="offline", source="eval:run"):
    return {
        "source": source,
        "item_id": item,
        "side": side,
        "reviewer": reviewer,
        "kind": kind,
        "statement": f"statement of {item}",
        "mark": given,
        "judge": judge,
        "judge_verdict": verdict,
    }


M, N = "must_have", "nice_to_have"
MARKS_BY_HAND = [
    # answer 1, fine-tuned: two reviewers
    mark("1", "tuned", "ann", M, "covered", "entailed"),
    mark("1", "tuned", "ann", M, "missing", "entailed"),
    mark("1", "tuned", "ann", N, "contradicted", "contradicted"),
    mark("1", "tuned", "bob", M, "covered", "entailed"),
    mark("1", "tuned", "bob", M, "covered", "entailed"),
    mark("1", "tuned", "bob", N, "missing", "contradicted"),
    # answer 2, fine-tuned: the judge gave no verdict on the second statement
    mark("2", "tuned", "ann", M, "contradicted", "neither"),
    mark("2", "tuned", "ann", M, "covered", "unparsed"),
    # answer 1, base
    mark("1", "base", "ann", M, "missing", "neither"),
    mark("1", "base", "ann", M, "missing", "neither"),
    mark("1", "base", "ann", N, "missing", "neither"),
]


def test_statement_figures_match_hand_computation():
    out = summarize([], [], marks=MARKS_BY_HAND, n_boot=500)["statements"]
    assert (out["n"], out["answers"]) == (11, 3)
    tuned, base = out["tuned"], out["base"]
    # Reviewers, fine-tuned: 6 must-have marks, 4 covered; 8 marks, 2 contradicted.
    assert tuned["comprehensiveness"]["value"] == pytest.approx(4 / 6)
    assert tuned["comprehensiveness"]["n"] == 6 and tuned["comprehensiveness"]["answers"] == 2
    assert tuned["hallucination"]["value"] == pytest.approx(2 / 8)
    assert tuned["hallucination"]["n"] == 8
    # Base: 2 must-have marks, none covered; 3 marks, none contradicted; one answer, no CI.
    assert base["comprehensiveness"]["value"] == 0 and base["comprehensiveness"]["n"] == 2
    assert base["hallucination"]["value"] == 0 and base["hallucination"]["ci_low"] is None
    # The judge on the same statements, its unparsed verdict left out: 5 must-have verdicts, 4
    # entailed; 7 verdicts, 2 contradicted.
    judged = tuned["judge"]["offline"]
    assert judged["comprehensiveness"]["value"] == pytest.approx(4 / 5)
    assert judged["hallucination"]["value"] == pytest.approx(2 / 7)
    # Answer 1 has 3 of 4 must-have marks covered, answer 2 1 of 2: a resample of the two
    # answers gives 1/2, 4/6 or 3/4, so the interval lies within [1/2, 3/4].
    fig = tuned["comprehensiveness"]
    assert 0.5 <= fig["ci_low"] <= fig["value"] <= fig["ci_high"] <= 0.75
    # Covered-vs-not on the 10 marks with a verdict: reviewers say covered 3 times, the judge
    # entailed 4 times, they disagree once. po = 0.9, pe = 0.3 * 0.4 + 0.7 * 0.6 = 0.54,
    # kappa = (0.9 - 0.54) / (1 - 0.54).
    kappa = out["judge_agreement"]["offline"]
    assert kappa["n"] == 10 and kappa["agreement"] == pytest.approx(0.9)
    assert kappa["value"] == pytest.approx(0.36 / 0.46)
    with_verdict = [m for m in MARKS_BY_HAND if m["judge_verdict"] != "unparsed"]
    assert kappa["value"] == pytest.approx(
        cohen_kappa_score(
            [m["mark"] == "covered" for m in with_verdict],
            [m["judge_verdict"] == "entailed" for m in with_verdict],
        )
    )


def test_each_judge_is_compared_with_the_reviewers_on_its_own():
    other = [
        mark("9", "tuned", "cat", M, "covered", "entailed", judge="llm:m", source="eval:other"),
        mark("9", "tuned", "cat", M, "missing", "entailed", judge="llm:m", source="eval:other"),
    ]
    out = summarize([], [], marks=MARKS_BY_HAND + other, n_boot=200)["statements"]
    assert out["judge_agreement"]["offline"]["n"] == 10  # unchanged by the other run's marks
    llm = out["judge_agreement"]["llm:m"]
    # Reviewer [1, 0], judge [1, 1]: po = 0.5, pe = 0.5 * 1 + 0.5 * 0 = 0.5, kappa 0.
    assert (llm["n"], llm["agreement"], llm["value"]) == (2, 0.5, 0.0)
    assert out["tuned"]["judge"]["llm:m"]["comprehensiveness"]["value"] == 1.0
    # The reviewers' own figures pool every run's marks: 5 of 8 must-have covered.
    assert out["tuned"]["comprehensiveness"]["value"] == pytest.approx(5 / 8)


def test_without_marks_the_statement_figures_say_why():
    out = summarize([], [])["statements"]
    assert out["n"] == 0 and out["tuned"]["comprehensiveness"]["value"] is None
    assert out["tuned"]["comprehensiveness"]["reason"] == "no marked must-have statements"
    assert out["judge_agreement"] == {} and out["judge_agreement_reason"]
    # Marks without a judge verdict (a run judged with --judge none) count for the reviewers.
    no_judge = [mark("1", "base", "ann", M, "covered", None, judge=None)]
    out = summarize([], [], marks=no_judge)["statements"]
    assert out["base"]["comprehensiveness"]["value"] == 1.0 and out["judge_agreement"] == {}


def test_a_mark_off_the_scale_is_refused():
    with pytest.raises(MedchatError, match="covered, contradicted, missing"):
        summarize([], [], marks=[mark("1", "base", "ann", M, "partly", None)])


def test_statement_marks_are_exported_with_their_card(tmp_path):
    pa_parquet = pytest.importorskip("pyarrow.parquet")
    with ReviewStore(tmp_path / "reviews.sqlite") as opened:
        opened.add_rating(
            source="eval:run", item_id="1", side="tuned", question="q", answer="a", rating=3,
            reviewer="ann",
            marks=[{"kind": M, "statement": "s1", "mark": "covered", "judge": "offline",
                    "judge_verdict": "neither"},
                   {"kind": N, "statement": "s2", "mark": "missing"}],
        )  # fmt: skip
        summary = summarize_store(opened, n_boot=100)["statements"]
        paths = export(opened, tmp_path / "export")
    assert summary["tuned"]["comprehensiveness"]["value"] == 1.0
    assert summary["judge_agreement"]["offline"]["n"] == 1  # the second has no verdict
    table = pa_parquet.read_table(paths["statements.parquet"]).to_pylist()
    assert [(r["statement"], r["mark"], r["judge_verdict"]) for r in table] == [
        ("s1", "covered", "neither"),
        ("s2", "missing", None),
    ]
    assert table[0]["rating_id"] == 1 and table[0]["reviewer"] == "ann"
    card = paths["README.md"].read_text()
    assert "config_name: statements" in card and "| `judge_verdict` |" in card
    assert paths["statements.csv"].read_text().splitlines()[0].startswith("id,rating_id,source")
