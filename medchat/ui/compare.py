"""The Compare tab: base and fine-tuned answers to one question, side by side, voted on blind.

Both answers stream together (`Pipeline.stream_pair`: one batched generate in process, two
concurrent requests on a server) from one prompt: the one the adapter was trained with (its
prompt style, with NIH passages only when it was trained with them), so a vote compares the
models, not two prompts. A warning above the answers says when that prompt had no NIH
passages; the sources and further reading follow (medchat.presenter). After an emergency notice
no answer is generated: the "Show general information" button shows the NIH passages on the
topic word for word. In blind mode, the default, the sides are shuffled per question
and shown as A and B; the vote reveals which was which. When the question is one of the
evaluation data's, the reference answer and each side's cosine similarity to it are shown
after the vote (in an open comparison, once both answers are done). A sampled comparison
(temperature above 0) draws a seed that the vote stores, so it can be replayed.

API: `/compare` (question, temperature, top_p, max_new_tokens, blind) streams
(answer_a, answer_b, notice, label_a, label_b); `/vote` (vote, reviewer) records a vote on this
session's last comparison and returns the reveal. When sign-in is on (medchat.access), a vote
without a signed-in session is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterator
from contextlib import closing
from types import SimpleNamespace
from typing import Any

import gradio as gr

from medchat.access import Access
from medchat.errors import MedchatError
from medchat.generation import read_params
from medchat.presenter import present, present_general_info
from medchat.references import ReferenceBook
from medchat.reviews import VOTES
from medchat.settings import Settings
from medchat.ui.chat_handlers import alert_updates
from medchat.ui.chat_messages import cut_off_note
from medchat.ui.common import (
    HELD_MESSAGE,
    NOTICE_BREAK,
    SIDE_NAMES,
    app_message,
    general_info_markdown,
    generation_sliders,
    shown,
    under_answer_markdown,
    warning_markdown,
)

VOTE_LABELS = {
    "A": "A is better",
    "B": "B is better",
    "tie": "Tie",
    "both_bad": "Both are bad",
}
log = logging.getLogger(__name__)
BLIND_REFERENCE = (
    "A reference answer exists for this question; it and each side's similarity to it are "
    "shown after your vote."
)
VOTE_STORES = (
    "**What a vote stores:** the question, both answers, which model was shown as A, your "
    "vote, the generation settings (with the sampling seed), the model and adapter names, the "
    "prompt style and the NIH passages in the prompt, the time, and your reviewer name (the "
    "name you sign in with or type, else an anonymous id of this browser session). It is kept "
    "in the app's review database on this server and can be exported by the study's "
    "organisers. Nothing else about you is stored."
)
HINT_WAIT = "Voting opens when both answers are finished."
HINT_READY = "Which answer is better? Vote to see which model wrote which."
HINT_STOPPED = "Stopped before both answers finished: nothing to vote on. Ask again to vote."
HINT_VOTED = "Vote saved. Ask another question to compare again."


def short_embedder(name: str) -> str:
    """An embedder's name without its hash and organisation:
    "sentence-transformers/all-MiniLM-L6-v2 (sha256 53aa...)" -> "all-MiniLM-L6-v2"."""
    return name.split(" (sha256", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _other(side: str) -> str:
    return "tuned" if side == "base" else "base"


def make_compare_fns(
    pipeline, settings: Settings, store, refs: ReferenceBook, access: Access | None = None
):
    """(compare, after_compare, vote) handlers for the tab's events."""
    access = access or Access()

    def labels(a_is: str, blind: bool) -> tuple[str, str]:
        if blind:
            return "### Answer A", "### Answer B"
        return f"### A: {SIDE_NAMES[a_is]}", f"### B: {SIDE_NAMES[_other(a_is)]}"

    def compare(
        question: str,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        blind: bool = True,
        general_info: bool = False,
    ) -> Iterator[tuple]:
        """Yield (answer_a, answer_b, notice, label_a, label_b, pending) as both answers grow.

        After an emergency notice both answers wait until `general_info` (the button).
        """
        la, lb = labels("base", True)
        # 1. Clean, triage and build the prompt (medchat.pipeline).
        try:
            params = read_params(settings, temperature, top_p, max_new_tokens)
            if not params.greedy:  # sampled: a seed of its own, stored with the vote
                params = dataclasses.replace(params, seed=secrets.randbelow(2**31))
            turn = pipeline.prepare(question, None, params, pair=True, general_info=general_info)
        except MedchatError as err:
            yield "", "", app_message(err), la, lb, None
            return
        flag = turn.flag
        if flag is not None and not flag.allow_answer:
            yield "", "", flag.notice, la, lb, None
            return
        notice = flag.notice if flag is not None else ""
        if turn.held:
            yield "", "", notice + NOTICE_BREAK + HELD_MESSAGE, la, lb, None
            return
        if turn.general:  # the NIH passages, word for word; no model answers, no vote
            info = general_info_markdown(present_general_info(turn))
            yield "", "", notice + NOTICE_BREAK + info, la, lb, None
            return
        if turn.error:
            yield (
                "",
                "",
                (notice + "\n\n" if notice else "") + app_message(turn.error),
                la,
                lb,
                None,
            )
            return
        warning = warning_markdown(present(turn)).strip()  # above both answers: one prompt
        if warning:
            notice = (notice + NOTICE_BREAK if notice else "") + warning
        blind = bool(blind)
        a_is = secrets.choice(("base", "tuned")) if blind else "base"
        la, lb = labels(a_is, blind)
        pending: dict[str, Any] = {
            "question": turn.question,
            "answer_a": "",
            "answer_b": "",
            "a_is": a_is,
            "blind": blind,
            "params": params.as_dict(),
            "complete": False,
            "vote_id": None,
            "prompt": turn.record(),
        }
        yield "", "", notice, la, lb, pending
        # 2. Both answers, streamed together; closing this generator stops both.
        try:
            # Raw texts: the vote stores them; `shown` makes them safe for display.
            with closing(pipeline.stream_pair(turn, markdown=False)) as pairs:
                for base, tuned in pairs:
                    a, b = (base, tuned) if a_is == "base" else (tuned, base)
                    pending = pending | {"answer_a": a, "answer_b": b}
                    yield shown(a), shown(b), notice, la, lb, pending
        except MedchatError as err:  # the server went away mid-answer: nothing to vote on
            problem = (notice + "\n\n" if notice else "") + app_message(err)
            yield shown(pending["answer_a"]), shown(pending["answer_b"]), problem, la, lb, None
            return
        pending = pending | {"complete": True}
        # Both sides read the same prompt: one list of sources (and further reading).
        under = under_answer_markdown(present(turn, [pending["answer_a"], pending["answer_b"]]))
        if under:
            notice = notice + under if notice else under.strip()
        # Each side as shown: with the cut-off mark, as in the chat (the vote stores it without).
        a, b = (
            shown(x) + cut_off_note(pipeline, turn, x)
            for x in (pending["answer_a"], pending["answer_b"])
        )
        yield a, b, notice, la, lb, pending

    def with_reference(pending: dict) -> dict:
        """`pending` with the reference answer, both cosines and their text, when the
        evaluation data has the question (once: kept in the pending state)."""
        if "reference_text" in pending:
            return pending
        ref = refs.lookup(pending["question"])
        if ref is None:
            return pending | {"reference_text": ""}
        cos_a, cos_b = refs.cosines([pending["answer_a"], pending["answer_b"]], ref.answer)
        more = (
            f" (the data holds {ref.n_answers} answers to this question; this is the first)"
            if ref.n_answers > 1
            else ""
        )
        text = (
            f"#### Reference answer from the evaluation data{more}\n\n{shown(ref.answer)}\n\n"
            f"**Cosine similarity to the reference:** A {cos_a:.3f} · B {cos_b:.3f} "
            f"(1 = same meaning; a rough guide, not a grade; embedder "
            f"{shown(short_embedder(refs.embedder().name))})"
        )
        return pending | {
            "reference": ref.answer,
            "cosine_a": cos_a,
            "cosine_b": cos_b,
            "reference_text": text,
        }

    def after_compare(pending: dict | None):
        """(reference, pending, hint, *vote buttons): voting opens when both answers are done;
        the reference answer and cosines show when there is one, unless the comparison is blind
        (then they come with the vote's reveal)."""
        ready = bool(pending and pending.get("complete"))
        buttons = [gr.Button(interactive=ready) for _ in VOTES]
        if not ready:
            return "", pending, HINT_STOPPED if pending else "", *buttons
        try:
            pending = with_reference(pending)
        except MedchatError as err:  # no embedder: vote anyway, without scores
            log.warning("No reference scores: %s", err)
            pending = pending | {"reference_text": ""}
        text = pending["reference_text"]
        if text and pending.get("blind"):  # nothing may hint at which side is which
            text = BLIND_REFERENCE
        return text, pending, HINT_READY, *buttons

    def vote(
        choice: str,
        reviewer: str | None,
        pending: dict | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ):
        """Record a vote on the pending comparison; returns (reveal, pending)."""
        try:
            reviewer = access.require(request, profile, "vote", typed=reviewer)
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        if choice not in VOTES:
            raise gr.Error(f"Vote {choice!r} is unknown; choose one of {', '.join(VOTES)}.")
        if not pending:
            raise gr.Error("There is nothing to vote on; ask a question first.")
        if not pending.get("complete"):
            raise gr.Error("Wait until both answers are finished before voting.")
        if pending.get("vote_id") is not None:
            raise gr.Error("You already voted on this comparison; ask another question.")
        try:
            vote_id = store.add_vote(
                question=pending["question"],
                answer_a=pending["answer_a"],
                answer_b=pending["answer_b"],
                a_is=pending["a_is"],
                vote=choice,
                params=pending["params"],
                model=pipeline.profile.name,
                adapter=str(pipeline.adapter or "none"),
                reviewer=reviewer,
                prompt=pending.get("prompt"),
            )
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        a_is = pending["a_is"]
        reveal = (
            f"✅ Vote saved ({VOTE_LABELS[choice]}, #{vote_id}). "
            f"**A** was the **{SIDE_NAMES[a_is]}**, **B** the **{SIDE_NAMES[_other(a_is)]}**."
        )
        if pending.get("blind"):  # the reference and the scores, shown only now
            try:
                pending = with_reference(pending)
            except MedchatError as err:
                log.warning("No reference scores after the vote: %s", err)
            if pending.get("reference_text"):
                reveal += "\n\n" + pending["reference_text"]
        return reveal, pending | {"vote_id": vote_id}

    return compare, after_compare, vote


def build_compare_tab(
    pipeline, settings: Settings, store, refs: ReferenceBook, access: Access | None = None
) -> None:
    """The Compare tab's content; call inside a `gr.Tab`."""
    access = access or Access()
    compare, after_compare, vote = make_compare_fns(pipeline, settings, store, refs, access)
    ui = _compare_layout(pipeline, settings, access)
    _wire_answers(ui, compare, after_compare)
    _wire_votes(ui, vote)


def _compare_layout(pipeline, settings: Settings, access: Access) -> SimpleNamespace:
    """The tab's components, top to bottom."""
    gr.Markdown(
        "Ask one question; the **base model** and the **fine-tuned model** answer it together. "
        "In a blind comparison the two sides are shuffled and named A and B until you vote."
    )
    if not pipeline.has_adapter:
        gr.Markdown(app_message("No fine-tuned adapter is loaded, so there is nothing to compare."))
    ui = SimpleNamespace()
    ui.question = gr.Textbox(
        label="Question", lines=2, placeholder="e.g. What is glaucoma?", elem_id="compare-q"
    )
    with gr.Row():
        ui.ask = gr.Button("Ask both models", variant="primary", elem_id="compare-ask")
        ui.stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="compare-stop")
    with gr.Accordion("Settings", open=False):
        ui.blind = gr.Checkbox(
            value=True, label="Blind comparison (hide the model names until I vote)"
        )
        ui.sliders = generation_sliders(settings, prefix="compare")
    ui.alert = gr.HTML(visible=False, elem_id="compare-alert")
    ui.notice = gr.Markdown(elem_id="compare-notice")
    ui.general = gr.Button(
        "Show general information (not advice for this situation)",
        visible=False,
        elem_id="compare-general-info",
    )
    with gr.Row(equal_height=False):
        with gr.Column():
            ui.label_a = gr.Markdown("### Answer A")
            ui.answer_a = gr.Markdown(elem_id="answer-a", elem_classes=["answer"])
        with gr.Column():
            ui.label_b = gr.Markdown("### Answer B")
            ui.answer_b = gr.Markdown(elem_id="answer-b", elem_classes=["answer"])
    with gr.Row():
        ui.buttons = [
            gr.Button(VOTE_LABELS[v], interactive=False, elem_id=f"vote-{v.replace('_', '-')}")
            for v in VOTES
        ]
    ui.hint = gr.Markdown(HINT_WAIT, elem_id="vote-hint")
    ui.reviewer = gr.Textbox(
        label="Your name (optional, saved with the vote; else an anonymous id)",
        max_lines=1,
        visible=not access.enabled,  # signed in: the username is the reviewer
    )
    ui.reveal = gr.Markdown(elem_id="reveal")
    ui.reference = gr.Markdown(elem_id="compare-reference")
    gr.Markdown(VOTE_STORES + settings.storage_warning, elem_classes=["store-note"])
    ui.pending = gr.State(None)
    # API-only: a vote by name, for scripts and tests.
    ui.vote_choice = gr.Radio(list(VOTES), visible=False)
    ui.vote_api = gr.Button(visible=False)
    return ui


def _wire_answers(ui: SimpleNamespace, compare, after_compare) -> None:
    """Ask (button, Enter or the general-information button) -> both answers -> voting opens;
    Stop cancels whichever of those runs."""

    def reset():
        closed = [gr.Button(interactive=False) for _ in VOTES]
        return "", "", HINT_WAIT, gr.Button(interactive=True), *closed

    def finished(pending_: dict | None):
        return (*after_compare(pending_), gr.Button(interactive=False))

    inputs = [ui.question, *ui.sliders, ui.blind]
    answers = [ui.answer_a, ui.answer_b, ui.notice, ui.label_a, ui.label_b, ui.pending]
    reset_outputs = [ui.reveal, ui.reference, ui.hint, ui.stop, *ui.buttons]
    after_outputs = [ui.reference, ui.pending, ui.hint, *ui.buttons, ui.stop]
    quiet = {"queue": False, "api_visibility": "undocumented"}
    started = ui.ask.click(reset, None, reset_outputs, **quiet)
    submitted = ui.question.submit(reset, None, reset_outputs, **quiet)
    runs = []
    for trigger, name in ((started, "compare"), (submitted, None)):
        run = trigger.then(
            compare,
            inputs,
            answers,
            api_name=name,
            api_visibility="public" if name else "undocumented",
            show_progress="minimal",
        )
        run.then(finished, [ui.pending], after_outputs, api_visibility="undocumented")
        runs.append(run)

    # After an emergency notice: the alert, and the answers only when asked for.
    def compare_general_info(q, temperature, top_p, max_new_tokens, blind_):
        yield from compare(q, temperature, top_p, max_new_tokens, blind_, general_info=True)

    ui.notice.change(alert_updates, [ui.notice], [ui.alert, ui.general], **quiet)
    asked = ui.general.click(reset, None, reset_outputs, **quiet).then(
        compare_general_info,
        inputs,
        answers,
        api_visibility="undocumented",
        show_progress="minimal",
    )
    asked.then(finished, [ui.pending], after_outputs, api_visibility="undocumented")
    runs.append(asked)
    ui.stop.click(
        lambda: (HINT_STOPPED, gr.Button(interactive=False)),
        None,
        [ui.hint, ui.stop],
        cancels=runs,
        **quiet,
    )


def _wire_votes(ui: SimpleNamespace, vote) -> None:
    """A vote button stores the vote, closes voting and names the models; `/vote` by API."""

    def after_vote(state: dict | None):
        """Voting closes for this comparison, and the labels name the models."""
        closed = [gr.Button(interactive=False) for _ in VOTES]
        a_is = (state or {}).get("a_is", "base")
        labels_ = f"### A: {SIDE_NAMES[a_is]}", f"### B: {SIDE_NAMES[_other(a_is)]}"
        return *closed, *labels_, HINT_VOTED

    def vote_for(choice: str):
        # A named function (not a lambda) so Gradio hands it the request and the OAuth profile.
        def on_click(
            who: str | None,
            state: dict | None,
            request: gr.Request | None = None,
            profile: gr.OAuthProfile | None = None,
        ):
            return vote(choice, who, state, request, profile)

        return on_click

    for choice, button in zip(VOTES, ui.buttons, strict=True):
        button.click(
            vote_for(choice),
            [ui.reviewer, ui.pending],
            [ui.reveal, ui.pending],
            api_visibility="undocumented",
        ).success(
            after_vote,
            [ui.pending],
            [*ui.buttons, ui.label_a, ui.label_b, ui.hint],
            api_visibility="undocumented",
        )
    ui.vote_api.click(
        vote,
        [ui.vote_choice, ui.reviewer, ui.pending],
        [ui.reveal, ui.pending],
        api_name="vote",
        api_description="Vote on this session's last comparison: (vote: A, B, tie or both_bad, "
        "reviewer) -> which side was which.",
    )
