"""Sign-in for real: Gradio's login page in Chromium, then a vote and a rating saved under the
signed-in name; the same endpoints refuse callers without a session, and the study summary
and export refuse reviewers who are not organisers.

Needs Playwright and Chromium like tests/test_browser.py (skipped, saying why, without them).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import embedded_app, open_page

from medchat.access import Access
from medchat.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

USERS = {"dr-ana": "ana-pass-1", "dr-bo": "bo-pass-2"}


@pytest.fixture(scope="module")
def signed_app(playwright_api, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("signin")
    settings = Settings(
        profile="smollm2-135m",
        max_new_tokens=16,
        data_dir=root / "data",
        runs_dir=root / "runs",
        eval_data=str(root / "no-such-data.csv"),
        retrieval="off",
    )
    access = Access("password", USERS, frozenset({"dr-ana"}))
    with embedded_app(cache_dir, settings, access=access) as (url, _, store):
        yield url, store


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_calls_without_a_session_are_refused(signed_app):
    from gradio_client import Client

    url, store = signed_app
    for api in ("vote", "rate", "review_export", "review_summary", "eval_start"):
        assert post(f"{url}gradio_api/call/{api}", {"data": []}) == 401, api
    with pytest.raises(Exception, match="(?i)login|auth|401"):
        Client(url, verbose=False)
    with pytest.raises(Exception, match="(?i)login|auth|401|incorrect"):
        Client(url, auth=("dr-bo", "wrong"), verbose=False)
    assert store.votes() == [] and store.ratings() == []


def test_log_in_vote_and_rate_as_the_signed_in_reviewer(signed_app, browser):
    url, store = signed_app
    with open_page(browser) as page:
        page.goto(url)
        page.get_by_label("username").fill("dr-bo")
        page.get_by_label("password").fill(USERS["dr-bo"])
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#chat-input textarea")
        page.wait_for_function(
            "() => document.querySelector('#sign-in')?.innerText.includes('dr-bo')"
        )

        page.get_by_role("tab", name="Compare").click()
        assert not page.locator("#compare-stop").is_enabled()  # nothing runs yet
        page.fill("#compare-q textarea", "How is high blood pressure treated?")
        page.click("#compare-ask")
        page.wait_for_selector("#vote-tie:not([disabled])")
        assert "Which answer is better" in page.inner_text("#vote-hint")
        page.click("#vote-tie")
        page.wait_for_function(
            "() => document.querySelector('#reveal').innerText.includes('Vote saved')"
        )
        (vote,) = store.votes()
        assert vote["reviewer"] == "dr-bo" and vote["vote"] == "tie"

        page.get_by_role("tab", name="Review").click()
        assert not page.locator("#review-name").is_visible()  # the username is the name
        page.click("#review-start")
        page.wait_for_function(
            "() => document.querySelector('#review-progress').innerText.includes('dr-bo')"
        )
        page.locator("#review-rating").get_by_text("3 Incomplete").click()
        shown_before = page.inner_text("#review-answer")
        # Opening and closing "Answers from" keeps the answer and the picked rating.
        page.click("#review-source input")
        page.keyboard.press("Escape")
        page.click("#review-note textarea")
        time.sleep(1.0)  # time for a (wrong) reload to arrive
        assert page.inner_text("#review-answer") == shown_before
        assert page.locator("#review-rating input[value='3']").is_checked()
        page.click("#review-save")
        page.wait_for_function(
            "() => document.querySelector('#review-status').innerText.includes('Saved rating')"
        )
        (rating,) = store.ratings()
        assert rating["reviewer"] == "dr-bo" and rating["rating"] == 3
        assert rating["side"] in ("base", "tuned")  # stored, never shown to the rater
        shown = page.inner_text("#review-progress") + page.inner_text("#review-question")
        assert "fine-tuned" not in shown and "base model" not in shown

        # Not an organiser: the summary is refused on the page.
        page.get_by_text("For the study's organisers").click()
        page.click("#review-summary-show")
        page.get_by_text("Only the study's organisers may see the study summary").wait_for()


def test_the_organiser_alone_gets_the_summary_and_export(signed_app):
    from gradio_client import Client

    url, _ = signed_app
    organiser = Client(url, auth=("dr-ana", USERS["dr-ana"]), verbose=False)
    assert "Study summary" in organiser.predict(api_name="/review_summary")
    assert organiser.predict(api_name="/review_export").endswith(".zip")
    reviewer = Client(url, auth=("dr-bo", USERS["dr-bo"]), verbose=False)
    with pytest.raises(Exception, match="Only the study's organisers may export"):
        reviewer.predict(api_name="/review_export")
