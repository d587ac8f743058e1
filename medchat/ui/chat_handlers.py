"""The Chat tab's handlers: a turn (`make_chat_fn`), general information after an emergency
notice, Stop's mark, a thumb up or down, and the alert above the chat.

Each `make_*` takes the pipeline (and the settings or the review store) and gives back the
function medchat.ui.chat wires to its components; what a reply says, and what of it the model
reads back, is medchat.ui.chat_messages'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import gradio as gr

from medchat.errors import MedchatError
from medchat.generation import read_params
from medchat.pipeline import GENERAL_INFO_HEADING, user_turns
from medchat.presenter import present, present_general_info
from medchat.prompts import content_text
from medchat.safety import clean_message
from medchat.settings import Settings
from medchat.ui.chat_messages import (
    STOPPED_MARK,
    cut_off_note,
    is_notice,
    last_exchange,
    model_history,
    model_view,
)
from medchat.ui.common import (
    HELD_MARK,
    HELD_MESSAGE,
    NOTICE_BREAK,
    alert_html,
    app_message,
    general_info_markdown,
    shown,
    under_answer_markdown,
    warning_markdown,
    without_sources,
    without_warning,
)

log = logging.getLogger(__name__)

EMPTY_ANSWER = "The model gave no answer; press retry or rephrase the question."


def make_message_check(settings: Settings):
    """The chat's validator: fn(message, *additional_inputs)."""

    def check_message(message: Any, *_):
        """In the page, an empty or over-long message is refused at the input box: no bubble,
        no reply, the text kept to fix. (The /chat API answers it with one sentence.)"""
        try:
            clean_message(content_text(message), settings.max_input_chars)
        except MedchatError as err:
            return gr.validate(False, str(err))
        return gr.validate(True, "")

    return check_message


def make_chat_fn(pipeline, settings: Settings):
    """The chat handler: fn(message, history, temperature, top_p, max_new_tokens, use_tuned)."""

    def chat(
        message: Any,
        history: list | None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        use_tuned: bool = True,
    ) -> Iterator[str]:
        """Yield the reply as it grows: the notice and the "Not from NIH sources" warning
        first when needed, then the model's answer, then the sources under it.

        With `use_tuned` off the base model answers the adapter's prompt (as in Compare)."""
        # 1. Clean, triage and build the prompt (medchat.pipeline): one sentence on a problem.
        try:
            params = read_params(settings, temperature, top_p, max_new_tokens)
            turn = pipeline.prepare(
                message, model_history(history), params, earlier=user_turns(history)
            )
        except MedchatError as err:
            yield app_message(err)
            return
        flag = turn.flag
        if flag is not None and not flag.allow_answer:
            yield flag.notice  # self-harm: the crisis notice and no model answer
            return
        prefix = flag.notice + NOTICE_BREAK if flag is not None else ""
        if turn.error:
            yield prefix + app_message(turn.error)
            return
        if turn.held:  # an emergency: the notice, and the answer only when asked for
            yield prefix + HELD_MESSAGE
            return
        # The notice and the warning show before the first token.
        prefix += warning_markdown(present(turn))
        if prefix:
            yield prefix.rstrip("-\n ")
        # 2. The answer, streamed. Closing this generator (Stop, a closed tab) closes the
        # pipeline's stream, which stops the generation.
        answer = ""
        try:
            with closing(pipeline.stream(turn, tuned=bool(use_tuned), markdown=False)) as stream:
                for answer in stream:
                    yield prefix + shown(answer)
        except MedchatError as err:  # the server went away mid-answer, say
            yield prefix + (shown(answer) + "\n\n" if answer else "") + app_message(err)
            return
        if not answer:
            yield prefix + app_message(EMPTY_ANSWER)
            return
        # 3. What follows the answer: the cut-off mark when it used the whole token budget,
        # then where it comes from and what else was found.
        partial = shown(answer)
        more = cut_off_note(pipeline, turn, answer) + under_answer_markdown(present(turn, partial))
        if more:
            yield prefix + partial + more

    return chat


def make_general_info_fn(pipeline, settings: Settings):
    """The "Show general information" handler: the NIH passages for the last question, word
    for word with their links and headed as general information, appended to the chat; never
    text the model wrote. (The settings and `use_tuned` are taken and not used: no model
    answers.)"""

    def general_info(
        history: list | None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        use_tuned: bool = True,
    ) -> Iterator[list]:
        history = list(history or [])
        question, before = last_exchange(history)
        if not question:
            return
        try:
            turn = pipeline.prepare(
                question, model_history(before), general_info=True, earlier=user_turns(before)
            )
        except MedchatError as err:
            yield [*history, {"role": "assistant", "content": app_message(err)}]
            return
        if turn.error or not turn.general:
            reason = turn.error or (
                "General information is given after an emergency notice; ask your question in "
                "the chat."
            )
            yield [*history, {"role": "assistant", "content": app_message(reason)}]
            return
        content = general_info_markdown(present_general_info(turn))
        yield [*history, {"role": "assistant", "content": content}]

    return general_info


def mark_stopped(history: list | None):
    """The chat after Stop, for the chatbot and the chat's state: its last reply ends with
    STOPPED_MARK, or is the mark alone when Stop came before the first token.

    Runs on the textbox's stop event, beside the cancel that closes the chat generator (Gradio
    closes it at its current `yield`, so the generator itself cannot add the mark).
    """
    items = list(history or [])
    if not items or not isinstance(items[-1], dict):
        return gr.skip(), gr.skip()
    last = items[-1]
    if last.get("role") == "assistant":
        text = content_text(last.get("content")).rstrip()
        if text.endswith(STOPPED_MARK):
            return gr.skip(), gr.skip()
        items[-1] = {**last, "content": [{"type": "text", "text": f"{text}\n\n{STOPPED_MARK}"}]}
    elif last.get("role") == "user":
        items.append({"role": "assistant", "content": [{"type": "text", "text": STOPPED_MARK}]})
    else:
        return gr.skip(), gr.skip()
    return items, items


def prompt_record(pipeline, question: str, before: list, reply: str, params=None) -> dict | None:
    """The prompt record (Turn.record: style, sources in the prompt) of the turn that gave
    `reply` to `question` after the chat `before`: that turn prepared again, as the chat
    prepared it (the same question, history and settings; retrieval is deterministic). None
    when it cannot be prepared."""
    general = reply.strip().startswith(GENERAL_INFO_HEADING)
    try:
        turn = pipeline.prepare(
            question,
            model_history(before),
            params,
            general_info=general,
            earlier=user_turns(before),
        )
    except MedchatError as err:
        log.warning("The thumb is saved without its prompt record: %s", err)
        return None
    return turn.record()


def make_feedback_fn(pipeline, store, reviewer_of: Callable[..., str] | None = None):
    """The thumbs up/down handler: fn(history, use_tuned, LikeData, Request, profile,
    temperature, top_p, max_new_tokens).

    Saves the rated answer and the question it answers, with the prompt behind the answer
    (its style and the NIH passages in it), and nothing else of the chat, only because the
    person clicked a thumb. Clicking the same thumb again takes it back in the browser (Gradio
    sends `liked` as ""): nothing is saved for that. `use_tuned` says which model answered
    (the checkbox as it is when the thumb is clicked); the generation settings are the
    chat's, for rebuilding the prompt.
    """

    def feedback(
        history: list | None,
        use_tuned: bool,
        evt: gr.LikeData,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
    ):
        if not isinstance(evt.liked, bool):
            return
        items = list(history or [])
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not 0 <= index < len(items) or items[index].get("role") != "assistant":
            raise gr.Error("That answer is no longer in the chat; nothing was saved.")
        # The answer as shown, without the warning before it and the lists under it (a
        # stopped or cut-off answer keeps its mark).
        reply = content_text(items[index].get("content"))
        if not model_view(reply):  # the page shows no thumbs on these; an API call may
            raise gr.Error("That message is the app's, not a model answer; nothing was saved.")
        answer = without_warning(without_sources(reply)).strip()
        asked = next((k for k in range(index - 1, -1, -1) if items[k].get("role") == "user"), None)
        question = content_text(items[asked].get("content")).strip() if asked is not None else ""
        if not question or not answer:
            raise gr.Error("There is no question and answer to save here; nothing was saved.")
        try:
            params = read_params(pipeline.settings, temperature, top_p, max_new_tokens)
        except MedchatError:
            params = None  # the chat's defaults
        prompt = prompt_record(pipeline, question, items[:asked], reply, params)
        tuned = bool(use_tuned) and pipeline.has_adapter
        try:
            store.add_feedback(
                question=question,
                answer=answer,
                liked=evt.liked,
                reviewer=reviewer_of(request, profile) if reviewer_of is not None else "",
                model=pipeline.profile.name,
                adapter=str(pipeline.adapter or "none") if tuned else "none",
                prompt=prompt,
            )
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        gr.Info("Saved: this question and answer, with your thumb, for the study.")

    return feedback


def alert_updates(reply: str):
    """(alert, button) updates for a reply: the alert when it starts with a notice, and the
    "Show general information" button when that notice holds the answer."""
    reply = (reply or "").strip()
    if is_notice(reply):
        notice, _, rest = reply.partition(NOTICE_BREAK)
        held = rest.startswith(HELD_MARK)
        return gr.HTML(value=alert_html(notice), visible=True), gr.Button(visible=held)
    return gr.HTML(value="", visible=False), gr.Button(visible=False)


def chat_alert(history: list | None):
    """alert_updates for the chat's last reply (after every change of the chat). General
    information given after a notice keeps that notice's alert up, without the button."""
    items = [i for i in history or () if isinstance(i, dict)]
    if not items or items[-1].get("role") != "assistant":
        return alert_updates("")
    reply = content_text(items[-1].get("content")).strip()
    if reply.startswith(GENERAL_INFO_HEADING) and len(items) > 1:
        notice = content_text(items[-2].get("content")).strip().partition(NOTICE_BREAK)[0]
        alert, _ = alert_updates(notice)
        return alert, gr.Button(visible=False)
    return alert_updates(reply)
