"""What a generation is asked for and what it gives back, shared by every backend.

    params = GenerationParams(max_new_tokens=128)     # temperature 0 = greedy
    msgs = fitted_messages(profile, tokenizer, "What is glaucoma?", max_new_tokens=128)

Light on purpose (no torch): the openai backend and the UI use it without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medchat.errors import MedchatError
from medchat.prompts import SYSTEM_PROMPT, Message, build_messages

SIDES = ("base", "tuned")


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    # Sampling only: the same seed, prompt and settings give the same answer again (a vote
    # stores it, so a sampled comparison can be replayed). None = a fresh random draw.
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.seed is None or 0 <= self.seed < 2**31, "seed", "from 0 to 2**31 - 1"),
            (1 <= self.max_new_tokens <= 4096, "max_new_tokens", "between 1 and 4096"),
            (0.0 <= self.temperature <= 2.0, "temperature", "between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p", "above 0 and at most 1"),
            (1.0 <= self.repetition_penalty <= 2.0, "repetition_penalty", "between 1 and 2"),
        ]
        for ok, name, want in checks:
            if not ok:
                raise MedchatError(f"{name} is {getattr(self, name)!r}; set it {want}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    """One finished answer: its text, how many tokens it took, whether it ran out of room."""

    text: str
    n_tokens: int
    hit_limit: bool


def check_sides(sides: Sequence[str], has_adapter: bool) -> None:
    """Sides of a batch are "base" and/or "tuned"; "tuned" needs an adapter."""
    for side in sides:
        if side not in SIDES:
            raise MedchatError(f"Unknown side {side!r}; use base or tuned.")
        if side == "tuned" and not has_adapter:
            raise MedchatError("Side 'tuned' needs a fine-tuned adapter; start with --adapter.")


def prompt_budget(context_window: int, max_new_tokens: int) -> int:
    """Tokens left for the prompt once the answer has its room, or a MedchatError."""
    budget = context_window - max_new_tokens
    if budget < 32:
        raise MedchatError(
            f"max_new_tokens {max_new_tokens} leaves no room for the question in the "
            f"{context_window}-token context; lower max_new_tokens."
        )
    return budget


def fitted_messages(
    profile,
    tokenizer,
    question: str,
    history=None,
    *,
    max_new_tokens: int = 256,
    system=SYSTEM_PROMPT,
    **prompt,
) -> list[Message]:
    """Chat messages for `question`, the oldest history dropped until they fit the context.

    `prompt`: build_messages' passages and sources_instruction."""
    return build_messages(
        question,
        history,
        system=system,
        **prompt,
        system_role=profile.system_role,
        tokenizer=tokenizer,
        budget=prompt_budget(profile.context_window, max_new_tokens),
    )
