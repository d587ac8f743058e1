"""Consumer-style rewrites of MedQuAD's template questions, for training prompts.

    python -m train --config train/recipes/smollm2-135m-raft-consumer.yaml

MedQuAD asks in a handful of templates ("What is (are) Glaucoma ?", "What are the treatments
for Glaucoma ?"); people ask otherwise: a story first, lower case, no question mark, a misspelt
word, their own words for the question. With `consumer_style_fraction` above 0,
`train.sft.build_datasets` rewrites that share of the training questions here before they are
searched and put in the prompt; the answer trained on stays MedQuAD's.

The kinds of rewrite, combined at random (a rewritten question has at least one):
- `rephrased`: the template as a person asks it ("What is (are) X ?" -> "what is X");
- `story`: one or two background sentences first, in the voice of the person, a parent or
  partner, or "my doctor said ...", naming the focus where natural;
- `casual`: lower case, or no final "?", or both;
- `misspelt`: one or two words of 5 letters or more with a letter dropped, doubled or swapped.

Everything here is a pure function of its arguments and a seed.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medchat.errors import MedchatError

KINDS = ("rephrased", "story", "casual", "misspelt")
# How likely each kind is for a question chosen for rewriting (before "at least one").
KIND_PROBABILITY = {"rephrased": 0.7, "story": 0.5, "casual": 0.5, "misspelt": 0.35}
MIN_MISSPELT_LETTERS = 5

# MedQuAD's templates (the focus as x) with how people ask the same thing, and background
# sentences in several voices ({focus}: the document's focus name): data, in consumer_style.json.
_DATA = json.loads(Path(__file__).with_name("consumer_style.json").read_text(encoding="utf-8"))
_TEMPLATES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (t["medquad"], tuple(t["asked"])) for t in _DATA["templates"]
)
_COMPILED = tuple(
    (re.compile(rf"^\s*{pattern}\s*\??\s*$", re.IGNORECASE), asks) for pattern, asks in _TEMPLATES
)
_STORIES_NAMING = tuple(_DATA["stories_naming"])
_STORIES_PLAIN = tuple(_DATA["stories_plain"])
_LETTERS = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Rewrite:
    question: str
    kinds: tuple[str, ...]  # the kinds applied, in KINDS order (empty: unchanged)


def rephrase(question: str, rng: random.Random) -> str | None:
    """The question as a person asks it, when it is one of MedQuAD's templates (else None)."""
    for pattern, asks in _COMPILED:
        match = pattern.match(question)
        if match:
            focus = match.group("x").strip().rstrip("?").strip()
            if focus:
                return rng.choice(asks).format(x=focus)
    return None


def story(focus: str, rng: random.Random) -> str:
    """One or two background sentences; the first names the focus when there is one."""
    focus = (focus or "").strip()
    if focus and rng.random() < 0.75:
        name = focus if rng.random() < 0.5 else focus.lower()
        first = rng.choice(_STORIES_NAMING).format(focus=name)
    else:
        first = rng.choice(_STORIES_PLAIN)
    if rng.random() < 0.35:
        openers = ("Hi", "Sorry")
        second = rng.choice([s for s in _STORIES_PLAIN if s != first and not s.startswith(openers)])
        return f"{first} {second}"
    return first


def casual(text: str, rng: random.Random) -> str:
    """Lower case, or no final question mark, or both."""
    lower, bare = rng.choice(((True, False), (False, True), (True, True)))
    if lower:
        text = text.lower()
    if bare:
        text = text.rstrip().rstrip("?").rstrip()
    return text


def misspell_word(word: str, rng: random.Random) -> str:
    """`word` with one inner letter dropped, doubled, or swapped with the next one; a word
    under MIN_MISSPELT_LETTERS letters is returned as it is."""
    if len(word) < MIN_MISSPELT_LETTERS:
        return word
    for _ in range(8):
        i = rng.randrange(1, len(word) - 1)  # the first and last letters stay
        how = rng.choice(("drop", "double", "swap"))
        if how == "drop":
            out = word[:i] + word[i + 1 :]
        elif how == "double":
            out = word[: i + 1] + word[i] + word[i + 1 :]
        else:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if out != word:
            return out
    return word[:1] + word[2:]  # "aaaaa": drop the second letter


def misspell(text: str, rng: random.Random, count: int = 1) -> str:
    """`text` with `count` of its words of MIN_MISSPELT_LETTERS letters or more misspelt."""
    spans = [
        m.span() for m in _LETTERS.finditer(text) if m.end() - m.start() >= MIN_MISSPELT_LETTERS
    ]
    chosen = sorted(rng.sample(spans, min(count, len(spans))), reverse=True)
    for start, end in chosen:  # from the end, so earlier spans stay valid
        text = text[:start] + misspell_word(text[start:end], rng) + text[end:]
    return text


def rewrite(question: str, focus: str, *, seed: int) -> Rewrite:
    """`question` (about `focus`) rewritten as a person might write it: a random combination of
    KINDS, at least one that changes it."""
    rng = random.Random(seed)
    wanted = {kind for kind in KINDS if rng.random() < KIND_PROBABILITY[kind]}
    if not wanted:
        wanted = {rng.choice(KINDS)}
    kinds = []
    text = question.strip()
    if "rephrased" in wanted:
        asked = rephrase(text, rng)
        if asked is not None:
            text = asked
            kinds.append("rephrased")
    if "story" in wanted:
        background = story(focus, rng)
        # Once the story has named the focus, a person often asks about "it".
        named = focus.strip().lower() if focus else ""
        rephrased = "rephrased" in kinds and named in text.lower()
        if named and named in background.lower() and rephrased and rng.random() < 0.25:
            at = text.lower().index(named)
            text = f"{text[:at]}it{text[at + len(named) :]}"
        text = f"{background} {text}"
        kinds.append("story")
    if "casual" in wanted:
        text = casual(text, rng)
        kinds.append("casual")
    if "misspelt" in wanted or text == question.strip():
        before = text
        text = misspell(text, rng, count=rng.choice((1, 1, 2)))
        if text != before:
            kinds.append("misspelt")
    return Rewrite(text, tuple(k for k in KINDS if k in kinds))


def rewrite_share(
    questions: Sequence[str], foci: Sequence[str], fraction: float, *, seed: int
) -> tuple[list[str], dict]:
    """(the questions with round(fraction * n) of them, chosen by `seed`, rewritten; counts:
    the rows, those rewritten, and the rows per kind of rewrite)."""
    if not 0.0 <= fraction <= 1.0:
        raise MedchatError("consumer_style_fraction must be between 0 and 1.")
    n = len(questions)
    chosen = set(random.Random(seed).sample(range(n), round(fraction * n)))
    out, kinds, rewritten = [], Counter(), 0
    for i, (question, focus) in enumerate(zip(questions, foci, strict=True)):
        if i not in chosen:
            out.append(question)
            continue
        done = rewrite(question, focus if isinstance(focus, str) else "", seed=seed * 100003 + i)
        out.append(done.question)
        kinds.update(done.kinds)
        rewritten += done.question != question
    counts = {"rows": n, "rewritten": rewritten, "kinds": {k: kinds[k] for k in KINDS}}
    return out, counts
