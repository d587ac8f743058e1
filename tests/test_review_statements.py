"""Statement sets in the Review and Evaluate tabs, through the served app: the checklist beside
the rating (gradio_client and Chromium), the marks in the store and the organiser's summary,
and the judge's verdicts under each answer in Evaluate.

The app runs on a stand-in engine (nothing is generated); the runs are written by hand in the
format medchat/evaluation.py writes (docs/eval.md): one with K-QA-style statements judged by
the offline judge, one without statements.
"""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from conftest import StandInEngine, eval_record, served, write_eval_run

from medchat.settings import Settings

KQA_RUN, PLAIN_RUN = "20260301-000000-kqa", "20260201-000000-plain"
KQA_SOURCE, PLAIN_SOURCE = f"eval:{KQA_RUN}", f"eval:{PLAIN_RUN}"
JUDGE_INFO = {
    "name": "offline",
    "identity": "offline (weights sha256 0f3a)",
    "agreement": {"kappa": 0.38, "n": 186},
}
# key, question, must-have, nice-to-have, base verdicts, tuned verdicts (must first)
ITEMS = [
    (
        "q1",
        "Can I take ibuprofen with lisinopril?",
        ["NSAIDs can weaken the effect of ACE inhibitors.", "Ask a doctor before combining them."],
        ["Kidney function may be affected."],
        ["entailed", "neither", "contradicted"],
        ["entailed", "entailed", "neither"],
    ),
    (
        "q2",
        "Is a fever of 38C dangerous in an adult?",
        ["A fever of 38C is usually not dangerous in an adult."],
        [],
        ["neither"],
        ["entailed"],
    ),
]


def write_statement_run(folder: Path) -> list[dict]:
    """A finished run of a statement set, judged offline, as evaluation.py writes it."""
    from medchat.statements import shares

    records = []
    for key, question, must, nice, base, tuned in ITEMS:
        record = eval_record(
            key,
            question,
            f"The physician's answer to {question}",
            (f"Base answer: {question}", f"Tuned answer: {question}"),
            (0.5, 0.6),
            generation_seconds=1.0,
            scoring_seconds=0.1,
            must_have=must,
            nice_to_have=nice,
        )
        for side, verdicts in (("base", base), ("tuned", tuned)):
            record[f"{side}_verdicts"] = verdicts
            record[f"{side}_scores"] = [0.5] * len(verdicts)
            for name, value in shares(verdicts, len(must)).items():
                record[f"{side}_{name}"] = value
        records.append(record)
    adapter = "assets/adapters/x"
    return write_eval_run(
        folder, records, adapter=adapter, split="all", max_new_tokens=16, judge=JUDGE_INFO
    )


def write_plain_run(folder: Path) -> None:
    """A run without statements (MedQuAD-like)."""
    from test_app import write_run

    write_run(folder)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(url, store) of the whole app over the two runs."""
    from medchat.reviews import ReviewStore
    from medchat.ui import build_app

    root = tmp_path_factory.mktemp("statements")
    settings = Settings(
        profile="smollm2-135m", data_dir=root / "data", runs_dir=root / "runs", retrieval="off"
    )
    write_statement_run(settings.runs_dir / KQA_RUN)
    write_plain_run(settings.runs_dir / PLAIN_RUN)
    with (
        closing(ReviewStore(settings.reviews_db)) as store,
        served(build_app(StandInEngine(), settings, store=store)) as url,
    ):
        yield url, store


@pytest.fixture
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def shown_statements(out) -> list[str]:
    """The labels of the statement radios that /review_next (or /rate) made visible."""
    return [u["label"] for u in out if isinstance(u, dict) and u.get("visible") is True]


# -- through the API the tab uses ----------------------------------------------------------------
def test_an_answer_with_statements_is_rated_with_a_mark_on_each(client, app):
    from medchat.review_stats import summarize

    _, store = app

    def mine(rows):
        return [r for r in rows if r["reviewer"] == "ana"]

    out = client.predict("ana", KQA_SOURCE, api_name="/review_next")
    while "ibuprofen" not in out[1]:  # the question with must-have and nice-to-have statements
        out = client.predict("ana", KQA_SOURCE, api_name="/review_skip")
    question = out[1].removeprefix("**Question:** ")
    key, _, must, nice, base, tuned = next(i for i in ITEMS if i[1] == question)
    labels = shown_statements(out)
    assert labels == [f"Must-have {i + 1}: {s}" for i, s in enumerate(must)] + [
        f"Nice-to-have {i + 1}: {s}" for i, s in enumerate(nice)
    ]
    side = "tuned" if out[3].startswith("Tuned") else "base"

    # Unmarked statements: refused, nothing stored, the answer stays.
    client.predict(3, "", "ana", KQA_SOURCE, api_name="/rate")
    assert mine(store.ratings()) == []

    given = ["covered", "contradicted", "missing"]
    assert len(labels) == len(given)
    saved = client.predict(3, "ok", "ana", KQA_SOURCE, *given, api_name="/rate")
    assert "Saved rating" in saved[-1] and "Statements:" in saved[-1]
    (rating,) = mine(store.ratings())
    assert (rating["item_id"], rating["side"], rating["rating"]) == (key, side, 3)
    marks = mine(store.statement_marks())
    verdicts = base if side == "base" else tuned
    assert [(m["statement"], m["kind"], m["mark"]) for m in marks] == [
        (s, k, g)
        for (k, s), g in zip([("must_have", s) for s in must] + [("nice_to_have", s) for s in nice],
                             given, strict=True)
    ]  # fmt: skip
    assert [m["judge_verdict"] for m in marks] == verdicts
    assert {m["judge"] for m in marks} == {"offline"} and {m["rating_id"] for m in marks} == {
        rating["id"]
    }

    # The summary reads the marks back: the reviewer's shares and the judge's agreement.
    figures = summarize([], [], marks=marks, n_boot=100)["statements"]
    covered = sum(g == "covered" for g in given[: len(must)])
    assert figures[side]["comprehensiveness"]["value"] == pytest.approx(covered / len(must))
    assert figures[side]["hallucination"]["value"] == pytest.approx(
        given.count("contradicted") / len(given)
    )
    assert figures["judge_agreement"]["offline"]["n"] == len(given)
    text = client.predict(api_name="/review_summary")
    assert "reviewers: must-have covered" in text and "Judge offline vs reviewers" in text


def test_an_answer_without_statements_shows_no_checklist_and_takes_no_marks(client, app):
    _, store = app
    out = client.predict("bo", PLAIN_SOURCE, api_name="/review_next")
    assert shown_statements(out) == []
    before = len(store.statement_marks())
    saved = client.predict(2, "", "bo", PLAIN_SOURCE, api_name="/rate")
    assert "Saved rating" in saved[-1] and "Statements:" not in saved[-1]
    assert [r["reviewer"] for r in store.ratings()].count("bo") == 1
    assert len(store.statement_marks()) == before
    # Marks for statements the answer does not have are refused, not dropped.
    client.predict("bo", PLAIN_SOURCE, api_name="/review_next")
    client.predict(2, "", "bo", PLAIN_SOURCE, "covered", api_name="/rate")
    assert [r["reviewer"] for r in store.ratings()].count("bo") == 1


def test_evaluate_shows_the_judges_verdict_on_each_statement():
    from medchat.ui.evaluate import item_markdown

    records = [dict(zip(("key", "question"), i[:2], strict=True)) for i in ITEMS]
    frame = pd.DataFrame(
        [
            r
            | {
                "reference": "ref",
                "must_have": i[2],
                "nice_to_have": i[3],
                "base_verdicts": i[4],
                "tuned_verdicts": i[5],
                "base_answer": "b",
                "tuned_answer": "t",
            }
            for r, i in zip(records, ITEMS, strict=True)
        ]
    )
    _, _, base, tuned = item_markdown(frame, "q1", "offline")
    assert "judged by offline:** 1 of 2 must-have covered, 1 of 3 contradicted" in base
    assert "judged by offline:** 2 of 2 must-have covered, 0 of 3 contradicted" in tuned
    assert "❌ contradicted · *nice-to-have*: Kidney function may be affected." in base
    assert "▫️ not covered · *must-have*: Ask a doctor before combining them." in base
    # A run without statements shows the answers as before.
    plain = frame.drop(columns=["must_have", "nice_to_have", "base_verdicts", "tuned_verdicts"])
    assert "Statements" not in "".join(item_markdown(plain, "q1", None))


# -- in Chromium ----------------------------------------------------------------------------------
def settled(page, before: str) -> None:
    """Wait until the question shown differs from `before` and nothing is loading."""
    page.wait_for_function(
        """(before) => {
            const q = document.querySelector('#review-question').innerText;
            return q.includes('Question') && q !== before && !document.querySelector('.pending');
        }""",
        arg=before,
    )


def pick_source(page, source: str) -> None:
    """Choose where the answers come from; choosing loads the first answer from there."""
    before = page.inner_text("#review-question")
    page.click("#review-source input")
    page.get_by_role("option", name=source).click()
    settled(page, before)


@pytest.mark.browser
def test_in_a_browser_the_checklist_shows_beside_the_rating_only_with_statements(browser, app):
    url, store = app
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Review").click()
        page.fill("#review-name input, #review-name textarea", "cy")
        pick_source(page, KQA_SOURCE)
        # Skip to the question with must-have and nice-to-have statements.
        while "ibuprofen" not in page.inner_text("#review-question"):
            before = page.inner_text("#review-question")
            page.get_by_role("button", name="Skip").click()
            settled(page, before)
        checklist = page.locator("#review-checklist")
        checklist.wait_for(state="visible")
        question = page.inner_text("#review-question").removeprefix("Question: ").strip()
        _, _, must, nice, _, _ = next(i for i in ITEMS if i[1] == question)
        radios = page.locator("#review-checklist .statement-mark:visible")
        assert radios.count() == len(must) + len(nice)
        text = checklist.inner_text()
        assert f"Must-have 1: {must[0]}" in text and "Contradicted" in text
        if nice:
            assert f"Nice-to-have 1: {nice[0]}" in text
        # Beside the rating: same band of the page, to its right.
        rating = page.locator("#review-rating").bounding_box()
        box = checklist.bounding_box()
        assert box["x"] > rating["x"] + rating["width"] - 1 and box["y"] < rating["y"] + 200
        shot = Path(os.environ.get("TMPDIR", "/tmp")) / "review-checklist.png"
        page.screenshot(path=str(shot), full_page=True)

        # Marking every statement and a rating saves them together.
        page.locator("#review-rating").get_by_text("3 Incomplete").click()
        for i in range(radios.count()):
            radios.nth(i).get_by_text("Missing", exact=True).click()
        page.click("#review-save")
        page.wait_for_function(
            "() => document.querySelector('#review-status').innerText.includes('Saved rating')"
        )
        mine = [m for m in store.statement_marks() if m["reviewer"] == "cy"]
        assert [m["mark"] for m in mine] == ["missing"] * len(must + nice)

        # A run without statements: no checklist, the rating as before.
        pick_source(page, PLAIN_SOURCE)
        assert "glaucoma" in page.inner_text("#review-question") or "gout" in page.inner_text(
            "#review-question"
        )
        assert not page.locator("#review-checklist").is_visible()
        assert page.locator("#review-checklist .statement-mark:visible").count() == 0
        assert page.locator("#review-rating").is_visible()
        page.screenshot(path=str(shot.with_name("review-plain.png")), full_page=True)
    finally:
        context.close()


@pytest.mark.browser
def test_in_a_browser_evaluate_shows_each_sides_verdicts_with_the_judge(browser, app):
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(app[0])
        page.get_by_role("tab", name="Evaluate").click()
        page.click("#eval-run input")
        page.get_by_role("option", name=KQA_RUN).click()
        page.wait_for_function(
            "() => document.querySelector('#eval-table').innerText.includes('ibuprofen')"
        )
        cards = page.inner_text("#eval-cards")
        assert "Must-have statements entailed" in cards and "Statements contradicted" in cards
        cell = page.locator('#eval-table [data-testid^="cell-"]').filter(has_text="ibuprofen")
        cell.first.click()
        page.wait_for_function("() => document.body.innerText.includes('judged by offline')")
        body = page.inner_text("body")
        assert "1 of 2 must-have covered, 1 of 3 contradicted" in body  # base
        assert "2 of 2 must-have covered, 0 of 3 contradicted" in body  # fine-tuned
        shot = Path(os.environ.get("TMPDIR", "/tmp")) / "evaluate-verdicts.png"
        page.get_by_text("Base model", exact=True).scroll_into_view_if_needed()
        page.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()
