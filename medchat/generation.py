"""What a generation is asked for and what it gives back, shared by every backend.

    params = GenerationParams(max_new_tokens=128)     # temperature 0 = greedy
    msgs = fitted_messages(profile, tokenizer, "What is glaucoma?", max_new_tokens=128)

Light on purpose (no torch): the openai backend and the UI use it without a model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from medchat.errors import MedchatError
from medchat.prompts import SYSTEM_PROMPT, Message, build_messages

if TYPE_CHECKING:
    from medchat.settings import Settings

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


# -- settings as a person sends them (the app's sliders, the API) -----------------------------
MAX_NEW_TOKENS_UI = 1024  # the largest answer length the app offers, unless settings ask more


def max_tokens_limit(settings: Settings) -> int:
    return max(MAX_NEW_TOKENS_UI, settings.max_new_tokens)


def _number(name: str, value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise MedchatError(f"{name} is {value!r}; give a number.")
    try:
        number = float(value)
    except ValueError:
        raise MedchatError(f"{name} is {value!r}; give a number.") from None
    if not math.isfinite(number):
        raise MedchatError(f"{name} is {value!r}; give a finite number.")
    return number


def read_params(settings: Settings, temperature: Any, top_p: Any, max_new_tokens: Any):
    """GenerationParams from the settings the user sent, or a MedchatError of one sentence.

    Out-of-range values are refused, not clamped: an answer generated with other settings
    than the ones asked for would be misleading. Missing values take the app's defaults.
    """
    temp = _number("Temperature", temperature, settings.temperature)
    nucleus = _number("Top-p", top_p, settings.top_p)
    tokens = _number("Max new tokens", max_new_tokens, settings.max_new_tokens)
    limit = max_tokens_limit(settings)
    if not 0.0 <= temp <= 2.0:
        raise MedchatError(f"Temperature is {temp:g}; set it between 0 and 2.")
    if not 0.0 < nucleus <= 1.0:
        raise MedchatError(f"Top-p is {nucleus:g}; set it above 0 and at most 1.")
    if tokens != int(tokens) or not 1 <= tokens <= limit:
        raise MedchatError(
            f"Max new tokens is {tokens:g}; set it to a whole number between 1 and {limit}."
        )
    return GenerationParams(
        max_new_tokens=int(tokens),
        temperature=temp,
        top_p=nucleus,
        repetition_penalty=settings.repetition_penalty,
    )
