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
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import gradio as gr

from medchat.access import Access
from medchat.errors import MedchatError
from medchat.evaluation import RESULTS, list_runs, read_results
from medchat.references import ReferenceBook
from medchat.reviews import MARKS, RATING_LABELS, SIDES
from medchat.settings import Settings
from medchat.statements import MUST, NICE, run_judge
from medchat.ui.common import SIDE_NAMES, export_dir, shown

ALL_SOURCES = "Everything"
COMPARE = "compare"
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

# Statement checklist: one radio per statement, from a fixed pool (K-QA has at most 19 per
# question); an answer with more shows the first MAX_STATEMENTS and says so.
MAX_STATEMENTS = 32
MARK_CHOICES = [("Covered", "covered"), ("Contradicted", "contradicted"), ("Missing", "missing")]
KIND_NAMES = {MUST: "Must-have", NICE: "Nice-to-have"}
CHECKLIST_HELP = (
    "#### Statements a good answer contains\n"
    "Physicians wrote these for this question. For each: **Covered** (the answer says it or "
    "clearly implies it), **Contradicted** (the answer says something that cannot be true with "
    "it) or **Missing** (the answer does not say it). Must-have statements are what a good "
    "answer must contain; nice-to-have ones it may."
)


def item_id(item: dict) -> tuple[str, str, str]:
    return (item["source"], item["item_id"], item["side"])


def _run_prompt(folder: Path) -> dict[str, Any]:
    """The prompt style of a run and whether its prompts had sources (config.json); for a run
    saved before they were recorded, worked out from its adapter and retrieval when the
    adapter's folder is here, else unknown (None)."""
    from medchat.evaluation import CONFIG
    from medchat.prompts import read_style

    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"prompt_style": None, "sources_in_prompt": None}
    retrieval = config.get("retrieval")
    style = config.get("prompt_style")
    adapter = Path(str(config.get("adapter") or "")).expanduser()
    if style is None and config.get("adapter") and adapter.is_dir():
        try:
            style = read_style(adapter).served(retrieval).id
        except MedchatError:
            style = None
    had = config.get("sources_in_prompt")
    if had is None and "retrieval" in config:
        had = retrieval is not None
    return {"prompt_style": style, "sources_in_prompt": had}


def _run_item_prompt(run_prompt: dict[str, Any], record: dict) -> dict[str, Any] | None:
    """The prompt record of one question of a run: the run's style, and the passages in the
    question's prompt (its "sources"); None when none of it is known."""
    known = "sources" in record or run_prompt["sources_in_prompt"] is not None
    if not known and run_prompt["prompt_style"] is None:
        return None
    sources = [
        {"key": str(s.get("key", "")), "url": str(s.get("url", ""))}
        for s in record.get("sources") or ()
    ]
    return run_prompt | {"prompt_sources": sources if known else None}


def _prompt_of_vote(vote: dict) -> dict[str, Any] | None:
    """A vote's prompt record, as add_rating takes it (None when the vote has none)."""
    if vote.get("prompt_style") is None and vote.get("sources_in_prompt") is None:
        return None
    had = vote.get("sources_in_prompt")
    sources = vote.get("prompt_sources")
    return {
        "prompt_style": vote.get("prompt_style"),
        "sources_in_prompt": None if had is None else bool(had),
        "prompt_sources": json.loads(sources) if sources else None,
    }


def _run_embedder(folder: Path) -> str | None:
    """The embedder named in a run's summary.json (what its cosines came from), else None."""
    try:
        return json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("embedder")
    except (OSError, ValueError):
        return None


def item_statements(record: dict, side: str, judge: str | None) -> list[dict]:
    """One side's statements of a run record, must-have first, each with the run's judge and
    its verdict (None without one): [{kind, statement, judge, judge_verdict}]; [] without."""
    statements = [(MUST, s) for s in record.get(MUST) or ()]
    statements += [(NICE, s) for s in record.get(NICE) or ()]
    verdicts = record.get(f"{side}_verdicts") or []
    if len(verdicts) != len(statements):  # no judge (--judge none), or a record out of shape
        verdicts = [None] * len(statements)
    return [
        {
            "kind": kind,
            "statement": text,
            "judge": judge if verdict is not None else None,
            "judge_verdict": verdict,
        }
        for (kind, text), verdict in zip(statements, verdicts, strict=True)
    ]


class ReviewQueue:
    """The answers to review, gathered from run folders and the vote table on each request."""

    def __init__(self, run_dirs: tuple[Path, ...], store, refs: ReferenceBook, wanted: int = 2):
        self.run_dirs = tuple(Path(d) for d in run_dirs)
        self.store = store
        self.refs = refs
        self.wanted = wanted  # ratings per answer, from different reviewers

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
            embedder = _run_embedder(folder)
            run_prompt = _run_prompt(folder)
            judge = run_judge(folder)
            for record in read_results(folder / RESULTS):
                prompt = _run_item_prompt(run_prompt, record)
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
                            "embedder": embedder if cosine is not None else None,
                            "prompt": prompt,
                            "statements": item_statements(record, side, judge),
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
                            "embedder": None,
                            "prompt": _prompt_of_vote(vote),
                            "statements": [],
                        }
                    )
        return items

    def next_item(self, reviewer: str, source: str, skipped: list) -> tuple[dict | None, int, int]:
        """(the next answer for this reviewer or None, answers they rated here, answers still
        open to them) in `source`.

        Open: fewer than `wanted` ratings and not yet rated by this reviewer. Each reviewer
        gets an order of their own, stable across visits, so the two answers to one question
        rarely come one after the other; answers nearest to `wanted` ratings come first, so
        items get finished rather than all started.
        """
        items = self.items(source)
        seed = int(hashlib.sha256(reviewer.encode()).hexdigest()[:16], 16)
        random.Random(seed).shuffle(items)
        counts = self.store.rating_counts()
        mine = self.store.rated_keys(reviewer)
        todo = [
            i for i in items if item_id(i) not in mine and counts.get(item_id(i), 0) < self.wanted
        ]
        todo.sort(key=lambda i: -counts.get(item_id(i), 0))  # stable: the shuffle breaks ties
        skip = {tuple(s) for s in skipped}
        fresh = [i for i in todo if item_id(i) not in skip]
        item = (fresh or todo or [None])[0]
        if item is not None and item["reference"] is None:
            ref = self.refs.lookup(item["question"])
            item = item | {"reference": ref.answer if ref else ""}
        done = sum(1 for i in items if item_id(i) in mine)
        return item, done, len(todo)


def with_mark_parameters(fn):
    """`fn(..., *values)` as the API shows it: its *values as mark_1 .. mark_MAX_STATEMENTS,
    each defaulting to None, so a caller names the marks it gives (or gives them in order) and
    may leave them out for an answer without statements."""
    signature = inspect.signature(fn)
    named = [p for p in signature.parameters.values() if p.kind is not p.VAR_POSITIONAL]
    marks = [
        inspect.Parameter(f"mark_{i + 1}", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
        for i in range(MAX_STATEMENTS)
    ]
    fn.__signature__ = signature.replace(parameters=[*named, *marks])
    return fn


def statement_marks(statements: list[dict], values) -> list[dict] | None:
    """The marks to save with a rating: each shown statement with the rater's mark (and the
    run's judge verdict); None for an answer without statements. A statement left unmarked is
    refused, naming how many."""
    values = list(values)
    shown_statements = statements[:MAX_STATEMENTS]
    extra = [v for v in values[len(shown_statements) :] if v is not None]
    if extra:
        raise MedchatError(
            f"The shown answer has {len(shown_statements)} statements to mark, and marks were "
            "given past the last one; give one mark per statement."
        )
    if not statements:
        return None
    values = values[: len(shown_statements)]
    values += [None] * (len(shown_statements) - len(values))
    unmarked = [i + 1 for i, v in enumerate(values) if v is None]
    if unmarked:
        raise MedchatError(
            f"Mark every statement covered, contradicted or missing before saving "
            f"({len(unmarked)} of {len(shown_statements)} unmarked)."
        )
    bad = [v for v in values if v not in MARKS]
    if bad:
        raise MedchatError(f"{bad[0]!r} is not a mark; use covered, contradicted or missing.")
    return [s | {"mark": v} for s, v in zip(shown_statements, values, strict=True)]


def _other(side: str) -> str:
    return "tuned" if side == "base" else "base"


def _fmt(fig: dict, spec: str = ".2f", pct: bool = False) -> str:
    """A figure of medchat.review_stats as 'value [low, high] (n = ..)', or why it is missing."""
    if fig.get("value") is None:
        return f"n/a ({fig.get('reason') or 'no data'})"

    def f(x: float) -> str:
        return f"{100 * x:.0f}%" if pct else format(x, spec)

    ci = f" [{f(fig['ci_low'])}, {f(fig['ci_high'])}]" if fig.get("ci_low") is not None else ""
    return f"**{f(fig['value'])}**{ci} (n = {fig['n']})"


def study_summary_markdown(summary: dict) -> str:
    """The organiser's view of medchat.review_stats.summarize: every figure with its 95% CI."""
    lines = ["#### Study summary (organisers only; raters never see it)"]
    ratings = summary["ratings"]
    if ratings["n"]:
        rows = ["| model | mean rating (1-4) | LiveQA avgScore (0-3) |", "|---|---|---|"]
        for side in SIDES:
            fig = ratings[side]
            rows.append(f"| {SIDE_NAMES[side]} | {_fmt(fig['mean'])} | {_fmt(fig['avg_score'])} |")
        lines.append("\n".join(rows))
    else:
        lines.append("No ratings yet.")
    votes = summary["votes"]
    if votes["n"]:
        c = votes["counts"]
        lines.append(
            f"Compare votes: {votes['n']} (fine-tuned better {c['tuned']}, base better "
            f"{c['base']}, tie {c['tie']}, both bad {c['both_bad']}). Fine-tuned win rate over "
            f"decisive votes: {_fmt(votes['win_rate'], pct=True)}"
        )
    else:
        lines.append("No compare votes yet.")
    agreement = summary["agreement"]
    alpha = agreement.get("krippendorff_alpha") or {}
    lines.append(f"Inter-rater agreement, Krippendorff's alpha (ordinal): {_fmt(alpha)}")
    kappas = agreement.get("weighted_kappa") or []
    if kappas:
        lines.append(
            "Weighted kappa per pair of reviewers: "
            + "; ".join(f"{shown(' & '.join(k['reviewers']))} {_fmt(k)}" for k in kappas)
        )
    per_embedder = summary.get("cosine_spearman") or {}
    for name, fig in sorted(per_embedder.items()):
        lines.append(f"Spearman of rating with cosine ({shown(name)}): {_fmt(fig)}")
    if summary.get("cosine_without_embedder"):
        lines.append(
            f"{summary['cosine_without_embedder']} ratings have a cosine of unknown embedder "
            "(saved before embedders were recorded) and are left out of the correlations."
        )
    lines += statement_summary_lines(summary.get("statements") or {})
    reviewers = summary.get("reviewers") or {}
    if reviewers:
        lines.append(
            "Per reviewer: "
            + ", ".join(
                f"{shown(name or 'anonymous')} {c['ratings']} ratings / {c['votes']} votes"
                for name, c in sorted(reviewers.items())
            )
        )
    return "\n\n".join(lines)


def statement_summary_lines(statements: dict) -> list[str]:
    """The statement part of the study summary: the reviewers' comprehensiveness and
    hallucination per model beside the judge's on the same statements, and the judge's kappa
    with the reviewers; nothing when no statement was marked."""
    if not statements.get("n"):
        return []
    judges = sorted({j for side in SIDES for j in statements[side].get("judge") or {}})
    head = "| model | reviewers: must-have covered | reviewers: contradicted |"
    head += "".join(f" {shown(j)}: must-have entailed | {shown(j)}: contradicted |" for j in judges)
    rows = [head, "|---" * (3 + 2 * len(judges)) + "|"]
    for side in SIDES:
        fig = statements[side]
        cells = [_fmt(fig["comprehensiveness"], pct=True), _fmt(fig["hallucination"], pct=True)]
        for j in judges:
            own = (fig.get("judge") or {}).get(j) or {}
            for name in ("comprehensiveness", "hallucination"):
                cells.append(_fmt(own[name], pct=True) if name in own else "n/a")
        rows.append(f"| {SIDE_NAMES[side]} | " + " | ".join(cells) + " |")
    lines = [
        f"Statements marked by reviewers: {statements['n']} on {statements['answers']} answers "
        "(n = marks; intervals resample answers; the judge's shares are on the same statements).",
        "\n".join(rows),
    ]
    for judge, fig in sorted((statements.get("judge_agreement") or {}).items()):
        agree = fig.get("agreement")
        extra = f", agreeing on {100 * agree:.0f}%" if agree is not None else ""
        lines.append(
            f"Judge {shown(judge)} vs reviewers, Cohen's kappa of covered vs not: "
            f"{_fmt(fig)}{extra}"
        )
    if statements.get("judge_agreement_reason"):
        lines.append(f"Judge vs reviewers: n/a ({statements['judge_agreement_reason']})")
    return lines


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
    gr.Markdown(
        "Rate answers from evaluation runs and Compare votes. You are not told which model "
        f"wrote an answer; each answer is rated by {settings.review_n} different reviewers. "
        + SCALE_HELP
    )
    with gr.Row():
        reviewer = gr.Textbox(
            label="Your name",
            placeholder="optional: your progress is kept under it (else under this session)",
            max_lines=1,
            scale=2,
            elem_id="review-name",
            visible=not access.enabled,  # signed in: the username is the reviewer
        )
        source = gr.Dropdown(
            queue.sources(),
            value=ALL_SOURCES,
            label="Answers from",
            scale=2,
            elem_id="review-source",
        )
        start = gr.Button("Start / refresh queue", scale=1, elem_id="review-start")
    progress = gr.Markdown(elem_id="review-progress")
    question = gr.Markdown(elem_id="review-question")
    # The answer to rate first, under its own label and in a box of its own; the reference
    # (collapsed) after it, so the one cannot be read as the other.
    gr.Markdown("#### Answer to rate", elem_id="review-answer-label")
    answer = gr.Markdown(elem_id="review-answer", elem_classes=["answer", "answer-to-rate"])
    with gr.Accordion("Reference answer (for comparison)", open=False, elem_id="review-ref"):
        reference = gr.Markdown(elem_id="review-reference")
    # The rating, and beside it (for a question with statements) the statement checklist.
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            rating = gr.Radio(
                [(f"{k} {v}", k) for k, v in RATING_LABELS.items()],
                label="Rating",
                elem_id="review-rating",
            )
            note = gr.Textbox(label="Note (optional)", lines=2, elem_id="review-note")
        with gr.Column(
            scale=3, min_width=320, visible=False, elem_id="review-checklist"
        ) as checklist:
            checklist_head = gr.Markdown(CHECKLIST_HELP, elem_id="review-checklist-head")
            marks = [
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
        save = gr.Button("Save & next", variant="primary", elem_id="review-save")
        skip = gr.Button("Skip")
    status = gr.Markdown(elem_id="review-status")
    gr.Markdown(RATING_STORES + settings.storage_warning, elem_classes=["store-note"])
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
            show_summary = gr.Button("Show summary", elem_id="review-summary-show")
            export_all = gr.Button("Export votes, ratings and thumbs", elem_id="review-export")
        summary = gr.Markdown(elem_id="review-summary")
        exported = gr.File(label="Exported file", interactive=False, height=90)
    state = gr.State({"current": None, "skipped": [], "source": ALL_SOURCES})

    def who_for(typed: str | None, request, profile, action: str) -> str:
        try:
            return access.require(request, profile, action, typed=typed)
        except MedchatError as err:
            raise gr.Error(str(err)) from err

    def checklist_updates(item: dict | None) -> list:
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

    def show(who: str, src: str | None, st: dict | None):
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
            text = (
                "Nothing left for you to rate here. Thank you!" if done else "Nothing to rate yet."
            )
            return head, text, "", "", None, "", st, *checklist_updates(None)
        reference_text = shown(item["reference"]) if item["reference"] else "*(none)*"
        return (
            head,
            f"**Question:** {shown(item['question'])}",
            reference_text,
            shown(item["answer"]) or "*(empty answer)*",
            None,
            "",
            st,
            *checklist_updates(item),
        )

    def show_next(
        who: str | None,
        src: str | None,
        st: dict | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ):
        return show(who_for(who, request, profile, "rate answers"), src, st)

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
            return tuple(gr.skip() for _ in item_outputs)
        if not access.reviewer(request, profile, who):
            return tuple(gr.skip() for _ in item_outputs)  # not signed in: Start says so
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
        name = who_for(who, request, profile, "rate answers")
        st = dict(st or {})
        item = st.get("current")
        keep = tuple(gr.skip() for _ in range(len(item_outputs) + 1))
        if not item:
            gr.Warning("Nothing is shown to rate; press Start to load the queue.")
            return keep
        if value is None:
            gr.Warning("Pick a rating from 1 to 4 before saving.")
            return keep
        try:
            item_marks = statement_marks(item.get("statements") or [], values)
        except MedchatError as err:
            gr.Warning(str(err))
            return keep
        cosine, embedder = item["cosine"], item.get("embedder")
        if cosine is None and item["reference"]:
            try:
                cosine = refs.cosines([item["answer"]], item["reference"])[0]
                embedder = refs.embedder().name
            except MedchatError as err:  # no embedder: the rating counts without a score
                log.warning("No cosine for the rating: %s", err)
                cosine = embedder = None
        try:
            row = store.add_rating(
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
                marks=item_marks,
            )
        except MedchatError as err:
            gr.Warning(str(err))
            return keep
        st["skipped"] = [s for s in st.get("skipped", []) if tuple(s) != item_id(item)]
        saved = f"✅ Saved rating #{row}: {int(value)} {RATING_LABELS[int(value)]}."
        if item_marks:
            tally = {m: sum(x["mark"] == m for x in item_marks) for m in MARKS}
            saved += " Statements: " + ", ".join(f"{n} {m}" for m, n in tally.items()) + "."
        return (*show(name, src, st), saved)

    def skip_item(
        who: str | None,
        src: str | None,
        st: dict | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ):
        name = who_for(who, request, profile, "rate answers")
        st = dict(st or {})
        if st.get("current"):
            st["skipped"] = [*st.get("skipped", []), list(item_id(st["current"]))]
        return show(name, src, st)

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

    def refresh_sources(current: str | None):
        choices = queue.sources()
        return gr.Dropdown(choices=choices, value=current if current in choices else ALL_SOURCES)

    item_outputs = [
        progress,
        question,
        reference,
        answer,
        rating,
        note,
        state,
        checklist,
        checklist_head,
        *marks,
    ]
    start.click(refresh_sources, [source], [source], api_visibility="undocumented").then(
        show_next, [reviewer, source, state], item_outputs, api_visibility="undocumented"
    )
    reviewer.submit(show_next, [reviewer, source, state], item_outputs, api_name="review_next")
    source.select(
        source_picked, [reviewer, source, state], item_outputs, api_visibility="undocumented"
    )
    save.click(
        rate,
        [rating, note, reviewer, source, state, *marks],
        [*item_outputs, status],
        api_name="rate",
        api_description="Rate the shown answer: (rating 1-4, note, reviewer, source, then one "
        "mark per statement of the shown answer: covered, contradicted or missing) -> the next.",
    )
    skip.click(skip_item, [reviewer, source, state], item_outputs, api_name="review_skip")
    show_summary.click(study_summary, None, [summary], api_name="review_summary")
    export_all.click(export, None, [exported], api_name="review_export")
