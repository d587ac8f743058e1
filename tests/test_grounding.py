"""Every adapter is served the prompt it was trained with, and the reader sees first whether an
answer is grounded in NIH text.

- The pipeline: NIH passages enter the prompt only for an adapter trained with them (or the
  base model alone, by the retrieval setting); an adapter trained without them (the shipped
  one) gets its training prompt, and the passages found are further reading.
- The presenter and its renderings: the warning before an answer, the headings under it,
  pages listed once, pointers and archived pages, escaping, and general information after an
  emergency notice as NIH text word for word.
- The records: votes, ratings, thumbs and evaluation runs keep the prompt style and the
  passages in the prompt; old review databases are migrated.
- The default app and CLI with nothing pinned, on the real embedded model, and one screenshot.

The NIH library is a stand-in here (FakeIndex: hits with the `covered` and `archived` fields),
so these tests say what the reader sees whatever the index finds.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pytest
from conftest import SHIPPED_ADAPTER, served

from medchat.engine import GenerationParams
from medchat.pipeline import GENERAL_INFO_HEADING, Pipeline
from medchat.presenter import (
    CITED_HEADING,
    MODEL_OWN,
    NO_NIH_TEXT,
    NOT_IN_LIBRARY,
    NOT_USED,
    READING_HEADING,
    SOURCES_HEADING,
    present,
    present_general_info,
)
from medchat.prompts import (
    LEGACY_STYLE,
    LEGACY_SYSTEM_PROMPT,
    PromptStyle,
    adapter_style,
    build_messages,
    render_text,
    write_style,
)
from medchat.settings import ENV_VARS, Settings
from medchat.ui.common import (
    GROUNDING_MARK,
    SOURCES_MARK,
    general_info_markdown,
    under_answer_markdown,
)

QUESTION = "What is glaucoma?"
EMERGENCY = "My dad has crushing chest pain and is sweating right now"
SOURCES_STYLE = PromptStyle(
    system="Answer from the NIH sources.", retrieval={"method": "bm25", "k": 3}
)
embedded = pytest.mark.embedded


# -- a stand-in NIH library ----------------------------------------------------------------------
@dataclass(frozen=True)
class FakePassage:
    key: str
    title: str
    text: str
    url: str = ""
    source: str = ""
    question: str = ""
    archived: bool = False

    @property
    def label(self) -> str:
        return f"{self.title} ({self.source})" if self.source else self.title


@dataclass(frozen=True)
class FakeHit:
    passage: FakePassage
    score: float = 0.9
    rank: int = 1
    covered: bool = True


class FakeIndex:
    def __init__(self, hits):
        self.hits = list(hits)
        self.queries: list[str] = []
        self.contexts: list[list[str]] = []  # the earlier messages each search was given

    def search(self, query, k=3, **kwargs):
        self.queries.append(query)
        return list(self.hits[:k])

    def in_context(self, query, earlier=()):
        self.contexts.append(list(earlier))
        return query


def glaucoma_hits() -> list[FakeHit]:
    """Two passages of one NEI page, an archived page, and a drug page the library lacks."""
    nei = "https://www.nei.nih.gov/glaucoma"
    return [
        FakeHit(FakePassage("k1", "Glaucoma", "Glaucoma damages the optic nerve.", nei, "NEI")),
        FakeHit(FakePassage("k2", "Glaucoma", "Eye pressure is a risk.", nei, "NEI"), rank=2),
        FakeHit(
            FakePassage(
                "k3",
                "Glaucoma",
                "Regular eye exams find it early.",
                "https://web.archive.org/web/2017/http://nihseniorhealth.gov/glaucoma",
                "NIHSeniorHealth",
                archived=True,
            ),
            rank=3,
        ),
        FakeHit(
            FakePassage("k4", "Timolol", "", "https://medlineplus.gov/druginfo/timolol.html"),
            rank=0,
            covered=False,
        ),
    ]


class FakeBackend:
    """Only what prepare() uses: prompts built by the one builder, no model."""

    name = "local"

    def __init__(self, adapter=None):
        self.adapter = str(adapter) if adapter else None
        self.has_adapter = adapter is not None

    def adapter_style(self):
        return adapter_style(self.adapter)

    def messages(self, question, history=None, *, max_new_tokens=256, **prompt):
        return build_messages(question, history, **prompt)


def legacy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "legacy-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    return folder


def sources_folder(tmp_path: Path, style: PromptStyle = SOURCES_STYLE) -> Path:
    folder = tmp_path / "sources-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    write_style(folder, style)
    return folder


# -- 1. the prompt each adapter is served ------------------------------------------------------
def test_style_ids_are_short_stable_and_name_the_retrieval():
    assert LEGACY_STYLE.id == "legacy"
    again = PromptStyle(system=SOURCES_STYLE.system, retrieval=dict(SOURCES_STYLE.retrieval))
    assert SOURCES_STYLE.id == again.id and SOURCES_STYLE.id.startswith("sources:bm25:k3-")
    assert PromptStyle(system="Other.").id.startswith("plain-")
    assert PromptStyle(system="Other.").id != PromptStyle(system="Other!").id
    assert SOURCES_STYLE.served(None).id.startswith("plain-")
    assert LEGACY_STYLE.served({"method": "hybrid", "k": 3}).id.startswith("sources:hybrid:k3-")
    assert SOURCES_STYLE.served({"method": "bm25", "k": 3}) == SOURCES_STYLE


@pytest.mark.parametrize("retrieval", ["auto", "on"])
def test_an_adapter_trained_without_sources_gets_its_training_prompt(tmp_path, retrieval):
    """The shipped kind of adapter: no sources block, ever; what was found is further reading."""
    index = FakeIndex(glaucoma_hits())
    pipeline = Pipeline(
        FakeBackend(legacy_folder(tmp_path)), Settings(retrieval=retrieval), index=index
    )
    turn = pipeline.prepare(QUESTION)
    assert turn.messages == build_messages(QUESTION, system=LEGACY_SYSTEM_PROMPT)
    assert turn.sources is None and turn.reading == tuple(glaucoma_hits()[:3])
    assert index.queries == [QUESTION]  # still looked up, for the reader
    assert turn.record() == {
        "prompt_style": "legacy",
        "sources_in_prompt": False,
        "prompt_sources": [],
    }


def test_a_chat_turn_is_searched_with_the_persons_earlier_messages(tmp_path):
    index = FakeIndex(glaucoma_hits())
    pipeline = Pipeline(FakeBackend(legacy_folder(tmp_path)), Settings(), index=index)
    history = [
        {"role": "user", "content": "What is glaucoma?"},
        {"role": "assistant", "content": "Glaucoma is a group of eye diseases."},
    ]
    pipeline.prepare("Is it inherited?", history)
    pipeline.prepare("What is glaucoma?")
    assert index.contexts == [["What is glaucoma?"], []]


def test_an_adapter_trained_with_sources_gets_them_but_never_a_page_the_library_lacks(tmp_path):
    hits = glaucoma_hits()
    index = FakeIndex([hits[3], hits[0], hits[1]])  # the pointer ranked first
    pipeline = Pipeline(FakeBackend(sources_folder(tmp_path)), Settings(), index=index)
    turn = pipeline.prepare(QUESTION)
    expected = build_messages(
        QUESTION,
        system=SOURCES_STYLE.system,
        passages=[hits[0], hits[1]],
        sources_instruction=SOURCES_STYLE.sources_instruction,
    )
    assert turn.messages == expected
    assert "Timolol" not in json.dumps(turn.messages)
    assert turn.sources == (hits[0], hits[1]) and turn.reading == (hits[3],)
    record = turn.record()
    assert record["prompt_style"] == SOURCES_STYLE.id and record["sources_in_prompt"] is True
    assert record["prompt_sources"] == [
        {"key": "k1", "url": hits[0].passage.url},
        {"key": "k2", "url": hits[1].passage.url},
    ]


def test_the_base_model_alone_follows_the_retrieval_setting():
    hits = glaucoma_hits()
    for retrieval in ("auto", "on"):
        turn = Pipeline(
            FakeBackend(), Settings(retrieval=retrieval), index=FakeIndex(hits)
        ).prepare(QUESTION)
        assert turn.sources == tuple(hits[:3]) and turn.reading == ()
        assert turn.messages[-1]["content"].startswith("Sources:\n[1] Glaucoma (NEI)")
        assert turn.prompt_style.startswith(f"sources:{Settings().retrieval_method}:k3-")
    off = Pipeline(FakeBackend(), Settings(retrieval="off"), index=FakeIndex(hits))
    turn = off.prepare(QUESTION)
    assert turn.sources is None and turn.reading is None
    assert turn.messages[-1]["content"] == QUESTION


def test_retrieval_off_searches_nothing_even_for_an_adapter_trained_with_sources(tmp_path, caplog):
    index = FakeIndex(glaucoma_hits())
    with caplog.at_level("WARNING", logger="medchat.pipeline"):
        pipeline = Pipeline(
            FakeBackend(sources_folder(tmp_path)), Settings(retrieval="off"), index=index
        )
    assert "trained with NIH sources" in caplog.text
    turn = pipeline.prepare(QUESTION)
    assert index.queries == [] and turn.sources is None and turn.reading is None
    assert turn.messages == build_messages(QUESTION, system=SOURCES_STYLE.system)
    assert turn.prompt_style == SOURCES_STYLE.served(None).id != SOURCES_STYLE.id
    assert present(turn).warning == MODEL_OWN


# -- 2. what the reader sees --------------------------------------------------------------------
def turn_with(sources=None, reading=None):
    from medchat.pipeline import Turn

    return Turn(QUESTION, None, GenerationParams(), sources=sources, reading=reading)


def test_the_warning_says_why_an_answer_has_no_nih_text():
    hits = glaucoma_hits()
    assert present(turn_with(sources=tuple(hits[:2]))).warning == ""
    assert present(turn_with()).warning == MODEL_OWN  # nothing looked up
    assert present(turn_with(reading=tuple(hits))).warning == NOT_USED
    assert present(turn_with(sources=())).warning == NOT_IN_LIBRARY
    # Only a page the library lacks: still no NIH text covers it.
    assert present(turn_with(reading=(hits[3],))).warning == NOT_IN_LIBRARY
    assert "no NIH page in medchat's library covers this question" in NOT_IN_LIBRARY


def test_the_sources_heading_promises_numbers_only_when_the_answer_cites_them():
    turn = turn_with(sources=tuple(glaucoma_hits()[:2]))
    assert present(turn, "It harms the optic nerve [1].").groups[0].heading == CITED_HEADING
    assert present(turn, "It harms the optic nerve.").groups[0].heading == SOURCES_HEADING
    assert present(turn, "See [7].").groups[0].heading == SOURCES_HEADING  # no such source
    pair = present(turn, ["No citation.", "Pressure [2]."]).groups[0].heading
    assert pair.startswith("Sources (the numbers match")
    block = under_answer_markdown(present(turn, "Plain."))
    assert "numbers match" not in block and block.startswith(f"{SOURCES_MARK}**Sources**")


def test_a_page_shows_once_and_pointers_and_archived_pages_say_what_they_are():
    hits = glaucoma_hits()
    turn = turn_with(sources=tuple(hits[:3]), reading=(hits[3],))
    block = under_answer_markdown(present(turn, "Damage [1]; pressure [2]."))
    assert block.count('href="https://www.nei.nih.gov/glaucoma"') == 1
    assert "[1, 2] <a" in block  # one page, both passages and both numbers
    assert "Glaucoma damages the optic nerve." in block and "Eye pressure is a risk." in block
    assert "[3] <a" in block and "NIHSeniorHealth)</a> (archived page)" in block
    heading = f"{SOURCES_MARK}**{READING_HEADING}**"
    assert heading in block and block.index(heading) > block.index("[3]")
    assert (
        "Not covered by the NIH library here; see "
        '<a href="https://medlineplus.gov/druginfo/timolol.html" target="_blank" '
        'rel="noopener">Timolol</a> on MedlinePlus.'
    ) in block
    # Further reading repeats nothing listed as a source.
    again = under_answer_markdown(present(turn_with(sources=(hits[0],), reading=(hits[1],))))
    assert READING_HEADING not in again


def test_a_reader_sees_the_sites_name_and_the_prompt_keeps_medquads_code():
    from medchat.prompts import format_sources

    noonan = "https://medlineplus.gov/genetics/condition/noonan-syndrome/"
    ghr = FakePassage("k5", "Noonan syndrome", "Noonan syndrome is a disorder.", noonan, "GHR")
    gout = "https://medlineplus.gov/gout.html"
    plus = FakePassage("k6", "Gout", "Gout is arthritis.", gout, "MPlusHealthTopics")
    turn = turn_with(sources=(FakeHit(ghr), FakeHit(plus, rank=2)))
    block = under_answer_markdown(present(turn, "It is a disorder [1] and arthritis [2]."))
    assert "Noonan syndrome (MedlinePlus Genetics)</a>" in block
    assert "Gout (MedlinePlus)</a>" in block and "MPlusHealthTopics" not in block
    # The adapters trained with sources read the code: their prompt is unchanged.
    assert "Noonan syndrome (GHR)" in format_sources([ghr, plus])


def test_every_text_from_the_library_is_escaped():
    evil = FakeHit(
        FakePassage(
            "x",
            'Bad <img src=x onerror="alert(1)">',
            "Take <script>alert(1)</script> daily.",
            'https://example.org/"><script>',
            "<b>Site</b>",
        )
    )
    script = FakeHit(FakePassage("y", "Scripted", "Text.", "javascript:alert(1)"))
    for rendered in (
        under_answer_markdown(present(turn_with(sources=(evil, script)))),
        under_answer_markdown(present(turn_with(reading=(evil, script)))),
        general_info_markdown(present_general_info(turn_with(reading=(evil, script)))),
    ):
        assert "<script>" not in rendered and "<img" not in rendered and "<b>" not in rendered
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered
        assert "javascript:" not in rendered.replace("Scripted", "")  # shown, never linked
        assert 'href="https://example.org/&quot;&gt;&lt;script&gt;"' in rendered


@pytest.fixture
def prompts_served(monkeypatch):
    """Every conversation the local backend generates from (stream and stream_pair)."""
    from medchat.backends.local import LocalBackend

    seen: list = []
    for name in ("stream", "stream_pair"):
        real = getattr(LocalBackend, name)

        def spy(self, messages, *args, _real=real, **kwargs):
            seen.append(list(messages))
            return _real(self, messages, *args, **kwargs)

        monkeypatch.setattr(LocalBackend, name, spy)
    return seen


# -- 3. the Chat tab ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sources_engine(tiny_llama_profile, tiny_llama_adapter, cache_dir, tmp_path_factory):
    """The tiny Llama with a copy of its adapter saved as trained with sources."""
    from medchat.engine import Engine
    from medchat.loading import load_model

    folder = tmp_path_factory.mktemp("styled") / "llama-lora-sources"
    shutil.copytree(tiny_llama_adapter, folder)
    write_style(folder, SOURCES_STYLE)
    return Engine(load_model(tiny_llama_profile, str(folder), cache_dir=cache_dir, device="cpu"))


def tiny(engine, tmp_path, hits=None, **settings) -> Pipeline:
    from medchat.backends.local import LocalBackend

    settings = {"retrieval_k": 4, **settings}  # the page the library lacks is found too
    settings = Settings(data_dir=tmp_path / "data", max_new_tokens=6, **settings)
    index = FakeIndex(glaucoma_hits() if hits is None else hits)
    return Pipeline(LocalBackend(engine), settings, index=index)


def test_chat_warns_before_an_answer_written_without_nih_text(llama_engine, tmp_path):
    from medchat.ui.chat_handlers import chat_alert, make_chat_fn
    from medchat.ui.chat_messages import model_history

    pipeline = tiny(llama_engine, tmp_path)  # a random adapter saved without a style: legacy
    replies = list(make_chat_fn(pipeline, pipeline.settings)(QUESTION, []))
    first, final = replies[0], replies[-1]
    assert first == f"{GROUNDING_MARK} {NOT_USED}"  # before the first token
    answer, mark, under = final[len(first) :].strip().partition(SOURCES_MARK)
    assert final.startswith(first) and answer.strip() and mark
    assert under.startswith(f"**{READING_HEADING}**") and "nei.nih.gov/glaucoma" in under
    alert, _ = chat_alert(
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": final}]
    )
    assert not alert.visible  # the warning is no emergency alert
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": final}]
    # 6 tokens: cut off, and marked so; the model reads the answer without the mark.
    shown, _, cut = answer.strip().rpartition("\n\n")
    assert cut == "_(cut off at 6 tokens)_"
    assert model_history(history)[-1] == {
        "role": "assistant",
        "content": shown.replace("&lt;", "<"),
    }

    nothing = tiny(llama_engine, tmp_path, hits=[glaucoma_hits()[3]])
    reply = list(make_chat_fn(nothing, nothing.settings)("What is the dose of timolol?", []))[-1]
    assert reply.startswith(f"{GROUNDING_MARK} no NIH page in medchat's library covers this")
    assert "Not covered by the NIH library here; see" in reply


def test_chat_with_an_adapter_trained_with_sources_lists_them_and_warns_of_nothing(
    sources_engine, tmp_path, prompts_served
):
    from medchat.ui.chat_handlers import make_chat_fn

    pipeline = tiny(sources_engine, tmp_path)
    seen = prompts_served
    reply = list(make_chat_fn(pipeline, pipeline.settings)(QUESTION, []))[-1]
    assert not reply.startswith(GROUNDING_MARK)
    assert seen[-1][0]["content"].startswith(SOURCES_STYLE.system)
    assert seen[-1][-1]["content"].startswith("Sources:\n[1] Glaucoma (NEI): Glaucoma damages")
    assert f"{SOURCES_MARK}**Sources" in reply and "[1, 2] <a" in reply


# -- 4. general information after an emergency notice -----------------------------------------
def test_general_information_is_nih_text_word_for_word_and_never_the_models(
    fresh_llama_engine, tmp_path
):
    from medchat.ui.chat_handlers import chat_alert, make_chat_fn, make_general_info_fn
    from medchat.ui.chat_messages import model_history

    pipeline = tiny(fresh_llama_engine, tmp_path)
    held = list(make_chat_fn(pipeline, pipeline.settings)(EMERGENCY, []))[-1]
    history = [{"role": "user", "content": EMERGENCY}, {"role": "assistant", "content": held}]
    after = list(make_general_info_fn(pipeline, pipeline.settings)(history))[-1]
    text = after[-1]["content"]
    assert text.startswith(GENERAL_INFO_HEADING)
    assert "> Glaucoma damages the optic nerve." in text and "> Eye pressure is a risk." in text
    assert 'href="https://www.nei.nih.gov/glaucoma"' in text and "(archived page)" in text
    assert "Not covered by the NIH library here; see" in text
    assert fresh_llama_engine.generations_started == 0, "the model wrote general information"
    alert, button = chat_alert(after)
    assert alert.visible and not button.visible  # the emergency alert stays up
    assert model_history(after) == []  # NIH text the app showed is not the model's

    nothing = tiny(fresh_llama_engine, tmp_path, retrieval="off")
    text = list(make_general_info_fn(nothing, nothing.settings)(history))[-1][-1]["content"]
    assert text == f"{GENERAL_INFO_HEADING}\n\n{NO_NIH_TEXT}"
    assert "call your local emergency number now" in text
    assert fresh_llama_engine.generations_started == 0


def test_compare_general_information_is_nih_text_and_nothing_to_vote_on(
    fresh_llama_engine, tmp_path
):
    from medchat.reviews import ReviewStore
    from medchat.ui.common import ReferenceBook
    from medchat.ui.compare import make_compare_fns

    pipeline = tiny(fresh_llama_engine, tmp_path)
    with ReviewStore(tmp_path / "reviews.db") as store:
        compare, _, _ = make_compare_fns(
            pipeline, pipeline.settings, store, ReferenceBook(pipeline, pipeline.settings)
        )
        a, b, notice, _, _, pending = list(compare(EMERGENCY, general_info=True))[-1]
    assert (a, b, pending) == ("", "", None)
    assert notice.startswith("⚠️ **This may be an emergency.**")
    assert GENERAL_INFO_HEADING in notice and "> Glaucoma damages the optic nerve." in notice
    assert fresh_llama_engine.generations_started == 0


def test_cli_general_information_prints_nih_text_with_links(fresh_llama_engine, tmp_path, capsys):
    from medchat import __main__ as cli

    pipeline = tiny(fresh_llama_engine, tmp_path)
    cli.run_chat(pipeline, EMERGENCY, sys.stdout, general_info=True)
    out = capsys.readouterr().out
    _, _, rest = out.partition(cli.ALERT_RULE + "\n\n")
    assert rest.startswith("General information, not advice for your situation.")
    assert "Glaucoma (NEI) <https://www.nei.nih.gov/glaucoma>\n  Glaucoma damages the optic" in out
    assert "(archived page)" in out and out.rstrip().endswith(cli.DISCLAIMER)
    assert fresh_llama_engine.generations_started == 0
    cli.run_chat(
        tiny(fresh_llama_engine, tmp_path, retrieval="off"),
        EMERGENCY,
        sys.stdout,
        general_info=True,
    )
    assert NO_NIH_TEXT in capsys.readouterr().out


# -- 5. records ---------------------------------------------------------------------------------
def test_a_vote_records_the_one_prompt_both_sides_answered(llama_engine, sources_engine, tmp_path):
    from medchat.reviews import ReviewStore
    from medchat.ui.common import ReferenceBook
    from medchat.ui.compare import make_compare_fns

    with ReviewStore(tmp_path / "reviews.db") as store:
        for engine in (llama_engine, sources_engine):
            pipeline = tiny(engine, tmp_path)
            refs = ReferenceBook(pipeline, pipeline.settings)
            compare, after, vote = make_compare_fns(pipeline, pipeline.settings, store, refs)
            *_, notice, _, _, pending = list(compare(QUESTION, blind=False))[-1]
            vote("tie", "tester", pending)
            if engine is llama_engine:
                assert notice.startswith(f"{GROUNDING_MARK} {NOT_USED}")
                assert f"{SOURCES_MARK}**{READING_HEADING}**" in notice
            else:
                assert not notice.startswith(GROUNDING_MARK) and "**Sources" in notice
        legacy, grounded = store.votes()
    assert (legacy["prompt_style"], legacy["sources_in_prompt"]) == ("legacy", 0)
    assert json.loads(legacy["prompt_sources"]) == []
    assert (grounded["prompt_style"], grounded["sources_in_prompt"]) == (SOURCES_STYLE.id, 1)
    assert [s["key"] for s in json.loads(grounded["prompt_sources"])] == ["k1", "k2", "k3"]


def test_a_thumb_records_the_prompt_behind_the_answer(sources_engine, tmp_path):
    from medchat.reviews import ReviewStore
    from medchat.ui.chat_handlers import make_chat_fn, make_feedback_fn

    pipeline = tiny(sources_engine, tmp_path)
    reply = list(make_chat_fn(pipeline, pipeline.settings)(QUESTION, []))[-1]
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": reply}]
    liked = gr.LikeData(None, {"index": 1, "value": reply, "liked": True})
    with ReviewStore(tmp_path / "reviews.db") as store:
        make_feedback_fn(pipeline, store)(history, True, liked, gr.Request(), None, 0.0, 0.9, 6)
        row = store.feedback()[-1]
    assert row["answer"] == reply.partition(SOURCES_MARK)[0].strip()
    assert row["prompt_style"] == SOURCES_STYLE.id and row["sources_in_prompt"] == 1
    assert [s["key"] for s in json.loads(row["prompt_sources"])] == ["k1", "k2", "k3"]


def _v2_database(path: Path) -> None:
    """A review database as schema version 2 wrote it, with one row in each table."""
    from medchat.reviews import MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    for version in (0, 1):
        MIGRATIONS[version](conn)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO votes (created_at, question, answer_a, answer_b, a_is, vote, winner, "
        "params, model, adapter) VALUES ('t', 'q', 'a', 'b', 'base', 'A', 'base', '{}', 'm', 'x')"
    )
    conn.execute(
        "INSERT INTO ratings (created_at, updated_at, source, item_id, side, question, answer, "
        "rating) VALUES ('t', 't', 'compare', '1', 'base', 'q', 'a', 3)"
    )
    conn.execute(
        "INSERT INTO feedback (created_at, question, answer, liked, model, adapter) "
        "VALUES ('t', 'q', 'a', 1, 'm', 'x')"
    )
    conn.close()


def test_an_old_review_database_gains_the_prompt_columns_and_the_export_has_them(tmp_path):
    from medchat.review_stats import export
    from medchat.reviews import PROMPT_COLUMNS, SCHEMA_VERSION, ReviewStore

    path = tmp_path / "reviews.sqlite"
    _v2_database(path)
    record = {
        "prompt_style": "legacy",
        "sources_in_prompt": True,
        "prompt_sources": [{"key": "k1", "url": "https://www.nei.nih.gov/glaucoma"}],
    }
    with ReviewStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 4  # migrated to the newest
        for rows in (store.votes(), store.ratings(), store.feedback()):
            assert [rows[0][c] for c in PROMPT_COLUMNS] == [None, None, None]  # unknown
        store.add_vote(
            question="q", answer_a="a", answer_b="b", a_is="tuned", vote="B", params={},
            model="m", adapter="x", prompt=record,
        )  # fmt: skip
        store.add_rating(
            source="compare", item_id="2", side="tuned", question="q", answer="a", rating=4,
            prompt=record | {"sources_in_prompt": False, "prompt_sources": None},
        )  # fmt: skip
        store.add_feedback(
            question="q", answer="a", liked=False, model="m", adapter="x", prompt=record
        )
        assert store.votes()[-1]["prompt_sources"] == json.dumps(record["prompt_sources"])
        assert store.ratings()[-1]["prompt_sources"] == "[]"  # no sources block: an empty list
        assert store.feedback()[-1]["sources_in_prompt"] == 1
        for kind in ("votes", "ratings", "feedback"):
            rows = list(csv.DictReader(store.export_csv(kind, tmp_path / f"{kind}.csv").open()))
            assert set(PROMPT_COLUMNS) <= set(rows[-1]) and rows[-1]["prompt_style"] == "legacy"
        paths = export(store, tmp_path / "study")
    import pyarrow.parquet as pq

    for name in ("votes", "ratings"):
        table = pq.read_table(paths[f"{name}.parquet"])
        assert set(PROMPT_COLUMNS) <= set(table.column_names)
    assert "`prompt_sources`" in paths["README.md"].read_text()


def test_ratings_carry_the_prompt_of_their_run_or_vote(tmp_path):
    from medchat.reviews import ReviewStore
    from medchat.ui.review import ReviewQueue

    run = tmp_path / "runs" / "20260101-000000-r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps({"adapter": "gone", "retrieval": {"method": "bm25", "k": 2},
                    "prompt_style": SOURCES_STYLE.id, "sources_in_prompt": True})
    )  # fmt: skip
    record = {
        "key": "k1",
        "question": QUESTION,
        "reference": "r",
        "base_answer": "a",
        "tuned_answer": "b",
        "sources": [{"rank": 1, "key": "p1", "url": "https://u"}],
    }
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    with ReviewStore(tmp_path / "reviews.db") as store:
        store.add_vote(
            question=QUESTION, answer_a="a", answer_b="b", a_is="base", vote="A", params={},
            model="m", adapter="x", prompt={"prompt_style": "legacy", "sources_in_prompt": False},
        )  # fmt: skip
        queue = ReviewQueue((tmp_path / "runs",), store, refs=None)
        items = {(i["source"], i["side"]): i for i in queue.items()}
    from_run = items[(f"eval:{run.name}", "tuned")]["prompt"]
    assert from_run == {
        "prompt_style": SOURCES_STYLE.id,
        "sources_in_prompt": True,
        "prompt_sources": [{"key": "p1", "url": "https://u"}],
    }
    from_vote = items[("compare", "base")]["prompt"]
    assert from_vote == {"prompt_style": "legacy", "sources_in_prompt": False, "prompt_sources": []}


# -- 6. the default app and CLI, nothing pinned, on the real model --------------------------
@pytest.fixture(scope="module")
def shipped_engine(cache_dir):
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import SMOLLM2

    if not SHIPPED_ADAPTER.is_dir():
        pytest.skip("the shipped adapter assets/adapters/smollm2-135m-medquad is missing")
    return Engine(
        load_model(SMOLLM2, adapter=str(SHIPPED_ADAPTER), cache_dir=cache_dir, device="cpu")
    )


@embedded
def test_the_default_app_serves_the_shipped_adapter_its_training_prompt(
    shipped_engine, prompts_served, tmp_path
):
    from gradio_client import Client

    from medchat.reviews import ReviewStore
    from medchat.ui import build_app

    settings = Settings(profile="smollm2-135m", max_new_tokens=6, data_dir=tmp_path / "data")
    assert settings.retrieval == "auto"  # nothing pinned
    trained = render_text(
        shipped_engine.tokenizer, build_messages(QUESTION, system=LEGACY_SYSTEM_PROMPT)
    )
    with (
        ReviewStore(settings.reviews_db) as store,
        served(build_app(shipped_engine, settings, store)) as url,
    ):
        client = Client(url, verbose=False)
        reply = client.predict(QUESTION, 0.0, 0.9, 6, True, api_name="/chat")
        assert render_text(shipped_engine.tokenizer, prompts_served[-1]) == trained
        assert reply.startswith(GROUNDING_MARK)
        *_, notice, _, _ = client.predict(QUESTION, 0.0, 0.9, 6, True, api_name="/compare")
        assert render_text(shipped_engine.tokenizer, prompts_served[-1]) == trained
        assert notice.startswith(GROUNDING_MARK)
        client.predict("tie", "tester", api_name="/vote")
        assert store.votes()[-1]["prompt_style"] == "legacy"
        assert store.votes()[-1]["sources_in_prompt"] == 0


@pytest.fixture
def clean_cli_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@embedded
def test_the_cli_with_nothing_pinned_serves_the_shipped_adapter_its_training_prompt(
    clean_cli_env, prompts_served, cache_dir, capsys
):
    from medchat import __main__ as cli

    args = ["chat", QUESTION, "--max-new-tokens", "6", "--cache-dir", str(cache_dir)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("!! Not from NIH sources: ")
    from transformers import AutoTokenizer

    from medchat.loading import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(cache_dir))
    expected = build_messages(QUESTION, system=LEGACY_SYSTEM_PROMPT)
    assert prompts_served == [expected]
    assert render_text(tokenizer, prompts_served[0]) == render_text(tokenizer, expected)


@embedded
def test_an_adapter_saved_as_trained_with_sources_gets_the_sources_block(
    clean_cli_env, prompts_served, cache_dir, tmp_path, monkeypatch, capsys
):
    from medchat import __main__ as cli
    from medchat import retrieval

    folder = tmp_path / "shipped-with-sources"
    shutil.copytree(SHIPPED_ADAPTER, folder)
    write_style(folder, SOURCES_STYLE)
    hits = glaucoma_hits()
    monkeypatch.setattr(retrieval, "default_index", lambda *a, **k: FakeIndex(hits))
    args = ["chat", QUESTION, "--max-new-tokens", "6", "--cache-dir", str(cache_dir)]
    assert cli.main([*args, "--adapter", str(folder)]) == 0
    out = capsys.readouterr().out
    expected = build_messages(
        QUESTION,
        system=SOURCES_STYLE.system,
        passages=hits[:3],
        sources_instruction=SOURCES_STYLE.sources_instruction,
    )
    assert prompts_served == [expected]
    assert expected[-1]["content"].startswith("Sources:\n[1] Glaucoma (NEI): Glaucoma damages")
    assert not out.startswith("!!") and "\n\nSources" in out
    assert "  [1, 2] Glaucoma (NEI) <https://www.nei.nih.gov/glaucoma>" in out


# -- 7. in a browser --------------------------------------------------------------------------
@pytest.mark.browser
@embedded
def test_in_a_browser_the_warning_is_the_first_thing_an_answer_says(
    playwright_api, browser, shipped_engine, tmp_path
):
    """The default app on the real NIH library: one screenshot (tmp_path/chat-answer.png)."""
    from medchat.reviews import ReviewStore
    from medchat.ui import build_app

    settings = Settings(profile="smollm2-135m", max_new_tokens=48, data_dir=tmp_path / "data")
    with (
        ReviewStore(settings.reviews_db) as store,
        served(build_app(shipped_engine, settings, store)) as url,
    ):
        context = browser.new_context(viewport={"width": 1100, "height": 1300})
        page = context.new_page()
        page.set_default_timeout(180_000)
        try:
            page.goto(url)
            page.fill("#chat-input textarea", QUESTION)
            page.press("#chat-input textarea", "Enter")
            bot = page.locator('#chatbot [data-testid="bot"]').last
            bot.get_by_text("Further reading (not used to write this answer)").wait_for()
            text = bot.inner_text().strip()
            assert text.startswith("⚠️ Not from NIH sources:"), text[:200]
            assert text.index("Not from NIH sources") < text.index("Further reading")
            page.locator("#chatbot").screenshot(path=str(tmp_path / "chat-answer.png"))
        finally:
            context.close()


def test_the_conversation_the_model_reads_holds_its_own_words_only():
    from medchat.safety import notice_for
    from medchat.ui.chat_messages import model_history
    from medchat.ui.common import NOTICE_BREAK

    support = notice_for("self_harm_info")
    shown = f"{support}{NOTICE_BREAK}{GROUNDING_MARK} {NOT_USED}\n\nTalk to someone you trust."
    shown += f"{SOURCES_MARK}**{READING_HEADING}**\n\n<details>...</details>"
    history = [
        {"role": "user", "content": "How can I help a friend who talks about suicide?"},
        {"role": "assistant", "content": shown},
    ]
    assert model_history(history)[-1] == {
        "role": "assistant",
        "content": "Talk to someone you trust.",
    }
