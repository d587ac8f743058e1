"""The values a review row stores, checked: each one a caller gives is refused with a sentence
naming what to change, before anything is written (medchat.reviews.store).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from medchat.errors import MedchatError
from medchat.reviews.schema import JUDGE_VERDICTS, MARKS, STATEMENT_KINDS


def prompt_values(prompt: Mapping[str, Any] | None) -> tuple[str | None, int | None, str | None]:
    """(prompt_style, sources_in_prompt, prompt_sources) of a Turn.record(); NULLs for None."""
    if prompt is None:
        return None, None, None
    if not isinstance(prompt, Mapping):
        raise MedchatError(f"prompt must be a Turn.record() dict, not {prompt!r}.")
    style = prompt.get("prompt_style")
    style = checked_text("prompt_style", style).strip() or None if style is not None else None
    had = prompt.get("sources_in_prompt")
    if had is not None and not isinstance(had, bool):
        raise MedchatError(f"sources_in_prompt is {had!r}; pass True, False or None.")
    sources = prompt.get("prompt_sources")
    if sources is None:
        sources = [] if had is False else None
    if sources is not None:
        if not isinstance(sources, list | tuple):
            raise MedchatError(f"prompt_sources must be a list of sources, not {sources!r}.")
        try:
            sources = json.dumps(list(sources), sort_keys=True)
        except (TypeError, ValueError) as err:
            raise MedchatError(
                f"prompt_sources cannot be saved as JSON ({err}); pass plain values."
            ) from err
    return style, None if had is None else int(had), sources


def checked_marks(marks: Sequence[Mapping[str, Any]] | None) -> list[tuple]:
    """(position, kind, statement, mark, judge, judge_verdict) of each statement mark, checked."""
    if marks is None:
        return []
    if isinstance(marks, str | Mapping) or not isinstance(marks, Sequence):
        raise MedchatError(f"marks must be a list of statement marks, not {marks!r}.")
    rows = []
    for position, m in enumerate(marks):
        if not isinstance(m, Mapping):
            raise MedchatError(f"Statement mark {position + 1} is {m!r}, not a dict.")
        kind, mark, verdict = m.get("kind"), m.get("mark"), m.get("judge_verdict")
        if kind not in STATEMENT_KINDS:
            raise MedchatError(
                f"Statement {position + 1} is of kind {kind!r}; it must be must_have or "
                "nice_to_have."
            )
        if mark not in MARKS:
            raise MedchatError(
                f"Statement {position + 1} is marked {mark!r}; mark it covered, contradicted or "
                "missing."
            )
        if verdict is not None and verdict not in JUDGE_VERDICTS:
            raise MedchatError(
                f"Statement {position + 1} has judge verdict {verdict!r}; it must be one of "
                f"{', '.join(JUDGE_VERDICTS)} or None."
            )
        statement = checked_text("statement", m.get("statement")).strip()
        if not statement:
            raise MedchatError(f"Statement {position + 1} is empty; give its text.")
        judge = m.get("judge")
        judge = checked_text("judge", judge).strip() or None if judge is not None else None
        rows.append((position, kind, statement, mark, judge, verdict))
    return rows


def winner(a_is: str, vote: str) -> str:
    """The model a vote picked (base or tuned), given which was shown as A; else the vote."""
    if vote == "A":
        return a_is
    if vote == "B":
        return "tuned" if a_is == "base" else "base"
    return vote


def checked_text(name: str, value: object) -> str:
    """`value` when it is text, else a MedchatError naming the field `name`."""
    if not isinstance(value, str):
        raise MedchatError(f"{name} must be text, not {type(value).__name__}.")
    return value


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second: every row's created_at and updated_at."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
