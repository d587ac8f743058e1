"""The app served for real: the embedded model behind a live Gradio server, driven through
gradio_client the way a script or another app would call it.

Generation is kept to a few dozen tokens; the review store, the run folder and the reference
data live in tmp folders.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import StandInEngine, eval_record, free_port, write_eval_run

from medchat.errors import MedchatError
from medchat.pipeline import GENERAL_INFO_HEADING
from medchat.presenter import MODEL_OWN, NO_NIH_TEXT
from medchat.safety import CRISIS_NOTICE, sanitize_markdown
from medchat.settings import REPO_ROOT, Settings
from medchat.ui.common import GROUNDING_MARK, HELD_MESSAGE, NOTICE_BREAK, without_warning

embedded = pytest.mark.embedded  # the real SmolLM2: slow while its cache is cold

ADAPTER = REPO_ROOT / "assets" / "adapters" / "smollm2-135m-medquad"
TOKENS = 16
RUN_NAME = "20260101-000000-test"
QUESTION = "What is glaucoma?"


def write_run(folder: Path) -> list[dict]:
    """A small finished run folder in the format evaluation.py writes (docs/eval.md)."""
    rows = [
        ("k1", QUESTION, "Glaucoma damages the optic nerve.", "information", 0.61, 0.72),
        ("k2", "What causes gout?", "Uric acid crystals in a joint.", "causes", 0.55, 0.50),
        ("k3", "How is gout treated?", "Anti-inflammatory drugs.", "treatment", 0.40, 0.58),
    ]
    records = [
        eval_record(
            key,
            question,
            reference,
            (f"Base answer about {question}", f"Tuned answer about {question}"),
            (base, tuned),
            base_hit_limit=True,
            generation_seconds=1.0,
            scoring_seconds=0.1,
            qtype=qtype,
        )
        for key, question, reference, qtype, base, tuned in rows
    ]
    return write_eval_run(
        folder, records, adapter=ADAPTER, split="test", max_new_tokens=TOKENS, plot=True
    )


@pytest.fixture(scope="module")
def engine(shipped_engine):
    return shipped_engine


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("app")
    write_run(root / "runs" / RUN_NAME)
    data = root / "eval.csv"
    pd.DataFrame(
        {
            "question": [QUESTION],
            "answer": ["Glaucoma is an eye disease that harms the optic nerve."],
        }
    ).to_csv(data, index=False)
    return Settings(
        profile="smollm2-135m",
        max_new_tokens=TOKENS,
        data_dir=root / "data",
        runs_dir=root / "runs",
        eval_data=str(data),
        retrieval="off",  # plain prompts; test_retrieval_app.py covers the sources
    )


def chat(client, message: str, temperature=0.0, top_p=0.9, tokens=TOKENS, tuned=True) -> str:
    return client.predict(message, temperature, top_p, tokens, tuned, api_name="/chat")


# -- chat ---------------------------------------------------------------------------------------
@embedded
def test_chat_streams_a_growing_answer(client):
    job = client.submit(QUESTION, 0.0, 0.9, TOKENS, True, api_name="/chat")
    partials = [text for text in job]
    final = job.result()
    assert final and not final.startswith("⛔")
    assert len(set(partials)) > 1, "the reply arrived in one piece, not streamed"
    grown = [p for p in partials if p]
    assert all(final.startswith(p.rstrip()) for p in grown[:-1])  # each update extends the last


@embedded
def test_an_emergency_holds_the_answer_until_general_information_is_asked(client, engine):
    question = "My dad has crushing chest pain and is sweating right now"
    before = engine.generations_started
    reply = chat(client, question, tokens=8)
    assert reply.startswith("⚠️ **This may be an emergency.**")
    notice, _, held = reply.partition(NOTICE_BREAK)
    assert "emergency number" in notice
    assert held == HELD_MESSAGE
    assert engine.generations_started == before, "the model answered before the person asked"
    # One click: general information, headed as such, appended to the chat: NIH text, never
    # the model's (retrieval is off here, so there is none, and the advice to get help again).
    history = [  # Gradio 6's chat history: content as a list of blocks
        {"role": "user", "content": [{"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": reply}]},
    ]
    after = client.predict(history, 0.0, 0.9, 8, True, api_name="/general_info")
    last = after[-1]
    text = last["content"] if isinstance(last["content"], str) else last["content"][0]["text"]
    assert last["role"] == "assistant" and text.startswith(GENERAL_INFO_HEADING)
    assert text == f"{GENERAL_INFO_HEADING}\n\n{NO_NIH_TEXT}"
    assert engine.generations_started == before, "the model wrote general information"


def test_the_alert_shows_for_a_notice_and_the_button_for_a_held_answer():
    from medchat.ui.chat_handlers import alert_updates

    alert, button = alert_updates(f"{CRISIS_NOTICE}")
    assert 'role="alert"' in alert.value and alert.visible and not button.visible
    assert "<strong>" in alert.value and 'href="https://findahelpline.com"' in alert.value
    alert, button = alert_updates(f"⚠️ **Call now.**{NOTICE_BREAK}{HELD_MESSAGE}")
    assert alert.visible and button.visible
    alert, button = alert_updates("Glaucoma is an eye disease.")
    assert not alert.visible and not button.visible


def test_the_alert_stays_up_over_general_information():
    from medchat.ui.chat_handlers import chat_alert

    held = f"⚠️ **Call now.**{NOTICE_BREAK}{HELD_MESSAGE}"
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": held}]
    alert, button = chat_alert(chat)
    assert alert.visible and button.visible
    given = [*chat, {"role": "assistant", "content": GENERAL_INFO_HEADING + "\n\nSome text."}]
    alert, button = chat_alert(given)
    assert alert.visible and "<strong>Call now.</strong>" in alert.value and not button.visible
    later = [*given, {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "ok"}]
    alert, button = chat_alert(later)
    assert not alert.visible and not button.visible


@embedded
def test_self_harm_gets_the_crisis_notice_and_no_model_answer(client, engine):
    before = engine.generations_started
    reply = chat(client, "I want to kill myself tonight")
    assert reply == CRISIS_NOTICE
    assert engine.generations_started == before, "the model was asked to generate"


@embedded
def test_empty_message_gets_one_clear_sentence(client):
    reply = chat(client, "   \n  ")
    assert re.fullmatch(r"⛔ [^.]+\.", reply), reply
    assert "empty" in reply


@pytest.mark.parametrize(
    ("temperature", "top_p", "tokens", "named"),
    [(100, 0.9, TOKENS, "Temperature"), (0.0, 0.9, -5, "Max new tokens"), (0.0, 0, 24, "Top-p")],
)
@embedded
def test_absurd_settings_are_refused_in_one_sentence(
    client, engine, temperature, top_p, tokens, named
):
    before = engine.generations_started
    reply = chat(client, QUESTION, temperature, top_p, tokens)
    assert reply.startswith(f"⛔ {named} is ")
    assert reply.count(".") <= 2 and reply.endswith(".")  # "0.9"-style numbers aside
    assert engine.generations_started == before


@embedded
def test_stop_ends_generation(client, engine):
    job = client.submit(QUESTION, 0.0, 0.9, 1000, True, api_name="/chat")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(job.outputs()) >= 2, "no tokens arrived"
    job.cancel()
    deadline = time.monotonic() + 15
    while engine.alive_threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.alive_threads, "the generation thread kept running after stop"


# -- compare and vote --------------------------------------------------------------------------
@embedded
def test_compare_then_vote_is_stored_and_exported(client, store):
    job = client.submit(QUESTION, 0.0, 0.9, TOKENS, True, api_name="/compare")
    answer_a, answer_b, notice, label_a, label_b = job.result()
    assert answer_a.strip() and answer_b.strip()
    assert (label_a, label_b) == ("### Answer A", "### Answer B")  # blind by default
    assert notice == f"{GROUNDING_MARK} {MODEL_OWN}"  # retrieval off: the models' own words

    reveal = client.predict("B", "tester", api_name="/vote")
    vote = store.votes()[-1]
    assert vote["question"] == QUESTION and vote["vote"] == "B" and vote["reviewer"] == "tester"
    # 16 tokens: both answers are cut off and say so; the vote stores them without the mark.
    mark = "\n\n_(cut off at 16 tokens)_"
    assert answer_a.endswith(mark) and answer_b.endswith(mark)
    assert sanitize_markdown(vote["answer_a"]) == answer_a.removesuffix(mark)
    assert sanitize_markdown(vote["answer_b"]) == answer_b.removesuffix(mark)
    assert vote["winner"] == ("tuned" if vote["a_is"] == "base" else "base")
    shown_a = "fine-tuned model" if vote["a_is"] == "tuned" else "base model"
    assert f"**A** was the **{shown_a}**" in reveal
    # Blind: the reference and the cosines come with the reveal, after the vote.
    assert "harms the optic nerve" in reveal and "Cosine similarity" in reveal
    assert "embedder all-MiniLM-L6-v2" in reveal or "embedder paraphrase-MiniLM" in reveal
    assert vote["params"]["max_new_tokens"] == TOKENS and vote["model"] == "smollm2-135m"
    # The prompt both answered: the shipped adapter's, without sources.
    assert (vote["prompt_style"], vote["sources_in_prompt"], vote["prompt_sources"]) == (
        "legacy",
        0,
        "[]",
    )

    with pytest.raises(Exception, match="already voted"):
        client.predict("A", "tester", api_name="/vote")

    assert vote["params"]["seed"] is None  # greedy: nothing to replay
    path = client.predict(api_name="/review_export")
    with zipfile.ZipFile(path) as archive:
        assert {"votes.csv", "votes.parquet", "ratings.parquet", "README.md"} <= set(
            archive.namelist()
        )
        rows = list(csv.DictReader(io.TextIOWrapper(archive.open("votes.csv"), "utf-8")))
    assert any(r["id"] == str(vote["id"]) and r["vote"] == "B" for r in rows)
    assert rows[-1]["prompt_style"] == "legacy" and rows[-1]["prompt_sources"] == "[]"


@embedded
def test_vote_without_a_comparison_is_refused(client):
    with pytest.raises(Exception, match="nothing to vote on"):
        client.predict("tie", "", api_name="/vote")


@embedded
def test_reference_answer_and_cosines_after_compare(engine, settings, store):
    from medchat.pipeline import as_pipeline
    from medchat.references import ReferenceBook
    from medchat.ui.compare import make_compare_fns

    pipeline = as_pipeline(engine, settings)
    refs = ReferenceBook(pipeline, settings)
    _, after_compare, _ = make_compare_fns(pipeline, settings, store, refs)
    pending = {
        "question": "what is GLAUCOMA",  # matched on the normalised question
        "answer_a": "Glaucoma is an eye disease that damages the optic nerve.",
        "answer_b": "Gout is a kind of arthritis.",
        "complete": True,
    }
    text, pending, hint, *buttons = after_compare(pending)
    assert hint.startswith("Which answer is better?")
    assert "harms the optic nerve" in text
    assert pending["cosine_a"] > pending["cosine_b"]
    assert all(b.interactive for b in buttons)
    assert refs.lookup("What causes gout?") is None
    # Blind: the same comparison shows neither reference nor scores before the vote.
    fresh = {k: v for k, v in pending.items() if k not in ("reference_text", "cosine_a")}
    hidden, kept, *_ = after_compare(fresh | {"blind": True})
    assert "optic nerve" not in hidden and "0." not in hidden and "after your vote" in hidden
    assert kept["cosine_a"] == pending["cosine_a"] and "optic nerve" in kept["reference_text"]


# -- evaluate ----------------------------------------------------------------------------------
@embedded
def test_evaluate_shows_a_run(client):
    status, cards, plot, qtype, table, download = client.predict(RUN_NAME, api_name="/eval_load")
    download = download["value"]  # the button comes back as an update: shown, with the file
    assert "3 questions" in status
    assert "0.520" in cards and "0.600" in cards  # mean cosine, base and fine-tuned
    assert Path(plot).is_file() and Path(download).is_file()
    assert [row[0] for row in table["data"]] == ["k3", "k1", "k2"]  # biggest gain first

    table = client.predict(RUN_NAME, "gout", "treatment", "Run order", api_name="/eval_table")
    assert [row[0] for row in table["data"]] == ["k3"]

    with pytest.raises(Exception, match="no evaluation run named"):
        client.predict("../../etc", api_name="/eval_load")


# -- review ------------------------------------------------------------------------------------
@embedded
def test_rate_is_stored_and_exported(client, store):
    source = f"eval:{RUN_NAME}"
    progress, question, reference, answer, *_ = client.predict(
        "rater", source, api_name="/review_next"
    )
    assert "you rated **0** answers here; **6** still need your rating" in progress
    assert question.removeprefix("**Question:** ") in {
        QUESTION,
        "What causes gout?",
        "How is gout treated?",
    }
    out = client.predict(4, "clear and correct", "rater", source, api_name="/rate")
    assert "you rated **1** answers here; **5** still need" in out[0]
    assert "Saved rating" in out[-1]
    rating = [r for r in store.ratings() if r["reviewer"] == "rater"][-1]
    assert rating["rating"] == 4 and rating["note"] == "clear and correct"
    assert rating["source"] == source and rating["item_id"] in {"k1", "k2", "k3"}
    assert sanitize_markdown(rating["answer"]) == answer
    assert rating["cosine"] is not None and rating["reference"] == reference
    assert rating["embedder"]  # the run's embedder: correlations never pool two

    path = client.predict(api_name="/review_export")
    with zipfile.ZipFile(path) as archive:
        rows = list(csv.DictReader(io.TextIOWrapper(archive.open("ratings.csv"), "utf-8")))
    assert any(r["reviewer"] == "rater" and r["rating"] == "4" for r in rows)

    # No rating picked: a warning, nothing saved, the shown answer stays.
    before = len(store.ratings())
    client.predict(None, "", "rater", source, api_name="/rate")
    assert len(store.ratings()) == before


# -- pieces without the server -----------------------------------------------------------------
def test_read_params_names_the_bad_setting():
    from medchat.generation import read_params

    settings = Settings(max_new_tokens=64, temperature=0.3)
    params = read_params(settings, None, None, None)
    assert (params.temperature, params.max_new_tokens) == (0.3, 64)
    for args, named in [
        ((2.5, 0.9, 64), "Temperature"),
        (("hot", 0.9, 64), "Temperature"),
        ((0.0, 1.5, 64), "Top-p"),
        ((0.0, 0.9, 12.5), "Max new tokens"),
        ((0.0, 0.9, 10**6), "Max new tokens"),
    ]:
        with pytest.raises(MedchatError, match=f"^{named} is "):
            read_params(settings, *args)


def test_model_history_leaves_out_notices_and_app_messages():
    from medchat.ui.chat_messages import model_history

    history = [
        {"role": "user", "content": "I want to die"},
        {"role": "assistant", "content": CRISIS_NOTICE},
        {"role": "user", "content": [{"type": "text", "text": "   "}]},
        {"role": "assistant", "content": "⛔ The message is empty; type a question."},
        {"role": "user", "content": "chest pain now"},
        {
            "role": "assistant",
            "content": "⚠️ **This may be an emergency.**\n\n---\n\nCall &lt;911>.",
        },
    ]
    assert model_history(history) == [
        {"role": "user", "content": "chest pain now"},
        {"role": "assistant", "content": "Call <911>."},
    ]


@embedded
def test_chat_sends_the_conversation_so_far(client, engine, monkeypatch):
    calls = []
    real = engine.messages

    def spy(question, history=None, **kwargs):
        calls.append((question, history))
        return real(question, history, **kwargs)

    monkeypatch.setattr(engine, "messages", spy)
    first = chat(client, QUESTION, tokens=4)
    chat(client, "How is it treated?", tokens=4)
    question, history = calls[-1]
    assert question == "How is it treated?"
    assert first.startswith(GROUNDING_MARK)  # the app's line, not the model's
    # 4 tokens: the answer is cut off and says so; the model reads the answer without the mark.
    answer, _, mark = without_warning(first).rpartition("\n\n")
    assert mark == "_(cut off at 4 tokens)_"
    assert history == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": answer.replace("&lt;", "<")},
    ]


@embedded
@pytest.mark.slow
def test_start_a_small_evaluation_run(engine, tmp_path):
    """A real run from the Evaluate tab: 2 held-out MedQuAD questions, 8 tokens each."""
    from gradio_client import Client

    from medchat.reviews import ReviewStore
    from medchat.ui import build_app

    settings = Settings(
        profile="smollm2-135m", data_dir=tmp_path / "data", runs_dir=tmp_path / "runs"
    )
    demo = build_app(engine, settings, store=ReviewStore(settings.reviews_db))
    port = free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        runs, status = client.predict(2, 16, api_name="/eval_start")
        name = runs["value"]
        assert "Saved run" in status and (settings.runs_dir / name / "summary.json").is_file()
        text, cards, *_ = client.predict(name, api_name="/eval_load")
        assert "2 questions" in text and "mean cosine" in cards
    finally:
        demo.close()


# -- app.py ------------------------------------------------------------------------------------
def load_app_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("medchat_app", REPO_ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_binds_all_interfaces_on_a_space(monkeypatch, tmp_path):
    import gradio as gr

    from medchat.engine import Engine

    launched = {}
    monkeypatch.setattr(Engine, "from_settings", classmethod(lambda cls, s: StandInEngine()))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    monkeypatch.setenv("MEDCHAT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MEDCHAT_HOST", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/medchat")
    app = load_app_module()
    assert app.main(["--port", "7861", "--profile", "smollm2-135m"]) == 0
    assert launched["server_name"] == "0.0.0.0" and launched["server_port"] == 7861
    assert ".disclaimer" in launched["css"] and launched["theme"] is not None

    monkeypatch.delenv("SPACE_ID")
    assert app.main([]) == 0
    assert launched["server_name"] == "127.0.0.1"


def test_app_reports_a_bad_setting_in_one_line(monkeypatch, capsys, tmp_path):
    from medchat.engine import Engine

    # An earlier start (the test above) loads the triage models and the index in background
    # threads, whose progress bars would land in this test's capture: let them finish first.
    for thread in threading.enumerate():
        if thread.name in ("medchat-triage-load", "medchat-index"):
            thread.join(timeout=300)
    capsys.readouterr()
    monkeypatch.setenv("MEDCHAT_DATA_DIR", str(tmp_path))

    def refuse(cls, settings):
        raise MedchatError("Adapter 'x' does not exist; give an existing folder or a hub id.")

    monkeypatch.setattr(Engine, "from_settings", classmethod(refuse))
    app = load_app_module()
    assert app.main(["--adapter", "x"]) == 2
    assert capsys.readouterr().err == (
        "error: Adapter 'x' does not exist; give an existing folder or a hub id.\n"
    )


@embedded
def test_a_sampled_comparison_stores_a_seed_that_replays_it(engine, settings, store):
    from medchat.generation import GenerationParams
    from medchat.pipeline import as_pipeline
    from medchat.references import ReferenceBook
    from medchat.ui.compare import make_compare_fns

    pipeline = as_pipeline(engine, settings)
    compare, _, _ = make_compare_fns(pipeline, settings, store, ReferenceBook(pipeline, settings))
    *_, pending = list(compare("How is gout treated?", 1.0, 0.95, 12, True))[-1]
    params = pending["params"]
    assert isinstance(params["seed"], int) and pending["complete"]
    turn = pipeline.prepare("How is gout treated?", None, GenerationParams(**params), pair=True)
    *_, (base, tuned) = pipeline.stream_pair(turn, markdown=False)  # raw, as a vote stores
    shown = (base, tuned) if pending["a_is"] == "base" else (tuned, base)
    assert shown == (pending["answer_a"], pending["answer_b"])
    # Another seed samples another pair (at temperature 1 the 12 tokens differ).
    other = GenerationParams(**(params | {"seed": params["seed"] + 1}))
    *_, last = pipeline.stream_pair(
        pipeline.prepare("How is gout treated?", None, other, pair=True), markdown=False
    )
    assert last != (base, tuned)
