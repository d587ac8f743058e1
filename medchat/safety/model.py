"""The learned part of triage: the parts of a message that are scored, their features, and the
fitted model (`Classifier`, safety_data/classifier.npz) that turns them into probabilities.

    parts = split_parts(["my dad has crushing chest pain. he is 70"])   # whole, sentences, pairs
    x = features_for("combined", embeddings, parts)                      # one row per part
    probs = Classifier.load().heads["combined"].probabilities(x)         # over Classifier.classes

`medchat.safety.triage` turns the probabilities into a decision (and holds the embedder);
`python -m medchat.safety_train` fits the heads and their thresholds.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from medchat.errors import MedchatError
from medchat.safety.rules import DATA_DIR, LEXICAL_FEATURES, RuleHits, normalise, rule_hits
from medchat.safety.story import STORY_FEATURES, segments, story_features

CLASSIFIER_PATH = DATA_DIR / "classifier.npz"
INFO_CATEGORY = "self_harm_info"
URGENT_CATEGORY = "urgent"
NOT_EMERGENCY = ("none", INFO_CATEGORY, URGENT_CATEGORY)


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
