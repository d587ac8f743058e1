"""The Review tab: rate answers 1-4 on the TREC LiveQA scale, blind to which model wrote them.

The queue holds both answers of every question of every evaluation run (source
"eval:<run name>", item id = the question's key) and both answers of every Compare vote
(source "compare", item id = the vote id). Each answer is wanted from `review_n` different
reviewers (MEDCHAT_REVIEW_N, default 2): a reviewer is handed answers that have fewer ratings
than that and that they have not rated, in an order of their own, the nearly finished first.
Raters see neither the model behind an answer nor anyone's ratings; the answer to rate has a
label and a box of its own, the reference (collapsed) after it. When the question has
statements (a run on a statement set such as K-QA: what a good answer must have and may have),
a checklist beside the rating asks, for each statement, whether the answer covers it,
contradicts it or misses it; the marks are saved with the rating, together with the run's
judge verdict on the same statement, which the rater is never shown. The study summary and the
export are for the study's organisers (medchat.access); with sign-in off the page offers
neither, since anyone there may be a rater (organisers use `python -m medchat.review_stats`).

API: `/review_next` (reviewer, source) shows the next answer to rate; `/rate` (rating, note,
reviewer, source, then one mark per statement of the shown answer: covered, contradicted or
missing) saves a rating of the shown answer and shows the next; `/review_summary`
and `/review_export` (organisers). When sign-in is on, each refuses a caller who is not
signed in (and the last two anyone who is not an organiser).

The queue and the statement marks are medchat.ui.review_queue, the organisers' summary
medchat.ui.review_summary; this module lays the tab out and wires its handlers.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from medchat.access import Access
from medchat.errors import MedchatError
from medchat.references import ReferenceBook
from medchat.reviews import MARKS, RATING_LABELS
from medchat.settings import Settings
from medchat.statements import MUST, NICE
from medchat.ui.common import export_dir, shown
from medchat.ui.review_queue import (
    ALL_SOURCES,
    MAX_STATEMENTS,
    ReviewQueue,
    item_id,
    statement_marks,
    with_mark_parameters,
)
from medchat.ui.review_summary import study_summary_markdown

log = logging.getLogger(__name__)
RATING_STORES = (
    "**What a rating stores:** where the answer came from (run or vote, and which model, "
    "which you are not shown), the question, the answer, your rating and note, your reviewer "
    "name (the name you sign in with or type, else an anonymous id of this browser session), "
    "the reference answer and its cosine score (with the embedder that computed it) when there "
    "is one, your covered / contradicted / missing mark on each statement when the question "
    "has statements (with the automatic judge's verdict on it, which you are not shown), the "
    "prompt style and the NIH passages in the prompt behind the answer, and the time. Rating "
    "the same answer again replaces your earlier rating and marks; other reviewers' ratings "
    "are kept apart and never shown to you."
)
ORGANISERS_ELSEWHERE = (
    "**Study summary and export:** not shown on this page, because sign-in is off and raters "
    "must not see which model wrote which answer. Organisers turn sign-in on (MEDCHAT_AUTH, or "
    "a Space's Hugging Face sign-in) and open them here, or run "
    "`python -m medchat.review_stats summary` and `python -m medchat.review_stats export "
    "FOLDER` where the review database is."
)
SCALE_HELP = (
    "**1 Incorrect**: wrong or unsafe. **2 Related**: on topic but does not answer. "
    "**3 Incomplete**: correct but misses something important. **4 Excellent**: correct and "
    "complete."
)

# The statement checklist: one radio per statement, up to MAX_STATEMENTS (medchat.ui.review_queue).
MARK_CHOICES = [("Covered", "covered"), ("Contradicted", "contradicted"), ("Missing", "missing")]
KIND_NAMES = {MUST: "Must-have", NICE: "Nice-to-have"}
CHECKLIST_HELP = (
    "#### Statements a good answer contains\n"
    "Physicians wrote these for this question. For each: **Covered** (the answer says it or "
    "clearly implies it), **Contradicted** (the answer says something that cannot be true with "
    "it) or **Missing** (the answer does not say it). Must-have statements are what a good "
    "answer must contain; nice-to-have ones it may."
)


def build_review_tab(
    demo: gr.Blocks,
    pipeline,
    settings: Settings,
    store,
    refs: ReferenceBook,
    access: Access | None = None,
):
    """The Review tab's content; call inside a `gr.Tab`."""
    access = access or Access()
    queue = ReviewQueue(settings.run_dirs, store, refs, wanted=settings.review_n)
    exports = export_dir()
    ui = _review_layout(queue, settings, access)
    _wire_rating(ui, *make_rating_fns(queue, store, refs, access, len(ui.item_outputs)))
    _wire_organisers(ui, *make_organiser_fns(store, settings, access, exports))


def _review_layout(queue: ReviewQueue, settings: Settings, access: Access) -> SimpleNamespace:
    """The tab's components, top to bottom; `item_outputs` is what showing an answer updates."""
    ui = SimpleNamespace()
    gr.Markdown(
        "Rate answers from evaluation runs and Compare votes. You are not told which model "
        f"wrote an answer; each answer is rated by {settings.review_n} different reviewers. "
        + SCALE_HELP
    )
    _answer_layout(ui, queue, access)
    _rating_layout(ui)
    gr.Markdown(RATING_STORES + settings.storage_warning, elem_classes=["store-note"])
    _organiser_layout(ui, access)
    ui.state = gr.State({"current": None, "skipped": [], "source": ALL_SOURCES})
    ui.item_outputs = [
        ui.progress,
        ui.question,
        ui.reference,
        ui.answer,
        ui.rating,
        ui.note,
        ui.state,
        ui.checklist,
        ui.checklist_head,
        *ui.marks,
    ]
    return ui


def _answer_layout(ui: SimpleNamespace, queue: ReviewQueue, access: Access) -> None:
    """Who reviews and from which source, the progress, and the question and answer to rate."""
    with gr.Row():
        ui.reviewer = gr.Textbox(
            label="Your name",
            placeholder="optional: your progress is kept under it (else under this session)",
            max_lines=1,
            scale=2,
            elem_id="review-name",
            visible=not access.enabled,  # signed in: the username is the reviewer
        )
        ui.source = gr.Dropdown(
            queue.sources(),
            value=ALL_SOURCES,
            label="Answers from",
            scale=2,
            elem_id="review-source",
        )
        ui.start = gr.Button("Start / refresh queue", scale=1, elem_id="review-start")
    ui.progress = gr.Markdown(elem_id="review-progress")
    ui.question = gr.Markdown(elem_id="review-question")
    # The answer to rate first, under its own label and in a box of its own; the reference
    # (collapsed) after it, so the one cannot be read as the other.
    gr.Markdown("#### Answer to rate", elem_id="review-answer-label")
    ui.answer = gr.Markdown(elem_id="review-answer", elem_classes=["answer", "answer-to-rate"])
    with gr.Accordion("Reference answer (for comparison)", open=False, elem_id="review-ref"):
        ui.reference = gr.Markdown(elem_id="review-reference")


def _rating_layout(ui: SimpleNamespace) -> None:
    """The rating and note, beside them the statement checklist, then Save and Skip."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            ui.rating = gr.Radio(
                [(f"{k} {v}", k) for k, v in RATING_LABELS.items()],
                label="Rating",
                elem_id="review-rating",
            )
            ui.note = gr.Textbox(label="Note (optional)", lines=2, elem_id="review-note")
        with gr.Column(
            scale=3, min_width=320, visible=False, elem_id="review-checklist"
        ) as ui.checklist:
            ui.checklist_head = gr.Markdown(CHECKLIST_HELP, elem_id="review-checklist-head")
            ui.marks = [
                gr.Radio(
                    MARK_CHOICES,
                    label=f"Statement {i + 1}",
                    visible=False,
                    elem_id=f"review-statement-{i + 1}",
                    elem_classes=["statement-mark"],
                )
                for i in range(MAX_STATEMENTS)
            ]
    with gr.Row():
        ui.save = gr.Button("Save & next", variant="primary", elem_id="review-save")
        ui.skip = gr.Button("Skip")
    ui.status = gr.Markdown(elem_id="review-status")


def _organiser_layout(ui: SimpleNamespace, access: Access) -> None:
    """The study summary and the export, for organisers; offered only with sign-in on."""
    if not access.enabled:
        # Without sign-in anyone here could be a rater, and the summary and the export say
        # which model wrote what: neither is offered on this page (the API keeps them).
        gr.Markdown(ORGANISERS_ELSEWHERE, elem_id="review-organisers", elem_classes=["store-note"])
    with gr.Accordion("For the study's organisers", open=False, visible=access.enabled):
        gr.Markdown(
            "The study summary (means with 95% CIs, LiveQA avgScore, vote win rate, agreement, "
            "per-reviewer counts, rating-cosine correlation per embedder, and for questions "
            "with statements the reviewers' comprehensiveness and hallucination and the "
            "statement judge's agreement with them) and the export of every vote, rating, "
            "statement mark and thumb as CSV and parquet with a dataset card."
            + (" Organisers: " + ", ".join(sorted(access.organisers)) if access.enabled else "")
        )
        with gr.Row():
            ui.show_summary = gr.Button("Show summary", elem_id="review-summary-show")
            ui.export_all = gr.Button("Export votes, ratings and thumbs", elem_id="review-export")
        ui.summary = gr.Markdown(elem_id="review-summary")
        ui.exported = gr.File(label="Exported file", interactive=False, height=90)


def _reviewer(access: Access, typed: str | None, request, profile, action: str) -> str:
    """The reviewer behind a request (medchat.access), or a gr.Error saying why there is none."""
    try:
        return access.require(request, profile, action, typed=typed)
    except MedchatError as err:
        raise gr.Error(str(err)) from err


def _checklist_updates(item: dict | None) -> list:
    """The checklist column, its heading and every statement radio, for `item` (hidden
    without statements; every mark cleared)."""
    statements = (item or {}).get("statements") or []
    head = CHECKLIST_HELP
    if len(statements) > MAX_STATEMENTS:
        head += (
            f"\n\nThis question has {len(statements)} statements; the first "
            f"{MAX_STATEMENTS} are shown and saved."
        )
    counts = {MUST: 0, NICE: 0}
    radios = []
    for i in range(MAX_STATEMENTS):
        if i >= len(statements):
            radios.append(gr.Radio(value=None, visible=False, label=f"Statement {i + 1}"))
            continue
        kind = statements[i]["kind"]
        counts[kind] += 1
        label = f"{KIND_NAMES[kind]} {counts[kind]}: {statements[i]['statement']}"
        radios.append(gr.Radio(value=None, visible=True, label=label))
    return [gr.Column(visible=bool(statements)), head, *radios]


def _show(queue: ReviewQueue, who: str, src: str | None, st: dict | None) -> tuple:
    """What the tab shows for the next answer `who` is to rate from `src`, and the new state."""
    st = dict(st or {"current": None, "skipped": []})
    src = src or ALL_SOURCES
    if st.get("source", ALL_SOURCES) != src:
        st["skipped"] = []
    st["source"] = src
    try:
        item, done, open_ = queue.next_item(who, src, st.get("skipped", []))
    except MedchatError as err:
        raise gr.Error(str(err)) from err
    st["current"] = item
    head = f"Reviewing as **{shown(who)}**: you rated **{done}** answers here; **{open_}** "
    head += "still need your rating." if open_ != 1 else "still needs your rating."
    if item is None:
        text = "Nothing left for you to rate here. Thank you!" if done else "Nothing to rate yet."
        return head, text, "", "", None, "", st, *_checklist_updates(None)
    reference_text = shown(item["reference"]) if item["reference"] else "*(none)*"
    return (
        head,
        f"**Question:** {shown(item['question'])}",
        reference_text,
        shown(item["answer"]) or "*(empty answer)*",
        None,
        "",
        st,
        *_checklist_updates(item),
    )


def _save_rating(store, refs: ReferenceBook, item: dict, value, text, name: str, marks) -> int:
    """Store the rating of the shown `item` with its statement marks; the answer's cosine to
    the reference is computed now when the item came without one. Returns the rating's id."""
    cosine, embedder = item["cosine"], item.get("embedder")
    if cosine is None and item["reference"]:
        try:
            cosine = refs.cosines([item["answer"]], item["reference"])[0]
            embedder = refs.embedder().name
        except MedchatError as err:  # no embedder: the rating counts without a score
            log.warning("No cosine for the rating: %s", err)
            cosine = embedder = None
    return store.add_rating(
        source=item["source"],
        item_id=item["item_id"],
        side=item["side"],
        question=item["question"],
        answer=item["answer"],
        rating=int(value),
        note=text or "",
        reviewer=name,
        reference=item["reference"] or "",
        cosine=cosine,
        embedder=embedder,
        prompt=item.get("prompt"),
        marks=marks,
    )


def make_rating_fns(queue: ReviewQueue, store, refs: ReferenceBook, access: Access, outputs: int):
    """(show_next, source_picked, rate, skip_item, refresh_sources): the rater's handlers.
    `outputs` is how many components showing an answer updates (the layout's item_outputs)."""

    def show_next(
        who: str | None,
        src: str | None,
        st: dict | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ):
        return _show(queue, _reviewer(access, who, request, profile, "rate answers"), src, st)

    def source_picked(
        who: str | None,
        src: str | None,
        st: dict | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ):
        """A new source reloads the queue; picking the one already shown changes nothing (so
        a picked rating and a note survive opening and closing the list)."""
        if (st or {}).get("current") is not None and (st or {}).get("source") == src:
            return tuple(gr.skip() for _ in range(outputs))
        if not access.reviewer(request, profile, who):
            return tuple(gr.skip() for _ in range(outputs))  # not signed in: Start says so
        return show_next(who, src, st, request, profile)

    # The request and profile come first: the statement marks follow the named inputs as
    # *values, and Gradio fills in special arguments only before those. with_mark_parameters
    # names the marks for the API (mark_1, ...) and makes each optional.
    @with_mark_parameters
    def rate(
        request: gr.Request | None,
        profile: gr.OAuthProfile | None,
        value,
        text: str | None,
        who: str | None,
        src: str | None,
        st: dict | None,
        *values,
    ):
        name = _reviewer(access, who, request, profile, "rate answers")
        st = dict(st or {})
        item = st.get("current")
        keep = tuple(gr.skip() for _ in range(outputs + 1))
        if not item:
            gr.Warning("Nothing is shown to rate; press Start to load the queue.")
            return keep
        if value is None:
            gr.Warning("Pick a rating from 1 to 4 before saving.")
            return keep
        try:
            item_marks = statement_marks(item.get("statements") or [], values)
            row = _save_rating(store, refs, item, value, text, name, item_marks)
        except MedchatError as err:
            gr.Warning(str(err))
            return keep
        st["skipped"] = [s for s in st.get("skipped", []) if tuple(s) != item_id(item)]
        saved = f"✅ Saved rating #{row}: {int(value)} {RATING_LABELS[int(value)]}."
        if item_marks:
            tally = {m: sum(x["mark"] == m for x in item_marks) for m in MARKS}
            saved += " Statements: " + ", ".join(f"{n} {m}" for m, n in tally.items()) + "."
        return (*_show(queue, name, src, st), saved)

    def skip_item(
        who: str | None,
        src: str | None,
        st: dict | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ):
        name = _reviewer(access, who, request, profile, "rate answers")
        st = dict(st or {})
        if st.get("current"):
            st["skipped"] = [*st.get("skipped", []), list(item_id(st["current"]))]
        return _show(queue, name, src, st)

    def refresh_sources(current: str | None):
        choices = queue.sources()
        return gr.Dropdown(choices=choices, value=current if current in choices else ALL_SOURCES)

    return show_next, source_picked, rate, skip_item, refresh_sources


def make_organiser_fns(store, settings: Settings, access: Access, exports: Path):
    """(study_summary, export): the organisers' handlers; an export is zipped under `exports`."""

    def study_summary(request: gr.Request | None = None, profile: gr.OAuthProfile | None = None):
        from medchat.review_stats import run_embedders, summarize_store

        try:
            access.require_organiser(request, profile, "see the study summary")
            found = summarize_store(store, embedders=run_embedders(*settings.run_dirs))
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        return study_summary_markdown(found)

    def export(request: gr.Request | None = None, profile: gr.OAuthProfile | None = None) -> str:
        from medchat.review_stats import export as export_tables
        from medchat.review_stats import run_embedders

        try:
            access.require_organiser(request, profile, "export the reviews")
            folder = exports / f"medchat-reviews-{time.strftime('%Y%m%d-%H%M%S')}"
            export_tables(store, folder, embedders=run_embedders(*settings.run_dirs))
            store.export_csv("feedback", folder / "feedback.csv")
            return shutil.make_archive(str(folder), "zip", folder)
        except (MedchatError, OSError) as err:
            raise gr.Error(str(err)) from err

    return study_summary, export


def _wire_rating(
    ui: SimpleNamespace, show_next, source_picked, rate, skip_item, refresh_sources
) -> None:
    """Start (or Enter in the name box, or a new source) shows the next answer; Save rates it
    and shows the next; Skip puts it back. `/review_next`, `/rate` and `/review_skip` by API."""
    inputs = [ui.reviewer, ui.source, ui.state]
    ui.start.click(refresh_sources, [ui.source], [ui.source], api_visibility="undocumented").then(
        show_next, inputs, ui.item_outputs, api_visibility="undocumented"
    )
    ui.reviewer.submit(show_next, inputs, ui.item_outputs, api_name="review_next")
    ui.source.select(source_picked, inputs, ui.item_outputs, api_visibility="undocumented")
    ui.save.click(
        rate,
        [ui.rating, ui.note, *inputs, *ui.marks],
        [*ui.item_outputs, ui.status],
        api_name="rate",
        api_description="Rate the shown answer: (rating 1-4, note, reviewer, source, then one "
        "mark per statement of the shown answer: covered, contradicted or missing) -> the next.",
    )
    ui.skip.click(skip_item, inputs, ui.item_outputs, api_name="review_skip")


def _wire_organisers(ui: SimpleNamespace, study_summary, export) -> None:
    """Show summary and Export (organisers only); `/review_summary` and `/review_export`."""
    ui.show_summary.click(study_summary, None, [ui.summary], api_name="review_summary")
    ui.export_all.click(export, None, [ui.exported], api_name="review_export")
