"""The Chat tab: a streaming multi-turn chat with the fine-tuned model.

Every message goes through medchat.pipeline (cleaned, then triaged with the person's recent
messages) before the model sees it. An emergency notice shows in the reply and as an alert
above the chat, and no model answer follows it: "Show general information" shows the NIH
passages on the topic word for word, with their links; a first-person message about self-harm
gets the crisis notice and no model answer. What goes with an answer comes from
medchat.presenter: a warning before it when its prompt had no NIH passages, the sources and
further reading under it. Model output is shown through `sanitize_markdown`, and the person's
own messages as typed (`typed_markdown`), so neither can inject HTML or load remote images.
An empty message is refused at the input box and leaves nothing in the chat. Conversations
live only in the browser tab; when the tab has a review store, a thumb up or down on an answer
saves that question and answer (with the prompt style and the NIH passages in its prompt), and
nothing else; the app's own messages (errors, notices, general information) get no thumbs. An
answer cut short by Stop ends with a "(stopped)" mark, one that used its whole token budget
with "(cut off at N tokens)"; the model never reads either mark back.

API: `/chat` (message, temperature, top_p, max_new_tokens, use_tuned) streams the reply;
`/general_info` (history, ...) appends the NIH passages for the held question, headed as
general information.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import gradio as gr

from medchat.errors import MedchatError
from medchat.generation import read_params
from medchat.pipeline import GENERAL_INFO_HEADING, user_turns
from medchat.presenter import present, present_general_info
from medchat.prompts import content_text
from medchat.safety import clean_message
from medchat.settings import REPO_ROOT, Settings
from medchat.ui.common import (
    APP_MARK,
    GROUNDING_MARK,
    HELD_MARK,
    HELD_MESSAGE,
    NOTICE_BREAK,
    QUIET_MARKS,
    alert_html,
    app_message,
    disclaimer_markdown,
    general_info_markdown,
    generation_sliders,
    shown,
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
# Ends an answer that used its whole token budget, so its last sentence is unfinished; the
# app's too, kept out of what the model reads.
CUT_OFF_MARK = "_(cut off at {n} tokens)_"
_CUT_OFF = re.compile(r"\s*_\(cut off at \d+ tokens\)_$")

# The person's own message reaches the page as what they typed, not as markup or markdown:
# a tag shows as text (and runs nothing), an image is not fetched, "**" is two stars. The
# characters that would start markup are written as HTML entities (markdown shows an entity
# as its character and never reads it as syntax): "<", "&" before an entity name, the inline
# markdown characters, a block marker at the start of a line and the indentation before it.
# The chat's value in the browser carries that text; `typed_text` undoes exactly this.
_TYPED_INLINE = {c: f"&#{ord(c)};" for c in "`*_[\\~|"} | {"<": "&lt;"}
_ENTITY_LIKE = re.compile(r"&(?=#?\w+;)")
_BLOCK_MARKER = re.compile(r"[#>+=-]|\d+[.)]")
_TYPED_BACK = re.compile(r"&(amp|lt|#\d+);")


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


def typed_markdown(text: str) -> str:
    """A message the person typed, as markdown that shows it as typed: no tag renders, no
    image loads, no markdown formats it (see _TYPED_INLINE). `typed_text` gives it back."""
    lines = []
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        indent = "".join(f"&#{ord(c)};" for c in line[: len(line) - len(body)])
        body = "".join(_TYPED_INLINE.get(c, c) for c in _ENTITY_LIKE.sub("&amp;", body))
        marker = _BLOCK_MARKER.match(body)
        if marker:  # a heading, quote, list item or rule would start here
            end = marker.end() - 1
            body = f"{body[:end]}&#{ord(body[end])};{body[end + 1 :]}"
        lines.append(indent + body)
    return "\n".join(lines)


def typed_text(markdown: str) -> str:
    """What the person typed, from its `typed_markdown`."""

    def char(m: re.Match[str]) -> str:
        name = m.group(1)
        return {"amp": "&", "lt": "<"}.get(name) or chr(int(name[1:]))

    return _TYPED_BACK.sub(char, markdown)


def show_user_messages_as_typed(chatbot: gr.Chatbot) -> None:
    """The chatbot sends the person's messages to the page as `typed_markdown` and reads them
    back as typed, so handlers and the chat's state only ever hold what was typed.

    (Instance attributes rather than a subclass: Gradio writes a .pyi file beside the module
    of every Component subclass.)
    """
    to_page, from_page = chatbot.postprocess, chatbot.preprocess

    def postprocess(value):
        data = to_page(value)
        for message in data.root:
            if message.role == "user":
                for part in message.content:
                    if getattr(part, "type", None) == "text":
                        part.text = typed_markdown(part.text)
        return data

    def preprocess(payload):
        messages = from_page(payload)
        for message in messages:
            if message.get("role") == "user" and isinstance(message.get("content"), list):
                message["content"] = [
                    {**part, "text": typed_text(part["text"])}
                    if isinstance(part, dict) and part.get("type") == "text"
                    else part
                    for part in message["content"]
                ]
        return messages

    chatbot.postprocess, chatbot.preprocess = postprocess, preprocess


class ChatTab(gr.ChatInterface):
    """gr.ChatInterface, except that a message edited in the page is read as typed (the edit
    box starts from the page's `typed_markdown` of it)."""

    def _edit_message(self, history: list, edit_data: gr.EditData):
        if isinstance(edit_data.value, str):
            edit_data.value = typed_text(edit_data.value)
        return super()._edit_message(history, edit_data)


def _no_thumbs_css() -> str:
    """CSS that hides the thumbs under the app's own replies (errors, notices, general
    information, a reply stopped before its first token): they are not answers to rate.

    Gradio draws thumbs under every reply of a likeable chatbot; the reply's element carries
    its text in aria-label ("bot's message: <text>"), so the rule matches on how the reply
    starts, as model_view reads it. The like handler refuses such replies too.
    """

    def starts(text: str) -> str:
        return f'[aria-label^="bot\'s message: {text}"]'

    not_answers = ", ".join(
        [
            f'[aria-label*="{APP_MARK}"]',  # an error of the app's, wherever it shows
            starts(GENERAL_INFO_HEADING[:24]),
            f'[aria-label="bot\'s message: {STOPPED_MARK}"]',
            f"{starts('⚠️')}:not({starts(GROUNDING_MARK)})",  # a red-flag notice
        ]
    )
    thumbs = 'button:is([aria-label="Like"], [aria-label="Dislike"])'
    return (
        f'#chatbot .message-row:has([data-testid="bot"]:is({not_answers})) '
        f"+ .message-buttons {thumbs} {{ display: none; }}\n"
    )


# Appended to the app's css (medchat.ui.launch_style).
NO_THUMBS_CSS = _no_thumbs_css()


def cut_off_mark(max_new_tokens: int) -> str:
    return CUT_OFF_MARK.format(n=max_new_tokens)


def is_notice(reply: str) -> bool:
    """The reply starts with a red-flag notice (not the app's "Not from NIH sources" line)."""
    return reply.startswith("⚠️") and not reply.startswith(GROUNDING_MARK)


def model_view(reply: str) -> str:
    """What of a shown reply the model said: notices, the grounding warning, app messages,
    general information (NIH text), the lists under it and the stopped and cut-off marks
    removed; "" when the model said nothing in it (nothing to rate, nothing to read back)."""
    text = without_sources(reply).strip()
    text = _CUT_OFF.sub("", text.removesuffix(STOPPED_MARK).rstrip()).rstrip()
    if text.startswith(APP_MARK):
        return ""
    if is_notice(text):  # a red-flag notice, then (maybe) the answer after a rule
        text = text.split(NOTICE_BREAK, 1)[1] if NOTICE_BREAK in text else ""
        if text.startswith((APP_MARK, HELD_MARK)):
            return ""
    elif text.startswith(QUIET_MARKS) and NOTICE_BREAK in text:  # a quiet notice, the answer
        text = text.split(NOTICE_BREAK, 1)[1]
    if text.startswith(GENERAL_INFO_HEADING):  # NIH passages the app showed
        return ""
    text = without_warning(text)
    if text.startswith(APP_MARK):  # the warning line, then the app's message: no answer
        return ""
    return text.replace("&lt;", "<")


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
        more = ""
        if pipeline.hit_limit(turn, answer):
            more = "\n\n" + cut_off_mark(turn.params.max_new_tokens)
        more += under_answer_markdown(present(turn, partial))
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
        show_label=False,  # the page's header names the app; a floating label covers text
        height=460,
        placeholder="Ask a health question. Answers are general information, not a diagnosis.",
        buttons=["copy", "copy_all"],
        sanitize_html=True,
        render_markdown=True,
        render=False,
    )
    show_user_messages_as_typed(chatbot)
    textbox = gr.Textbox(
        elem_id="chat-input",
        label="Your question",  # named for screen readers and for the box's own messages
        placeholder="Type a question and press Enter…",
        show_label=False,
        lines=1,
        max_lines=8,
        # Named buttons: the icon-only ones Gradio draws have no accessible name.
        submit_btn="Send",
        stop_btn="Stop",
        autofocus=False,
        render=False,
    )
    # An API caller may send null as the message; Gradio's chat wrapper fails on it before the
    # handler runs. As "" it gets the handler's one-sentence "empty message" reply instead.
    read_text = textbox.preprocess
    textbox.preprocess = lambda payload: read_text("" if payload is None else payload)

    def check_message(message: Any, *_):
        """In the page, an empty or over-long message is refused at the input box: no bubble,
        no reply, the text kept to fix. (The /chat API answers it with one sentence.)"""
        try:
            clean_message(content_text(message), settings.max_input_chars)
        except MedchatError as err:
            return gr.validate(False, str(err))
        return gr.validate(True, "")

    examples = [[q] for q in load_examples()]
    # An emergency notice: an alert above the chat, with the one button it offers beside it.
    with gr.Column(elem_id="chat-notice"):
        alert = gr.HTML(visible=False, elem_id="chat-alert")
        general = gr.Button(
            "Show general information (not advice for this situation)",
            visible=False,
            variant="secondary",
            elem_id="general-info",
        )
    interface = ChatTab(
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
        validator=check_message,
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
