"""The Chat tab: a streaming multi-turn chat with the fine-tuned model.

Every message goes through medchat.pipeline (cleaned, then triaged with the person's recent
messages) before the model sees it. An emergency notice shows in the reply and as an alert
above the chat, and no model answer follows it: "Show general information" shows the NIH
passages on the topic word for word, with their links; a first-person message about self-harm
gets the crisis notice and no model answer. What goes with an answer comes from
medchat.presenter: a warning before it when its prompt had no NIH passages, the sources and
further reading under it. Model output is shown through `sanitize_markdown`, so it cannot
inject HTML or load remote images. Conversations live only in the browser tab; when the tab
has a review store, a thumb up or down on an answer saves that question and answer (with the
prompt style and the NIH passages in its prompt), and nothing else. An answer cut short by
Stop ends with a "(stopped)" mark.

API: `/chat` (message, temperature, top_p, max_new_tokens, use_tuned) streams the reply;
`/general_info` (history, ...) appends the NIH passages for the held question, headed as
general information.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import gradio as gr

from medchat.errors import MedchatError
from medchat.pipeline import GENERAL_INFO_HEADING, user_turns
from medchat.presenter import present, present_general_info
from medchat.prompts import content_text
from medchat.settings import REPO_ROOT, Settings
from medchat.ui.common import (
    APP_MARK,
    GROUNDING_MARK,
    HELD_MARK,
    HELD_MESSAGE,
    NOTICE_BREAK,
    alert_html,
    app_message,
    disclaimer_markdown,
    general_info_markdown,
    generation_sliders,
    read_params,
    under_answer_markdown,
    warning_markdown,
    without_sources,
    without_warning,
)

log = logging.getLogger(__name__)

EXAMPLES_FILE = REPO_ROOT / "assets" / "examples.json"
EMPTY_ANSWER = "The model gave no answer; press retry or rephrase the question."
NOT_STORED = (
    "🔒 **Chats are not stored.** The conversation lives only in this browser tab and is gone "
    "when you reload or clear it; nothing you type here is saved on the server."
)
# Shown instead of NOT_STORED when answers can be rated with a thumb (the tab has a store).
FEEDBACK_STORES = (
    "🔒 **Thumbs up/down saves that question and answer for the study; nothing else from the "
    "chat is stored.**"
)
# Ends an answer that the Stop button cut short (and is all a reply stopped before its first
# token says); it is the app's, so the model never sees it in the history.
STOPPED_MARK = "_(stopped)_"


def load_examples(path: Path = EXAMPLES_FILE) -> list[str]:
    """Example questions from a JSON list of strings; none when the file is missing or bad."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("No example questions (%s).", err)
        return []
    if not isinstance(data, list):
        return []
    return [q.strip() for q in data if isinstance(q, str) and q.strip()]


def is_notice(reply: str) -> bool:
    """The reply starts with a red-flag notice (not the app's "Not from NIH sources" line)."""
    return reply.startswith("⚠️") and not reply.startswith(GROUNDING_MARK)


def model_view(reply: str) -> str:
    """What of a shown reply the model said: notices, the grounding warning, app messages,
    general information (NIH text), the lists under it and the stopped mark removed."""
    text = without_sources(reply).strip()
    text = text.removesuffix(STOPPED_MARK).rstrip()
    if text.startswith(APP_MARK):
        return ""
    if is_notice(text):  # a red-flag notice, then (maybe) the answer after a rule
        text = text.split(NOTICE_BREAK, 1)[1] if NOTICE_BREAK in text else ""
        if text.startswith((APP_MARK, HELD_MARK)):
            return ""
    elif text.startswith("💬") and NOTICE_BREAK in text:  # support resources, then the answer
        text = text.split(NOTICE_BREAK, 1)[1]
    if text.startswith(GENERAL_INFO_HEADING):  # NIH passages the app showed
        return ""
    return without_warning(text).replace("&lt;", "<")


def model_history(history: Sequence[Any] | None) -> list[dict[str, str]]:
    """The chat so far as the model should see it.

    Exchanges the model did not answer (an input error, the crisis notice, an answer held
    after an emergency notice, the NIH text given as general information after it) are left
    out whole, so an unanswered question is not glued onto the next one.
    """
    out: list[dict[str, str]] = []
    for item in history or ():
        if not isinstance(item, dict):
            continue
        role, text = item.get("role"), content_text(item.get("content"))
        if role == "assistant":
            text = model_view(text)
            if not text:
                if out and out[-1]["role"] == "user":
                    out.pop()
                continue
        if role in ("user", "assistant"):
            out.append({"role": role, "content": text})
    return out


def last_exchange(history: Sequence[Any] | None) -> tuple[str, list[Any]]:
    """(the last user message, the history before it) of a chat."""
    items = [i for i in history or () if isinstance(i, dict)]
    for k in range(len(items) - 1, -1, -1):
        if items[k].get("role") == "user":
            return content_text(items[k].get("content")), items[:k]
    return "", []


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
        answered = False
        try:
            with closing(pipeline.stream(turn, tuned=bool(use_tuned))) as stream:
                for partial in stream:
                    answered = True
                    yield prefix + partial
        except MedchatError as err:  # the server went away mid-answer, say
            yield prefix + (partial + "\n\n" if answered else "") + app_message(err)
            return
        if not answered:
            yield prefix + app_message(EMPTY_ANSWER)
            return
        under = under_answer_markdown(present(turn, partial))
        if under:  # where the answer comes from, and what else was found, under it
            yield prefix + partial + under

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
        # stopped answer keeps its mark).
        reply = content_text(items[index].get("content"))
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


def build_chat_tab(
    pipeline,
    settings: Settings,
    *,
    store=None,
    reviewer_of: Callable[..., str] | None = None,
) -> gr.ChatInterface:
    """The Chat tab's content; call inside a `gr.Tab`.

    With a `store` (a ReviewStore), each answer gets thumbs up/down that save that question
    and answer (`store.add_feedback`); `reviewer_of(request, profile)` names who clicked
    (profile: the Hugging Face sign-in, or None). Without one
    the chat has no thumbs and stores nothing.
    """
    sliders = generation_sliders(settings, prefix="chat", render=False)
    use_tuned = gr.Checkbox(
        value=pipeline.has_adapter,
        interactive=pipeline.has_adapter,
        label="Use the fine-tuned adapter",
        info="off = the base model alone"
        if pipeline.has_adapter
        else "no adapter is loaded: the base model answers",
        render=False,
    )
    chatbot = gr.Chatbot(
        elem_id="chatbot",
        label="medchat",
        height=460,
        placeholder="Ask a health question. Answers are general information, not a diagnosis.",
        buttons=["copy", "copy_all"],
        sanitize_html=True,
        render_markdown=True,
        render=False,
    )
    textbox = gr.Textbox(
        elem_id="chat-input",
        placeholder="Type a question and press Enter…",
        show_label=False,
        lines=1,
        max_lines=8,
        submit_btn=True,
        stop_btn=True,
        autofocus=False,
        render=False,
    )
    # An API caller may send null as the message; Gradio's chat wrapper fails on it before the
    # handler runs. As "" it gets the handler's one-sentence "empty message" reply instead.
    read_text = textbox.preprocess
    textbox.preprocess = lambda payload: read_text("" if payload is None else payload)
    examples = [[q] for q in load_examples()]
    alert = gr.HTML(visible=False, elem_id="chat-alert")
    interface = gr.ChatInterface(
        make_chat_fn(pipeline, settings),
        chatbot=chatbot,
        textbox=textbox,
        additional_inputs=[*sliders, use_tuned],
        additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
        examples=examples or None,
        examples_label="Example questions",
        cache_examples=False,
        editable=True,
        api_name="chat",
        api_description="Stream an answer: (message, temperature, top_p, max_new_tokens, "
        "use_tuned) -> the reply so far.",
        fill_height=False,
    )
    general = gr.Button(
        "Show general information (not advice for this situation)",
        visible=False,
        variant="secondary",
        elem_id="general-info",
    )
    chatbot.change(
        chat_alert,
        [chatbot],
        [alert, general],
        queue=False,
        api_visibility="undocumented",
    )
    general.click(
        make_general_info_fn(pipeline, settings),
        [chatbot, *sliders, use_tuned],
        [chatbot],
        api_name="general_info",
        api_description="After an emergency notice held the answer: (history, temperature, "
        "top_p, max_new_tokens, use_tuned) -> the history with the general information "
        "appended, headed as such.",
    )
    # Stop: the generator is closed where it is; the reply it reached gets the stopped mark.
    textbox.stop(
        mark_stopped,
        [chatbot],
        [chatbot, interface.chatbot_state],
        queue=False,
        api_visibility="undocumented",
    )
    if store is not None:
        chatbot.like(
            make_feedback_fn(pipeline, store, reviewer_of),
            [chatbot, use_tuned, *sliders],
            None,
            api_visibility="undocumented",
        )
    gr.Markdown(
        FEEDBACK_STORES if store is not None else NOT_STORED,
        elem_classes=["privacy-note"],
        elem_id="chat-storage-note",
    )
    gr.Markdown(disclaimer_markdown(), elem_classes=["disclaimer"])
    return interface
