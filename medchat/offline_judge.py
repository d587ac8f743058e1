"""The offline judge: does an answer entail, contradict or neither a statement, on a CPU.

    judge = OfflineJudge.load(embedder=Embedder("bundled"))    # weights: assets/judges/offline.json
    judge.judge([(answer, statement), ...])                     # [Judgement, ...]

Nothing here needs a server or a GPU: the features are the bundled all-MiniLM-L6-v2's best
cosine of the statement to the answer's sentences and to windows of two sentences, the cosine
to the whole answer, the share of the statement's content words (and of its rarer, longer
words) found in the answer and in its closest sentence, numbers in the statement missing from
the answer, and a negation on one side of the closest sentence only. Two logistic models read
them: one for entailed vs not, one for contradicted vs not. They are fitted on the fit half of
K-QA's physician labels by `python -m eval.judge_agreement fit` and shipped as a small JSON with
their thresholds and the judge's agreement with the physicians on the report half.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medchat.errors import MedchatError
from medchat.settings import REPO_ROOT

WEIGHTS = REPO_ROOT / "assets" / "judges" / "offline.json"
FEATURES = (
    "best_sentence_cosine",
    "second_sentence_cosine",
    "best_window_cosine",
    "answer_cosine",
    "content_recall",
    "long_word_recall",
    "best_sentence_recall",
    "numbers_missing",
    "negation_mismatch",
    "statement_negated",
    "statement_words",
)
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_WORD = re.compile(r"[a-z][a-z0-9'-]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NEGATION = re.compile(
    r"\b(not|no|never|none|nor|cannot|can't|don't|doesn't|isn't|aren't|shouldn't|won't|without|"
    r"avoid|avoided|unlikely|neither|contraindicated)\b",
    re.IGNORECASE,
)
_STOP_WORDS = (
    "a an the of to in on for and or is are be been being was were it its this that these "
    "those with as by at from can could may might should would will shall must not no do "
    "does did have has had you your yours i my me we our they their them he she his her if "
    "but so than then there which who whom what when where why how also any all more most "
    "some such into about other only just very often usually well both each many much one "
    "ones use used using get like make made way ways take taken"
)
_STOP = frozenset(_STOP_WORDS.split())
LONG_WORD = 8  # letters: medical terms ("escitalopram", "gastroenteritis") are long


def sentences(text: str) -> list[str]:
    """The answer's sentences and list items (at least the whole text)."""
    parts = [p.strip(" -*\t") for p in _SENTENCE_END.split(text or "")]
    parts = [p for p in parts if len(p) > 3]
    return parts or [(text or "").strip() or "."]


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry content, cut to 6 letters (a crude shared stem)."""
    return {w[:6] for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def _long_words(text: str) -> set[str]:
    return {w[:7] for w in _WORD.findall(text.lower()) if len(w) >= LONG_WORD}


def _share(part: set[str], whole: set[str]) -> float:
    return len(part & whole) / len(part) if part else 1.0


def features(pairs: Sequence[tuple[str, str]], embedder) -> np.ndarray:
    """The FEATURES of each (answer, statement) pair, one row per pair; every distinct text
    is embedded once."""
    if not pairs:
        return np.zeros((0, len(FEATURES)))
    split = {a: sentences(a) for a in dict.fromkeys(a for a, _ in pairs)}
    windows = {
        a: [" ".join(s[i : i + 2]) for i in range(max(1, len(s) - 1))] for a, s in split.items()
    }
    texts = set(split) | {s for _, s in pairs}
    for a in split:
        texts.update(split[a])
        texts.update(windows[a])
    texts = sorted(texts)
    index = {t: i for i, t in enumerate(texts)}
    vectors = embedder.encode(texts).astype(np.float64)
    rows = []
    for answer, statement in pairs:
        v = vectors[index[statement]]
        sent_cos = vectors[[index[t] for t in split[answer]]] @ v
        win_cos = vectors[[index[t] for t in windows[answer]]] @ v
        order = np.argsort(-sent_cos)
        best = split[answer][int(order[0])]
        words = content_words(statement)
        missing_numbers = set(_NUMBER.findall(statement)) - set(_NUMBER.findall(answer))
        negated = bool(_NEGATION.search(statement))
        rows.append(
            [
                sent_cos[order[0]],
                sent_cos[order[1]] if len(order) > 1 else sent_cos[order[0]],
                win_cos.max(),
                vectors[index[answer]] @ v,
                _share(words, content_words(answer)),
                _share(_long_words(statement), _long_words(answer)),
                _share(words, content_words(best)),
                float(bool(missing_numbers)),
                float(negated != bool(_NEGATION.search(best))),
                float(negated),
                np.log1p(len(words)),
            ]
        )
    return np.asarray(rows, dtype=np.float64)


class LogisticModel:
    """A standardised logistic model: P(positive) = sigmoid(w . (x - mean) / scale + b)."""

    def __init__(self, mean, scale, coef, intercept: float, threshold: float):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.threshold = float(threshold)

    def probability(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def as_dict(self) -> dict:
        return {
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "coef": [round(float(v), 6) for v in self.coef],
            "intercept": round(self.intercept, 6),
            "threshold": round(self.threshold, 4),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LogisticModel:
        return cls(d["mean"], d["scale"], d["coef"], d["intercept"], d["threshold"])


class OfflineJudge:
    """Judges (answer, statement) pairs with the fitted models of a weights file."""

    name = "offline"

    def __init__(self, record: dict, embedder, *, path: Path | None = None):
        if tuple(record.get("features", ())) != FEATURES:
            raise MedchatError(
                f"The offline judge's weights {str(path or '')!r} were fitted on other features; "
                "refit them with python -m eval.judge_agreement fit."
            )
        self.record = record
        self.embedder = embedder
        self.entailed = LogisticModel.from_dict(record["entailed"])
        self.contradicted = LogisticModel.from_dict(record["contradicted"])
        models = {k: record[k] for k in ("entailed", "contradicted")}
        digest = hashlib.sha256(json.dumps(models, sort_keys=True).encode()).hexdigest()[:12]
        self.identity = f"offline:{digest}:{record.get('embedder', '?')}"

    @classmethod
    def load(cls, embedder, path: Path = WEIGHTS) -> OfflineJudge:
        path = Path(path)
        if not path.is_file():
            raise MedchatError(
                f"No offline judge weights at {str(path)!r}; fit them with "
                "python -m eval.judge_agreement fit."
            )
        return cls(json.loads(path.read_text()), embedder, path=path)

    @property
    def agreement(self) -> dict | None:
        return self.record.get("agreement")

    def info(self) -> dict:
        return {
            "name": self.name,
            "identity": self.identity,
            "embedder": self.record.get("embedder"),
            "agreement": self.agreement,
        }

    def scores(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """(P(entailed), P(contradicted)) per pair."""
        x = features(pairs, self.embedder)
        if not len(x):
            return np.zeros(0), np.zeros(0)
        return self.entailed.probability(x), self.contradicted.probability(x)

    def judge(self, pairs: Sequence[tuple[str, str]]):
        from medchat.judges import Judgement

        entailed, contradicted = self.scores(pairs)
        out = []
        for p_e, p_c in zip(entailed, contradicted, strict=True):
            if p_e >= self.entailed.threshold:
                verdict = "entailed"
            elif p_c >= self.contradicted.threshold:
                verdict = "contradicted"
            else:
                verdict = "neither"
            out.append(Judgement(verdict, round(float(p_e), 4), round(float(p_c), 4)))
        return out
