"""The one place that turns (system prompt, history, question) into chat messages.

Training (`train/`), evaluation (`eval/`) and serving (the engine and app) all call
`build_messages`, so the model is served exactly the format it was tuned on.

    msgs = build_messages("What is glaucoma?", history, tokenizer=tok, budget=1800)
    ids = render_ids(tok, msgs)          # the prompt token ids, generation prompt included
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from medchat.errors import MedchatError

SYSTEM_PROMPT = (
    "You are medchat, an assistant that answers health and medical questions for the public. "
    "Answer in plain language: say what the condition or treatment is, its usual causes, signs, "
    "tests and treatments when they matter, and when to see a doctor. Be accurate and brief, "
    "say so when you are not sure, and never claim to diagnose the person asking. You are not "
    "a substitute for a clinician; if the question describes an emergency, tell the person to "
    "call their local emergency number now."
)

Message = dict[str, str]


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
) -> list[Message]:
    """Chat messages for one turn: system prompt, the history that fits, then the question.

    `system_role=False` (Mistral v0.2, whose template has no system role) folds the system
    prompt into the first user turn. With a `tokenizer` and a token `budget`, the oldest
    exchanges are dropped until the rendered prompt fits; a question that does not fit on its
    own is a MedchatError.
    """
    question = question.strip()
    if not question:
        raise MedchatError("The question is empty; type a question first.")
    turns = normalize_history(history)

    def assemble(kept: Sequence[Message]) -> list[Message]:
        msgs = [dict(m) for m in kept] + [{"role": "user", "content": question}]
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
    question: str, answer: str, *, system: str | None = SYSTEM_PROMPT, system_role: bool = True
) -> dict[str, list[Message]]:
    """A conversational prompt-completion row for trl: the prompt is what serving builds."""
    return {
        "prompt": build_messages(question, system=system, system_role=system_role),
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
