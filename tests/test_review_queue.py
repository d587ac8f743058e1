"""The Review queue for a study: several reviewers per answer, none overwriting another, and
the organiser's summary built from the store."""

from __future__ import annotations

import pytest
from test_app import RUN_NAME, write_run

from medchat.reviews import ReviewStore
from medchat.ui.review import ReviewQueue, item_id, study_summary_markdown

SOURCE = f"eval:{RUN_NAME}"


@pytest.fixture
def queue(tmp_path):
    write_run(tmp_path / "runs" / RUN_NAME)
    with ReviewStore(tmp_path / "reviews.sqlite") as store:
        yield ReviewQueue((tmp_path / "runs",), store, refs=None, wanted=2)


def rate_shown(queue, reviewer: str, rating: int = 3) -> tuple[str, str, str]:
    item, _, _ = queue.next_item(reviewer, SOURCE, [])
    queue.store.add_rating(
        source=item["source"],
        item_id=item["item_id"],
        side=item["side"],
        question=item["question"],
        answer=item["answer"],
        rating=rating,
        reviewer=reviewer,
        cosine=item["cosine"],
        embedder=item["embedder"],
    )
    return item_id(item)


def test_each_answer_goes_to_two_reviewers_then_leaves_the_queue(queue):
    first = rate_shown(queue, "ana")
    # Bo is handed the answer Ana started first: items get finished rather than all started.
    assert rate_shown(queue, "bo") == first
    # Two ratings: nobody else gets it, and neither rating replaced the other.
    for reviewer in ("cy", "dee", "ana"):
        item, _, _ = queue.next_item(reviewer, SOURCE, [])
        assert item_id(item) != first
    mine = {r["reviewer"]: r["rating"] for r in queue.store.ratings() if r["item_id"] == first[1]}
    assert mine == {"ana": 3, "bo": 3}
    _, done, open_ = queue.next_item("cy", SOURCE, [])
    assert (done, open_) == (0, 5)  # 6 answers, one finished
    _, done, open_ = queue.next_item("ana", SOURCE, [])
    assert (done, open_) == (1, 5)


def test_every_answer_rated_twice_empties_the_queue(queue):
    for _ in range(6):
        rate_shown(queue, "ana")
        rate_shown(queue, "bo")
    item, done, open_ = queue.next_item("cy", SOURCE, [])
    assert (item, done, open_) == (None, 0, 0)
    assert set(queue.store.rating_counts().values()) == {2}


def test_ratings_carry_their_runs_embedder_and_the_summary_reports_it(queue):
    from medchat.review_stats import summarize_store

    for rating in (1, 2, 4):
        rate_shown(queue, "ana", rating)
        rate_shown(queue, "bo", rating)
    assert {r["embedder"] for r in queue.store.ratings()} == {"test-embedder"}
    text = study_summary_markdown(summarize_store(queue.store, n_boot=200))
    assert (
        "Krippendorff's alpha" in text and "Spearman of rating with cosine (test-embedder)" in text
    )
    assert "LiveQA avgScore" in text and "ana 3 ratings / 0 votes" in text
