"""Input and output hygiene: the user's message made safe to store and prompt with, and model
output made safe to show.

    text = clean_message(raw, max_chars=4000)   # MedchatError when empty or too long
    safe = sanitize_markdown(model_output)      # no raw HTML, no remote images
"""

from __future__ import annotations

import re
import unicodedata

from medchat.errors import MedchatError

# --- input limits and cleaning --------------------------------------------------------------

# Bidirectional embeddings, overrides and isolates can make text display differently from
# what it says; they have no use in a medical question.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_message(text: str, max_chars: int) -> str:
    """The user's message made safe to store and prompt with, or a MedchatError.

    Lone surrogates become U+FFFD (so the text encodes as UTF-8), the text is NFC-normalised,
    control characters other than newline and tab are removed, line endings become \\n, and
    runs of blank lines are squeezed to one. A message with nothing visible left (only spaces
    and invisible format characters such as zero-width spaces) is empty.
    """
    text = "" if text is None else str(text)
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(
        ch
        for ch in text
        if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _BIDI_CONTROLS)
    )
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    # Zero-width spaces, joiners and the BOM (category Cf) stay inside text, where emoji and
    # some scripts need them, but a message of nothing else shows nothing and asks nothing.
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text):
        raise MedchatError("The message is empty; type a question before sending.")
    if len(text) > max_chars:
        raise MedchatError(
            f"The message is {len(text):,} characters long; shorten it to at most "
            f"{max_chars:,} characters."
        )
    return text


# --- output escaping --------------------------------------------------------------------------

_URL = r"(?:[^()\s]|\([^()\s]*\))*"  # allows one level of parentheses: f(1)
_IMAGE = re.compile(rf"!\[([^\]\n]*)\]\(\s*{_URL}[^)\n]*\)|!\[([^\]\n]*)\]\[[^\]\n]*\]")
_LINK = re.compile(rf"\[([^\]\n]*)\]\(\s*<?({_URL})[^)\n]*\)")
_SAFE_LINK = re.compile(r"(?i)(?:https?://|mailto:|#|/(?!/))")


def sanitize_markdown(text: str) -> str:
    """Markdown that shows as written and loads nothing: for model output and user echoes.

    Every `<` is escaped, so no HTML tag (script, img, iframe, ...) reaches the page; images
    become their alt text, so no remote image is fetched; links keep working only for
    http(s), mailto and in-page targets (a `javascript:` link becomes its text). Bold, lists,
    headings, code and ordinary links are left alone.
    """
    text = "" if text is None else str(text)
    text = text.replace("<", "&lt;")
    text = _IMAGE.sub(lambda m: (m.group(1) or m.group(2) or "image").strip() or "image", text)

    def _link(m: re.Match[str]) -> str:
        return m.group(0) if _SAFE_LINK.match(m.group(2)) else m.group(1)

    return _LINK.sub(_link, text)
