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

The tab's layout and wiring live here; its handlers in medchat.ui.chat_handlers, and what a
message says (typed text, the app's marks, what the model reads back) in
medchat.ui.chat_messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from medchat.settings import REPO_ROOT, Settings
from medchat.ui.chat_handlers import (
    chat_alert,
    make_chat_fn,
    make_feedback_fn,
    make_general_info_fn,
    make_message_check,
    mark_stopped,
)
from medchat.ui.chat_messages import (
    typed_markdown,
    typed_text,
)
from medchat.ui.common import disclaimer_markdown, generation_sliders

__all__ = [
    "EXAMPLES_FILE",
    "FEEDBACK_STORES",
    "NOT_STORED",
    "ChatTab",
    "build_chat_tab",
    "load_examples",
    "show_user_messages_as_typed",
]

log = logging.getLogger(__name__)

EXAMPLES_FILE = REPO_ROOT / "assets" / "examples.json"
NOT_STORED = (
    "🔒 **Chats are not stored.** The conversation lives only in this browser tab and is gone "
    "when you reload or clear it; nothing you type here is saved on the server."
)
# Shown instead of NOT_STORED when answers can be rated with a thumb (the tab has a store).
FEEDBACK_STORES = (
    "🔒 **Thumbs up/down saves that question and answer for the study; nothing else from the "
    "chat is stored.**"
)


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
    ui = _chat_inputs(pipeline, settings)
    examples = [[q] for q in load_examples()]
    # An emergency notice: an alert above the chat, with the one button it offers beside it.
    with gr.Column(elem_id="chat-notice"):
        ui.alert = gr.HTML(visible=False, elem_id="chat-alert")
        ui.general = gr.Button(
            "Show general information (not advice for this situation)",
            visible=False,
            variant="secondary",
            elem_id="general-info",
        )
    interface = ChatTab(
        make_chat_fn(pipeline, settings),
        chatbot=ui.chatbot,
        textbox=ui.textbox,
        additional_inputs=[*ui.sliders, ui.use_tuned],
        additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
        examples=examples or None,
        examples_label="Example questions",
        cache_examples=False,
        editable=True,
        api_name="chat",
        api_description="Stream an answer: (message, temperature, top_p, max_new_tokens, "
        "use_tuned) -> the reply so far.",
        fill_height=False,
        validator=make_message_check(settings),
    )
    _wire_chat(ui, interface, pipeline, settings, store, reviewer_of)
    gr.Markdown(
        FEEDBACK_STORES if store is not None else NOT_STORED,
        elem_classes=["privacy-note"],
        elem_id="chat-storage-note",
    )
    gr.Markdown(disclaimer_markdown(), elem_classes=["disclaimer"])
    return interface


def _chat_inputs(pipeline, settings: Settings) -> SimpleNamespace:
    """The components the chat interface renders in its own places: the generation settings,
    the adapter checkbox, the chatbot and the input box (made with render=False)."""
    ui = SimpleNamespace()
    ui.sliders = generation_sliders(settings, prefix="chat", render=False)
    ui.use_tuned = gr.Checkbox(
        value=pipeline.has_adapter,
        interactive=pipeline.has_adapter,
        label="Use the fine-tuned adapter",
        info="off = the base model alone"
        if pipeline.has_adapter
        else "no adapter is loaded: the base model answers",
        render=False,
    )
    ui.chatbot = gr.Chatbot(
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
    show_user_messages_as_typed(ui.chatbot)
    ui.textbox = gr.Textbox(
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
    read_text = ui.textbox.preprocess
    ui.textbox.preprocess = lambda payload: read_text("" if payload is None else payload)
    return ui


def _wire_chat(
    ui: SimpleNamespace,
    interface: gr.ChatInterface,
    pipeline,
    settings: Settings,
    store,
    reviewer_of: Callable[..., str] | None,
) -> None:
    """The alert follows the chat; "Show general information" (`/general_info`); Stop marks
    the reply it cut short; with a store, the thumbs save the rated answer."""
    ui.chatbot.change(
        chat_alert,
        [ui.chatbot],
        [ui.alert, ui.general],
        queue=False,
        api_visibility="undocumented",
    )
    ui.general.click(
        make_general_info_fn(pipeline, settings),
        [ui.chatbot, *ui.sliders, ui.use_tuned],
        [ui.chatbot],
        api_name="general_info",
        api_description="After an emergency notice held the answer: (history, temperature, "
        "top_p, max_new_tokens, use_tuned) -> the history with the general information "
        "appended, headed as such.",
    )
    # Stop: the generator is closed where it is; the reply it reached gets the stopped mark.
    # The chat's own step after the cancelled answer copies the chatbot into the chat's state;
    # when it read the chatbot before the mark arrived, the state lost the mark (and the next
    # turn showed the reply unmarked), so the marked chatbot is copied into the state again.
    ui.textbox.stop(
        mark_stopped,
        [ui.chatbot],
        [ui.chatbot, interface.chatbot_state],
        queue=False,
        api_visibility="undocumented",
    ).then(
        lambda history: history,
        [ui.chatbot],
        [interface.chatbot_state],
        queue=False,
        api_visibility="undocumented",
    )
    if store is not None:
        ui.chatbot.like(
            make_feedback_fn(pipeline, store, reviewer_of),
            [ui.chatbot, ui.use_tuned, *ui.sliders],
            None,
            api_visibility="undocumented",
        )
