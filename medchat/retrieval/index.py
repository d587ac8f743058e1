"""Retrieval over MedQuAD's NIH passages, so an answer can say where it comes from.

    index = Index.build(df, method="bm25")        # the rows of medchat.data.load_pairs
    hits = index.search("What is glaucoma?", k=3)  # [Hit], best first; [] when nothing fits
    train_only = index.restricted(train_keys)     # a leak-free index for scoring a test split
    index = default_index(settings)               # the shipped MedQuAD, built once per process

Every row of the data is one passage: its answer (GARD's phenotype boilerplate cut, shortened
to `passage_words`), titled by its focus, with its NIH link. Three methods:
- `bm25`: lexical (bm25s) over the focus, the question and the answer; built in seconds.
- `dense`: cosine of all-MiniLM-L6-v2 vectors of the focus, question and answer start. Encoding
  all 16k rows takes minutes on a laptop CPU, so the vectors are cached under the cache dir.
- `hybrid` (the default): reciprocal-rank fusion of the two rankings.
A hit counts only when it is relevant enough (MIN_SCORE), so a question the sources do not
cover gets no passages rather than unrelated ones.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medchat.errors import MedchatError

log = logging.getLogger(__name__)

METHODS = ("bm25", "dense", "hybrid", "topic")
DEFAULT_METHOD = "topic"  # the hybrid ranking plus question understanding (library.py)
DEFAULT_K = 3
PASSAGE_WORDS = 80  # words of an answer put into a prompt as one passage
DENSE_WORDS = 60  # words of an answer in the text a dense vector is made of
INDEX_VERSION = 1  # bump when what is indexed changes: cached vectors are then rebuilt
RRF_K = 60  # reciprocal-rank fusion constant
# Below these a hit is not about the question. Relevance is the dense cosine of the question
# and the passage when the index has vectors (dense, hybrid), else the bm25 score divided by
# the query's best possible one (its terms' idf summed), comparable across queries. Each is
# the threshold that best tells MedQuAD validation questions with a passage on their topic
# from those without one (`python -m eval.retrieval`; docs/retrieval.md).
MIN_SCORE = {"bm25": 0.18, "dense": 0.70, "hybrid": 0.65}  # topic: library.py


@dataclass(frozen=True)
class Passage:
    key: str  # the data row's key (medchat.data.row_key)
    title: str  # the focus (the condition or topic), else the question
    question: str
    text: str  # the answer, shortened to PASSAGE_WORDS
    url: str = ""  # the page as it opens today (medchat.retrieval.links)
    source: str = ""  # the NIH site (GHR, GARD, MedlinePlus, ...)
    document_id: str = ""
    qid: str = ""  # MedQuAD's question id
    qtype: str = ""  # MedQuAD's question type (information, symptoms, treatment, ...)
    archived: bool = False  # the site is retired: `url` opens an archived copy

    @property
    def document(self) -> tuple[str, str]:
        """The NIH page this passage comes from (several passages share one)."""
        return (self.source, self.document_id or self.url or self.title)

    @property
    def label(self) -> str:
        """What a person sees for this source: its title and site."""
        return f"{self.title} ({self.source})" if self.source else self.title


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # relevance: the dense cosine, or (bm25 alone) the share of the best possible
    rank: int  # 1-based position in the prompt: the [n] an answer cites
    # False: a pointer to a page the library names but holds no text for (a MedlinePlus drug
    # page): shown to the reader as "not covered, see this page", never put in a prompt.
    covered: bool = True
    method: str = ""  # what found it: "topic" (a named topic), "passage" (text similarity)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def passages_from(df: pd.DataFrame, passage_words: int = PASSAGE_WORDS) -> list[Passage]:
    """One passage per data row (load_pairs' columns; focus, url, source optional)."""
    from medchat.data import cut_hpo_boilerplate, shorten_answer
    from medchat.retrieval.links import live_link

    out = []
    for row in df.itertuples(index=False):
        answer = cut_hpo_boilerplate(row.answer) or row.answer
        title = _text(getattr(row, "focus", "")) or row.question
        link = live_link(_text(getattr(row, "url", "")))
        out.append(
            Passage(
                key=row.key,
                title=title,
                question=row.question,
                text=shorten_answer(answer, passage_words),
                url=link.url,
                source=_text(getattr(row, "source", "")),
                document_id=_text(getattr(row, "document_id", "")),
                qid=_text(getattr(row, "qid", "")),
                qtype=_text(getattr(row, "qtype", "")),
                archived=link.archived,
            )
        )
    return out


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(list(texts), return_ids=False, show_progress=False)


def _dense_text(p: Passage) -> str:
    words = p.text.split()
    return f"{p.title}. {p.question} {' '.join(words[:DENSE_WORDS])}"


def _lexical_text(p: Passage) -> str:
    return f"{p.title} {p.title} {p.question} {p.text}"


@dataclass
class Index:
    passages: list[Passage]
    method: str = DEFAULT_METHOD
    identity: dict = field(default_factory=dict)  # what the index was built from (for records)
    vectors: np.ndarray | None = None  # dense: unit vectors, one row per passage
    embedder: object | None = None  # dense: a medchat.metrics.Embedder for the queries
    _bm25: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        df: pd.DataFrame,
        *,
        method: str = DEFAULT_METHOD,
        embedder=None,
        vectors: np.ndarray | None = None,
        identity: dict | None = None,
        passage_words: int = PASSAGE_WORDS,
    ) -> Index:
        """An index over the rows of `df`. `dense` and `hybrid` need an `embedder` (and take
        precomputed `vectors`, one per row, when given)."""
        if method not in METHODS or method == "topic":
            raise MedchatError(
                f"Retrieval method {method!r} cannot build a passage index; use bm25, dense or "
                "hybrid (topic is built by load_index)."
            )
        passages = passages_from(df, passage_words)
        if not passages:
            raise MedchatError("The retrieval index has no passages; give data with answers.")
        index = cls(passages, method, dict(identity or {}), embedder=embedder)
        index.identity.update(method=method, passages=len(passages), passage_words=passage_words)
        if method in ("bm25", "hybrid"):
            index._bm25 = _bm25(passages)
        if method in ("dense", "hybrid"):
            if embedder is None:
                raise MedchatError(f"Retrieval method {method} needs a sentence embedder.")
            if vectors is None:
                vectors = embedder.encode([_dense_text(p) for p in passages])
            if len(vectors) != len(passages):
                raise MedchatError("The cached retrieval vectors do not match the data; rebuild.")
            index.vectors = np.asarray(vectors, dtype=np.float32)
            index.identity["embedder"] = getattr(embedder, "name", str(embedder))
        return index

    def restricted(self, keys, *, name: str = "") -> Index:
        """The same index over only the passages whose row key is in `keys` (the lexical
        statistics are recomputed over them): what evaluation searches, so no held-out row's
        own answer can be retrieved."""
        keys = set(keys)
        keep = [i for i, p in enumerate(self.passages) if p.key in keys]
        if not keep:
            raise MedchatError("No passage of the index is left after restricting it.")
        passages = [self.passages[i] for i in keep]
        sub = Index(passages, self.method, dict(self.identity), embedder=self.embedder)
        sub.identity.update(passages=len(passages), restricted_to=name or f"{len(keep)} rows")
        if self._bm25 is not None:
            sub._bm25 = _bm25(passages)
        if self.vectors is not None:
            sub.vectors = self.vectors[keep]
        return sub

    # -- searching -----------------------------------------------------------------------------
    def scores(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """Per method, an array (queries x passages) of relevance scores."""
        out: dict[str, np.ndarray] = {}
        if self._bm25 is not None:
            rows = []
            for tokens in _tokens(queries):
                raw = (
                    np.asarray(self._bm25.get_scores(tokens), dtype=np.float32) if tokens else None
                )
                best = _best_possible(self._bm25, tokens)
                rows.append(raw / best if raw is not None and best > 0 else np.zeros(len(self)))
            out["bm25"] = np.vstack(rows) if rows else np.zeros((0, len(self)))
        if self.vectors is not None:
            with self._lock:
                q = np.asarray(self.embedder.encode(list(queries)), dtype=np.float32)
            out["dense"] = q @ self.vectors.T
        return out

    def search_many(
        self, queries: Sequence[str], k: int = DEFAULT_K, *, min_score: float | None = None
    ) -> list[list[Hit]]:
        """The top `k` relevant passages of each query, best first (ranks 1..n).

        Ranking: bm25 or dense scores, or (hybrid) the reciprocal-rank fusion of both. A hit
        is kept only when its relevance (the dense cosine when there are vectors, else the
        bm25 share) is at least `min_score` (default: MIN_SCORE of the method)."""
        if not queries:
            return []
        scores = self.scores(queries)
        relevance = scores["dense"] if "dense" in scores else scores["bm25"]
        floor = MIN_SCORE[self.method] if min_score is None else min_score
        results = []
        for qi in range(len(queries)):
            if self.method == "hybrid":
                order = np.zeros(len(self), dtype=np.float64)
                for matrix in scores.values():
                    ranks = np.empty(len(self), dtype=np.float64)
                    ranks[np.argsort(-matrix[qi], kind="stable")] = np.arange(1, len(self) + 1)
                    order += 1.0 / (RRF_K + ranks)
            else:
                order = scores[self.method][qi]
            rel = relevance[qi]
            top = []
            pages = set()  # one passage per NIH page: three sources are three pages
            for i in np.argsort(-order, kind="stable")[: max(8 * k, 32)]:
                page = self.passages[i].document
                if page in pages:
                    continue
                pages.add(page)
                top.append(i)
                if len(top) == k:
                    break
            top = [i for i in top if rel[i] >= floor]
            results.append(
                [
                    Hit(self.passages[i], float(rel[i]), rank, method="passage")
                    for rank, i in enumerate(top, 1)
                ]
            )
        return results

    def in_context(self, query: str, earlier: Sequence[str] = ()) -> str:
        """The search for `query` after `earlier` messages: passage search knows no topics,
        so the message as it is (the topic library reads follow-ups; library.py)."""
        return query

    def search(
        self, query: str, k: int = DEFAULT_K, *, min_score: float | None = None, alone: bool = True
    ):
        """The top `k` relevant passages of one query. `alone` (whether earlier turns come with
        it) matters to the topic library only, which reads follow-ups (library.py)."""
        return self.search_many([query], k, min_score=min_score)[0]

    def __len__(self) -> int:
        return len(self.passages)


def _bm25(passages: Sequence[Passage]):
    import bm25s

    model = bm25s.BM25()
    model.index(_tokens([_lexical_text(p) for p in passages]), show_progress=False)
    return model


def _best_possible(model, tokens: Sequence[str]) -> float:
    """The idf mass of the query's known terms: what a passage matching all of them (at a
    saturated frequency) would score, up to the (k1 + 1) factor all scores share."""
    vocab = model.vocab_dict
    n = model.scores["num_docs"]
    known = [vocab[t] for t in set(tokens) if t in vocab]
    if not known:
        return 0.0
    indptr = model.scores["indptr"]
    df = np.array([indptr[i + 1] - indptr[i] for i in known], dtype=np.float64)
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
    k1 = model.k1
    return float(idf.sum() * (k1 + 1))


# -- the default index: the shipped MedQuAD ---------------------------------------------------

_DEFAULT: dict[tuple, Index] = {}
_DEFAULT_LOCK = threading.Lock()


SHIPPED_INDEX = Path(__file__).resolve().parents[2] / "assets" / "index"


def vectors_name(data_sha: str, embedder_sha: str) -> str:
    return f"medquad-{data_sha[:16]}-{(embedder_sha or 'embedder')[:12]}-v{INDEX_VERSION}.npy"


def vectors_path(cache_dir: Path, data_sha: str, embedder_sha: str) -> Path:
    """Where the dense vectors of a data file live: shipped in assets/index/ for the shipped
    MedQuAD and the bundled embedder, else under the cache dir."""
    name = vectors_name(data_sha, embedder_sha)
    shipped = SHIPPED_INDEX / name
    return shipped if shipped.is_file() else Path(cache_dir).expanduser() / "index" / name


def load_index(
    data: str | Path | None = None,
    *,
    method: str = DEFAULT_METHOD,
    cache_dir: Path | None = None,
    embedder=None,
    progress: bool = False,
):
    """An index over `data` (default: the shipped MedQuAD); dense vectors are cached under
    `cache_dir` (built on first use: minutes on a CPU). `topic` gives a
    medchat.retrieval.library.Library over the hybrid index and the shipped topic table."""
    from medchat.data import DEFAULT_DATA, load_pairs

    if method == "topic":
        from medchat.retrieval.library import Library
        from medchat.retrieval.topics import Topics

        hybrid = load_index(
            data, method="hybrid", cache_dir=cache_dir, embedder=embedder, progress=progress
        )
        return Library(hybrid, Topics.load())
    if method not in METHODS:
        raise MedchatError(f"Retrieval method {method!r} is unknown; use {', '.join(METHODS)}.")

    source = data or DEFAULT_DATA
    df, report = load_pairs(source)
    identity = {"data": _portable(source), "data_sha256": report.sha256, "version": INDEX_VERSION}
    if report.hub_id:
        identity.update(hub_id=report.hub_id, revision=report.revision)
    vectors = None
    if method in ("dense", "hybrid"):
        if embedder is None:
            from medchat.metrics import Embedder

            embedder = Embedder("bundled")
        data_sha = report.sha256 or hashlib.sha256(str(source).encode()).hexdigest()
        cache = vectors_path(cache_dir or Path("~/.cache/medchat"), data_sha, embedder.sha256 or "")
        if cache.is_file():
            vectors = np.load(cache)
        else:
            log.info(
                "Encoding %d passages for dense retrieval (once; cached at %s)", len(df), cache
            )
            texts = [_dense_text(p) for p in passages_from(df)]
            vectors = _encode(embedder, texts, progress=progress)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, vectors.astype(np.float16))
            tmp.replace(cache)
    return Index.build(df, method=method, embedder=embedder, vectors=vectors, identity=identity)


def _encode(embedder, texts: Sequence[str], *, progress: bool, chunk: int = 256) -> np.ndarray:
    from tqdm import tqdm

    parts = []
    bar = tqdm(total=len(texts), desc="Encoding passages", unit="passage", disable=not progress)
    for start in range(0, len(texts), chunk):
        parts.append(np.asarray(embedder.encode(texts[start : start + chunk]), dtype=np.float32))
        bar.update(len(parts[-1]))
    bar.close()
    return np.vstack(parts)


def _portable(source) -> str:
    from medchat.data import portable_source

    return portable_source(source)


def default_index(settings=None, *, method: str | None = None):
    """The shipped MedQuAD's index for serving (built once per process, thread-safe)."""
    from medchat.settings import Settings

    settings = settings or Settings()
    method = method or settings.retrieval_method
    key = (method, str(settings.cache_dir))
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = load_index(method=method, cache_dir=settings.cache_dir)
        return _DEFAULT[key]


# -- what an answer cites ---------------------------------------------------------------------

CITATION = re.compile(r"\[(\d{1,2})\]")


def citations(answer: str) -> list[int]:
    """The source numbers an answer cites ([1], [2], ...), in order of first appearance."""
    return list(dict.fromkeys(int(m) for m in CITATION.findall(answer or "")))


def same_topic(a: str, b: str) -> bool:
    """Whether two focus names name the same topic (case, punctuation and spacing aside)."""
    from medchat.data import normalize_question

    return bool(a) and normalize_question(a) == normalize_question(b)
