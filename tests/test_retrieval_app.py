"""Answers with NIH sources in the served app (retrieval on, the default index): the Chat tab
shows the sources under the answer and keeps them out of the conversation the model reads,
and Compare shows the sources both sides read."""

from __future__ import annotations

import re

import pytest

from medchat.settings import REPO_ROOT, Settings
from medchat.ui.common import SOURCES_MARK

ADAPTER = REPO_ROOT / "assets" / "adapters" / "smollm2-135m-medquad"
TOKENS = 8
QUESTION = "What is glaucoma?"

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


def test_chat_answer_lists_its_nih_sources_and_the_next_turn_leaves_them_out(client, engine):
    reply = client.predict(QUESTION, 0.0, 0.9, TOKENS, True, api_name="/chat")
    answer, mark, block = reply.partition(SOURCES_MARK)
    assert mark and answer.strip(), reply
    assert re.search(r'\[1\] <a href="https?://[^"]*glaucoma[^"]*"', block, re.IGNORECASE), block
    prompt = engine.prompts[-1]
    assert prompt[-1]["content"].startswith("Sources:\n[1] ")
    assert prompt[-1]["content"].endswith(f"Question: {QUESTION}")
    # The model's next prompt holds the earlier answer without the sources block.
    from medchat.pipeline import as_pipeline
    from medchat.ui.chat import make_chat_fn

    pipeline = as_pipeline(engine, Settings(retrieval="on", max_new_tokens=TOKENS))
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": reply},
    ]
    follow = list(make_chat_fn(pipeline, pipeline.settings)("How is it treated?", history))
    assert SOURCES_MARK in follow[-1]
    earlier = engine.prompts[-1][-2]
    assert earlier["role"] == "assistant" and earlier["content"] == answer.strip()


def test_a_question_the_library_does_not_cover_says_so(client, engine):
    reply = client.predict(
        "What is the maximum daily dose of ibuprofen for adults?",
        0.0,
        0.9,
        TOKENS,
        True,
        api_name="/chat",
    )
    assert f"{SOURCES_MARK}: none." in reply and "not grounded" in reply
    assert engine.prompts[-1][-1]["content"].startswith("Sources: none of my sources match")


def test_compare_shows_the_sources_both_sides_read(client):
    job = client.submit(QUESTION, 0.0, 0.9, TOKENS, True, api_name="/compare")
    answer_a, answer_b, notice, *_ = job.result()
    assert answer_a.strip() and answer_b.strip()
    assert notice.startswith(SOURCES_MARK.strip()) and "glaucoma" in notice.lower()
