"""The NIH library as a reader uses it: understand the question, then find its pages.

    library = Library(index, Topics.load())      # index: a hybrid medchat.retrieval.Index
    hits = library.search("I take Advil daily. Is that ok with lisinopril?", k=3)
    [h for h in hits if h.covered]   # passages to answer from (ranks 1..n)
    [h for h in hits if not h.covered]  # pages the library names but holds no text for

How a question is answered (MedQuAD's own method, question entailment, beside passage search):
1. Analyse the message: the question sentence(s) inside it and their type (questions.py).
2. Recognise the topics it names (topics.py): focus names, synonyms, brands, misspelt too.
3. Topic hits: for each topic named in a question sentence (else in the story), the MedQuAD
   question of that topic that best matches the user's question (same type first, then the
   closest by embedding): its answer is the passage. Accepted when that match is close enough
   (TOPIC_MIN_SCORE) or the type matches.
4. Passage hits: the hybrid ranking of the question sentence(s) over all passages, accepted
   above PASSAGE_MIN_SCORE (dense cosine); both floors were chosen on the tuning half of the
   consumer question set (tests/data/consumer_questions.jsonl; docs/retrieval.md).
5. One passage per NIH page, at most k; topics the library names but holds no text for (a
   MedlinePlus drug page, an encyclopedia article) become "not covered" pointers with the link.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from medchat.retrieval.index import DEFAULT_K, Hit, Index, Passage
from medchat.retrieval.links import live_link
from medchat.retrieval.questions import analyse
from medchat.retrieval.topics import Mention, Topics

# Relevance floors of the two kinds of hit (dense cosines), chosen on the consumer set's
# tuning half (python -m eval.retrieval --tune; docs/retrieval.md).
TOPIC_MIN_SCORE = 0.45  # user question vs the MedQuAD question of a named topic
PASSAGE_MIN_SCORE = 0.65  # user question vs a passage found by text similarity alone
MAX_POINTERS = 2  # "not covered, see this page" links per question


@dataclass
class Library:
    index: Index  # a hybrid or dense index (its embedder scores question matches)
    topics: Topics
    topic_min_score: float = TOPIC_MIN_SCORE
    passage_min_score: float = PASSAGE_MIN_SCORE
    method: str = "topic"
    _pages: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        pages: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, p in enumerate(self.index.passages):
            pages[(p.source, p.document_id)].append(i)
        self._pages = dict(pages)

    # -- what the Index offers, so callers need not tell the two apart -----------------------
    @property
    def passages(self) -> list[Passage]:
        return self.index.passages

    @property
    def identity(self) -> dict:
        return {
            **self.index.identity,
            "method": self.method,
            "ranking": self.index.method,
            "topic_min_score": self.topic_min_score,
            "passage_min_score": self.passage_min_score,
        }

    def __len__(self) -> int:
        return len(self.index)

    def restricted(self, keys, *, name: str = "") -> Library:
        """The same library over only the passages whose row key is in `keys` (leak-free
        evaluation): a topic whose passages are all held out has no text here."""
        return Library(
            self.index.restricted(keys, name=name),
            self.topics,
            self.topic_min_score,
            self.passage_min_score,
        )

    def search(self, query: str, k: int = DEFAULT_K, *, min_score: float | None = None):
        return self.search_many([query], k, min_score=min_score)[0]

    # -- searching -----------------------------------------------------------------------------
    def candidates(self, query: str, k: int = DEFAULT_K) -> dict:
        """Everything the decision looks at, for one message: the analysis, the topics named,
        the best topic passages and passage-search passages with their scores (no floor)."""
        analysis = analyse(query)
        asked = analysis.query
        mentions = self.topics.find(query)
        spans = _question_spans(query, analysis.questions)
        in_question = [m for m in mentions if any(a <= m.start < b for a, b in spans)]
        ordered = in_question + [m for m in mentions if m not in in_question]
        topic_rows: list[tuple[Mention, int]] = []
        pointers: list[Mention] = []
        for m in ordered:
            rows = [i for d in m.documents if d.covered for i in self._pages.get(_page(d), ())]
            if rows:
                topic_rows.extend((m, i) for i in rows)
            elif any(not d.covered for d in m.documents):
                pointers.append(m)
        topic_hits = self._best_questions(asked, analysis.medquad_qtypes, topic_rows, in_question)
        passage_hits = self.index.search_many([asked], k, min_score=-np.inf)[0]
        return {
            "analysis": analysis,
            "mentions": ordered,
            "in_question": in_question,
            "topic_hits": topic_hits,
            "passage_hits": passage_hits,
            "pointers": pointers,
        }

    def search_many(
        self, queries: Sequence[str], k: int = DEFAULT_K, *, min_score: float | None = None
    ) -> list[list[Hit]]:
        """Per message: its passages (covered hits, ranks 1..n, at most k, one per page), then
        up to MAX_POINTERS "not covered" pointers. `min_score` = -inf keeps every candidate
        (for measuring); otherwise each kind of hit has its own floor."""
        out = []
        for query in queries:
            found = self.candidates(query, k)
            keep_all = min_score is not None and min_score == -np.inf
            chosen: list[tuple[Passage, float, str]] = []
            for passage, score, typed in found["topic_hits"]:
                if keep_all or score >= self.topic_min_score or typed:
                    chosen.append((passage, score, "topic"))
            passage_floor = self.passage_min_score if min_score is None else min_score
            for hit in found["passage_hits"]:
                if keep_all or hit.score >= passage_floor:
                    chosen.append((hit.passage, hit.score, "passage"))
            hits: list[Hit] = []
            pages = set()
            for passage, score, method in chosen:
                if passage.document in pages or len(hits) == k:
                    continue
                pages.add(passage.document)
                hits.append(Hit(passage, float(score), len(hits) + 1, method=method))
            analysis = found["analysis"]
            pointer_mentions = list(found["pointers"])
            if analysis.consumer_only:  # a drug's dose or side effects: the drug page says
                pointer_mentions += [
                    m
                    for m in found["mentions"]
                    if any(d.source == "MPlusDrugs" for d in m.documents)
                    and m not in pointer_mentions
                ]
            named = {m.name.lower() for m in found["in_question"]}
            pointer_mentions.sort(key=lambda m: m.name.lower() not in named)
            seen = set()
            for m in pointer_mentions:
                if sum(not h.covered for h in hits) >= MAX_POINTERS:
                    break
                doc = _pointer_document(m)
                if doc is None or doc.url in seen:
                    continue
                seen.add(doc.url)
                link = live_link(doc.url)
                page = Passage(
                    key=f"page:{doc.source}:{doc.document_id}",
                    title=doc.focus,
                    question="",
                    text="",
                    url=link.url,
                    source="MedlinePlus",
                    document_id=doc.document_id,
                    archived=link.archived,
                )
                hits.append(Hit(page, 1.0, 0, covered=False, method="topic"))
            out.append(hits)
        return out

    def _best_questions(self, asked, qtypes, topic_rows, in_question):
        """Per topic page, the passage whose MedQuAD question best matches the user's question:
        [(passage, cosine, type matched)], best first; topics named in a question sentence
        before those named only in the story."""
        if not topic_rows:
            return []
        rows = list(dict.fromkeys(i for _, i in topic_rows))
        questions = [self.index.passages[i].question for i in rows]
        with self.index._lock:
            vectors = np.asarray(self.index.embedder.encode([asked, *questions]), np.float32)
        cosine = dict(zip(rows, (vectors[1:] @ vectors[0]).tolist(), strict=True))
        # Per page, its best question; a retired site's copy gives way to a live page.
        best: dict[tuple[str, str], tuple[float, int, bool, float]] = {}
        topic_of: dict[tuple[str, str], int] = {}
        for n, (m, i) in enumerate(topic_rows):
            p = self.index.passages[i]
            typed = bool(qtypes) and p.qtype == qtypes[0]
            info = not qtypes and p.qtype == "information"
            rank = (cosine[i] + 0.15 * typed + 0.1 * info - 0.05 * p.archived, i, typed, cosine[i])
            topic_of.setdefault(p.document, n if m in in_question else len(topic_rows) + n)
            if p.document not in best or rank > best[p.document]:
                best[p.document] = rank
        # Each topic's best page first (topics of the question before the story's), then the
        # topics' second pages, and so on: two topics named get a page each.
        by_topic: dict[str, list] = defaultdict(list)
        mention_of = {}
        for m, i in topic_rows:
            mention_of.setdefault(self.index.passages[i].document, m.name.lower())
        for d in sorted(best, key=lambda d: -best[d][0]):
            by_topic[mention_of[d]].append(d)
        topic_order = sorted(by_topic, key=lambda t: min(topic_of[d] for d in by_topic[t]))
        pages = []
        for depth in range(max(len(v) for v in by_topic.values())):
            pages += [by_topic[t][depth] for t in topic_order if depth < len(by_topic[t])]
        return [(self.index.passages[best[d][1]], best[d][3], best[d][2]) for d in pages]


def _page(doc) -> tuple[str, str]:
    return (doc.source, doc.document_id)


def _pointer_document(m: Mention):
    """The page to point to for a topic without text: a MedlinePlus drug or supplement page
    first, else the encyclopedia article."""
    for source in ("MPlusDrugs", "MPlusHerbsSupplements", "ADAM"):
        for d in m.documents:
            if d.source == source and d.url:
                return d
    return None


def _question_spans(text: str, questions: Sequence[str]) -> list[tuple[int, int]]:
    spans = []
    for q in questions:
        start = text.find(q)
        if start >= 0:
            spans.append((start, start + len(q)))
    return spans or [(0, len(text))]


def with_floors(library: Library, topic: float, passage: float) -> Library:
    return replace(library, topic_min_score=topic, passage_min_score=passage)
