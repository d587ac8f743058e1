"""What the tabs share: the header, generation settings and their checks, reference answers.

Nothing here touches torch or a tokenizer: the engine does the model work, and
`ReferenceBook` loads the evaluation data and the embedder only when a tab first needs them.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from medchat.generation import max_tokens_limit
from medchat.presenter import (
    ARCHIVED,
    POINTER,
    SOURCES_HEADING,
    WARNING_HEAD,
    Item,
    View,
    present,
)
from medchat.references import ReferenceBook  # noqa: F401 (the Evaluate tab imports it here)
from medchat.safety import DISCLAIMER, sanitize_markdown
from medchat.settings import Settings

log = logging.getLogger(__name__)

# Replies that come from the app rather than the model start with this mark, so the chat can
# keep them out of the history it sends back to the model.
APP_MARK = "⛔"
# Between a red-flag notice and the model's answer in one reply.
NOTICE_BREAK = "\n\n---\n\n"
# Notices that go above an answer rather than as an alert: the resources for a question about
# suicide, and "worth seeing a doctor within a day" (safety_data/notices.json).
QUIET_MARKS = ("💬", "🩺")
# After an emergency notice the model's answer waits; this mark starts what the reply says
# instead, and keeps the exchange out of the history sent back to the model.
HELD_MARK = "🛑"
HELD_MESSAGE = (
    f"{HELD_MARK} No answer is shown, so that nothing here delays getting help. If you only "
    "want general information on this topic (not advice for this situation), press "
    "**Show general information**."
)
# The most new tokens one answer may ask for in the app, unless settings ask for more.

SIDE_NAMES = {"base": "base model", "tuned": "fine-tuned model"}


# Starts every block the app puts under an answer (sources, further reading); what follows
# it is the app's, not the model's.
SOURCES_MARK = "\n\n📚 "
# Starts the line before an answer whose prompt had no NIH passages (medchat.presenter).
GROUNDING_MARK = f"⚠️ **{WARNING_HEAD}:**"
NO_SOURCE_MATCH = (
    "No NIH page in medchat's library matches this question, so this answer is not grounded "
    "in a source; check it with a clinician or a trusted site."
)


def _link(item: Item, text: str | None = None) -> str:
    """An item's title (and site) linking to its page, escaped; "(archived page)" after it."""
    label = html.escape(item.label if text is None else text, quote=False)
    if item.linkable:
        label = (
            f'<a href="{html.escape(item.url, quote=True)}" target="_blank" rel="noopener">'
            f"{label}</a>"
        )
    return f"{label} {ARCHIVED}" if item.archived else label


def _passages(item: Item, quote: bool = False) -> str:
    texts = [html.escape(" ".join(t.split()), quote=False) for t in item.texts]
    return "\n\n".join(f"> {t}" if quote else t for t in texts)


def item_markdown(item: Item) -> str:
    """One page under an answer: a pointer for a page the library does not hold, else its
    [n] (when in the prompt) and link, with the passage on demand (a collapsed element)."""
    if not item.covered:
        return (
            f"{POINTER} {_link(item, item.title)} on {html.escape(item.pointer_site, quote=False)}."
        )
    numbers = f"[{', '.join(str(n) for n in item.numbers)}] " if item.numbers else ""
    return f"<details><summary>{numbers}{_link(item)}</summary>\n\n{_passages(item)}\n\n</details>"


def warning_markdown(view: View) -> str:
    """The line before an answer written without NIH passages in its prompt ("" otherwise)."""
    if not view.warning:
        return ""
    return f"{GROUNDING_MARK} {html.escape(view.warning, quote=False)}\n\n"


def under_answer_markdown(view: View) -> str:
    """The lists under an answer (sources, further reading), each starting with
    SOURCES_MARK; "" when there is none."""
    blocks = []
    for group in view.groups:
        items = "\n\n".join(item_markdown(item) for item in group.items)
        blocks.append(f"{SOURCES_MARK}**{html.escape(group.heading, quote=False)}**\n\n{items}")
    return "".join(blocks)


def general_info_markdown(view: View) -> str:
    """General information after an emergency notice: the heading, then each NIH page's
    link and its passages quoted word for word, or the sentence that there is no NIH text."""
    parts = [view.heading]
    for group in view.groups:
        parts.append(f"**{html.escape(group.heading, quote=False)}:**")
        for item in group.items:
            if item.covered:
                parts.append(f"**{_link(item)}**\n\n{_passages(item, quote=True)}")
            else:
                parts.append(item_markdown(item))
    if view.note:
        parts.append(html.escape(view.note, quote=False))
    return "\n\n".join(parts)


def sources_markdown(sources, answer: str = "") -> str:
    """The "Sources" block for the passages that were in a prompt (retrieval hits), as
    under_answer_markdown shows them; "" for None (no sources block); a plain sentence for an
    empty block (no passage matched)."""
    if sources is None:
        return ""
    if not sources:
        return f"{SOURCES_MARK}**{SOURCES_HEADING}**: none. _{NO_SOURCE_MATCH}_"
    return under_answer_markdown(
        present(SimpleNamespace(sources=tuple(sources), reading=None), answer)
    )


def without_sources(reply: str) -> str:
    """A shown reply without the blocks the app put under it."""
    return reply.split(SOURCES_MARK, 1)[0]


def without_warning(text: str) -> str:
    """An answer without the grounding warning the app put before it."""
    text = text.lstrip()
    if text.startswith(GROUNDING_MARK):
        _, _, rest = text.partition("\n\n")
        return rest
    return text


def app_message(err: Exception | str) -> str:
    """A one-sentence reply from the app itself (an input problem, not a model answer)."""
    return f"{APP_MARK} {err}"


def alert_html(notice: str) -> str:
    """A red-flag notice as an alert of its own (role=alert), not a chat bubble.

    The notice is the app's own text: escaped, with its **bold** and links rendered.
    """
    text = html.escape(notice or "", quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(
        r"(https?://[^\s<)]+[^\s<).,])", r'<a href="\1" target="_blank" rel="noopener">\1</a>', text
    )
    return f'<div class="medchat-alert" role="alert" aria-live="assertive">{text}</div>'


def disclaimer_markdown() -> str:
    return f"**Medical disclaimer:** {DISCLAIMER}"


def code(text: object) -> str:
    """Inline code for markdown: backticks in the text cannot close it."""
    return "`" + str(text).replace("`", "'") + "`"


def header_markdown(info: dict[str, Any]) -> str:
    """The page header: the model in words people know, the technical details on demand.

    "SmolLM2-135M-Instruct, fine-tuned on MedQuAD, running on CPU" shows; the profile, the
    models by name, version and sha256, the device and dtype sit in a collapsed details
    element under it. No local path is shown: where files sit on the server is nobody's
    business on the page.
    """
    summary = f"**{esc(model_description(info))}**, {esc(device_description(info))}"
    details = "".join(
        f"<li>{esc(label)}: <code>{esc(value)}</code></li>" for label, value in model_details(info)
    )
    return (
        "# 🩺 medchat\n"
        f"A medical question-answering assistant: {summary}.\n\n"
        f'<details class="header-details"><summary>Model details</summary><ul>{details}</ul>'
        "</details>"
    )


def model_details(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines for the header's details: names, versions and hashes, no paths."""
    lines = [
        ("profile", info.get("profile")),
        ("base model", _model_name(info.get("base_model"))),
        ("loaded from", _base_source(info)),
        ("adapter", _adapter(info.get("adapter"))),
        ("backend", info.get("backend")),
        ("device", info.get("device")),
        ("weights", info.get("dtype")),
        ("served models", info.get("served_models")),
        ("software", _software()),
    ]
    return [(label, str(value)) for label, value in lines if value not in (None, "", {})]


def _local(path: object) -> Path | None:
    """`path` as a local file or folder when it is one, else None (a hub id, a name)."""
    text = str(path or "")
    if not text or "://" in text:
        return None
    local = Path(text).expanduser()
    return local if local.exists() else None


def _model_name(name: object) -> str:
    """A hub id as it is; a local folder by its name alone."""
    return short_name(name) if _local(name) is not None else str(name or "")


def _base_source(info: dict[str, Any]) -> str:
    """Where the base weights came from: the embedded model's package and GGUF file (with its
    version and sha256), a hub id, a local folder's name, or the model server's model."""
    source = info.get("base_source")
    local = _local(source)
    if local is None:
        return str(source or "")
    from medchat.loading import GGUF_PACKAGE, embedded_gguf
    from medchat.profiles import PROFILES

    profile = PROFILES.get(str(info.get("profile") or ""))
    gguf = embedded_gguf() if profile is not None and profile.embedded else None
    if gguf is not None:  # an embedded profile's local weights: its converted copy
        package = GGUF_PACKAGE.replace("_", "-")
        return (
            f"{gguf.name} from the {package} {_version(package)} package "
            f"(sha256 {file_sha256(gguf)}), converted once to safetensors"
        )
    return f"a local folder, {local.name}"


def _adapter(adapter: object) -> str:
    """An adapter by name: a hub id as it is, a local folder by its name and the sha256 of its
    weights."""
    if not adapter or adapter == "none":
        return "none"
    local = _local(adapter)
    if local is None:
        return str(adapter)
    weights = local / "adapter_model.safetensors"
    if weights.is_file():
        return f"{local.name} (adapter_model.safetensors sha256 {file_sha256(weights)})"
    return local.name


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def _software() -> str:
    import medchat

    packages = ("gradio", "transformers", "peft", "torch")
    return ", ".join([f"medchat {medchat.__version__}"] + [f"{p} {_version(p)}" for p in packages])


def file_sha256(path: Path) -> str:
    """The sha256 of a file, computed once per file version (size and mtime)."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Training data files whose usual names are spelled differently.
DATA_NAMES = {"medquad": "MedQuAD", "medicationqa": "MedicationQA"}


def short_name(name: object) -> str:
    """The last part of a model id or path: "HuggingFaceTB/SmolLM2-135M-Instruct" ->
    "SmolLM2-135M-Instruct"."""
    return str(name or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def training_data_name(adapter: str | None) -> str | None:
    """The name of the data a local adapter was trained on, from the training record beside
    it ("MedQuAD" for .../medquad.csv); None when there is no readable record."""
    from medchat.evaluation import TRAINING_RECORD

    if not adapter or adapter == "none":
        return None
    record = Path(adapter).expanduser() / TRAINING_RECORD
    try:
        data = json.loads(record.read_text(encoding="utf-8")).get("data_file")
    except (OSError, ValueError, AttributeError):
        return None
    if not data or not isinstance(data, str):
        return None
    stem = Path(short_name(data)).stem
    return DATA_NAMES.get(stem.lower(), stem)


def model_description(info: dict[str, Any]) -> str:
    """The model in words: "SmolLM2-135M-Instruct, fine-tuned on MedQuAD", or "..., not
    fine-tuned" without an adapter."""
    model = short_name(info.get("base_model")) or "an unknown model"
    adapter = info.get("adapter")
    if not adapter or adapter == "none":
        return f"{model}, not fine-tuned"
    data = training_data_name(str(adapter))
    if data:
        return f"{model}, fine-tuned on {data}"
    return f"{model}, fine-tuned ({short_name(adapter)})"


def device_description(info: dict[str, Any]) -> str:
    """Where the model runs, in words: "running on CPU", "running on a GPU", ..."""
    device = str(info.get("device") or "").lower()
    if device.startswith("server") or info.get("server_url"):
        return "answered by a model server"
    if device.startswith("cuda"):
        return "running on a GPU"
    if device.startswith("mps"):
        return "running on an Apple GPU"
    if device.startswith("cpu"):
        return "running on CPU"
    return f"running on {device}" if device else "device unknown"


def esc(text: object) -> str:
    """Plain text for an HTML component."""
    return html.escape("" if text is None else str(text))


def shown(text: object) -> str:
    """Model or data text made safe to render as markdown (no HTML, no remote images)."""
    return sanitize_markdown("" if text is None else str(text))


# -- generation settings ----------------------------------------------------------------------
def setting_slider(*args, **kwargs) -> gr.Slider:
    """A gr.Slider whose value reaches the handler unchecked.

    gr.Slider refuses an out-of-range value before the handler runs, with a message that does
    not say which setting was wrong. API callers can send any number, so the handlers check
    the values themselves (`read_params`) and answer in one sentence that names the setting.
    In the browser it is the ordinary slider. (An instance attribute rather than a subclass:
    Gradio writes a .pyi file beside the module of every Component subclass.)
    """
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = lambda payload: payload
    return slider


def generation_sliders(settings: Settings, *, prefix: str, render: bool = True) -> list[gr.Slider]:
    """temperature, top_p and max new tokens, with the settings' defaults.

    Their elem_ids are `<prefix>-temperature`, `<prefix>-top-p` and `<prefix>-max-tokens`.
    """
    return [
        setting_slider(
            0.0,
            2.0,
            value=settings.temperature,
            step=0.05,
            label="Temperature",
            elem_id=f"{prefix}-temperature",
            info="0 = always the most likely word (greedy); higher = more varied",
            render=render,
        ),
        setting_slider(
            0.05,
            1.0,
            value=settings.top_p,
            step=0.05,
            label="Top-p",
            elem_id=f"{prefix}-top-p",
            info="sample only from the most likely words that make up this share",
            render=render,
        ),
        setting_slider(
            1,
            max_tokens_limit(settings),
            value=settings.max_new_tokens,
            step=1,
            label="Max new tokens",
            elem_id=f"{prefix}-max-tokens",
            info="the answer stops after this many tokens",
            render=render,
        ),
    ]


def export_dir() -> Path:
    """A fresh folder for files the app hands out for download."""
    return Path(tempfile.mkdtemp(prefix="medchat-export-"))
