"""The one place that turns (system prompt, history, question) into chat messages.

Training (`train/`), evaluation (`eval/`) and serving (the engine and app) all call
`build_messages`, so the model is served exactly the format it was tuned on.

    msgs = build_messages("What is glaucoma?", history, tokenizer=tok, budget=1800)
    ids = render_ids(tok, msgs)          # the prompt token ids, generation prompt included
    msgs = build_messages(q, passages=hits)  # with numbered sources to answer from and cite

A PromptStyle (system prompt, sources instruction, retrieval settings) is saved beside every
adapter (`medchat_prompt.json`) and read back when it is served, so an adapter always gets the
prompt it was trained with; an adapter saved before styles were saved gets LEGACY_STYLE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from medchat.errors import MedchatError

# The system prompt every adapter before saved prompt styles was trained with, word for word.
# It is frozen here: changing SYSTEM_PROMPT below must not change how those adapters are served.
LEGACY_SYSTEM_PROMPT = (
    "You are medchat, an assistant that answers health and medical questions for the public. "
    "Answer in plain language: say what the condition or treatment is, its usual causes, signs, "
    "tests and treatments when they matter, and when to see a doctor. Be accurate and brief, "
    "say so when you are not sure, and never claim to diagnose the person asking. You are not "
    "a substitute for a clinician; if the question describes an emergency, tell the person to "
    "call their local emergency number now."
)
# The system prompt new adapters are trained and served with; today the legacy words. To
# change it, assign new text here: never edit LEGACY_SYSTEM_PROMPT.
SYSTEM_PROMPT = LEGACY_SYSTEM_PROMPT
# What the model is told when the question comes with numbered sources.
SOURCES_INSTRUCTION = (
    "The question comes with numbered sources from NIH web pages. Answer from them and cite "
    "the ones you use like [1]. If they do not cover the question, say: My sources do not "
    "cover this question. Then give only brief general information."
)
NOT_COVERED = "My sources do not cover this question."
NO_SOURCES = "Sources: none of my sources match this question."
STYLE_FILE = "medchat_prompt.json"

Message = dict[str, str]


@dataclass(frozen=True)
class PromptStyle:
    """How prompts are built for one adapter: saved with it, read back to serve it."""

    system: str = SYSTEM_PROMPT
    sources_instruction: str = SOURCES_INSTRUCTION
    # The retrieval the adapter was trained with ({"method", "k", "passage_words"}), or None
    # when its training prompts carried no sources.
    retrieval: dict | None = None

    def as_dict(self) -> dict:
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> PromptStyle:
        if not isinstance(data, dict) or not isinstance(data.get("system"), str):
            raise MedchatError("The adapter's prompt style is unreadable; retrain or restore it.")
        return cls(
            system=data["system"],
            sources_instruction=data.get("sources_instruction") or SOURCES_INSTRUCTION,
            retrieval=data.get("retrieval") or None,
        )

    def served(self, retrieval: dict | None) -> PromptStyle:
        """This style as one prompt was built with it: with `retrieval` ({"method", "k"}) when
        the prompt carried a sources block, without any when None. The base model alone, given
        sources by the retrieval setting, gets the retrieval it was given."""
        if retrieval is None:
            return replace(self, retrieval=None)
        return replace(self, retrieval={**(self.retrieval or {}), **retrieval})

    @property
    def id(self) -> str:
        """A short stable name for records: "legacy" for LEGACY_STYLE, else "plain-<hash>" or
        "sources:<method>:k<k>-<hash>", the hash of everything in the style (as_dict)."""
        if self == LEGACY_STYLE:
            return "legacy"
        text = json.dumps(self.as_dict(), sort_keys=True, ensure_ascii=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        if self.retrieval is None:
            return f"plain-{digest}"
        method, k = self.retrieval.get("method", "default"), self.retrieval.get("k", "default")
        return f"sources:{method}:k{k}-{digest}"


LEGACY_STYLE = PromptStyle(system=LEGACY_SYSTEM_PROMPT)


def write_style(folder: str | Path, style: PromptStyle) -> Path:
    path = Path(folder) / STYLE_FILE
    path.write_text(json.dumps(style.as_dict(), indent=1) + "\n", encoding="utf-8")
    return path


def read_style(adapter: str | Path | None) -> PromptStyle:
    """The prompt style saved with `adapter` (a folder); LEGACY_STYLE for an adapter saved
    without one; the current PromptStyle() for no adapter (the base model alone)."""
    if not adapter:
        return PromptStyle()
    folder = Path(adapter).expanduser()
    path = folder / STYLE_FILE
    if path.is_file():
        try:
            return PromptStyle.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ValueError:
            raise MedchatError(
                f"The prompt style {str(path)!r} is not valid JSON; restore it."
            ) from None
    if folder.is_dir():
        return LEGACY_STYLE if (folder / "adapter_config.json").is_file() else PromptStyle()
    return _hub_style(str(adapter))


def folder_style(adapter: str | Path | None) -> tuple[PromptStyle, bool] | None:
    """(the style saved with the adapter folder `adapter`, whether it is known to be the one
    the adapter was trained with), or None when `adapter` is no folder on this machine.

    Known: a saved style, or an adapter saved before styles were (LEGACY_STYLE). A folder with
    neither a saved style nor an adapter config says nothing of its training: it gets the
    current PromptStyle() and is served like the base model alone."""
    if not adapter:
        return None
    folder = Path(str(adapter)).expanduser()
    if not folder.is_dir():
        return None
    known = (folder / STYLE_FILE).is_file() or (folder / "adapter_config.json").is_file()
    return read_style(folder), known


def is_hub_id(adapter: str | Path | None) -> bool:
    """`adapter` reads as a hub repository id ("owner/name"), not a path."""
    name = str(adapter or "")
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def adapter_style(adapter: str | Path | None) -> tuple[PromptStyle, bool]:
    """(the prompt style an adapter this process loads is served, whether it is the adapter's
    own): a folder's saved style (`folder_style`), a hub adapter's (saved in its repository),
    LEGACY_STYLE for anything else; (PromptStyle(), False) without an adapter."""
    if not adapter:
        return PromptStyle(), False
    found = folder_style(adapter)
    if found is not None:
        return found
    if is_hub_id(adapter):
        return read_style(str(adapter)), True
    return LEGACY_STYLE, True


def _hub_style(repo_id: str) -> PromptStyle:
    """The style saved in a hub adapter's repository; LEGACY_STYLE when it has none (or the
    hub cannot be reached: the adapter then gets the prompt adapters had before styles)."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, STYLE_FILE)
        return PromptStyle.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except Exception:  # noqa: BLE001 - absent, offline or unreadable: the same fallback
        return LEGACY_STYLE


def format_sources(passages: Sequence[Any]) -> str:
    """The numbered sources block of a prompt. `passages` are retrieval Hits or Passages
    (title, source, text); none gives a line saying no source matched."""
    if not passages:
        return NO_SOURCES
    lines = ["Sources:"]
    for n, item in enumerate(passages, 1):
        p = getattr(item, "passage", item)
        label = f"{p.title} ({p.source})" if getattr(p, "source", "") else p.title
        lines.append(f"[{n}] {label}: {' '.join(p.text.split())}")
    return "\n".join(lines)


def question_with_sources(question: str, passages: Sequence[Any] | None) -> str:
    """The user turn: the question alone, or the sources block then the question."""
    if passages is None:
        return question
    return f"{format_sources(passages)}\n\nQuestion: {question}"


def content_text(content: Any) -> str:
    """Plain text of a message's content: a string, or Gradio's list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, Iterable):
        return "".join(content_text(block) for block in content)
    return str(content)


def normalize_history(history: Iterable[Any] | None) -> list[Message]:
    """History as alternating user/assistant messages with plain-text content.

    Accepts role/content dicts (Gradio 6's chat history, content blocks included) or
    (user, assistant) pairs. System messages and empty turns are dropped: the system prompt is
    ours to set.
    """
    out: list[Message] = []
    for item in history or ():
        if isinstance(item, dict):
            pairs = [(item.get("role"), item.get("content"))]
        else:
            user, assistant = item
            pairs = [("user", user), ("assistant", assistant)]
        for role, content in pairs:
            text = content_text(content).strip()
            if role not in ("user", "assistant") or not text:
                continue
            if out and out[-1]["role"] == role:  # merge consecutive turns of one speaker
                out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + text}
            else:
                out.append({"role": role, "content": text})
    while out and out[0]["role"] != "user":  # a conversation starts with the user
        out.pop(0)
    if out and out[-1]["role"] == "user":  # an unanswered last question is superseded
        out.pop()
    return out


def build_messages(
    question: str,
    history: Iterable[Any] | None = None,
    *,
    system: str | None = SYSTEM_PROMPT,
    system_role: bool = True,
    tokenizer: Any = None,
    budget: int | None = None,
    passages: Sequence[Any] | None = None,
    sources_instruction: str = SOURCES_INSTRUCTION,
) -> list[Message]:
    """Chat messages for one turn: system prompt, the history that fits, then the question.

    With `passages` (retrieval hits; an empty list when none matched) the question comes
    after a numbered sources block and the system prompt gains `sources_instruction`; earlier
    turns stay as they were asked, without their sources.

    `system_role=False` (Mistral v0.2, whose template has no system role) folds the system
    prompt into the first user turn. With a `tokenizer` and a token `budget`, the oldest
    exchanges are dropped until the rendered prompt fits; a question that does not fit on its
    own is a MedchatError.
    """
    question = question.strip()
    if not question:
        raise MedchatError("The question is empty; type a question first.")
    turns = normalize_history(history)
    if passages is not None and system:
        system = f"{system}\n\n{sources_instruction}"
    asked = question_with_sources(question, passages)

    def assemble(kept: Sequence[Message]) -> list[Message]:
        msgs = [dict(m) for m in kept] + [{"role": "user", "content": asked}]
        if system:
            if system_role:
                msgs.insert(0, {"role": "system", "content": system})
            else:
                msgs[0] = {"role": "user", "content": f"{system}\n\n{msgs[0]['content']}"}
        return msgs

    if tokenizer is None or budget is None:
        return assemble(turns)
    # Drop whole exchanges (user + assistant) from the front until the prompt fits.
    for start in range(0, len(turns) + 1, 2):
        msgs = assemble(turns[start:])
        if len(render_ids(tokenizer, msgs)) <= budget:
            return msgs
    n = len(render_ids(tokenizer, msgs))
    raise MedchatError(
        f"The question is too long for the model ({n} tokens, limit {budget}); shorten it."
    )


def training_example(
    question: str,
    answer: str,
    *,
    system: str | None = SYSTEM_PROMPT,
    system_role: bool = True,
    passages: Sequence[Any] | None = None,
    sources_instruction: str = SOURCES_INSTRUCTION,
) -> dict[str, list[Message]]:
    """A conversational prompt-completion row for trl: the prompt is what serving builds."""
    prompt = build_messages(
        question,
        system=system,
        system_role=system_role,
        passages=passages,
        sources_instruction=sources_instruction,
    )
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": answer.strip()}],
    }


def render_text(tokenizer: Any, messages: Sequence[Message], *, generation_prompt=True) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def render_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Prompt token ids; the template already holds any BOS, so none is added twice."""
    text = render_text(tokenizer, messages)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
