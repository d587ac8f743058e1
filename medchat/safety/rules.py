"""The red-flag rules: phrase tables read from `safety_data/rules.yaml`, and what they find.

    hits = rule_hits("my dad can't lift his arm")   # urgent / sign phrase, eight features
    lang = detect_language("me duele el pecho")      # "es": the notice's language

How the rules match
1. Normalise: strip accents, casefold, split French elisions (j'ai -> j ai), drop other
   apostrophes (can't -> cant), turn punctuation into spaces (keeping decimals: 38,5 -> 38.5),
   and squeeze letters repeated three or more times (heeelp -> heelp).
2. Correct typos: a word of five or more letters that the tables do not use is replaced by
   the key word (`typo_targets`) one edit away (insert, delete, substitute or swap two
   neighbours), so "unconcious", "swalowed" and "strok" still match. Real words that sit one
   edit from a key word ("cooking", "attach") are listed and never corrected.
3. Match the per-category tables (readable phrases; the syntax is at the top of rules.yaml).
   `signs` count only when the message reads as someone's own situation: a personal word is
   present (I, my, he, she, ich, mi, mon, meu, ...) or the message has no informational frame
   ("what is", "symptoms of", a leading "can"/"is"/"does", "qué es", "was ist", ...).
4. Skip a match that a negation just before it cancels ("no chest pain"), and skip signs in a
   text that speaks of the past or of something recurring ("had a stroke last year", "every
   winter") unless it also says now, today or suddenly.
5. Categories are tried in the file's order (self-harm first, the broad ones last).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from medchat.errors import MedchatError

DATA_DIR = Path(__file__).resolve().parent.parent / "safety_data"
RULES_PATH = DATA_DIR / "rules.yaml"
LANGUAGES = ("en", "es", "fr", "de", "pt")


@dataclass(frozen=True)
class _Rules:
    category: str
    urgent: tuple[str, ...] = ()  # flag on their own
    signs: tuple[str, ...] = ()  # flag when the message is personal or not informational
    unless: tuple[str, ...] = ()  # any of these in the message turns the category off
    # Flag when the message is personal and not a past event, whatever the classifier scores;
    # not a classifier feature (a red flag its training lines do not teach).
    always: tuple[str, ...] = ()


def _read_tables(path: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, yaml.YAMLError) as err:
        raise MedchatError(
            f"The red-flag rules in {path} are unreadable ({err}); restore the file."
        ) from None


def _splice(phrase: str, groups: dict[str, str]) -> str:
    """A phrase with each `{group}` replaced by its words."""

    def group(m: re.Match[str]) -> str:
        if m.group(1) not in groups:
            raise MedchatError(f"rules.yaml uses an unknown word group {m.group(0)}; define it.")
        return groups[m.group(1)]

    return re.sub(r"\{(\w+)\}", group, phrase)


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Read once at start-up: the tables are data, edited in rules.yaml, never in code.
_TABLES = MappingProxyType(_read_tables(RULES_PATH))
_NAMED = MappingProxyType({f"<{k}>": v for k, v in _TABLES["named"].items()})
_RULES: tuple[_Rules, ...] = tuple(
    _Rules(
        rule["category"],
        **{
            key: tuple(_splice(p, _TABLES["groups"]) for p in rule.get(key) or ())
            for key in ("urgent", "signs", "unless", "always")
        },
    )
    for rule in _TABLES["rules"]
)
_WORDS = MappingProxyType({k: _wordset(v) for k, v in _TABLES["words"].items()})
_PERSONAL = _WORDS["personal"]
_FRAME_OPENERS = _WORDS["frame_openers"]
_FRAME_WORDS = _WORDS["frame_words"]
_NEGATIONS = _WORDS["negations"]
_TYPO_TARGETS = _WORDS["typo_targets"]
_NOT_TYPOS = _WORDS["not_typos"]
_PET = _WORDS["pet"]
_PROFESSIONAL = _WORDS["professional"]
_PAST = tuple(_TABLES["past"])
_NOW = tuple(_TABLES["now"])
_KNOWN = _NOT_TYPOS | _PERSONAL | _FRAME_OPENERS | _FRAME_WORDS | _NEGATIONS
_NEGATION_WINDOW = 3  # words before a sign that can cancel it; urgent phrases check one
CATEGORIES = tuple(r.category for r in _RULES)


def tables() -> MappingProxyType:
    """The whole of rules.yaml as read (framing and findings are used by medchat.safety.story)."""
    return _TABLES


def _term_regex(term: str) -> str:
    if term in _NAMED:
        return _NAMED[term]
    if term.endswith("*"):
        return re.escape(term[:-1]) + r"\S*"
    return re.escape(term)


def _compile_part(part: str) -> re.Pattern[str]:
    pieces: list[str] = []
    gap = 0
    for term in part.split():
        if term in ("..", "..."):
            gap = 3 if term == ".." else 8
            continue
        options = "|".join(_term_regex(t) for t in term.split("|"))
        if pieces:
            pieces.append(rf"(?: \S+){{0,{gap}}} " if gap else " ")
        pieces.append(f"(?:{options})")
        gap = 0
    return re.compile(r"(?<!\S)" + "".join(pieces) + r"(?!\S)")


def _compile(phrase: str) -> tuple[re.Pattern[str], ...]:
    """One pattern per ` & ` part of a phrase; all parts must be found."""
    return tuple(_compile_part(part) for part in phrase.split(" & "))


def _literal_words(phrases: Iterable[str]) -> set[str]:
    words: set[str] = set()
    for phrase in phrases:
        for term in phrase.replace("&", " ").split():
            for option in term.split("|"):
                if option.isalpha() and len(option) >= 5:
                    words.add(option)
    return words


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


_Phrase = tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class _CompiledRules:
    rules: _Rules
    urgent: tuple[_Phrase, ...]
    signs: tuple[_Phrase, ...]
    unless: tuple[_Phrase, ...]
    always: tuple[_Phrase, ...]


@dataclass(frozen=True)
class _Matcher:
    rules: tuple[_CompiledRules, ...]
    past: tuple[_Phrase, ...]
    now: tuple[_Phrase, ...]
    vocabulary: frozenset[str]
    by_deletion: MappingProxyType[str, tuple[str, ...]]


@functools.cache
def _matcher() -> _Matcher:
    """Compile the tables once, on first use (keeps import instant)."""
    compiled = tuple(
        _CompiledRules(
            rules=r,
            urgent=tuple(_compile(p) for p in r.urgent),
            signs=tuple(_compile(p) for p in r.signs),
            unless=tuple(_compile(p) for p in r.unless),
            always=tuple(_compile(p) for p in r.always),
        )
        for r in _RULES
    )
    vocabulary = frozenset(_literal_words(p for r in _RULES for p in r.urgent + r.signs))
    index: dict[str, set[str]] = {}
    for word in _TYPO_TARGETS:
        for key in _deletions(word) | {word}:
            index.setdefault(key, set()).add(word)
    return _Matcher(
        rules=compiled,
        past=tuple(_compile(p) for p in _PAST),
        now=tuple(_compile(p) for p in _NOW),
        vocabulary=vocabulary,
        by_deletion=MappingProxyType({k: tuple(sorted(v)) for k, v in index.items()}),
    )


def _one_edit_apart(a: str, b: str) -> bool:
    """True when a and b differ by one insert, delete, substitution or neighbour swap."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        i, j = (diff + [0, 0])[:2]
        return len(diff) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1 :]


def _correct(word: str, matcher: _Matcher) -> str:
    if len(word) < 5 or not word.isalpha() or word in matcher.vocabulary or word in _KNOWN:
        return word
    candidates = {
        c
        for key in _deletions(word) | {word}
        for c in matcher.by_deletion.get(key, ())
        if _one_edit_apart(word, c)
    }
    if not candidates:
        return word
    return min(candidates, key=lambda c: (abs(len(c) - len(word)), c))


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = re.sub(r"(?<=\d)[.,](?=\d)", "\x00", text)  # keep decimals through punctuation
    text = re.sub(r"\b(qu|[cdjlmnst])['’`´]", r"\1 ", text)  # French elision: j'ai -> j ai
    text = re.sub(r"['’`´]", "", text)  # English contractions: can't -> cant
    text = re.sub(r"[^\w\x00]+|_", " ", text).replace("\x00", ".")
    text = re.sub(r"([^\W\d])\1{2,}", r"\1\1", text)  # heeelp -> heelp
    return " ".join(text.split())


def _find(parts: tuple[re.Pattern[str], ...], text: str, window: int) -> str | None:
    """The matched text when every part occurs with no negation in the `window` words before."""
    found = []
    for pattern in parts:
        for m in pattern.finditer(text):
            before = text[: m.start()].split()[-window:] if window else []
            if not _NEGATIONS.intersection(before):
                found.append(m.group(0))
                break
        else:
            return None
    return " … ".join(found)


# Suicide and self-harm as a topic: with no emergency found, such a message still gets the
# crisis resources (category self_harm_info) and its answer.
_SELF_HARM_TOPIC = re.compile(
    r"\b(?:suicid\w*|self ?harm\w*|kill(?:s|ed|ing)? (?:himself|herself|themselves|myself)"
    r"|cut(?:s|ting)? (?:himself|herself|themselves)|want(?:s)? to die|autolesi\w*|automutil\w*"
    r"|scarifi\w*|suizid\w*|selbstmord\w*|selbstverletz\w*|ritzt?\w*|suicidaire\w*)\b"
)
LEXICAL_FEATURES = (
    "urgent_rule",
    "sign_rule",
    "personal",
    "general_question",
    "past_or_recurring",
    "pet",
    "professional",
    "self_harm_topic",
)


def _wordset_hits(words: Iterable[str], vocabulary: frozenset[str]) -> bool:
    return not vocabulary.isdisjoint(words)


@dataclass(frozen=True)
class RuleHits:
    """What the phrase tables found in one text."""

    urgent: tuple[str, str] | None  # (category, matched) of an urgent phrase
    sign: tuple[str, str] | None  # (category, matched) of a sign, gated as in the module doc
    flag: tuple[str, str] | None  # the rules' own decision: the first category hit, in order
    features: tuple[float, ...]  # LEXICAL_FEATURES, 0 or 1
    always: tuple[str, str] | None = None  # (category, matched) of an `always` phrase, gated


def _first(category: str, phrases, text: str, window: int) -> tuple[str, str] | None:
    """(category, matched text) of the first of `phrases` found in `text`, or None."""
    found = next((m for m in (_find(p, text, window) for p in phrases) if m), None)
    return (category, found) if found else None


def rule_hits(message: str) -> RuleHits:
    matcher = _matcher()
    words = [_correct(w, matcher) for w in normalise(message or "").split()]
    if not words:
        return RuleHits(None, None, None, (0.0,) * len(LEXICAL_FEATURES))
    text = " ".join(words)
    personal = _wordset_hits(words, _PERSONAL)
    general = words[0] in _FRAME_OPENERS or _wordset_hits(words, _FRAME_WORDS)
    not_now = any(_find(p, text, 0) for p in matcher.past) and not any(
        _find(p, text, 0) for p in matcher.now
    )
    signs_count = (personal or not general) and not not_now
    urgent = sign = first = always = None
    for compiled in matcher.rules:
        if any(_find(p, text, 0) for p in compiled.unless):
            continue
        category = compiled.rules.category
        if urgent is None:
            urgent = _first(category, compiled.urgent, text, 1)
        if sign is None and signs_count:
            sign = _first(category, compiled.signs, text, _NEGATION_WINDOW)
        if always is None and signs_count:
            always = _first(category, compiled.always, text, _NEGATION_WINDOW)
        first = first or urgent or sign
        if urgent is not None:
            break
    features = (
        urgent is not None,
        sign is not None,
        personal,
        general and not personal,
        not_now,
        _wordset_hits(words, _PET),
        _wordset_hits(words, _PROFESSIONAL),
        bool(_SELF_HARM_TOPIC.search(text)),
    )
    return RuleHits(urgent, sign, first, tuple(float(f) for f in features), always)


# --- language of the notice ----------------------------------------------------------------

_STOPWORDS = MappingProxyType(
    {
        "en": _wordset(
            """
            the a an and or is are was i im my me you your he she his her it its to of in on
            at for with what how do does can cant dont have has not this that now just
            """
        ),
        "es": _wordset(
            """
            el la los las un una y o es esta estoy mi mis me yo tu su que como por para con
            de del en no se lo al muy tiene tengo hijo hija pero ya quiero puedo siento duele
            """
        ),
        "fr": _wordset(
            """
            le la les un une et ou est je j ai mon ma mes me moi tu il elle de du des en au
            aux pour avec que qu pas ne ce c sur tres mal fils fille veux peux suis sens
            """
        ),
        "de": _wordset(
            """
            der die das ein eine und oder ist ich mein meine mir mich du er sie es zu von mit
            fur auf nicht was wie hat habe bin sehr seit kann will mochte fuhle
            """
        ),
        "pt": _wordset(
            """
            o a os as um uma e ou eu meu minha me voce ele ela que com para por de do da em no
            na nao esta estou tem tenho muito filho filha quero posso sinto
            """
        ),
    }
)
# Letters that only some of the five languages use.
_LETTER_HINTS = MappingProxyType({"es": "ñ¿¡", "fr": "èêëîœùûç", "de": "äöüß", "pt": "ãõâêôç"})


def detect_language(text: str) -> str:
    """The most likely of LANGUAGES for a message, by stopword and letter counts; "en" on a tie.

    Cheap and good enough to choose a notice's language; a message in another language gets
    whichever of the five it shares most words with, or English.
    """
    lowered = (text or "").casefold()
    words = normalise(text or "").split()
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    for lang, letters in _LETTER_HINTS.items():
        scores[lang] += 2 * sum(lowered.count(ch) > 0 for ch in letters)
    best = max(LANGUAGES, key=lambda lang: (scores[lang], lang == "en"))
    return best if scores[best] > scores["en"] else "en"


def compile_phrase(phrase: str) -> tuple[re.Pattern[str], ...]:
    """A phrase in the rules.yaml syntax, compiled (one pattern per ` & ` part)."""
    return _compile(phrase)


def find(parts: tuple[re.Pattern[str], ...], text: str) -> str | None:
    """The matched text when every part of a compiled phrase occurs in normalised `text`."""
    return _find(parts, text, 0)
