"""Answers and NIH pages in the served app (retrieval on, the shipped library): the shipped
adapter, trained without sources, is served its training prompt; the Chat tab says so before
the answer and lists the pages found under it as further reading, kept out of the conversation
the model reads; a copy of it saved as trained with sources gets the passages in its prompt."""

from __future__ import annotations

import re
import shutil

import pytest

from medchat.prompts import LEGACY_SYSTEM_PROMPT, PromptStyle, build_messages, write_style
from medchat.settings import REPO_ROOT, Settings
from medchat.ui.common import GROUNDING_MARK, SOURCES_MARK

ADAPTER = REPO_ROOT / "assets" / "adapters" / "smollm2-135m-medquad"
TOKENS = 8
QUESTION = "What is glaucoma?"
READING = "📚 **Further reading (not used to write this answer)**"

pytestmark = pytest.mark.embedded


class Spy:
    """The engine, recording the messages of every prompt built."""

    def __init__(self, engine):
        self.engine = engine
        self.prompts: list = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def messages(self, question, history=None, **kwargs):
        msgs = self.engine.messages(question, history, **kwargs)
        self.prompts.append(msgs)
        return msgs


@pytest.fixture(scope="module")
def engine(cache_dir):
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import SMOLLM2

    if not ADAPTER.is_dir():
        pytest.skip("the shipped adapter assets/adapters/smollm2-135m-medquad is missing")
    return Spy(Engine(load_model(SMOLLM2, adapter=str(ADAPTER), cache_dir=cache_dir, device="cpu")))


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("sources")
    return Settings(
        profile="smollm2-135m",
        max_new_tokens=TOKENS,
        data_dir=root / "data",
        runs_dir=root / "runs",
        eval_data=str(root / "none.csv"),
        retrieval="on",
    )


def test_chat_answer_lists_the_nih_pages_found_and_the_next_turn_leaves_them_out(client, engine):
    reply = client.predict(QUESTION, 0.0, 0.9, TOKENS, True, api_name="/chat")
    assert reply.startswith(f"{GROUNDING_MARK} this answer is the model's own"), reply[:300]
    answer, mark, block = reply.partition(SOURCES_MARK)
    assert mark and answer.strip(), reply
    assert block.startswith(READING.removeprefix("📚 "))
    assert re.search(r'<a href="https?://[^"]*glaucoma[^"]*"', block, re.IGNORECASE), block
    # The prompt is the one the shipped adapter was trained with: no sources block.
    assert engine.prompts[-1] == build_messages(QUESTION, system=LEGACY_SYSTEM_PROMPT)
    # The model's next prompt holds the earlier answer without the warning and the pages.
    from medchat.pipeline import as_pipeline
    from medchat.ui.chat_handlers import make_chat_fn
    from medchat.ui.chat_messages import cut_off_mark
    from medchat.ui.common import without_warning

    pipeline = as_pipeline(engine, Settings(retrieval="on", max_new_tokens=TOKENS))
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": reply},
    ]
    follow = list(make_chat_fn(pipeline, pipeline.settings)("How is glaucoma treated?", history))
    assert SOURCES_MARK in follow[-1]
    earlier = engine.prompts[-1][-2]
    assert earlier["role"] == "assistant"
    said = without_warning(answer).strip().removesuffix(cut_off_mark(TOKENS)).strip()
    assert earlier["content"] == said.replace("&lt;", "<")  # without the app's cut-off mark


def test_a_drug_question_says_first_that_the_answer_is_the_models_own(client, engine):
    reply = client.predict(
        "What is the maximum daily dose of ibuprofen for adults?",
        0.0,
        0.9,
        TOKENS,
        True,
        api_name="/chat",
    )
    assert reply.startswith(GROUNDING_MARK), reply
    assert engine.prompts[-1][-1]["content"] == (
        "What is the maximum daily dose of ibuprofen for adults?"
    )


def test_compare_says_once_above_both_answers_what_their_prompt_had(client):
    job = client.submit(QUESTION, 0.0, 0.9, TOKENS, True, api_name="/compare")
    answer_a, answer_b, notice, *_ = job.result()
    assert answer_a.strip() and answer_b.strip()
    assert notice.startswith(GROUNDING_MARK) and READING in notice
    assert "glaucoma" in notice.lower()


def test_a_copy_saved_as_trained_with_sources_gets_them_in_its_prompt(cache_dir, tmp_path):
    """The same weights with a prompt style that says they were trained with sources."""
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.pipeline import as_pipeline
    from medchat.profiles import SMOLLM2
    from medchat.ui.chat_handlers import make_chat_fn

    folder = tmp_path / "with-sources"
    shutil.copytree(ADAPTER, folder)
    method = Settings().retrieval_method
    style = PromptStyle(system=LEGACY_SYSTEM_PROMPT, retrieval={"method": method, "k": 2})
    write_style(folder, style)
    copy = Engine(load_model(SMOLLM2, adapter=str(folder), cache_dir=cache_dir, device="cpu"))
    pipeline = as_pipeline(copy, Settings(max_new_tokens=TOKENS))
    turn = pipeline.prepare(QUESTION)
    assert len(turn.sources) == 2 and turn.prompt_style == style.id
    assert turn.messages[-1]["content"].startswith("Sources:\n[1] ")
    reply = list(make_chat_fn(pipeline, pipeline.settings)(QUESTION, []))[-1]
    assert not reply.startswith(GROUNDING_MARK) and "📚 **Sources" in reply
