"""Triage inside a request: one embedding of the message shared by triage and retrieval, and
the urgent level's quiet notice shown with the answer through the real app.

.venv/bin/python -m pytest tests/test_triage_pipeline.py -q
"""

from __future__ import annotations

import pytest

from medchat.metrics import Embedder
from medchat.pipeline import Pipeline
from medchat.prompts import adapter_style, build_messages
from medchat.retrieval.questions import analyse
from medchat.safety import classify
from medchat.settings import Settings
from medchat.ui.common import NOTICE_BREAK

STROKE_STORY = (
    "My mum is 81 and lives with my family. She has arthritis in her knees and takes tablets "
    "for her blood pressure. When she woke from her nap just now the left side of her face "
    "was drooping and her words were slurred. What should we do?"
)
# A message that needs a doctor within a day, not an ambulance. One sentence: the part-by-part
# method gives it the urgent level. Told as a story of several sentences, the story judge reads
# it too (it may lower the parts' level, never raise it).
URGENT = (
    "Since yesterday the skin around a scratch on my shin has become red, warm and swollen, "
    "and the redness has spread a few centimetres, what can I do?"
)
URGENT_STORY = (
    "I'm 34. Since yesterday the skin around a scratch on my shin has become red, warm and "
    "swollen, and the redness has spread a few centimetres. I have no fever and feel well "
    "otherwise. What should I do?"
)


class Backend:
    """Only what Pipeline.prepare uses: prompts from the one builder, no model."""

    name = "local"
    adapter = None
    has_adapter = False

    def adapter_style(self):
        return adapter_style(self.adapter)

    def messages(self, question, history=None, *, max_new_tokens=256, **prompt):
        return build_messages(question, history, **prompt)


@pytest.fixture(scope="module")
def library():
    from medchat.retrieval import load_index

    return load_index(method="topic")


@pytest.mark.parametrize("question", ["What is glaucoma?", STROKE_STORY])
def test_a_request_encodes_the_message_once_and_decides_the_same(monkeypatch, library, question):
    pipeline = Pipeline(Backend(), Settings(retrieval="on"), index=library)
    alone_flag = classify(question)  # each step on its own, nothing shared
    alone_hits = library.search(question, k=pipeline.retrieval_k)
    encoded: list[str] = []
    real = Embedder._encode

    def counting(self, texts, batch_size):
        encoded.extend(texts)
        return real(self, texts, batch_size)

    monkeypatch.setattr(Embedder, "_encode", counting)
    turn = pipeline.prepare(question)
    asked = analyse(question).query
    assert encoded.count(question) == 1  # triage's whole-message part
    assert encoded.count(asked) == 1  # retrieval's query: one of triage's parts, or the message
    assert (turn.flag is None) == (alone_flag is None)
    if alone_flag is not None:
        assert (turn.flag.category, turn.flag.level) == (alone_flag.category, alone_flag.level)
        assert turn.flag.score == pytest.approx(alone_flag.score, abs=1e-4)
    if question == STROKE_STORY:
        return  # retrieval asks its question sentence, which triage encoded among the parts
    # The same pages. Alone, retrieval embedded the question twice (alone, and in a batch with
    # MedQuAD's questions, whose padding changes the last bits); shared, it uses one vector,
    # so the relevance of near-tied pages, and their order, may move a little.
    alone = {h.passage.key for h in alone_hits if h.covered}
    assert alone and {h.passage.key for h in turn.sources} == alone


# -- through the real app ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(shipped_engine):
    return shipped_engine


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("urgent-app")
    return Settings(
        profile="smollm2-135m",
        max_new_tokens=12,
        data_dir=root / "data",
        runs_dir=root / "runs",
        retrieval="off",
    )


def test_urgent_message_is_classified_urgent():
    flag = classify(URGENT)
    assert flag is not None and flag.level == "urgent" and flag.allow_answer
    story = classify(URGENT_STORY)
    assert story is not None and story.level == "urgent" and story.allow_answer


@pytest.mark.embedded
def test_an_urgent_message_gets_the_quiet_notice_and_the_answer(client, engine):
    before = engine.generations_started
    reply = client.predict(URGENT, 0.0, 0.9, 12, True, api_name="/chat")
    notice, _, answer = reply.partition(NOTICE_BREAK)
    assert notice == classify(URGENT).notice and notice.startswith("🩺 **Worth seeing a doctor")
    assert answer.strip() and not answer.startswith(("⛔", "🛑"))  # the model's answer follows
    assert engine.generations_started == before + 1
    from medchat.ui.chat_handlers import alert_updates
    from medchat.ui.chat_messages import model_view

    alert, button = alert_updates(reply)
    assert not alert.visible and not button.visible  # quiet: no red alert, nothing held
    assert model_view(reply) and model_view(reply) in reply  # what the model said, rateable
