"""What a question is about: MedQuAD's document topics (focus names, synonyms, drug brands)
recognised in free text, tolerant of misspellings, plurals and word order.

    topics = Topics.load()                          # the shipped table, once per process
    for m in topics.find("my mom has copd and a bad cuogh"):
        m.name, m.documents                         # "COPD", [Document, ...]

The table (assets/data/medquad_topics.parquet) has one row per MedQuAD document, all twelve
subsets: its focus, UMLS synonyms, NIH link and how many answered questions MedQuAD holds for
it (0 for the encyclopedia, drug and supplement pages whose text was removed upstream: such a
topic is recognised, and its MedlinePlus page named, but no passage exists).
`assets/data/drug_brands.tsv` adds brand names for the MedlinePlus drug pages (Advil ->
Ibuprofen). Both are written once by `write_topics` (see assets/data/README.md).
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medchat.errors import MedchatError

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"
TOPICS_FILE = ASSETS / "medquad_topics.parquet"
BRANDS_FILE = ASSETS / "drug_brands.tsv"
MAX_NAME_WORDS = 6  # longer names are not looked for (people do not type them in full)

# Words that carry no topic, and names that are ordinary words alone (topic_words.json).
_WORDS = json.loads((Path(__file__).with_name("topic_words.json")).read_text(encoding="utf-8"))
STOPWORDS = frozenset(_WORDS["stopwords"])
AMBIGUOUS_NAMES = frozenset(_WORDS["ambiguous"])
FORMS = dict(_WORDS["forms"])  # "diabetic" -> "diabetes": a person's word for the condition
# A medicine whose name is an ordinary word alone ("thyroid") is named by that word followed by
# one of these ("my thyroid meds", "thyroid medicine"); the organ is named by the word alone.
MEDICINE_WORDS = frozenset({
    "med", "meds", "medicine", "medicines", "medication", "medications", "pill", "pills",
    "tablet", "tablets", "drug", "drugs",
})  # fmt: skip
MEDICINE_SOURCES = ("MPlusDrugs", "MPlusHerbsSupplements")
EPONYM_KINDS = frozenset({"disease", "syndrome"})
_WORD = re.compile(r"[A-Za-z0-9]+")
# A generic drug name by its ending (after at least three letters), and a kind of medicine by
# its name, plural or not: "Is it safe to take azithromycin with my statins?".
_ENDINGS = "|".join(sorted(_WORDS["medicine_endings"], key=len, reverse=True))
_CLASSES = "|".join(re.escape(c) for c in sorted(_WORDS["medicine_classes"], key=len, reverse=True))
_MEDICINE = re.compile(rf"\b(?:[a-z]{{3,}}(?:{_ENDINGS})|{_CLASSES})(?:s|es)?\b", re.IGNORECASE)
NOT_MEDICINES = frozenset(_WORDS["not_medicines"])
LAY_NAMES = dict(_WORDS["lay_names"])  # "acid reflux" -> "GERD": a name people use for a topic


def stem(word: str) -> str:
    """A light plural-folding stem (diseases -> disease, allergies -> allergy); a person's word
    for a condition is its name (diabetics -> diabetes, read as the stem of "diabetes")."""
    w = word.lower()
    if w in FORMS:
        w = FORMS[w]
    elif w.endswith("s") and w[:-1] in FORMS:
        w = FORMS[w[:-1]]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("s") and not w.endswith(("ss", "us", "is", "sis")):
        return w[:-1]
    return w


def words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each alphanumeric word of `text`, case kept."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text or "")]


def unnamed_medicines(text: str, mentions: Iterable[Mention] = ()) -> list[str]:
    """The medicines `text` names that MedQuAD's topics do not: a generic name told by its
    ending, or a kind of medicine ("antibiotics", "blood thinner"); a word inside a topic found
    in the text (`mentions`: "Methicillin-resistant Staphylococcus aureus") is that topic's."""
    taken = [(m.start, m.end) for m in mentions]
    return [
        hit.group().lower()
        for hit in _MEDICINE.finditer(text or "")
        if hit.group().lower().rstrip("s") not in NOT_MEDICINES
        and not any(a <= hit.start() < b for a, b in taken)
    ]


def name_key(name: str) -> tuple[str, ...]:
    """The order-free key of a name: its stemmed content words, sorted."""
    content = [stem(w) for w, _, _ in words(name) if w.lower() not in STOPWORDS]
    return tuple(sorted(content))


@dataclass(frozen=True)
class Document:
    """One MedQuAD document: a topic page on an NIH site."""

    source: str
    document_id: str
    focus: str
    url: str
    answered: int  # MedQuAD questions with an answer; 0: the page's text is not in MedQuAD
    category: str = ""

    @property
    def covered(self) -> bool:
        return self.answered > 0


@dataclass(frozen=True)
class Mention:
    """A topic named in a text: the words that named it and the documents about it."""

    name: str  # the focus, synonym or brand as the table writes it
    start: int  # character span in the text
    end: int
    documents: tuple[Document, ...]
    exact: bool = True  # False: matched after correcting a misspelled word
    words: int = 1  # content words in the name (longer names are surer)


@dataclass
class Topics:
    documents: list[Document]
    _names: dict[tuple[str, ...], list[tuple[int, str]]] = field(default_factory=dict)
    _acronyms: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    _lower_ok: set[str] = field(default_factory=set)  # acronyms also matched in lower case
    _vocab: Counter = field(default_factory=Counter)  # stemmed words of all names
    _known: set[str] = field(default_factory=set)  # words never "corrected"
    _by_shape: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    # Medicines named by an ambiguous word, matched only before a MEDICINE_WORDS word.
    _medicines: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    # Eponymous diseases by the eponym alone, written as people write it ("Parkinson's").
    _eponyms: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    _eponym_diseases: set[str] = field(default_factory=set)  # also named with a bare -s

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        table,
        brands: Iterable[tuple[str, str]] = (),
        known_words: Iterable[str] = (),
    ) -> Topics:
        """Topics from a table with source, document_id, focus, url, answered_pairs and
        synonyms (";"-separated) columns; `brands` are (brand, drug page focus) pairs;
        `known_words` are correctly spelled words (never corrected into a topic word)."""
        docs = []
        for row in table.itertuples(index=False):
            docs.append(
                Document(
                    source=str(row.source or ""),
                    document_id=str(row.document_id or ""),
                    focus=str(row.focus or ""),
                    url=str(row.url or ""),
                    answered=int(row.answered_pairs or 0),
                    category=str(getattr(row, "category", "") or ""),
                )
            )
        topics = cls(docs)
        by_focus: dict[str, list[int]] = defaultdict(list)
        same_focus: dict[tuple[str, ...], list[int]] = defaultdict(list)
        synonyms: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for i, (doc, row) in enumerate(zip(docs, table.itertuples(index=False), strict=True)):
            by_focus[doc.focus.lower()].append(i)
            focus = name_key(doc.focus) or ("", str(i))  # a focus of stop words: its own
            same_focus[focus].append(i)
            topics._add(doc.focus, i)
            names = str(getattr(row, "synonyms", "") or "").split(";")
            synonyms[focus].update(s.strip() for s in names if s.strip())
        # A synonym names every page of its focus: the table gives some only to one site's
        # document (the encyclopedia's Sinusitis, which has no text, knows "sinus infection";
        # MedlinePlus's Sinusitis page, which has, does not).
        for focus, names in synonyms.items():
            for i in same_focus[focus]:
                for name in sorted(names):
                    topics._add(name, i)
        # A name people use that the table lacks names the pages of the name it stands for.
        for lay, name in LAY_NAMES.items():
            entries = topics._acronyms.get(name) or topics._names.get(name_key(name), [])
            for doc, _ in entries:
                topics._add(lay, doc)
        for brand, generic in brands:
            drug_pages = [i for i in by_focus.get(generic.lower(), ()) if docs[i].covered is False]
            for i in drug_pages or by_focus.get(generic.lower(), ()):
                topics._add(brand, i)
        topics._index_words(known_words)
        return topics

    def _add(self, name: str, doc: int) -> None:
        name = name.strip()
        if not name:
            return
        if re.fullmatch(r"[A-Z][A-Z0-9]{1,6}", name):  # an acronym: matched as written
            entries = self._acronyms.setdefault(name, [])
            if all(d != doc for d, _ in entries):
                entries.append((doc, name))
            return
        key = name_key(name)
        if not key or len(key) > MAX_NAME_WORDS:
            return
        if len(key) == 1 and (key[0] in AMBIGUOUS_NAMES or len(key[0]) < 3):
            if key[0] in AMBIGUOUS_NAMES and self.documents[doc].source in MEDICINE_SOURCES:
                entries = self._medicines.setdefault(key[0], [])
                if all(d != doc for d, _ in entries):
                    entries.append((doc, name))
            return
        entries = self._names.setdefault(key, [])
        if all(d != doc for d, _ in entries):
            entries.append((doc, name))

    def _index_words(self, known_words: Iterable[str]) -> None:
        for key in self._names:
            self._vocab.update(key)
        english = {stem(w) for w in known_words}
        self._known = english | set(self._vocab) | STOPWORDS
        shapes: dict[tuple[str, int], list[str]] = defaultdict(list)
        for w in self._vocab:
            if len(w) >= 4 and w.isalpha():
                shapes[(w[0], len(w))].append(w)
        self._by_shape = dict(shapes)
        # A lower-case acronym ("copd") counts when the word is no ordinary word.
        self._lower_ok = {a.lower() for a in self._acronyms if a.lower() not in english | STOPWORDS}
        # An eponymous disease is named by its eponym alone, as people write it: "my dad has
        # Parkinson's", "Tourette's", and without the apostrophe for a disease ("is alzheimers
        # inherited"), not a syndrome (Fountain, Carpenter and Bloom syndromes would take
        # "fountains", "carpenters", "blooms"). A name of two words, "disease" or "syndrome" and
        # the eponym written as a proper name ("Parkinson disease"), not an acronym ("CANDLE
        # syndrome") or an adjective ("communicable disease").
        for key, entries in self._names.items():
            rest = [w for w in key if w not in EPONYM_KINDS]
            if len(key) != 2 or len(rest) != 1 or (rest[0],) in self._names:
                continue
            proper = [e for e in entries if _proper_name_in(rest[0], e[1])]
            if len(rest[0]) >= 4 and rest[0].isalpha() and proper:
                merged = self._eponyms.setdefault(rest[0], [])
                merged.extend(e for e in proper if all(e[0] != d for d, _ in merged))
                if "disease" in key:
                    self._eponym_diseases.add(rest[0])

    @classmethod
    def load(cls, path: Path = TOPICS_FILE, brands_path: Path = BRANDS_FILE) -> Topics:
        """The shipped topic table (plus brands), cached once per process."""
        key = (str(path), str(brands_path))
        with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = cls._read(path, brands_path)
            return _CACHE[key]

    @classmethod
    def _read(cls, path: Path, brands_path: Path) -> Topics:
        import pandas as pd

        if not Path(path).is_file():
            raise MedchatError(f"The topic table {str(path)!r} is missing; restore assets/data.")
        table = pd.read_parquet(path).fillna("")
        brands = []
        if Path(brands_path).is_file():
            for line in Path(brands_path).read_text(encoding="utf-8").splitlines()[1:]:
                parts = line.split("\t")
                if len(parts) == 2 and parts[0].strip() and parts[1].strip():
                    brands.append((parts[0].strip(), parts[1].strip()))
        return cls.build(table, brands, known_words=_english_words())

    # -- finding -------------------------------------------------------------------------------
    def corrections(self, word: str) -> list[str]:
        """The topic words a misspelled word may have meant (one edit away for words up to 7
        letters, two for longer ones; same first letter), closest and commonest first; [] for
        a known word."""
        w = stem(word)
        if len(w) < 4 or not w.isalpha() or w in self._known:
            return []
        limit = 1 if len(w) <= 7 else 2
        ranked = []
        for length in range(len(w) - limit, len(w) + limit + 1):
            for cand in self._by_shape.get((w[0], length), ()):
                d = edit_distance(w, cand, limit)
                if d <= limit:
                    ranked.append((d, -self._vocab[cand], cand))
        return [c for _, _, c in sorted(ranked)]

    def _lookup(self, window) -> list[tuple[int, str]] | None:
        """The name entries a window of words reads as; a misspelled word is tried in each of
        its readings (one misspelling a name; a lone misspelled word must have 5+ letters)."""
        fixed = [i for i, w in enumerate(window) if not w[3]]
        if not fixed:
            return self._names.get(tuple(sorted(w[0][0] for w in window)))
        if len(fixed) > 1 or (len(window) == 1 and len(window[0][0][0]) < 5):
            return None
        for reading in window[fixed[0]][0]:
            key = [w[0][0] for w in window]
            key[fixed[0]] = reading
            entries = self._names.get(tuple(sorted(key)))
            if entries:
                return entries
        return None

    def find(self, text: str) -> list[Mention]:
        """The topics named in `text`, longest names first, no two overlapping."""
        tokens = words(text)
        content = [(stem(w), s, e, w) for w, s, e in tokens if w.lower() not in STOPWORDS]
        # Each word with its readings: as written, or the topic words a misspelling may mean.
        readings = []  # (readings, start, end, spelled as written)
        for st, s, e, raw in content:
            alts = [] if (st,) in self._names else self.corrections(raw)
            readings.append((alts or [st], s, e, not alts))
        found: list[Mention] = []
        taken: list[tuple[int, int]] = []
        for n in range(min(MAX_NAME_WORDS, len(readings)), 0, -1):
            for i in range(len(readings) - n + 1):
                window = readings[i : i + n]
                start, end = window[0][1], window[-1][2]
                if any(start < b and a < end for a, b in taken):
                    continue
                if end - start > 12 * n + 20:  # the words are too far apart to be one name
                    continue
                entries = self._lookup(window)
                if not entries:
                    continue
                docs = tuple(dict.fromkeys(self.documents[d] for d, _ in entries))
                exact = all(w[3] for w in window)
                found.append(Mention(entries[0][1], start, end, docs, exact, n))
                taken.append((start, end))
        for (w, s, _), (after, _, e) in zip(tokens, tokens[1:], strict=False):
            entries = self._medicines.get(stem(w))
            free = not any(s < b and a < e for a, b in taken)
            if entries and after.lower() in MEDICINE_WORDS and free:
                docs = tuple(dict.fromkeys(self.documents[d] for d, _ in entries))
                found.append(Mention(entries[0][1], s, e, docs, True, 1))
                taken.append((s, e))
        for w, s, e in tokens:
            st = stem(w)
            entries = self._eponyms.get(st)
            after = text[e : e + 2].replace("\u2019", "'").lower()
            bare = st != w.lower() and st in self._eponym_diseases  # "parkinsons"
            said = after.startswith("'") or bare  # "Parkinson's", "Graves'"
            if entries and said and not any(s < b and a < e for a, b in taken):
                end = e + (2 if after == "'s" else 1 if after.startswith("'") else 0)
                docs = tuple(dict.fromkeys(self.documents[d] for d, _ in entries))
                found.append(Mention(entries[0][1], s, end, docs, True, 1))
                taken.append((s, end))
        for w, s, e in tokens:
            entries = self._acronyms.get(w)
            if entries is None and w.lower() in self._lower_ok:
                entries = self._acronyms.get(w.upper())
            if entries and not any(s < b and a < e for a, b in taken):
                docs = tuple(dict.fromkeys(self.documents[d] for d, _ in entries))
                found.append(Mention(entries[0][1], s, e, docs, True, 1))
                taken.append((s, e))
        return sorted(found, key=lambda m: m.start)


_CACHE: dict[tuple[str, str], Topics] = {}
_LOCK = threading.Lock()


def _proper_name_in(word_stem: str, name: str) -> bool:
    """Whether `name` writes the word of stem `word_stem` as a proper name (capital, then lower
    case: "Parkinson", "Crohn's")."""
    return any(
        stem(w) == word_stem and w[0].isupper() and w[1:].islower() for w, _, _ in words(name)
    )


def edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Levenshtein distance with adjacent transpositions, or limit + 1 once it exceeds limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] | None = None
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if prev2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def _english_words() -> set[str]:
    """Ordinary words: those written in lower case at least 3 times in MedQuAD's questions and
    answers (the shipped data), so a real word ("weather") is never "corrected" into a topic
    word, and an acronym written in lower case ("copd") is recognised unless it is a word
    ("all", "aids")."""
    from medchat.data import DEFAULT_DATA

    path = Path(str(DEFAULT_DATA))
    if not path.is_file():
        return set()
    import pandas as pd

    df = pd.read_parquet(path, columns=["question", "answer"])
    counts: Counter = Counter()
    for text in df["question"].tolist() + df["answer"].tolist():
        counts.update(w for w, _, _ in words(text) if w.isalpha() and w.islower())
    return {w for w, c in counts.items() if c >= 3}


def write_topics(focus_csv: str | Path, out: Path = TOPICS_FILE) -> Path:
    """Write the shipped topic table from MedQuAD's focus file (medquad_focus.csv)."""
    import pandas as pd

    table = pd.read_csv(focus_csv, dtype=str, keep_default_na=False)
    cols = ["source", "document_id", "url", "focus", "category", "synonyms", "answered_pairs"]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise MedchatError(f"{focus_csv} lacks the columns {', '.join(missing)}.")
    table = table[cols].copy()
    table["answered_pairs"] = table["answered_pairs"].replace("", "0").astype("int32")
    table.to_parquet(out, index=False, compression="zstd")
    return out
