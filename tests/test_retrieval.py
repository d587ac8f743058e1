"""Retrieval over MedQuAD's NIH passages: the index, the prompt with sources, the prompt style
saved with an adapter, the pipeline's sources, retrieval-augmented training rows, and the
leak-free index evaluation searches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medchat import prompts, retrieval
from medchat.data import DEFAULT_DATA, load_pairs, row_key, split_by_group
from medchat.errors import MedchatError
from medchat.pipeline import Pipeline
from medchat.prompts import (
    LEGACY_STYLE,
    LEGACY_SYSTEM_PROMPT,
    NO_SOURCES,
    PromptStyle,
    adapter_style,
    build_messages,
    read_style,
    write_style,
)
from medchat.retrieval import Index, citations
from medchat.settings import SHIPPED_ADAPTERS, Settings

SHIPPED_ADAPTER = SHIPPED_ADAPTERS["smollm2-135m"]

ROWS = [
    ("What is glaucoma?", "Glaucoma is a group of eye diseases that damage the optic nerve.",
     "Glaucoma", "https://medlineplus.gov/glaucoma.html", "MPlusHealthTopics", "d1"),
    ("What causes gout?", "Gout is caused by uric acid crystals that build up in a joint.",
     "Gout", "https://www.niams.nih.gov/gout", "NIAMS", "d2"),
    ("What are the symptoms of asthma?", "Wheezing, shortness of breath and chest tightness.",
     "Asthma", "https://www.nhlbi.nih.gov/asthma", "NHLBI", "d3"),
    ("How is anemia treated?", "Iron supplements, vitamins, or treating the cause of blood loss.",
     "Anemia", "https://www.nhlbi.nih.gov/anemia", "NHLBI", "d4"),
]  # fmt: skip


def small_frame() -> pd.DataFrame:
    cols = ["question", "answer", "focus", "url", "source", "document_id"]
    df = pd.DataFrame(ROWS, columns=cols)
    df["key"] = [row_key(q, a) for q, a in zip(df["question"], df["answer"], strict=True)]
    return df


@pytest.fixture(scope="module")
def medquad():
    df, report = load_pairs(DEFAULT_DATA)
    return df, report


@pytest.fixture(scope="module")
def shipped_index():
    """The default index (hybrid: bm25 + the shipped MiniLM vectors) of the shipped MedQuAD."""
    return retrieval.default_index(Settings(), method="hybrid")


# -- the index ------------------------------------------------------------------------------
def test_bm25_finds_the_passage_on_the_asked_topic_and_drops_unrelated_ones():
    index = Index.build(small_frame(), method="bm25")
    hits = index.search("what causes gout attacks", k=2)
    assert hits[0].passage.title == "Gout" and hits[0].rank == 1
    assert hits[0].passage.url == "https://www.niams.nih.gov/gout"
    assert all(h.passage.title != "Glaucoma" for h in hits)  # no shared term: not relevant
    assert index.search("tell me about quantum chromodynamics") == []


def test_restricted_index_holds_only_the_given_rows():
    df = small_frame()
    index = Index.build(df, method="bm25")
    keep = set(df["key"][df["focus"] != "Gout"])
    sub = index.restricted(keep, name="no gout")
    assert len(sub) == 3 and all(p.title != "Gout" for p in sub.passages)
    assert all(h.passage.title != "Gout" for h in sub.search("what causes gout", k=3))
    assert sub.identity["restricted_to"] == "no gout"
    with pytest.raises(MedchatError):
        index.restricted(set())


def test_unknown_method_and_missing_embedder_are_one_sentence():
    with pytest.raises(MedchatError, match="bm25, dense or hybrid"):
        Index.build(small_frame(), method="fuzzy")
    with pytest.raises(MedchatError, match="embedder"):
        Index.build(small_frame(), method="dense")


def test_shipped_vectors_match_the_shipped_data(shipped_index, medquad):
    df, report = medquad
    assert shipped_index.method == "hybrid"
    assert shipped_index.identity["data_sha256"] == report.sha256
    assert shipped_index.vectors.shape == (len(df), 384)
    assert [p.key for p in shipped_index.passages] == df["key"].tolist()
    # Row i's vector is the embedding of row i's text: re-encode a few and compare.
    rows = [0, 4321, len(df) - 1]
    texts = [retrieval.index._dense_text(shipped_index.passages[i]) for i in rows]
    fresh = shipped_index.embedder.encode(texts)
    got = np.einsum("ij,ij->i", fresh, shipped_index.vectors[rows].astype(np.float32))
    assert (got > 0.99).all(), got


def test_validation_questions_find_their_own_document(shipped_index, medquad):
    """On the full index, the question's own NIH document is among the top 3 for most of a
    seeded sample of validation questions (measured 96% over all 837: docs/retrieval.md)."""
    df, _ = medquad
    val = split_by_group(df, seed=0)["validation"].sample(60, random_state=0)
    hits = shipped_index.search_many(val["question"].tolist(), k=3)
    found = [
        any(h.passage.document_id == d for h in hs)
        for hs, d in zip(hits, val["document_id"], strict=True)
    ]
    assert np.mean(found) >= 0.85, np.mean(found)


def test_a_drug_question_gets_no_passage(shipped_index):
    """MedQuAD has no drug pages: a medication question gets none rather than a wrong one."""
    assert shipped_index.search("what is the maximum daily dose of ibuprofen for adults") == []
    assert shipped_index.search("What is glaucoma?")[0].passage.title.lower() == "glaucoma"


def test_citations_are_read_in_order_of_first_use():
    assert citations("Gout hurts [2]. It is treated [1][2]. See [10].") == [2, 1, 10]
    assert citations("no sources here") == []


# -- prompts with sources and the saved prompt style -----------------------------------------
def test_sources_go_before_the_question_and_the_instruction_into_the_system_prompt():
    hits = Index.build(small_frame(), method="bm25").search("what causes gout", k=1)
    msgs = build_messages("What causes gout?", passages=hits, system="Be brief.")
    assert msgs[0] == {"role": "system", "content": f"Be brief.\n\n{prompts.SOURCES_INSTRUCTION}"}
    assert msgs[1]["content"].startswith("Sources:\n[1] Gout (NIAMS): Gout is caused by uric")
    assert msgs[1]["content"].endswith("\n\nQuestion: What causes gout?")
    none = build_messages("What causes gout?", passages=[], system="Be brief.")
    assert none[1]["content"] == f"{NO_SOURCES}\n\nQuestion: What causes gout?"
    plain = build_messages("What causes gout?", system="Be brief.")
    assert plain[1]["content"] == "What causes gout?"


def test_style_round_trips_and_an_old_adapter_gets_the_legacy_prompt(tmp_path, monkeypatch):
    style = PromptStyle(system="Answer briefly.", retrieval={"method": "bm25", "k": 2})
    write_style(tmp_path, style)
    assert read_style(tmp_path) == style
    # The shipped adapter was saved before styles were: it is served with the frozen prompt,
    # even when SYSTEM_PROMPT is edited.
    monkeypatch.setattr(prompts, "SYSTEM_PROMPT", "An edited prompt.")
    assert read_style(SHIPPED_ADAPTER) == LEGACY_STYLE
    assert LEGACY_STYLE.system == LEGACY_SYSTEM_PROMPT
    assert read_style(None).system == PromptStyle().system
    (tmp_path / prompts.STYLE_FILE).write_text("{not json")
    with pytest.raises(MedchatError, match="not valid JSON"):
        read_style(tmp_path)


class _Backend:
    """The pipeline's view of a backend: only what prepare() uses (no model needed)."""

    name = "local"
    has_adapter = True

    def __init__(self, adapter):
        self.adapter = str(adapter)
        self.calls = []

    def adapter_style(self):
        return adapter_style(self.adapter)

    def messages(self, question, history=None, *, max_new_tokens=256, **prompt):
        self.calls.append(prompt)
        return build_messages(question, history, **prompt)


def test_pipeline_serves_an_adapter_with_its_saved_style_and_retrieval(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    write_style(tmp_path, PromptStyle(system="Trained prompt.", retrieval={"k": 1}))
    index = Index.build(small_frame(), method="bm25")
    pipeline = Pipeline(_Backend(tmp_path), Settings(retrieval="on"), index=index)
    turn = pipeline.prepare("What causes gout?")
    assert [h.passage.title for h in turn.sources] == ["Gout"]  # k from the style
    assert turn.messages[0]["content"].startswith("Trained prompt.")
    assert "[1] Gout (NIAMS)" in turn.messages[-1]["content"]
    off = Pipeline(_Backend(tmp_path), Settings(retrieval="off"), index=index)
    turn = off.prepare("What causes gout?")
    assert turn.sources is None and turn.messages[-1]["content"] == "What causes gout?"


def test_pipeline_with_the_shipped_adapter_uses_the_legacy_prompt(monkeypatch):
    monkeypatch.setattr(prompts, "SYSTEM_PROMPT", "An edited prompt.")
    pipeline = Pipeline(_Backend(SHIPPED_ADAPTER), Settings(retrieval="off"))
    turn = pipeline.prepare("What is glaucoma?")
    assert turn.messages[0]["content"] == LEGACY_SYSTEM_PROMPT


def test_retrieval_on_without_an_index_is_one_sentence(monkeypatch):
    def broken(*args, **kwargs):
        raise MedchatError("no data")

    monkeypatch.setattr(retrieval, "default_index", broken)
    pipeline = Pipeline(_Backend(SHIPPED_ADAPTER), Settings(retrieval="on"))
    turn = pipeline.prepare("What is glaucoma?")
    assert turn.error and "MEDCHAT_RETRIEVAL=off" in turn.error
    auto = Pipeline(_Backend(SHIPPED_ADAPTER), Settings(retrieval="auto"))
    assert auto.prepare("What is glaucoma?").sources is None  # auto: answers without sources


# -- the sources shown under an answer -------------------------------------------------------
def test_sources_block_links_each_page_and_is_kept_out_of_the_model_history():
    from medchat.ui.chat_messages import model_history
    from medchat.ui.common import SOURCES_MARK, sources_markdown

    hits = Index.build(small_frame(), method="bm25").search("what causes gout", k=1)
    block = sources_markdown(hits)
    assert block.startswith(SOURCES_MARK)
    assert '<a href="https://www.niams.nih.gov/gout"' in block and "[1]" in block
    assert "<details>" in block and "uric acid crystals" in block  # the passage on demand
    assert "not grounded" in sources_markdown([])
    assert sources_markdown(None) == ""
    history = [
        {"role": "user", "content": "What causes gout?"},
        {"role": "assistant", "content": "Uric acid [1]." + block},
    ]
    assert model_history(history)[-1]["content"] == "Uric acid [1]."


# -- retrieval-augmented training rows -------------------------------------------------------
def test_raft_rows_cite_their_own_passage_or_say_the_sources_do_not_cover_it(medquad):
    from train.sft import RaftBuilder, ScriptArguments

    df, _ = medquad
    train = split_by_group(df, seed=0)["train"]
    builder = RaftBuilder(
        ScriptArguments(retrieval=True, retrieval_method="bm25", raft_gold_fraction=0.5),
        train,
    )
    seen = {"gold": 0, "other": 0}
    for i, row in enumerate(train.sample(40, random_state=1).itertuples()):
        hits, answer = builder.example(row.question, row.key, row.answer, seed=i)
        keys = [h.passage.key for h in hits]
        assert len(hits) <= 3 and [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(k in builder.by_key for k in keys)  # training rows only
        if row.key in keys:
            seen["gold"] += 1
            assert citations(answer) == [keys.index(row.key) + 1]
        else:
            seen["other"] += 1
            assert all(h.passage.document_id != row.document_id for h in hits)
            assert citations(answer) == []
    assert seen["gold"] and seen["other"]
    assert builder.counts["not_covered"] > 0


def test_cite_after_first_sentence():
    from train.sft import cite_after_first_sentence

    assert cite_after_first_sentence("Gout hurts. It swells.", 2) == "Gout hurts [2]. It swells."
    assert cite_after_first_sentence("No full stop", 1) == "No full stop [1]"


# -- evaluation searches a leak-free index ---------------------------------------------------
def test_evaluation_index_leaves_out_every_held_out_row(tmp_path, medquad):
    from medchat.data import write_split
    from medchat.evaluation import EvalConfig, eval_index, retrieval_for

    df, report = medquad
    splits = split_by_group(df, seed=0)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    write_split(adapter / "split.json", splits, source="x", seed=0)
    config = EvalConfig(adapter=str(adapter), retrieval="on", retrieval_method="bm25")
    wanted = retrieval_for(config, str(adapter))
    assert wanted == {"method": "bm25", "k": 3}
    assert retrieval_for(EvalConfig(adapter=str(adapter)), str(adapter)) is None  # as trained
    test_keys = splits["test"]["key"].tolist()[:5]
    index = eval_index(config, str(adapter), wanted, report.sha256, test_keys)
    held = set(splits["test"]["key"]) | set(splits["validation"]["key"])
    assert {p.key for p in index.passages}.isdisjoint(held)
    assert len(index) == len(splits["train"])
    assert index.identity["restricted_to"]
    # Other questions (not MedQuAD's own rows) search the whole library.
    whole = eval_index(config, str(adapter), wanted, "another-sha", [])
    assert len(whole) == len(df)
    with pytest.raises(MedchatError, match="--split test"):
        eval_index(
            EvalConfig(adapter=str(adapter), split="all"), str(adapter), wanted, report.sha256, []
        )


def test_retrieval_summary_fields(tmp_path):
    from medchat.evaluation import summarize

    rows = []
    for i in range(4):
        rows.append(
            {
                "base_cosine": 0.5, "tuned_cosine": 0.6, "base_rouge_l": 0.1,
                "tuned_rouge_l": 0.2, "base_tokens": 10, "tuned_tokens": 12,
                "base_repetition": 0.0, "tuned_repetition": 0.0,
                "base_hit_limit": False, "tuned_hit_limit": i == 0,
                "sources": [{"rank": 1}] if i < 2 else [],
                "topic_hit": i == 0,
                "base_citations": [], "tuned_citations": [[1], [3], [], []][i],
                "base_not_covered": False, "tuned_not_covered": i >= 2,
            }
        )  # fmt: skip
    summary = summarize(pd.DataFrame(rows), embedder="e")
    assert summary["retrieval"] == {"with_sources": 0.5, "mean_sources": 0.5, "topic_hit": 0.25}
    assert summary["tuned"]["citing_share"] == 0.5
    assert summary["tuned"]["citations_valid"] == 0.5  # [3] with one passage is not valid
    assert summary["tuned"]["not_covered_when_no_source"] == 1.0
    assert summary["base"]["citations_valid"] is None
    assert summary["tuned"]["truncation_rate"] == 0.25
    json.dumps(summary)  # summary.json must serialise


def test_style_file_is_next_to_a_trained_adapter_in_the_recipe_record():
    """The shipped recipes that train with sources say so (the style follows from them)."""
    import yaml

    recipe = yaml.safe_load(Path("train/recipes/smollm2-135m-raft.yaml").read_text())
    assert recipe["retrieval"] is True and recipe["retrieval_method"] in retrieval.METHODS


def test_passages_give_way_when_the_prompt_would_not_fit(tmp_path, monkeypatch):
    """A long question keeps fewer passages rather than failing as "too long"."""
    from medchat.prompts import render_ids

    monkeypatch.setitem(retrieval.MIN_SCORE, "bm25", 0.0)  # every matching passage counts

    class Budgeted(_Backend):
        def __init__(self, adapter, tokenizer, budget):
            super().__init__(adapter)
            self.tokenizer, self.budget = tokenizer, budget

        def messages(self, question, history=None, *, max_new_tokens=256, **prompt):
            return build_messages(
                question, history, tokenizer=self.tokenizer, budget=self.budget, **prompt
            )

    from transformers import AutoTokenizer

    from medchat.metrics import bundled_model_dir

    tok = AutoTokenizer.from_pretrained(str(bundled_model_dir()))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    index = Index.build(small_frame(), method="bm25")
    three = Pipeline(Budgeted(tmp_path, tok, 10_000), Settings(retrieval="on"), index=index)
    question = "What causes gout and anemia and asthma attacks?"
    full = three.prepare(question)
    assert len(full.sources) >= 2
    tight = len(render_ids(tok, full.messages)) - 5
    pipeline = Pipeline(Budgeted(tmp_path, tok, tight), Settings(retrieval="on"), index=index)
    turn = pipeline.prepare(question)
    assert turn.error is None and 0 < len(turn.sources) < len(full.sources)
    assert turn.sources == full.sources[: len(turn.sources)]
    assert f"[{len(turn.sources) + 1}]" not in turn.messages[-1]["content"]


def test_a_hub_adapter_without_a_reachable_style_gets_the_legacy_prompt(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert read_style("someone/medchat-adapter-that-is-not-cached") == LEGACY_STYLE


def _run_folder(folder: Path, rows: list[dict], *, retrieval: dict | None) -> Path:
    from medchat.evaluation import summarize

    folder.mkdir(parents=True)
    frame = pd.DataFrame(rows)
    summary = summarize(frame, embedder="test-embedder")
    summary["run"] = {"adapter": f"/x/{folder.name}", "retrieval": retrieval, "index": None}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text("{}")
    return folder


def test_four_systems_table_pairs_every_system_with_the_plain_base(tmp_path):
    from eval.systems import render, systems

    def row(key, base, tuned, **extra):
        return {
            "key": key, "base_cosine": base, "tuned_cosine": tuned, "base_rouge_l": 0.1,
            "tuned_rouge_l": 0.2, "base_tokens": 5, "tuned_tokens": 5, "base_repetition": 0.0,
            "tuned_repetition": 0.0, "base_hit_limit": False, "tuned_hit_limit": False, **extra,
        }  # fmt: skip

    plain = _run_folder(
        tmp_path / "plain", [row("a", 0.5, 0.6), row("b", 0.4, 0.5)], retrieval=None
    )
    extra = {"sources": [], "topic_hit": False, "base_citations": [], "tuned_citations": [],
             "base_not_covered": False, "tuned_not_covered": True}  # fmt: skip
    with_sources = _run_folder(
        tmp_path / "sources",
        [row("b", 0.45, 0.7, **extra), row("a", 0.55, 0.8, **extra)],  # another order
        retrieval={"method": "hybrid", "k": 3},
    )
    rows, facts = systems(plain, with_sources)
    assert [r["system"] for r in rows][0] == "base" and facts["n"] == 2
    assert rows[1]["diff"] == pytest.approx(0.1)  # adapter alone vs base
    assert rows[2]["diff"] == pytest.approx(0.05)  # base + sources, paired by key
    assert rows[3]["diff"] == pytest.approx(0.3) and rows[3]["not_covered"] == 1.0
    table = render(rows, facts, "test")
    assert "| base + sources | 0.500 | +0.050" in table
    other = _run_folder(tmp_path / "other", [row("c", 0.5, 0.5)], retrieval=None)
    with pytest.raises(MedchatError, match="different questions"):
        systems(plain, other)
    # Another adapter's run over the same questions, with the same base answers, adds a row
    # paired with that base; a run whose base answered otherwise is refused.
    second = _run_folder(
        tmp_path / "second", [row("b", 0.4, 0.44), row("a", 0.5, 0.7)], retrieval=None
    )
    rows, facts = systems(plain, with_sources, more=(second,))
    assert len(rows) == 5 and rows[2]["diff"] == pytest.approx(0.12)
    assert rows[3]["system"] == "base + sources"
    # ... and is compared with the plain run's adapter, paired by key: (0.44-0.5 + 0.7-0.6)/2.
    (against,) = facts["against"]
    assert against["cosine"][0] == pytest.approx(0.02) and against["rouge_l"][0] == 0.0
    assert against["reference"] == "adapter `plain`" and against["system"] == "adapter `second`"
    assert "adapter `second` against adapter `plain`, paired: cosine +0.020" in render(
        rows, facts, "test"
    )
    moved = _run_folder(
        tmp_path / "moved", [row("a", 0.9, 0.7), row("b", 0.4, 0.4)], retrieval=None
    )
    with pytest.raises(MedchatError, match="other base answers"):
        systems(plain, with_sources, more=(moved,))


def test_a_fresh_install_reads_the_shipped_vectors_instead_of_encoding_medquad(tmp_path):
    # The shipped MedQuAD and the bundled embedder have their passage vectors in assets/index,
    # so a first question on a new machine (or a Space) does not wait minutes for 16k encodings.
    from medchat.data import DEFAULT_DATA, load_pairs
    from medchat.metrics import Embedder
    from medchat.retrieval.index import vectors_path

    _, report = load_pairs(DEFAULT_DATA)
    embedder_sha = Embedder("bundled").sha256
    path = vectors_path(tmp_path / "empty-cache", report.sha256, embedder_sha)
    repo = Path(__file__).resolve().parent.parent
    assert path.is_file() and path.parent == repo / "assets" / "index", path
