"""The chat's messages as text: the person's shown as typed, the app's marks on a reply, and
what of the chat the model reads back.

The person's own messages reach the page as `typed_markdown` (no tag renders, no image loads,
no markdown formats them) and come back from it as `typed_text`. A reply may carry the app's
notices, warning, sources, and the stopped and cut-off marks; `model_view` is what the model
said in it, and `model_history` the chat as the model should see it; `NO_THUMBS_CSS` keeps the
thumbs off replies with nothing of the model's. Nothing here draws a component;
medchat.ui.chat_handlers and medchat.ui.chat use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from medchat.pipeline import GENERAL_INFO_HEADING
from medchat.prompts import content_text
from medchat.ui.common import (
    APP_MARK,
    GROUNDING_MARK,
    HELD_MARK,
    NOTICE_BREAK,
    QUIET_MARKS,
    without_sources,
    without_warning,
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


def cut_off_note(pipeline, turn, answer: str) -> str:
    """What follows `answer` (the raw text streamed for `turn`) on the page: the cut-off mark,
    after a blank line, when it used its whole token budget; else ""."""
    if not pipeline.hit_limit(turn, answer):
        return ""
    return "\n\n" + cut_off_mark(turn.params.max_new_tokens)


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
