"""Evaluation runs end to end on a tiny random Llama with a random LoRA adapter (CPU, seconds).

The tiny model uses the real SmolLM2 tokenizer (from the embedded model's converted copy), so
prompts are rendered by the same chat template the app uses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from eval.__main__ import main as eval_main
from medchat import evaluation, metrics
from medchat.data import load_pairs, split_by_group, write_split
from medchat.errors import MedchatError
from medchat.evaluation import (
    RESULT_FIELDS,
    EvalConfig,
    list_runs,
    load_run,
    read_results,
    run_evaluation,
)

MAX_NEW = 6
BATCH = 2


class Interrupted(Exception):
    """Raised from a progress callback to stop a run between batches."""


QA = [
    ("What is glaucoma?", "Glaucoma is a group of eye diseases that damage the optic nerve."),
    ("What are the symptoms of asthma?", "Wheezing, shortness of breath and chest tightness."),
    ("How is type 2 diabetes treated?", "With diet, exercise, metformin and sometimes insulin."),
    ("What causes anemia?", "Too little iron, blood loss, or problems making red cells."),
    ("Is psoriasis contagious?", "No. Psoriasis is an immune condition and does not spread."),
    ("What is hypertension?", "Blood pressure that stays at or above 130/80 mm Hg."),
    ("How is strep throat diagnosed?", "With a rapid antigen test or a throat culture."),
    ("What are the symptoms of migraine?", "Throbbing headache, nausea and light sensitivity."),
    ("What causes gout?", "Uric acid crystals that build up in a joint."),
    ("How is pneumonia treated?", "Antibiotics for bacterial pneumonia, rest and fluids."),
    ("What is osteoporosis?", "A disease that thins bones and makes them break easily."),
    ("Who is at risk for shingles?", "Anyone who has had chickenpox, more so after age 50."),
]
QTYPES = ["information", "symptoms", "treatment", "causes"]


# -- fixtures: a tiny model, a random adapter, a small data file with a split ---------------
@pytest.fixture(scope="module")
def tiny_model_dir(tiny_llama_dir) -> Path:
    """The shared tiny random Llama (tests/conftest.py) with the real SmolLM2 tokenizer."""
    return tiny_llama_dir


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    rows = [
        {
            "question": q,
            "answer": a,
            "qtype": QTYPES[i % len(QTYPES)],
            "url": f"https://example.org/{i}",
            "document_id": f"doc{i}",
        }
        for i, (q, a) in enumerate(QA)
    ]
    path = tmp_path_factory.mktemp("data") / "qa.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, data_csv, tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(folder)
    df, _ = load_pairs(str(data_csv))
    splits = split_by_group(df, seed=0, validation_fraction=0.25, test_fraction=0.5)
    write_split(folder / "split.json", splits, source=str(data_csv), seed=0)
    (folder / "medchat_training.json").write_text(json.dumps({"data_file": str(data_csv)}))
    return folder


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapter_dir):
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import Profile

    profile = Profile(name="tiny", model_id=str(tiny_model_dir))
    return Engine(load_model(profile, adapter=str(adapter_dir), device="cpu"))


@pytest.fixture(scope="module")
def embedder():
    return metrics.Embedder("bundled", device="cpu")


@pytest.fixture(scope="module")
def split(adapter_dir) -> dict:
    return json.loads((adapter_dir / "split.json").read_text())


@pytest.fixture(scope="module")
def full_run(adapter_dir, engine, embedder, tmp_path_factory) -> Path:
    """One uninterrupted run of the test split (data from the adapter's training record)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    config = EvalConfig(adapter=str(adapter_dir), batch_size=BATCH, max_new_tokens=MAX_NEW, out=out)
    return run_evaluation(config, engine=engine, embedder=embedder)


def _without_timing(summary: dict) -> dict:
    summary = dict(summary)
    summary.pop("timing")
    summary["run"] = {k: v for k, v in summary["run"].items() if k != "folder"}
    return summary


# -- the run folder --------------------------------------------------------------------------
def test_run_folder_holds_every_documented_file(full_run, split):
    names = sorted(p.name for p in full_run.iterdir())
    assert names == ["config.json", "report.md", "results.jsonl", "similarity.png", "summary.json"]
    assert (full_run / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((full_run / "config.json").read_text())
    for name in evaluation.IDENTITY_FIELDS:
        assert name in config
    assert config["split"] == "test" and config["n"] == len(split["test"])
    assert config["generation"]["temperature"] == 0.0
    assert config["generation"]["repetition_penalty"] == 1.1
    assert config["embedder"].startswith(metrics.BUNDLED_MODEL)
    assert config["embedder_source"] == "bundled" and config["profile"] == "tiny"
    # As trained: an adapter saved without a prompt style has the legacy prompt, no sources.
    assert (config["prompt_style"], config["sources_in_prompt"]) == ("legacy", False)


def test_results_hold_every_field_for_exactly_the_test_rows(full_run, split, embedder):
    records = read_results(full_run / "results.jsonl")
    assert sorted(r["key"] for r in records) == sorted(split["test"])
    assert [r["key"] for r in records] == sorted(r["key"] for r in records)  # stable order
    for r in records:
        assert [f for f in r if f not in ("qtype", "url")] == list(RESULT_FIELDS)
        assert r["qtype"] in QTYPES and r["url"].startswith("https://example.org/")
        for side in ("base", "tuned"):
            assert 0 <= r[f"{side}_tokens"] <= MAX_NEW
            if r[f"{side}_hit_limit"]:
                assert r[f"{side}_tokens"] == MAX_NEW
            assert 0.0 <= r[f"{side}_rouge_l"] <= 1.0 and 0.0 <= r[f"{side}_repetition"] <= 1.0
            # The stored scores are the scores of the stored texts.
            assert r[f"{side}_rouge_l"] == metrics.rouge_l_f1(r[f"{side}_answer"], r["reference"])
            again = embedder.cosine([r[f"{side}_answer"]], [r["reference"]])[0]
            assert r[f"{side}_cosine"] == pytest.approx(again, abs=1e-5)
    # A random LoRA adapter changes the answers: base and tuned really are different rows.
    assert any(r["base_answer"] != r["tuned_answer"] for r in records)


def test_summary_and_report(full_run, split):
    summary, results = load_run(full_run)
    n = len(split["test"])
    assert summary["n"] == n == len(results)
    assert summary["embedder"].startswith(metrics.BUNDLED_MODEL)
    for side in ("base", "tuned"):
        for name in ("cosine", "rouge_l", "tokens", "repetition"):
            stats = summary[side][name]
            assert set(stats) == {"mean", "median", "std", "ci_low", "ci_high", "n"}
            assert stats["n"] == n
            assert stats["mean"] == pytest.approx(results[f"{side}_{name}"].mean())
        assert summary[side]["truncation_rate"] == results[f"{side}_hit_limit"].mean()
    cos = summary["paired"]["cosine"]
    diff = (results["tuned_cosine"] - results["base_cosine"]).mean()
    assert cos["mean_diff"] == pytest.approx(diff)
    assert cos["ci_low"] <= cos["mean_diff"] <= cos["ci_high"]
    assert cos["win_rate"] == (results["tuned_cosine"] > results["base_cosine"]).mean()
    assert {"mean_diff", "ci_low", "ci_high", "win_rate"} <= set(summary["paired"]["rouge_l"])
    assert sum(row["n"] for row in summary["by_qtype"].values()) == n
    for qtype, row in summary["by_qtype"].items():
        group = results[results["qtype"] == qtype]
        assert row["tuned"] - row["base"] == pytest.approx(row["diff"])
        assert row["base"] == pytest.approx(group["base_cosine"].mean())
    timing = summary["timing"]
    assert timing["generation_seconds"] > 0 and timing["scoring_seconds"] > 0
    assert 0 < timing["scoring_share"] < 1 and timing["answers_per_second"] > 0
    assert 0 < timing["wall_scoring_share"] < 1
    assert timing["wall_seconds"] >= timing["setup_seconds"]
    assert timing["items_this_run"] == n and timing["items_resumed"] == 0
    report = (full_run / "report.md").read_text()
    assert "| cosine similarity |" in report and "| ROUGE-L F1 |" in report
    assert f"{cos['mean_diff']:+.3f}" in report
    assert "similarity.png" in report and "by question type" in report


def test_interrupted_run_resumes_to_the_same_summary(full_run, adapter_dir, engine, embedder):
    out = full_run.parent / "interrupted"
    config = EvalConfig(adapter=str(adapter_dir), batch_size=BATCH, max_new_tokens=MAX_NEW, out=out)
    calls = []

    def stop_after_first_batch(done, total):
        calls.append((done, total))
        if done >= BATCH:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_evaluation(config, engine=engine, embedder=embedder, progress=stop_after_first_batch)
    assert calls[0][0] == 0 and calls[-1][0] == BATCH
    assert len(read_results(out / "results.jsonl")) == BATCH
    assert not (out / "summary.json").exists()
    # A crash in the middle of an append leaves half a line: the resume drops it.
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"key": "half a li')

    progress = []
    run_evaluation(
        config, engine=engine, embedder=embedder, progress=lambda d, t: progress.append(d)
    )
    assert progress[0] == BATCH  # started where the first sitting stopped
    resumed, resumed_results = load_run(out)
    full, full_results = load_run(full_run)
    assert _without_timing(resumed) == _without_timing(full)
    assert resumed["timing"]["items_resumed"] == BATCH
    seconds = ["generation_seconds", "scoring_seconds"]
    pd.testing.assert_frame_equal(
        resumed_results.drop(columns=seconds), full_results.drop(columns=seconds)
    )


def test_rerun_of_a_finished_run_loads_nothing(full_run, adapter_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not load a model or an embedder")

    monkeypatch.setattr(evaluation.run, "build_pipeline", refuse)  # where run_evaluation looks
    monkeypatch.setattr(metrics, "Embedder", refuse)
    lines = (full_run / "results.jsonl").read_text()
    config = EvalConfig(
        adapter=str(adapter_dir), batch_size=BATCH, max_new_tokens=MAX_NEW, out=full_run
    )
    run_evaluation(config)
    assert (full_run / "results.jsonl").read_text() == lines
    assert load_run(full_run)[0]["timing"]["items_this_run"] == 0


def test_resuming_with_another_config_or_embedder_is_refused(
    full_run, adapter_dir, data_csv, engine, embedder
):
    base = dict(adapter=str(adapter_dir), batch_size=BATCH, max_new_tokens=MAX_NEW)
    with pytest.raises(MedchatError, match="max_new_tokens.*another --out"):
        run_evaluation(EvalConfig(**base | {"max_new_tokens": 7}, out=full_run), engine, embedder)
    with pytest.raises(MedchatError, match="split.*another --out"):
        run_evaluation(EvalConfig(**base, split="validation", out=full_run), engine, embedder)

    # A half-done run: one batch on disk, then another embedder comes along.
    out = full_run.parent / "half"

    def stop(done, total):
        if done:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_evaluation(EvalConfig(**base, out=out), engine, embedder, progress=stop)

    class OtherEmbedder:
        name = source = "other-embedder"

    with pytest.raises(MedchatError, match="never mixes two embedders"):
        run_evaluation(EvalConfig(**base, out=out), engine, OtherEmbedder())
    with pytest.raises(MedchatError, match="never mixes two embedders; pass --embedder bundled"):
        run_evaluation(EvalConfig(**base, out=out, embedder="/some/other/model"), engine)
    # A folder that is not a run is never written into.
    stranger = full_run.parent / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(MedchatError, match="not an evaluation run folder"):
        run_evaluation(EvalConfig(**base, out=stranger, data=str(data_csv)), engine, embedder)


def test_limit_is_a_seeded_sample_sorted_by_key(adapter_dir, data_csv):
    df, _ = load_pairs(str(data_csv))
    config = EvalConfig(adapter=str(adapter_dir), split="all", limit=5, seed=3)
    rows = evaluation.select_rows(df, config, str(adapter_dir))
    again = evaluation.select_rows(df, config, str(adapter_dir))
    other = evaluation.select_rows(
        df, EvalConfig(adapter=str(adapter_dir), split="all", limit=5, seed=4), str(adapter_dir)
    )
    assert len(rows) == 5 and rows["key"].tolist() == sorted(rows["key"])
    assert rows["key"].tolist() == again["key"].tolist()
    assert set(rows["key"]) != set(other["key"])
    everything = evaluation.select_rows(
        df, EvalConfig(adapter=str(adapter_dir), split="all", limit=100), str(adapter_dir)
    )
    assert len(everything) == len(QA)


def test_list_runs_newest_first(tmp_path):
    for i, name in enumerate(["b-old", "a-new", "c-mid"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        os.utime(tmp_path / name / "config.json", (1000 + i, [1000, 3000, 2000][i]))
    (tmp_path / "not-a-run").mkdir()
    assert [p.name for p in list_runs(tmp_path)] == ["a-new", "c-mid", "b-old"]
    assert list_runs(tmp_path / "missing") == []
    with pytest.raises(MedchatError, match="no summary.json"):
        load_run(tmp_path / "a-new")


def test_list_runs_merges_folders_and_the_first_folder_wins(tmp_path):
    mine, shipped = tmp_path / "runs", tmp_path / "shipped"
    for root, name, mtime in [(mine, "x", 2000), (shipped, "x", 3000), (shipped, "y", 1000)]:
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
        os.utime(root / name / "config.json", (mtime, mtime))
    assert list_runs(mine, shipped) == [mine / "x", shipped / "y"]


def test_the_shipped_evaluation_runs_load():
    from medchat.settings import SHIPPED_RUNS_DIR

    runs = {p.name: p for p in list_runs(SHIPPED_RUNS_DIR)}
    wanted = {"smollm2-135m-medquad-test200", "medquad-test64-current", "medquad-test64-raft"}
    assert wanted <= set(runs), "the repository ships the adapters' evaluation runs"
    for folder in runs.values():
        summary, results = load_run(folder)
        assert summary["n"] == len(results) > 0
    summary, _ = load_run(runs["smollm2-135m-medquad-test200"])
    # The shipped adapter's bar on its own split: +0.05 mean cosine, interval above 0.
    paired = summary["paired"]["cosine"]
    assert paired["mean_diff"] >= 0.05 and paired["ci_low"] > 0
    assert summary["tuned"]["truncation_rate"] <= 0.10


def test_the_shipped_runs_with_sources_never_retrieved_a_held_out_row():
    """The run with sources searched training rows only: none of its retrieved passages is a
    held-out row of either adapter's split, and both runs scored the same questions."""
    from medchat.data import DEFAULT_DATA
    from medchat.settings import SHIPPED_ADAPTERS, SHIPPED_RUNS_DIR

    _, plain = load_run(SHIPPED_RUNS_DIR / "medquad-test64-current")
    summary, grounded = load_run(SHIPPED_RUNS_DIR / "medquad-test64-raft")
    assert sorted(plain["key"]) == sorted(grounded["key"])
    assert summary["run"]["index"]["restricted_to"]
    df, _ = load_pairs(DEFAULT_DATA)
    new = split_by_group(df, seed=0)
    old = json.loads((SHIPPED_ADAPTERS["smollm2-135m"] / "split.json").read_text())
    held = set(new["test"]["key"]) | set(new["validation"]["key"])
    held |= set(old["test"]) | set(old["validation"])
    assert set(grounded["key"]) <= held  # the scored rows were held out by both
    retrieved = {s["key"] for sources in grounded["sources"] for s in sources}
    assert retrieved and retrieved.isdisjoint(held)


# -- the command line ------------------------------------------------------------------------
def test_cli_runs_and_prints_the_report(
    adapter_dir, engine, tmp_path, monkeypatch, capsys, embedder
):
    monkeypatch.setattr(evaluation.run, "build_pipeline", lambda config, settings: engine)
    monkeypatch.setattr(metrics, "Embedder", lambda name=None: embedder)
    out = tmp_path / "cli"
    code = eval_main(
        ["--adapter", str(adapter_dir), "--split", "validation", "--limit", "2"]
        + ["--max-new-tokens", "4", "--batch-size", "2", "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| cosine similarity |" in captured.out
    assert f"run folder: {out}" in captured.out
    assert json.loads((out / "summary.json").read_text())["n"] == 2


@pytest.fixture
def bare_adapter(adapter_dir, tmp_path) -> Path:
    """The same adapter without its split.json and training record."""
    folder = tmp_path / "bare-adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter_dir / name, folder / name)
    return folder


def _cli_error(capsys, *argv) -> str:
    code = eval_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and line.endswith(".")
    return line


def test_cli_bad_inputs_give_one_sentence(adapter_dir, bare_adapter, data_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert "does not exist" in _cli_error(capsys, "--adapter", tmp_path / "nope", "--out", out)
    assert "no adapter_config.json" in _cli_error(capsys, "--adapter", tmp_path, "--out", out)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("title,body\nx,y\n")
    msg = _cli_error(capsys, "--adapter", adapter_dir, "--data", bad_csv, "--out", out)
    assert "no question column" in msg
    msg = _cli_error(capsys, "--adapter", bare_adapter, "--data", data_csv, "--out", out)
    assert "has no split.json" in msg and "--split all" in msg
    assert "records no training data file" in _cli_error(
        capsys, "--adapter", bare_adapter, "--out", out
    )
    assert "--limit is 0" in _cli_error(capsys, "--adapter", adapter_dir, "--limit", "0")
    assert "--batch-size is 0" in _cli_error(capsys, "--adapter", adapter_dir, "--batch-size", 0)
    msg = _cli_error(
        capsys, "--adapter", adapter_dir, "--embedder", tmp_path / "no-embedder", "--out", out
    )
    assert "Embedder" in msg and "does not exist" in msg
    assert not out.exists()  # nothing was written for any of them
    with pytest.raises(SystemExit) as info:
        eval_main([])  # --adapter is required
    assert info.value.code == 2


def test_split_the_adapter_lacks(adapter_dir, data_csv, tmp_path, split):
    folder = tmp_path / "no-validation"
    shutil.copytree(adapter_dir, folder)
    (folder / "split.json").write_text(json.dumps(split | {"validation": []}))
    with pytest.raises(MedchatError, match="no validation rows; use --split test"):
        run_evaluation(EvalConfig(adapter=str(folder), split="validation", out=tmp_path / "o"))


def test_a_run_with_sources_records_them_and_what_each_side_cited(
    adapter_dir, engine, embedder, tmp_path
):
    """--retrieval on: each question's passages (from the shipped library: these questions
    are not MedQuAD's own rows) go into both sides' prompts and into results.jsonl."""
    from medchat.retrieval import default_index
    from medchat.settings import Settings

    out = tmp_path / "sources"
    config = EvalConfig(
        adapter=str(adapter_dir),
        batch_size=BATCH,
        max_new_tokens=MAX_NEW,
        out=out,
        retrieval="on",
        retrieval_method="bm25",
        retrieval_k=2,
    )
    run_evaluation(config, engine=engine, embedder=embedder)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["retrieval"] == {"method": "bm25", "k": 2}
    assert recorded["prompt_style"].startswith("sources:bm25:k2-")
    assert recorded["sources_in_prompt"] is True
    assert recorded["index"]["method"] == "bm25" and "restricted_to" not in recorded["index"]
    index = default_index(Settings(), method="bm25")
    records = read_results(out / "results.jsonl")
    assert records
    for r in records:
        hits = [h for h in index.search(r["question"], k=2) if getattr(h, "covered", True)]
        assert [s["key"] for s in r["sources"]] == [h.passage.key for h in hits]
        assert [s["rank"] for s in r["sources"]] == list(range(1, len(hits) + 1))
        for side in ("base", "tuned"):
            assert isinstance(r[f"{side}_citations"], list)
            assert isinstance(r[f"{side}_not_covered"], bool)
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["retrieval"]["with_sources"] <= 1.0
    assert "citing_share" in summary["tuned"]
    report = (out / "report.md").read_text()
    assert "answers citing a source" in report and "Retrieval (bm25, k=2" in report
    assert f"- prompt style: {recorded['prompt_style']} (with NIH sources" in report
    # The same folder with retrieval off is another run: refused, not mixed.
    with pytest.raises(MedchatError):
        run_evaluation(
            EvalConfig(adapter=str(adapter_dir), batch_size=BATCH, max_new_tokens=MAX_NEW, out=out),
            engine=engine,
            embedder=embedder,
        )


# -- settings come from the caller; --retrieval auto is the app's rule -----------------------
def test_the_library_takes_settings_from_its_caller_not_the_environment(
    adapter_dir, tmp_path, monkeypatch
):
    """MEDCHAT_* variables reach a run only through the Settings an entry point passes:
    without them the library uses Settings()'s defaults."""
    from medchat import backends
    from medchat.settings import Settings

    monkeypatch.setenv("MEDCHAT_RETRIEVAL_METHOD", "dense")
    monkeypatch.setenv("MEDCHAT_RETRIEVAL_K", "5")
    monkeypatch.setenv("MEDCHAT_RUNS_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("MEDCHAT_PROFILE", "mistral-7b")
    default = Settings()
    config = EvalConfig(adapter=str(adapter_dir), retrieval="on")
    assert evaluation.retrieval_for(config, str(adapter_dir)) == {
        "method": default.retrieval_method,
        "k": default.retrieval_k,
    }
    given = Settings(retrieval_method="bm25", retrieval_k=2)
    assert evaluation.retrieval_for(config, str(adapter_dir), given) == {"method": "bm25", "k": 2}
    assert evaluation.default_out_dir(config).parent == default.runs_dir

    seen = []

    def make_backend(settings):
        seen.append(settings)
        raise Interrupted

    monkeypatch.setattr(backends, "make_backend", make_backend)
    for settings in (None, Settings(profile="smollm2-135m")):
        with pytest.raises(Interrupted):
            evaluation.build_pipeline(config, settings)
    assert [s.profile for s in seen] == ["auto", "smollm2-135m"]
    assert seen[0].adapter == config.adapter and seen[0].retrieval == "on"  # the config's


def test_the_command_line_passes_the_environment_on(
    adapter_dir, engine, embedder, tmp_path, monkeypatch, capsys
):
    """`python -m eval` reads MEDCHAT_* once and hands the Settings to the run."""
    seen = []

    def build_pipeline(config, settings):
        seen.append(settings)
        return engine

    monkeypatch.setattr(evaluation.run, "build_pipeline", build_pipeline)
    monkeypatch.setattr(metrics, "Embedder", lambda name=None: embedder)
    monkeypatch.setenv("MEDCHAT_RUNS_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("MEDCHAT_RETRIEVAL_K", "5")
    code = eval_main(
        ["--adapter", str(adapter_dir), "--split", "validation", "--limit", "1"]
        + ["--max-new-tokens", "2", "--retrieval", "off"]
    )
    assert code == 0, capsys.readouterr().err
    (folder,) = (tmp_path / "from-env").iterdir()
    assert (folder / "summary.json").is_file()
    assert [s.retrieval_k for s in seen] == [5]


CASES = ["adapter trained with sources", "hub adapter trained with sources", "legacy adapter"]


@pytest.mark.parametrize("case", [*CASES, "base only"])
def test_retrieval_auto_gives_a_run_the_prompts_the_app_serves(
    case, adapter_dir, tmp_path, monkeypatch
):
    """--retrieval auto decides as the app's pipeline does (docs/retrieval.md): an adapter
    trained with sources gets them, with its own method and k; one trained without gets none;
    the base model alone gets them. off: none, for every model."""
    from types import SimpleNamespace

    from medchat import prompts
    from medchat.backends.local import LocalBackend
    from medchat.pipeline import Pipeline
    from medchat.settings import Settings

    with_sources = prompts.PromptStyle(retrieval={"method": "bm25", "k": 2})
    adapter = None  # the base model alone
    if case.startswith("hub"):
        adapter = "org/medquad-raft"
        monkeypatch.setattr(prompts, "_hub_style", lambda repo_id: with_sources)
    elif case != "base only":
        folder = tmp_path / "adapter"
        folder.mkdir()
        shutil.copy(adapter_dir / "adapter_config.json", folder)
        if case == "adapter trained with sources":
            (folder / prompts.STYLE_FILE).write_text(json.dumps(with_sources.as_dict()))
        adapter = str(folder)
    stub = SimpleNamespace(  # an Engine as far as the pipeline's prompt choice goes
        has_adapter=adapter is not None,
        loaded=SimpleNamespace(adapter=adapter),
        profile=SimpleNamespace(name="tiny"),
    )
    wanted = case != "legacy adapter"
    for mode in ("auto", "off"):
        pipeline = Pipeline(LocalBackend(stub), Settings(retrieval=mode))
        config = EvalConfig(adapter=adapter or "base", retrieval=mode)
        retrieval = evaluation.retrieval_for(config, adapter)
        assert pipeline.grounded is (wanted and mode == "auto")
        assert (retrieval is not None) is pipeline.grounded, f"--retrieval {mode}"
        if retrieval is not None:
            assert retrieval == {"method": pipeline.retrieval_method, "k": pipeline.retrieval_k}
