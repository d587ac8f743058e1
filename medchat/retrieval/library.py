"""The NIH library as a reader uses it: understand the question, then find its pages.

    library = Library(index, Topics.load())      # index: a hybrid medchat.retrieval.Index
    hits = library.search("I take Advil daily. Is that ok with lisinopril?", k=3)
    [h for h in hits if h.covered]   # passages to answer from (ranks 1..n)
    [h for h in hits if not h.covered]  # pages the library names but holds no text for

How a question is answered (MedQuAD's own method, question entailment, beside passage search):
1. Analyse the message: the question sentence(s) inside it and their type (questions.py).
2. Recognise the topics it names (topics.py): focus names, synonyms, brands, misspelt too.
3. Topic candidates: for each topic named in a question sentence (else in the story), the
   MedQuAD question of that topic that best matches the user's question (same type first, then
   the closest by embedding): its answer is the passage.
4. Passage candidates: the hybrid ranking of the question sentence(s) over all passages.
5. The relevance decision: each candidate gets a probability of being relevant from a small
   logistic model over what was found (how it was found, the question-question and
   question-passage cosines, whether the question type matches, how much of the page's title
   the message names, ...), fitted on the tuning half of the consumer question set
   (relevance.json; `python -m eval.retrieval --consumer --tune`). Candidates at or above its
   threshold are shown, most probable first, one per NIH page, at most k.
6. Topics the library names but holds no text for (a MedlinePlus drug page, an encyclopedia
   article) become "not covered" pointers with the link.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medchat.errors import MedchatError
from medchat.retrieval.ages import ages_asked_about, for_other_age
from medchat.retrieval.index import DEFAULT_K, Hit, Index, Passage
from medchat.retrieval.links import live_link
from medchat.retrieval.questions import QTYPE_PATTERNS, analyse, leans_on_earlier, question_types
from medchat.retrieval.topics import (
    MEDICINE_SOURCES,
    STOPWORDS,
    Mention,
    Topics,
    name_key,
    stem,
    unnamed_medicines,
    words,
)

MAX_POINTERS = 2  # "not covered, see this page" links per question
TOPIC_PAGES = 4  # topic candidates per message (the best page of each topic first)
SAME_QUESTION = 0.95  # cosine above which two questions ask the same thing
PAGES_PER_TOPIC = 6  # pages of one topic compared (a common topic has a dozen NIH pages)
RELEVANCE_FILE = Path(__file__).with_name("relevance.json")
# A follow-up: a message naming no topic that points back ("it", "this") or is this short.
_PRONOUN = re.compile(r"\b(it|this|that|they|them|these|those)\b", re.IGNORECASE)
FOLLOW_UP_WORDS = 5
# ... and then only when it asks for a kind of answer ("And the treatment?", "Any side effects?",
# "What about in children?"): besides stop words and question-type cues, only these words. A
# short message with words of its own ("can diabetics eat sweets") is a question of its own.
ASKING_WORDS = frozenset({
    "else", "info", "information", "normal", "serious", "dangerous", "contagious", "hereditary",
    "genetic", "common", "rare", "safe", "long", "last", "needed", "necessary", "tell", "explain",
    "mean", "means", "children", "child", "kids", "kid", "babies", "baby", "adults", "adult",
    "elderly", "seniors", "women", "men", "teens", "teenagers", "pregnancy", "pregnant",
})  # fmt: skip
FEATURES = (
    "bias",
    "topic",  # found as a page of a topic the message names
    "topic_in_question",  # ... named in a question sentence, not only in the story
    "topic_exact",  # ... spelled as the table spells it
    "passage",  # found by the hybrid passage ranking
    "passage_rank",  # its rank there (1-3; 4 when not found that way)
    "q2q",  # cosine: the user's question vs the MedQuAD question of the passage
    "q2p",  # cosine: the user's question vs the passage
    "typed",  # the passage answers the question's type (treatment, symptoms, ...)
    "information",  # the passage is the page's "what is" answer
    "title_named",  # share of the page title's words that the message names
    "consumer_only",  # the question is of a type MedQuAD has no text for (dose, interaction)
    "ask_overlap",  # share of the question's own words (not the page title's) in the passage
)


@dataclass(frozen=True)
class RelevanceModel:
    """P(relevant) = sigmoid(weights . features); shown when at least `threshold`."""

    weights: tuple[float, ...]
    threshold: float
    provenance: str = ""

    @classmethod
    def load(cls, path: Path = RELEVANCE_FILE) -> RelevanceModel:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if tuple(data["features"]) != FEATURES:
                raise ValueError("features differ")
            return cls(tuple(float(w) for w in data["weights"]), float(data["threshold"]),
                       str(data.get("provenance", "")))  # fmt: skip
        except (OSError, ValueError, KeyError) as err:
            raise MedchatError(
                f"The relevance model {str(path)!r} is unreadable ({err}); restore it or refit "
                "it with python -m eval.retrieval --consumer --tune."
            ) from None

    def probability(self, features: Sequence[float]) -> float:
        z = float(np.dot(self.weights, features))
        return float(1.0 / (1.0 + np.exp(-z)))


@dataclass
class Library:
    index: Index  # a hybrid or dense index (its embedder scores question matches)
    topics: Topics
    model: RelevanceModel | None = None  # default: relevance.json
    method: str = "topic"
    _pages: dict = field(default_factory=dict, repr=False)
    _row: dict = field(default_factory=dict, repr=False)
    _words: dict = field(default_factory=dict, repr=False)  # row -> own_words of its passage
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        pages: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, p in enumerate(self.index.passages):
            pages[(p.source, p.document_id)].append(i)
        self._pages = dict(pages)
        self._row = {p.key: i for i, p in enumerate(self.index.passages)}
        if self.model is None:
            self.model = RelevanceModel.load()

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
            "relevance": self.model.provenance,
            "threshold": self.model.threshold,
        }

    def __len__(self) -> int:
        return len(self.index)

    def restricted(self, keys, *, name: str = "") -> Library:
        """The same library over only the passages whose row key is in `keys` (leak-free
        evaluation): a topic whose passages are all held out has no text here."""
        return Library(self.index.restricted(keys, name=name), self.topics, self.model)

    def search(
        self, query: str, k: int = DEFAULT_K, *, min_score: float | None = None, alone: bool = True
    ):
        """The hits shown for one message. `alone`: no earlier turn of the chat comes with it
        (a follow-up sent alone gets no passage; see `candidates`)."""
        return self.search_many([query], k, min_score=min_score, alone=alone)[0]

    def in_context(self, query: str, earlier: Sequence[str] = ()) -> str:
        """`query` as a search of its own: a follow-up that names no topic ("Is it
        contagious?", "And the treatment?") gets the topic of the person's latest earlier
        message that names one, in place of its first pronoun or after the question; any
        other message (a short one with words of its own too: "can diabetics eat sweets") is
        searched as it is."""
        if not earlier or self.topics.find(query):
            return query
        pronoun = _PRONOUN.search(query)
        if pronoun is None and (len(words(query)) > FOLLOW_UP_WORDS or not _asks_a_kind(query)):
            return query  # a question of its own on something the library does not name
        for turn in reversed(earlier):
            mentions = self.topics.find(turn)
            if mentions:
                first = min(mentions, key=lambda m: m.start)
                name = turn[first.start : first.end]
                if pronoun is not None:
                    return f"{query[: pronoun.start()]}{name}{query[pronoun.end() :]}"
                body = query.rstrip().rstrip("?.!")
                return f"{body} ({name}){query.rstrip()[len(body) :]}"
        return query

    # -- searching -----------------------------------------------------------------------------
    def candidates(self, query: str, k: int = DEFAULT_K, *, alone: bool = True) -> dict:
        """Everything the decision looks at, for one message: the analysis, the topics named,
        and the candidate passages with their features (no decision yet). `alone`: the message
        comes without earlier turns, so one that leans on something it does not say ("What
        about bronchitis?", "Do you think it's poison ivy?") gets no passage, only pointers."""
        analysis = analyse(query)
        asked = analysis.query
        mentions = self.topics.find(query)
        spans = _question_spans(query, analysis.questions)
        in_question = [m for m in mentions if any(a <= m.start < b for a, b in spans)]
        ordered = in_question + [m for m in mentions if m not in in_question]
        if mentions and not in_question:
            # The story names the topic and the question only asks ("My mom has macular
            # degeneration. What treatments are there?"): the question is compared and searched
            # with the story's first topic, as a follow-up is with the topic before.
            first = min(mentions, key=lambda m: m.start)
            asked = f"{asked.rstrip()} ({query[first.start : first.end]})"
        topic_rows: list[tuple[Mention, int]] = []
        pointers: list[Mention] = []
        qtypes = analysis.medquad_qtypes
        for m in ordered:
            rows = [
                i
                for d in [d for d in m.documents if d.covered][:PAGES_PER_TOPIC]
                for i in self._answers_of(_page(d), qtypes)
            ]
            if rows:
                topic_rows.extend((m, i) for i in rows)
            elif any(not d.covered for d in m.documents):
                pointers.append(m)
        found = {"analysis": analysis, "mentions": ordered, "in_question": in_question}
        if alone and leans_on_earlier(analysis):
            # A follow-up sent on its own answers to a conversation the passages cannot see
            # (the assessor judged "What about bronchitis?" not answered by the page on
            # bronchitis): its pointers only, and nothing searched or encoded.
            return {**found, "items": [], "pointers": pointers}
        passage_hits = self.index.search_many([asked], k, min_score=-np.inf)[0]
        # One embedding call: the question, then every MedQuAD question that may be compared.
        rows = list(dict.fromkeys([i for _, i in topic_rows] + [
            self._row[h.passage.key] for h in passage_hits]))  # fmt: skip
        # Each question text once: MedQuAD repeats a question on a page ("What is (are)
        # Glaucoma ?" twice on NIHSeniorHealth's), and passages asking the same thing must tie
        # exactly (the first found wins), not by the last bits of how a batch was padded.
        questions = list(dict.fromkeys(self.index.passages[i].question for i in rows))
        with self.index._lock:
            vectors = np.asarray(self.index.embedder.encode([asked, *questions]), np.float32)
        cosine = dict(zip(questions, (vectors[1:] @ vectors[0]).tolist(), strict=True))
        q2q = {i: cosine[self.index.passages[i].question] for i in rows}
        q2p = {i: float(self.index.vectors[i] @ vectors[0]) for i in rows}
        topic_pages = self._best_pages(qtypes, topic_rows, in_question, q2q)[:TOPIC_PAGES]
        message = {stem(w) for w, _, _ in words(query)}
        asked_words = own_words(analysis.query)
        items: dict[int, dict] = {}
        for i, m in topic_pages:
            items[i] = {"row": i, "mention": m, "passage_rank": 4}
        for rank, h in enumerate(passage_hits, 1):
            items.setdefault(self._row[h.passage.key], {"row": self._row[h.passage.key]})
            items[self._row[h.passage.key]]["passage_rank"] = rank
        medicines = _medicine_names(query, mentions)
        if medicines:
            # MedQuAD holds no text on medicines: a message naming one gets the medicine's
            # MedlinePlus page (a pointer), and NIH passages only on the conditions its
            # question names, never a page the wording alone found or one on the story's
            # other topics; and only a passage that names the medicine answers a question
            # about it ("And do you think I can get fluconazole? I always get yeast infection
            # from antibiotics" had got the Yeast Infections page, which names no medicine).
            # A medicine without a MedlinePlus page in the table ("antibiotics",
            # "tirzepatide") is told by its ending or kind, and gets no pointer.
            conditions = [m for m in in_question if not _is_medicine(m)]
            items = {
                i: it
                for i, it in items.items()
                if it.get("mention") in conditions and self._names_any(i, medicines)
            }
        # A page on what the person says they do not have ("I have no fever and feel well
        # otherwise. What should I do?" found Fever by its words) answers nothing they asked.
        # ... and a page written for another age group than the person asked about ("Urinary
        # Tract Infections in Children" for a 78-year-old mother's symptoms).
        ages = ages_asked_about(query)
        items = {
            i: it
            for i, it in items.items()
            if not negated_only(self.index.passages[i].title, query)
            and not for_other_age(self.index.passages[i].title, ages)
        }
        for i, item in items.items():
            p = self.index.passages[i]
            m = item.get("mention")
            title = name_key(p.title)
            item["features"] = [
                1.0,
                float(m is not None),
                float(m is not None and m in in_question),
                float(m is not None and m.exact),
                float(item["passage_rank"] < 4),
                float(item["passage_rank"]),
                q2q[i],
                q2p[i],
                float(bool(qtypes) and p.qtype == qtypes[0]),
                float(p.qtype == "information"),
                sum(t in message for t in title) / len(title) if title else 0.0,
                float(analysis.consumer_only),
                self._ask_overlap(asked_words - set(title), i),
            ]
        return {**found, "items": list(items.values()), "pointers": pointers}

    def search_many(
        self,
        queries: Sequence[str],
        k: int = DEFAULT_K,
        *,
        min_score: float | None = None,
        alone: bool = True,
    ) -> list[list[Hit]]:
        """Per message: its passages (covered hits, ranks 1..n, at most k, one per page), then
        up to MAX_POINTERS "not covered" pointers. `min_score`: the relevance probability a
        passage needs (default: the model's threshold; -inf keeps every candidate)."""
        return [
            self.decide(self.candidates(q, k, alone=alone), k, threshold=min_score) for q in queries
        ]

    def decide(self, found: dict, k: int = DEFAULT_K, *, threshold: float | None = None):
        """The hits shown for one message's `candidates`: passages whose relevance probability
        reaches the threshold, the most probable, one per page, at most k, those of the
        question's type first; then "not covered" pointers."""
        floor = self.model.threshold if threshold is None else threshold
        # Most probable first; among equals (pages asking the very same question), the
        # passage ranking's order.
        scored = sorted(
            ((self.relevance(it["features"]), it) for it in found["items"]),
            key=lambda pair: (-pair[0], pair[1]["passage_rank"]),
        )
        chosen: list[tuple[float, dict]] = []
        pages = set()
        for prob, item in scored:
            passage = self.index.passages[item["row"]]
            if prob < floor or passage.document in pages or len(chosen) == k:
                continue
            pages.add(passage.document)
            chosen.append((prob, item))
        # A passage that answers the kind of question asked comes first: "is there anything
        # that can be prescribed to treat hemorrhoids?" showed the page's "What is" passage
        # above its treatments passage, both chosen.
        qtypes = found["analysis"].medquad_qtypes
        if qtypes:
            chosen.sort(key=lambda pair: self.index.passages[pair[1]["row"]].qtype != qtypes[0])
        hits = [
            Hit(
                self.index.passages[item["row"]],
                prob,
                rank,
                method="topic" if item.get("mention") is not None else "passage",
            )
            for rank, (prob, item) in enumerate(chosen, 1)
        ]
        hits += self._pointers(found)
        return hits

    def relevance(self, features: Sequence[float]) -> float:
        """The probability that a candidate is relevant. A MedQuAD question the user's question
        restates (cosine at least SAME_QUESTION) is the answer MedQuAD itself would give
        (question entailment): it ranks first whatever the model says."""
        p = self.model.probability(features)
        same = features[FEATURES.index("q2q")] >= SAME_QUESTION
        return max(p, 0.99) if same else p

    def _names_any(self, row: int, names: set[str]) -> bool:
        """Whether the passage (its MedQuAD question or text) names one of `names`, a plural
        for a singular ("antibiotics" for "antibiotic") and the other way round."""
        p = self.index.passages[row]
        text = f"{p.question} {p.text}"
        return any(
            re.search(rf"\b{re.escape(n[:-1] if n.endswith('s') else n)}(?:e?s)?\b", text, re.I)
            for n in names
        )

    def _ask_overlap(self, asked: set[str], row: int) -> float:
        """The share of `asked` (the question's own words, the page title's aside) that the
        passage or its MedQuAD question uses: whether it is about what was asked of the topic."""
        if not asked:
            return 0.0
        if row not in self._words:
            p = self.index.passages[row]
            self._words[row] = own_words(f"{p.text} {p.question}")
        return len(asked & self._words[row]) / len(asked)

    def _pointers(self, found: dict) -> list[Hit]:
        """Pages the library names but holds no text for: the topics named without a passage,
        and, for a question MedQuAD has no text for (a dose, an interaction), the drug pages
        the message names."""
        analysis = found["analysis"]
        mentions = list(found["pointers"])
        if analysis.consumer_only:
            mentions += [
                m
                for m in found["mentions"]
                if any(d.source == "MPlusDrugs" for d in m.documents) and m not in mentions
            ]
        named = {m.name.lower() for m in found["in_question"]}
        mentions.sort(key=lambda m: m.name.lower() not in named)
        out, seen = [], set()
        for m in mentions:
            doc = _pointer_document(m)
            if len(out) == MAX_POINTERS or doc is None or doc.url in seen:
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
            out.append(Hit(page, 1.0, 0, covered=False, method="topic"))
        return out

    def _answers_of(self, page: tuple[str, str], qtypes: Sequence[str]) -> list[int]:
        """The passages of a page worth comparing with the question: those of the question's
        type and the page's "what is" answer (all of them, up to 4, when it has neither)."""
        rows = self._pages.get(page, ())
        wanted = set(qtypes[:1]) | {"information"}
        chosen = [i for i in rows if self.index.passages[i].qtype in wanted]
        return chosen or list(rows[:4])

    def _best_pages(self, qtypes, topic_rows, in_question, q2q) -> list[tuple[int, Mention]]:
        """Per topic page, the passage whose MedQuAD question best matches the user's question
        (the question's type first). The topics the question names come first, each one's best
        page, then their second pages, and so on (two topics asked about get a page each); the
        topics only the story names ("My father has a tremor") follow, the same way."""
        best: dict[tuple[str, str], tuple[float, int, Mention]] = {}
        first_seen: dict[str, int] = {}
        for n, (m, i) in enumerate(topic_rows):
            p = self.index.passages[i]
            typed = bool(qtypes) and p.qtype == qtypes[0]
            info = not qtypes and p.qtype == "information"
            rank = q2q[i] + 0.15 * typed + 0.1 * info - 0.05 * p.archived
            first_seen.setdefault(m.name.lower(), n)
            if p.document not in best or rank > best[p.document][0]:
                best[p.document] = (rank, i, m)
        by_topic: dict[str, list] = defaultdict(list)
        for _rank, i, m in sorted(best.values(), key=lambda v: -v[0]):
            by_topic[m.name.lower()].append((i, m))
        topics = sorted(by_topic, key=lambda t: first_seen[t])
        asked = {m.name.lower() for m in in_question}
        pages = []
        for group in ([t for t in topics if t in asked], [t for t in topics if t not in asked]):
            for depth in range(max((len(by_topic[t]) for t in group), default=0)):
                pages += [by_topic[t][depth] for t in group if depth < len(by_topic[t])]
        return pages


def own_words(text: str) -> set[str]:
    """The stems of a text's own words: not stop words, not the words that tell a question's
    type on their own ("treatments", "symptoms", "dose"), not numbers, at least three letters."""
    out = set()
    for w, _, _ in words(text):
        s = stem(w)
        lowered = w.lower()
        if len(s) < 3 or s.isdigit() or lowered in STOPWORDS or s in STOPWORDS:
            continue
        if not question_types(lowered):
            out.add(s)
    return out


def _asks_a_kind(query: str) -> bool:
    """Whether a short message only asks for a kind of answer ("And the treatment?"): once its
    question-type cues are taken out, nothing is left but stop words and ASKING_WORDS."""
    rest = query
    for _, pattern in QTYPE_PATTERNS:
        rest = re.sub(pattern, " ", rest, flags=re.IGNORECASE)
    return all(w.lower() in STOPWORDS or w.lower() in ASKING_WORDS for w, _, _ in words(rest))


# A negation, and the words that may stand between it and what it negates ("I don't have a
# fever", "never had a seizure", "no history of asthma"); any other word ends its reach, so
# "is there no cure for diabetes?" does not negate diabetes.
_NEGATION = re.compile(r"\b(?:no|not|without|never|denies|denied)\b|n't\b", re.IGNORECASE)
_NEGATED_GAP = {"a", "an", "any", "the", "my", "have", "has", "had", "got", "ever", "been",
                "history", "of", "sign", "signs", "symptoms", "known"}  # fmt: skip
_CLAUSE_END = re.compile(r"[.,;:?!]|\bbut\b", re.IGNORECASE)


def negated_only(title: str, text: str) -> bool:
    """Whether `title` is named in `text` (singular or plural) and every time under a
    negation in its clause: "I have no fever" negates Fever, "no fever, but a bad cough"
    does not negate Cough, and "fever" asked about elsewhere keeps it."""
    if not title:
        return False
    singular = title[:-1] if title.lower().endswith("s") else title
    pattern = re.compile(rf"\b{re.escape(singular)}(?:e?s)?\b", re.IGNORECASE)
    starts = [m.start() for m in pattern.finditer(text)]
    return bool(starts) and all(_negated_at(text, start) for start in starts)


def _negated_at(text: str, start: int) -> bool:
    clause = max((m.end() for m in _CLAUSE_END.finditer(text, 0, start)), default=0)
    before = text[clause:start]
    cues = list(_NEGATION.finditer(before))
    if not cues:
        return False
    gap = re.findall(r"[\w']+", before[cues[-1].end() :].lower())
    return all(w in _NEGATED_GAP for w in gap)


def _page(doc) -> tuple[str, str]:
    return (doc.source, doc.document_id)


def _medicine_names(text: str, mentions: Sequence[Mention]) -> set[str]:
    """The medicines a message names, each by every name it goes by here: the words that
    named it, the table's name and its drug page's focus ("Advil", "ibuprofen"), and those
    told only by their ending or kind ("lisinopril", "antibiotics")."""
    names = set(unnamed_medicines(text, mentions))
    for m in mentions:
        if _is_medicine(m):
            names.add(text[m.start : m.end].lower())
            names.add(m.name.lower())
            names.update(d.focus.lower() for d in m.documents if d.focus)
    return {n for n in names if n.strip()}


def _is_medicine(m: Mention) -> bool:
    """A medicine or supplement MedQuAD names (MedlinePlus's page) but holds no text on."""
    return any(d.source in MEDICINE_SOURCES for d in m.documents) and not any(
        d.covered for d in m.documents
    )


def _pointer_document(m: Mention):
    """The page to point to for a topic without text: a MedlinePlus drug or supplement page
    first, else the encyclopedia article."""
    for source in (*MEDICINE_SOURCES, "ADAM"):
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


def with_model(library: Library, model: RelevanceModel) -> Library:
    return replace(library, model=model)
