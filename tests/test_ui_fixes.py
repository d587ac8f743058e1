"""What people using the app in a browser asked for: progress beside the Start run button, runs
scored with `python -m eval`'s settings, a mark on answers cut short by Stop, thumbs up/down
that save only what was rated, a header in plain words with the details on demand, a compact
but always visible disclaimer on a phone, and plots readable on a dark page.

The handlers run for real: the embedded model (or the tiny random one), a real ReviewStore,
a real evaluation run, and Chromium for what only a browser shows.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from contextlib import closing

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from conftest import served

from medchat.evaluation import EvalConfig, similarity_png
from medchat.safety import DISCLAIMER
from medchat.settings import REPO_ROOT, Settings
from medchat.ui.chat import FEEDBACK_STORES, NOT_STORED, build_chat_tab
from medchat.ui.chat_handlers import make_feedback_fn, mark_stopped
from medchat.ui.chat_messages import STOPPED_MARK, model_history
from medchat.ui.common import disclaimer_markdown, header_markdown

embedded = pytest.mark.embedded
ADAPTER = REPO_ROOT / "assets" / "adapters" / "smollm2-135m-medquad"
QUESTION = "What is glaucoma?"


def text_of(item: dict) -> str:
    content = item["content"]
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


def blocks(text: str) -> list[dict]:
    """Message content as the Chatbot hands it to a handler."""
    return [{"type": "text", "text": text}]


def config_of(demo: gr.Blocks) -> tuple[dict, dict]:
    """(the app's config, its components by id)."""
    config = demo.get_config_file()
    return config, {c["id"]: c for c in config["components"]}


def by_elem_id(config: dict, elem_id: str) -> dict:
    return next(c for c in config["components"] if c["props"].get("elem_id") == elem_id)


@pytest.fixture(scope="module")
def engine(cache_dir):
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import SMOLLM2

    if not ADAPTER.is_dir():
        pytest.skip("the shipped adapter assets/adapters/smollm2-135m-medquad is missing")
    return Engine(load_model(SMOLLM2, adapter=str(ADAPTER), cache_dir=cache_dir, device="cpu"))


# -- 1. the Evaluate tab's run ----------------------------------------------------------------
@embedded
def test_a_run_from_the_tab_uses_eval_defaults_and_shows_progress_per_question(engine, tmp_path):
    from medchat.pipeline import as_pipeline
    from medchat.references import ReferenceBook
    from medchat.ui.evaluate import build_evaluate_tab

    settings = Settings(
        profile="smollm2-135m", data_dir=tmp_path / "data", runs_dir=tmp_path / "runs"
    )
    pipeline = as_pipeline(engine, settings)
    with gr.Blocks() as demo:
        build_evaluate_tab(demo, pipeline, settings, ReferenceBook(pipeline, settings))
    config, components = config_of(demo)

    # The token limit starts at `python -m eval`'s (EvalConfig's default), not a shorter one.
    eval_default = EvalConfig(adapter=str(ADAPTER)).max_new_tokens
    assert by_elem_id(config, "eval-max-tokens")["props"]["value"] == eval_default

    # Progress shows on the status beside the Start button, not on the run list at the top.
    start = next(d for d in config["dependencies"] if d["api_name"] == "eval_start")
    status = by_elem_id(config, "eval-run-status")
    assert start["show_progress_on"] == [status["id"]]
    button = by_elem_id(config, "eval-start")

    def parent_of(node: dict, wanted: int, parent: dict | None = None):
        if node.get("id") == wanted:
            return parent
        for child in node.get("children", ()):
            found = parent_of(child, wanted, node)
            if found is not None:
                return found
        return None

    row = parent_of(config["layout"], status["id"])
    assert row is not None and components[row["id"]]["type"] == "row"
    assert button["id"] in [child["id"] for child in row["children"]]

    # The handler the button calls (the /eval_start API): progress moves question by question
    # while the answers are generated and scored.
    start_run = next(fn for fn in demo.fns.values() if fn.api_name == "eval_start").fn
    seen: list[tuple[int, int]] = []

    def progress(value, desc=None, total=None, unit="steps"):
        seen.append(tuple(value))

    runs, message = start_run(2, 16, progress=progress)
    assert "Saved run" in message
    assert (1, 2) in seen and seen[-1] == (2, 2), seen
    assert seen.index((1, 2)) < seen.index((2, 2))
    folder = settings.runs_dir / runs.value
    recorded = json.loads((folder / "config.json").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
    assert recorded["split"] == defaults["split"] and recorded["seed"] == defaults["seed"]
    assert recorded["max_new_tokens"] == 16  # what the caller asked for
    assert len((folder / "results.jsonl").read_text().splitlines()) == 2


# -- 2. chat: the stopped mark -----------------------------------------------------------------
def test_stop_marks_the_answer_it_cut_short():
    history = [
        {"role": "user", "content": blocks(QUESTION)},
        {"role": "assistant", "content": blocks("Glaucoma is a group of eye")},
    ]
    shown, state = mark_stopped(history)
    assert shown == state
    assert text_of(shown[-1]) == f"Glaucoma is a group of eye\n\n{STOPPED_MARK}"
    assert text_of(shown[0]) == QUESTION and len(shown) == 2
    # A second stop event for the same answer adds nothing.
    again, _ = mark_stopped(shown)
    assert again == gr.skip()
    # The model never reads the mark back.
    answer = {"role": "assistant", "content": "Glaucoma is a group of eye"}
    assert model_history(shown)[-1] == answer


def test_stop_before_the_first_token_leaves_a_marked_empty_answer():
    shown, _ = mark_stopped([{"role": "user", "content": blocks(QUESTION)}])
    assert [m["role"] for m in shown] == ["user", "assistant"]
    assert text_of(shown[-1]) == STOPPED_MARK
    # An unanswered question is left out of what the model sees, like other app replies.
    assert model_history([*shown, {"role": "user", "content": "What causes gout?"}]) == [
        {"role": "user", "content": "What causes gout?"}
    ]


# -- 2. chat: thumbs up/down -------------------------------------------------------------------
@pytest.fixture
def tiny_pipeline(llama_engine, tmp_path):
    from medchat.pipeline import as_pipeline

    return as_pipeline(llama_engine, Settings(data_dir=tmp_path / "data", retrieval="off"))


def like(index: int, value: str, liked) -> gr.LikeData:
    """What the browser sends when a thumb is clicked on the message at `index`."""
    return gr.LikeData(None, {"index": index, "value": [blocks(value)[0]], "liked": liked})


def test_a_thumb_saves_that_question_and_answer_and_nothing_else(tiny_pipeline, tmp_path):
    from medchat.reviews import ReviewStore

    history = [
        {"role": "user", "content": blocks("What causes gout?")},
        {"role": "assistant", "content": blocks("Uric acid crystals in a joint.")},
        {"role": "user", "content": blocks(QUESTION)},
        {"role": "assistant", "content": blocks("An eye disease that harms the optic nerve.")},
        {"role": "user", "content": blocks("And is it inherited?")},
        {"role": "assistant", "content": blocks("Sometimes.")},
    ]
    with ReviewStore(tmp_path / "reviews.db") as store:
        feedback = make_feedback_fn(tiny_pipeline, store, reviewer_of=lambda *_: "alice")
        feedback(history, True, like(3, "An eye disease", True), gr.Request())
        rows = store.feedback()
        assert len(rows) == 1
        row = rows[0]
        assert row["question"] == QUESTION
        assert row["answer"] == "An eye disease that harms the optic nerve."
        assert row["liked"] is True and row["reviewer"] == "alice"
        assert row["model"] == tiny_pipeline.profile.name
        assert row["adapter"] == str(tiny_pipeline.adapter)
        # The prompt behind it: the adapter's (legacy, no sources: retrieval is off here).
        assert (row["prompt_style"], row["sources_in_prompt"], row["prompt_sources"]) == (
            "legacy",
            0,
            "[]",
        )
        stored = json.dumps(rows)
        for other in ("gout", "Uric acid", "inherited", "Sometimes"):
            assert other not in stored  # the rest of the chat stays in the browser

        # Signed in with Hugging Face: the thumb carries the username Gradio hands over.
        from medchat.access import Access

        with ReviewStore(tmp_path / "signed-in.db") as other:
            signed = make_feedback_fn(
                tiny_pipeline, other, reviewer_of=Access("oauth", {}, frozenset()).reviewer
            )
            profile = gr.OAuthProfile(
                {"preferred_username": "dr-li", "name": "", "picture": "", "profile": "", "sub": ""}
            )
            signed(history, True, like(3, "An eye disease", True), gr.Request(), profile)
            assert [r["reviewer"] for r in other.feedback()] == ["dr-li"]

        # Thumbs down with the base model answering; no reviewer hook: no name.
        make_feedback_fn(tiny_pipeline, store)(history, False, like(1, "", False), gr.Request())
        down = store.feedback()[-1]
        assert down["question"] == "What causes gout?" and down["liked"] is False
        assert down["adapter"] == "none" and down["reviewer"] == ""

        # Taking a thumb back (the browser sends liked="") saves nothing.
        feedback(history, True, like(5, "Sometimes.", ""), gr.Request())
        assert len(store.feedback()) == 2


def test_thumbs_show_only_with_a_store_and_the_tab_says_what_they_save(tiny_pipeline, tmp_path):
    from medchat.reviews import ReviewStore

    settings = Settings(data_dir=tmp_path / "data", retrieval="off")
    with gr.Blocks() as plain:
        build_chat_tab(tiny_pipeline, settings)
    config, _ = config_of(plain)
    assert not by_elem_id(config, "chatbot")["props"]["likeable"]
    assert by_elem_id(config, "chat-storage-note")["props"]["value"] == NOT_STORED

    with ReviewStore(tmp_path / "reviews.db") as store, gr.Blocks() as rated:
        build_chat_tab(tiny_pipeline, settings, store=store)
    config, components = config_of(rated)
    chatbot = by_elem_id(config, "chatbot")
    assert chatbot["props"]["likeable"]
    targets = [tuple(t) for d in config["dependencies"] for t in d["targets"]]
    assert (chatbot["id"], "like") in targets
    note = by_elem_id(config, "chat-storage-note")["props"]["value"]
    assert note == FEEDBACK_STORES
    assert "Thumbs up/down saves that question and answer for the study" in note
    assert "nothing else from the chat is stored" in note


# -- 3. the header -----------------------------------------------------------------------------
def test_the_header_names_the_model_in_words_and_keeps_the_details_folded():
    info = {
        "backend": "local",
        "profile": "smollm2-135m",
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "base_source": "/root/.cache/medchat/models/smollm2-135m-instruct",
        "adapter": str(ADAPTER),
        "device": "cpu",
        "dtype": "float32",
    }
    header = header_markdown(info)
    shown, _, folded = header.partition("<details")
    assert "SmolLM2-135M-Instruct, fine-tuned on MedQuAD" in shown
    assert "running on CPU" in shown
    for detail in (str(ADAPTER), "smollm2-135m`", "HuggingFaceTB/", "/root/.cache", "float32"):
        assert detail not in shown
    assert " open" not in folded.split(">", 1)[0]  # collapsed until asked for
    for detail in ("smollm2-135m-medquad", "HuggingFaceTB/SmolLM2-135M-Instruct", "cpu"):
        assert detail in folded
    # Files by name and hash, never by where they sit on the server.
    assert str(ADAPTER) not in folded and "/root/.cache" not in folded
    assert "adapter_model.safetensors sha256 " in folded

    base_only = header_markdown(info | {"adapter": "none", "device": "cuda:0"})
    assert "SmolLM2-135M-Instruct, not fine-tuned" in base_only and "running on a GPU" in base_only
    served = header_markdown(info | {"device": "server http://127.0.0.1:8000/v1"})
    assert "answered by a model server" in served.partition("<details")[0]


def test_the_eval_cards_show_the_embedder_by_name_and_hashes_only_on_demand():
    from medchat.evaluation import summarize
    from medchat.ui.evaluate import cards_html

    sha = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    results = pd.DataFrame(
        {
            "base_cosine": [0.5, 0.6, 0.4],
            "tuned_cosine": [0.6, 0.7, 0.5],
            "base_hit_limit": [True, False, True],
            "tuned_hit_limit": [False, False, True],
            "base_rouge_l": [0.1] * 3,
            "tuned_rouge_l": [0.2] * 3,
            "base_repetition": [0.0] * 3,
            "tuned_repetition": [0.0] * 3,
            "base_tokens": [20] * 3,
            "tuned_tokens": [18] * 3,
        }
    )
    summary = summarize(results, embedder=f"sentence-transformers/all-MiniLM-L6-v2 (sha256 {sha})")
    summary["run"] = {"split": "test", "max_new_tokens": 256, "adapter": "/some/where/adapter"}
    html = cards_html(summary)
    shown, _, folded = html.partition("<details")
    assert "all-MiniLM-L6-v2" in shown
    assert sha not in shown and "/some/where" not in shown
    assert sha in folded and "/some/where/adapter" in folded


# -- 4. plots ----------------------------------------------------------------------------------
def test_the_similarity_plot_is_dark_ink_on_an_opaque_white_page_whatever_the_style():
    import matplotlib
    import matplotlib.style
    from PIL import Image

    rng = np.random.default_rng(0)
    results = pd.DataFrame(
        {"base_cosine": rng.uniform(0.3, 0.8, 24), "tuned_cosine": rng.uniform(0.3, 0.9, 24)}
    )
    # A dark style saved transparently: what a user's matplotlibrc can ask for.
    dark = {"savefig.transparent": True, "figure.facecolor": "none", "savefig.facecolor": "none"}
    with matplotlib.style.context("dark_background"), matplotlib.rc_context(dark):
        png = similarity_png(results, embedder_name="all-MiniLM-L6-v2")
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).astype(int)
    assert (pixels[..., 3] == 255).all(), "part of the plot is transparent"
    height, width = pixels.shape[:2]
    for y, x in ((2, 2), (2, width - 3), (height - 3, 2), (height // 2, width // 4)):
        assert tuple(pixels[y, x]) == (255, 255, 255, 255), (y, x, pixels[y, x])
    luminance = pixels[..., :3].mean(axis=-1)
    assert (luminance > 245).mean() > 0.6  # mostly white page
    assert (luminance < 90).sum() > 2000  # with dark text, ticks and frames on it


# -- in a browser: Stop, thumbs, a phone ---------------------------------------------------------
@pytest.fixture(scope="module")
def chat_app(playwright_api, engine, tmp_path_factory):
    """The chat tab with thumbs (a store), under the app's header, disclaimer and css."""
    from medchat.pipeline import as_pipeline
    from medchat.reviews import ReviewStore

    root = tmp_path_factory.mktemp("chat-app")
    settings = Settings(
        profile="smollm2-135m", max_new_tokens=400, data_dir=root / "data", retrieval="off"
    )
    pipeline = as_pipeline(engine, settings)
    store = ReviewStore(settings.reviews_db)
    with gr.Blocks() as demo:
        gr.Markdown(header_markdown(pipeline.info()), elem_id="header")
        gr.Markdown(disclaimer_markdown(), elem_id="disclaimer", elem_classes=["disclaimer"])
        build_chat_tab(pipeline, settings, store=store, reviewer_of=lambda *_: "browser")
    (mark_id,) = [i for i, f in demo.fns.items() if f.fn is mark_stopped]
    try:
        with served(demo) as url:
            yield url, store, mark_id
    finally:
        store.close()


@pytest.fixture(scope="module")
def full_app(playwright_api, engine, tmp_path_factory):
    """The whole app as build_app makes it."""
    from medchat.reviews import ReviewStore
    from medchat.ui import build_app

    root = tmp_path_factory.mktemp("full-app")
    settings = Settings(
        profile="smollm2-135m", data_dir=root / "data", runs_dir=root / "runs", retrieval="off"
    )
    with (
        closing(ReviewStore(settings.reviews_db)) as store,
        served(build_app(engine, settings, store=store)) as url,
    ):
        yield url


def open_page(browser, url: str, width: int, height: int):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(180_000)  # two shared CPU cores can be busy with other work
    page.goto(url)
    page.wait_for_selector("#disclaimer")
    return context, page


def bot_texts(page) -> list[str]:
    return [b.inner_text().strip() for b in page.query_selector_all('#chatbot [data-testid="bot"]')]


def answer_part(text: str) -> str:
    """A shown reply without the "Not from NIH sources" line the app puts before the answer."""
    if text.startswith("⚠️ Not from NIH sources:"):
        return text.partition("\n\n")[2]
    return text


def ask_and_stop(page, question: str) -> None:
    """Send a question, wait until its answer has grown twice, press Stop, wait for the input.
    (The line the app shows before an answer, before the first token, is no growth.)"""
    before = len(bot_texts(page))
    page.fill("#chat-input textarea", question)
    page.press("#chat-input textarea", "Enter")
    seen: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(seen) < 2:
        texts = bot_texts(page)
        answer = answer_part(texts[-1]) if len(texts) > before else ""
        if answer and (not seen or answer != seen[-1]):
            seen.append(answer)
        time.sleep(0.05)
    assert len(seen) >= 2, f"the answer never grew: {seen}"
    page.click('#chat-input [data-testid="stop-button"]')
    page.wait_for_function(
        "() => !document.querySelector('#chat-input textarea').disabled", timeout=30_000
    )


def wait_for_stopped_mark(page, replies: int | None = None) -> None:
    """Wait until the last reply ends with the stopped mark (and there are `replies` of them)."""
    page.wait_for_function(
        """(replies) => {
            const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
            return bots.length && (replies === null || bots.length == replies)
                && bots[bots.length - 1].innerText.trim().endsWith('(stopped)');
        }""",
        arg=replies,
        timeout=30_000,
    )


@pytest.mark.browser
@embedded
def test_in_a_browser_stop_marks_the_answer_and_a_thumb_saves_it(browser, chat_app):
    url, store, _ = chat_app
    context, page = open_page(browser, url, 1280, 1000)
    try:
        ask_and_stop(page, QUESTION)
        wait_for_stopped_mark(page)
        stopped = bot_texts(page)[-1]
        time.sleep(1.5)
        assert bot_texts(page)[-1] == stopped, "the answer changed after the stopped mark"
        assert len(stopped.split()) < 300, "the whole answer was written despite Stop"

        # The next turn keeps the first answer's mark (the chat's state has it too).
        ask_and_stop(page, "How is glaucoma treated?")
        wait_for_stopped_mark(page, replies=2)
        assert bot_texts(page)[0] == stopped

        # Nothing of the chat is stored until a thumb is clicked; then that pair alone is.
        assert store.feedback() == []
        page.locator('#chatbot button[aria-label="Like"]').first.click()
        deadline = time.monotonic() + 30
        while not store.feedback() and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = store.feedback()
        assert len(rows) == 1, rows
        assert rows[0]["question"] == QUESTION and rows[0]["liked"] is True
        assert rows[0]["reviewer"] == "browser"
        assert rows[0]["answer"].endswith(STOPPED_MARK)
        assert rows[0]["answer"].removesuffix(STOPPED_MARK).strip()[:20] in stopped
        assert "How is glaucoma treated?" not in json.dumps(rows)
        note = page.inner_text("#chat-storage-note")
        assert "nothing else from the chat is stored" in note
    finally:
        context.close()


@pytest.mark.browser
@embedded
def test_in_a_browser_the_stopped_mark_outlives_a_slow_reply_to_stop(browser, chat_app):
    """Stop's mark reaches the page after the chat's own step has copied the unmarked reply
    into the chat's state (its reply is held back here): the next turn still shows the mark."""
    url, _, mark_id = chat_app
    context, page = open_page(browser, url, 1280, 1000)

    def hold_back_the_mark(route):
        body = route.request.post_data_json or {}
        response = route.fetch()
        if body.get("fn_index") == mark_id:
            time.sleep(2.0)
        route.fulfill(response=response)

    try:
        page.route("**/run/predict**", hold_back_the_mark)
        ask_and_stop(page, QUESTION)
        wait_for_stopped_mark(page)
        stopped = bot_texts(page)[-1]
        page.unroute("**/run/predict**")
        ask_and_stop(page, "How is glaucoma treated?")
        wait_for_stopped_mark(page, replies=2)
        assert bot_texts(page)[0] == stopped
    finally:
        context.close()


@pytest.mark.browser
@embedded
def test_on_a_phone_the_disclaimer_is_compact_but_visible_and_details_wait(browser, full_app):
    sizes = {}
    for name, (width, height) in {"phone": (390, 844), "desktop": (1280, 1000)}.items():
        context, page = open_page(browser, full_app, width, height)
        try:
            disclaimer = page.locator("#disclaimer")
            assert disclaimer.is_visible()
            assert "not a substitute for a doctor or other clinician" in disclaimer.inner_text()
            assert DISCLAIMER.split(";")[0] in disclaimer.inner_text()
            box = disclaimer.bounding_box()
            style = page.evaluate(
                "() => parseFloat(getComputedStyle(document.querySelector('#disclaimer p'))"
                ".fontSize)"
            )
            header = page.locator("#header")
            assert "SmolLM2-135M-Instruct, fine-tuned on MedQuAD" in header.inner_text()
            adapter = page.get_by_text("smollm2-135m-medquad (adapter_model", exact=False)
            assert not adapter.is_visible(), "the adapter shows before it is asked for"
            if name == "phone":
                page.get_by_text("Model details").click()
                assert adapter.is_visible()
            sizes[name] = (box["y"] + box["height"], style, height)
        finally:
            context.close()
    bottom, font, screen = sizes["phone"]
    assert bottom < 0.4 * screen, f"header and disclaimer take {bottom:.0f} of {screen} px"
    assert font < sizes["desktop"][1], "the disclaimer is not smaller on a phone"
