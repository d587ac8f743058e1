"""The Review tab: rate answers 1-4 on the TREC LiveQA scale, blind to which model wrote them.

The queue holds both answers of every question of every evaluation run (source
"eval:<run name>", item id = the question's key) and both answers of every Compare vote
(source "compare", item id = the vote id). Each reviewer works through the queue in an order
of their own; what they have rated is skipped. The summary puts the mean rating per model next
to the Spearman correlation between ratings and cosine scores.

API: `/review_next` (reviewer, source) shows the next answer to rate; `/rate` (rating, note,
reviewer, source) saves a rating of the shown answer and shows the next; `/review_summary`,
`/export_ratings` and `/export_votes`.
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any

import gradio as gr

from medchat.errors import MedchatError
from medchat.evaluation import RESULTS, list_runs, read_results
from medchat.reviews import RATING_LABELS, SIDES
from medchat.settings import Settings
from medchat.ui.common import SIDE_NAMES, ReferenceBook, export_dir, shown

ALL_SOURCES = "Everything"
COMPARE = "compare"
RATING_STORES = (
    "**What a rating stores:** where the answer came from (run or vote, and which model, "
    "which you are not shown), the question, the answer, your rating and note, the name you "
    "give, the reference answer and its cosine score when there is one, and the time. Rating "
    "the same answer again under the same name replaces your earlier rating."
)
SCALE_HELP = (
    "**1 Incorrect**: wrong or unsafe. **2 Related**: on topic but does not answer. "
    "**3 Incomplete**: correct but misses something important. **4 Excellent**: correct and "
    "complete."
)


def item_id(item: dict) -> tuple[str, str, str]:
    return (item["source"], item["item_id"], item["side"])


class ReviewQueue:
    """The answers to review, gathered from run folders and the vote table on each request."""

    def __init__(self, run_dirs: tuple[Path, ...], store, refs: ReferenceBook):
        self.run_dirs = tuple(Path(d) for d in run_dirs)
        self.store = store
        self.refs = refs

    def sources(self) -> list[str]:
        return [ALL_SOURCES, COMPARE, *(f"eval:{p.name}" for p in list_runs(*self.run_dirs))]

    def items(self, source: str = ALL_SOURCES) -> list[dict[str, Any]]:
        """Every reviewable answer of `source` (both sides of each question)."""
        source = source or ALL_SOURCES
        if source not in self.sources():
            raise MedchatError(f"There is no review source {source!r}; pick one from the list.")
        items: list[dict[str, Any]] = []
        for folder in list_runs(*self.run_dirs):
            name = f"eval:{folder.name}"
            if source not in (ALL_SOURCES, name):
                continue
            for record in read_results(folder / RESULTS):
                for side in SIDES:
                    cosine = record.get(f"{side}_cosine")
                    items.append(
                        {
                            "source": name,
                            "item_id": str(record["key"]),
                            "side": side,
                            "question": record["question"],
                            "answer": record[f"{side}_answer"],
                            "reference": record.get("reference") or "",
                            "cosine": float(cosine) if cosine is not None else None,
                        }
                    )
        if source in (ALL_SOURCES, COMPARE):
            for vote in self.store.votes():
                answers = {vote["a_is"]: vote["answer_a"]}
                answers[_other(vote["a_is"])] = vote["answer_b"]
                for side in SIDES:
                    items.append(
                        {
                            "source": COMPARE,
                            "item_id": str(vote["id"]),
                            "side": side,
                            "question": vote["question"],
                            "answer": answers[side],
                            "reference": None,  # looked up when shown
                            "cosine": None,
                        }
                    )
        return items

    def next_item(self, reviewer: str, source: str, skipped: list) -> tuple[dict | None, int, int]:
        """(the next answer for this reviewer or None, rated so far, total) in `source`."""
        items = self.items(source)
        # Each reviewer gets an order of their own, stable across visits, so the two answers
        # to one question rarely come one after the other.
        seed = int(hashlib.sha256(reviewer.encode()).hexdigest()[:16], 16)
        random.Random(seed).shuffle(items)
        rated = self.store.rated_keys(reviewer)
        todo = [i for i in items if item_id(i) not in rated]
        skip = {tuple(s) for s in skipped}
        fresh = [i for i in todo if item_id(i) not in skip]
        item = (fresh or todo or [None])[0]
        if item is not None and item["reference"] is None:
            ref = self.refs.lookup(item["question"])
            item = item | {"reference": ref.answer if ref else ""}
        return item, len(items) - len(todo), len(items)


def _other(side: str) -> str:
    return "tuned" if side == "base" else "base"


def summary_markdown(store) -> str:
    """Mean human rating per model, its agreement with cosine, and the vote tally."""
    ratings, votes = store.rating_summary(), store.vote_summary()
    lines = ["#### Summary"]
    if ratings["n"]:
        parts = []
        for side in SIDES:
            s = ratings["per_side"][side]
            mean = "n/a" if s["mean"] is None else f"{s['mean']:.2f}"
            parts.append(f"{SIDE_NAMES[side]} **{mean}** (n = {s['n']})")
        lines.append("Mean rating (1-4): " + " · ".join(parts))
        rho = ratings["spearman_rating_cosine"]
        lines.append(
            f"Spearman correlation of rating and cosine: **{rho:+.2f}** over "
            f"{ratings['n_with_cosine']} ratings with a cosine score"
            if rho is not None
            else f"Spearman correlation of rating and cosine: n/a ({ratings['n_with_cosine']} "
            "ratings with a cosine score; it needs 3 or more that vary)"
        )
    else:
        lines.append("No ratings yet.")
    if votes["n"]:
        c = votes["counts"]
        rate = votes["tuned_win_rate"]
        lines.append(
            f"Compare votes: {votes['n']} (fine-tuned better {c['tuned']}, base better "
            f"{c['base']}, tie {c['tie']}, both bad {c['both_bad']})"
            + (f"; fine-tuned wins {100 * rate:.0f}% of decisive votes" if rate is not None else "")
        )
    else:
        lines.append("No compare votes yet.")
    return "\n\n".join(lines)


def build_review_tab(demo: gr.Blocks, pipeline, settings: Settings, store, refs: ReferenceBook):
    """The Review tab's content; call inside a `gr.Tab`."""
    queue = ReviewQueue(settings.run_dirs, store, refs)
    exports = export_dir()
    gr.Markdown(
        "Rate answers from evaluation runs and Compare votes. You are not told which model "
        "wrote an answer. " + SCALE_HELP
    )
    with gr.Row():
        reviewer = gr.Textbox(
            label="Your name",
            placeholder="ratings and progress are kept per name",
            max_lines=1,
            scale=2,
            elem_id="review-name",
        )
        source = gr.Dropdown(
            queue.sources(),
            value=ALL_SOURCES,
            label="Answers from",
            allow_custom_value=True,
            scale=2,
        )
        start = gr.Button("Start / refresh queue", scale=1, elem_id="review-start")
    progress = gr.Markdown(elem_id="review-progress")
    question = gr.Markdown(elem_id="review-question")
    with gr.Accordion("Reference answer", open=False):
        reference = gr.Markdown()
    answer = gr.Markdown(elem_id="review-answer", elem_classes=["answer"])
    rating = gr.Radio(
        [(f"{k} {v}", k) for k, v in RATING_LABELS.items()],
        label="Rating",
        elem_id="review-rating",
    )
    note = gr.Textbox(label="Note (optional)", lines=2)
    with gr.Row():
        save = gr.Button("Save & next", variant="primary", elem_id="review-save")
        skip = gr.Button("Skip")
    status = gr.Markdown()
    gr.Markdown(RATING_STORES + settings.storage_warning, elem_classes=["store-note"])
    summary = gr.Markdown(elem_id="review-summary")
    with gr.Row():
        export_ratings = gr.Button("Export ratings CSV")
        export_votes = gr.Button("Export votes CSV")
    exported = gr.File(label="Exported file", interactive=False, height=90)
    state = gr.State({"current": None, "skipped": []})

    def show_next(who: str | None, src: str | None, st: dict | None):
        who = (who or "").strip()
        st = dict(st or {"current": None, "skipped": []})
        try:
            item, done, total = queue.next_item(who, src or ALL_SOURCES, st.get("skipped", []))
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        st["current"] = item
        name = who or "anonymous"
        head = f"**{done} of {total}** answers rated by {shown(name)}"
        if item is None:
            text = "Nothing left to rate here. Thank you!" if total else "Nothing to rate yet."
            return head, text, "", "", None, "", st
        reference_text = shown(item["reference"]) if item["reference"] else "*(none)*"
        return (
            head,
            f"**Question:** {shown(item['question'])}",
            reference_text,
            shown(item["answer"]) or "*(empty answer)*",
            None,
            "",
            st,
        )

    def rate(value, text: str | None, who: str | None, src: str | None, st: dict | None):
        st = dict(st or {})
        item = st.get("current")
        if not item:
            raise gr.Error("Nothing is shown to rate; press Start to load the queue.")
        if value is None:
            raise gr.Error("Pick a rating from 1 to 4 before saving.")
        cosine = item["cosine"]
        if cosine is None and item["reference"]:
            cosine = refs.cosines([item["answer"]], item["reference"])[0]
        try:
            row = store.add_rating(
                source=item["source"],
                item_id=item["item_id"],
                side=item["side"],
                question=item["question"],
                answer=item["answer"],
                rating=int(value),
                note=text or "",
                reviewer=(who or "").strip(),
                reference=item["reference"] or "",
                cosine=cosine,
            )
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        st["skipped"] = [s for s in st.get("skipped", []) if tuple(s) != item_id(item)]
        shown_next = show_next(who, src, st)
        saved = f"✅ Saved rating #{row}: {int(value)} {RATING_LABELS[int(value)]}."
        return (*shown_next, saved, summary_markdown(store))

    def skip_item(who: str | None, src: str | None, st: dict | None):
        st = dict(st or {})
        if st.get("current"):
            st["skipped"] = [*st.get("skipped", []), list(item_id(st["current"]))]
        return show_next(who, src, st)

    def export(kind: str) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            return str(store.export_csv(kind, exports / f"medchat-{kind}-{stamp}.csv"))
        except MedchatError as err:
            raise gr.Error(str(err)) from err

    def refresh_sources(current: str | None):
        choices = queue.sources()
        return gr.Dropdown(choices=choices, value=current if current in choices else ALL_SOURCES)

    item_outputs = [progress, question, reference, answer, rating, note, state]
    start.click(refresh_sources, [source], [source], api_visibility="undocumented").then(
        show_next, [reviewer, source, state], item_outputs, api_visibility="undocumented"
    ).then(lambda: summary_markdown(store), None, [summary], api_visibility="undocumented")
    reviewer.submit(show_next, [reviewer, source, state], item_outputs, api_name="review_next")
    source.input(show_next, [reviewer, source, state], item_outputs, api_visibility="undocumented")
    save.click(
        rate,
        [rating, note, reviewer, source, state],
        [*item_outputs, status, summary],
        api_name="rate",
        api_description="Rate the shown answer: (rating 1-4, note, reviewer, source) -> the next.",
    )
    skip.click(skip_item, [reviewer, source, state], item_outputs, api_name="review_skip")
    export_ratings.click(lambda: export("ratings"), None, [exported], api_name="export_ratings")
    export_votes.click(lambda: export("votes"), None, [exported], api_name="export_votes")
    demo.load(lambda: summary_markdown(store), None, [summary], api_name="review_summary")
