"""The app in a real browser: Chromium, driven by Playwright, against a live server running the
embedded model. Tokens must visibly arrive, a blind comparison must take a vote and reveal the
models, and markup in a model's answer must stay text.

Needs pip's `playwright` and Debian's Chromium at /usr/bin/chromium (`apt-get install
chromium`); skipped, saying which is missing, without them.
"""

from __future__ import annotations

import time

import pytest
from conftest import BROWSER_TIMEOUT_MS, ECHO, embedded_app, open_page

from medchat.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

# The triage classifier reads text that is mostly markup badly (README, Safety: limits): with
# some wordings this line scores as a crisis and no answer comes. This test is about what the
# page does with an answer, so it uses a wording the check lets through.
PAYLOAD = (
    '<script>window.__xss=1</script> <img src=x onerror="window.__xss=2"> '
    "[open me](javascript:window.__xss=3) ![pic](https://example.invalid/pixel.png) done"
)


@pytest.fixture(scope="module")
def app(playwright_api, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    settings = Settings(
        profile="smollm2-135m",
        max_new_tokens=24,
        data_dir=root / "data",
        runs_dir=root / "runs",
        eval_data=str(root / "no-such-data.csv"),
    )
    with embedded_app(cache_dir, settings) as (url, _, store):
        yield url, store


@pytest.fixture
def page(browser, app):
    with open_page(browser) as page:
        page.goto(app[0])
        page.wait_for_selector("#chat-input textarea")
        yield page


def send_chat(page, text: str) -> None:
    page.fill("#chat-input textarea", text)
    page.press("#chat-input textarea", "Enter")


def last_bot_text(page) -> str:
    bots = page.query_selector_all('#chatbot [data-testid="bot"]')
    return bots[-1].inner_text().strip() if bots else ""


def wait_idle(page) -> None:
    """Until the chat input takes text again (the answer is finished)."""
    page.wait_for_function("() => !document.querySelector('#chat-input textarea').disabled")


def test_chat_streams_then_compare_vote_reveals(page, app, tmp_path):
    _, store = app
    shown = page.inner_text("#disclaimer")  # what the page says, not the constant behind it
    assert "not a substitute" in shown and "emergency number" in shown

    # Chat, with room for a long answer: it grows on screen while the model writes it.
    page.get_by_text("Generation settings").click()
    tokens = page.locator("#chat-max-tokens input[type=number]")
    tokens.fill("600")
    tokens.press("Enter")
    send_chat(page, "What is glaucoma?")
    seen: list[str] = []
    deadline = time.monotonic() + BROWSER_TIMEOUT_MS / 1000
    while time.monotonic() < deadline and len(seen) < 2:
        text = last_bot_text(page)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        time.sleep(0.05)
    assert len(seen) >= 2, f"the answer never grew: {seen}"
    assert seen[1].startswith(seen[0][:-1]) and len(seen[1]) > len(seen[0])

    # Stop ends it: the input comes back at once and the text stops growing.
    page.click('#chat-input [data-testid="stop-button"]')
    page.wait_for_function(
        "() => !document.querySelector('#chat-input textarea').disabled", timeout=20_000
    )
    # The answer it cut short is marked as stopped (the mark arrives with the stop event).
    page.wait_for_function(
        """() => {
            const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
            return bots.length && bots[bots.length - 1].innerText.trim().endsWith('(stopped)');
        }""",
        timeout=20_000,
    )
    stopped = last_bot_text(page)
    time.sleep(1.5)
    assert last_bot_text(page) == stopped
    assert len(stopped.split()) < 300, "the whole answer was written despite stop"

    # Compare: both answers stream, voting is enabled at the end, the vote reveals the models.
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-q textarea", "How is high blood pressure treated?")
    page.click("#compare-ask")
    page.wait_for_selector("#vote-tie:not([disabled])")
    assert page.inner_text("#answer-a").strip() and page.inner_text("#answer-b").strip()
    page.click("#vote-tie")
    page.wait_for_function(
        "() => document.querySelector('#reveal').innerText.includes('Vote saved')"
    )
    reveal = page.inner_text("#reveal")
    assert "fine-tuned model" in reveal and "base model" in reveal
    shot = tmp_path / "compare.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    votes = store.votes()
    assert votes and votes[-1]["vote"] == "tie"
    assert votes[-1]["question"] == "How is high blood pressure treated?"


def test_markup_in_an_answer_cannot_run_script(page):
    page.evaluate("() => { delete window.__xss; }")
    send_chat(page, f"{ECHO} {PAYLOAD}")
    page.wait_for_function(
        """() => {
            const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
            return bots.length && bots[bots.length - 1].innerText.includes('done');
        }"""
    )
    wait_idle(page)
    time.sleep(0.5)  # give an injected onerror handler time to fire
    shown = last_bot_text(page)
    assert "<script>window.__xss=1</script>" in shown  # shown as text, not run
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert page.query_selector_all("#chatbot script") == []
    # The model's bubble loads no image and links nowhere dangerous.
    bot = '#chatbot [data-testid="bot"]'
    assert page.eval_on_selector_all(f"{bot} img", "els => els.map(e => e.src)") == []
    hrefs = page.eval_on_selector_all(f"{bot} a", "els => els.map(e => e.href)")
    assert not [h for h in hrefs if h.lower().startswith("javascript:")]
    assert "pic done" in shown and "open me" in shown  # image -> alt text, bad link -> text
