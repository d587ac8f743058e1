"""Reading a whole story: the parts of a message that triage scores, how the message is framed,
the clinical findings it names and the vital signs it gives.

    parts = segments("My dad is 70. He had a stroke in 2019. Now he can't lift his arm.")
    # the whole message, each sentence, and each window of two neighbouring sentences
    vitals = read_vitals("T 39.4, HR 124, RR 28, BP 84/50, SpO2 89% RA")
    # Vitals(temperature=39.4, heart_rate=124, ...), vitals.news == 11
    row = story_features(text)   # STORY_FEATURES, one float each

Why: a long message has its signal in one sentence ("now he can't lift his arm") among
background the classifier was never trained to ignore, so each sentence and each pair of
sentences is scored as well as the whole, and the highest score counts. How the whole message is
framed (a past event, a hypothetical, teaching or an exam, a stable follow-up, or now) and the
findings and vital signs it reports are message-level features given to every part, so a
sentence read alone still carries its story. The phrase lists are in safety_data/rules.yaml
(`framing`, `findings`); the vital-sign parser is below.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from medchat.safety.rules import compile_phrase, find, normalise, tables

# Sentences end at . ? ! followed by space, or at a line break (the same split as the retrieval
# question reader, so a question sentence is the same text to both).
_SENTENCE = re.compile(r"(?<=[.?!])\s+|\n+")
MAX_SENTENCES = 16  # a longer message is scored on its last 16 sentences (and as a whole)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text or "") if s and s.strip()]


def segments(text: str) -> list[str]:
    """The parts of a message triage scores: the whole, then each sentence and each window of
    two neighbouring sentences (none for a one-sentence message), without repeats."""
    whole = " ".join((text or "").split())
    parts = sentences(text)[-MAX_SENTENCES:]
    if len(parts) < 2:
        return [whole]
    windows = [f"{a} {b}" for a, b in zip(parts, parts[1:], strict=False)]
    return list(dict.fromkeys([whole, *parts, *windows]))


# --- vital signs ------------------------------------------------------------------------------

_NUMBER = r"(\d{1,3}(?:[.,]\d{1,2})?)"
_GAP = r"[^\d\n]{0,24}?"  # words between the name of a sign and its value ("was", "of", ":")
_END = r"(?![a-z])"  # a sign's name ends its word: "t 38" and "T38" are read, "turned 40" is not
_VITALS = {
    "temperature": re.compile(
        rf"\b(?:temp\w*|t|fever|thermometer|febrile){_END}{_GAP}{_NUMBER}\s*(?:°|deg\w*)?\s*([cf])?\b"
    ),
    "heart_rate": re.compile(rf"\b(?:hr|heart ?rate|pulse|p){_END}{_GAP}{_NUMBER}\b"),
    "resp_rate": re.compile(rf"\b(?:rr|resp\w*(?: rate)?|breathing rate){_END}{_GAP}{_NUMBER}\b"),
    "spo2": re.compile(rf"\b(?:spo2|sao2|sats?|saturations?|oxygen|o2){_END}{_GAP}{_NUMBER}\s*%"),
    "blood_pressure": re.compile(
        rf"\b(?:bp|blood pressure|pressure){_END}{_GAP}(\d{{2,3}})\s*/\s*(\d{{2,3}})\b"
    ),
    "gcs": re.compile(rf"\bgcs{_END}{_GAP}(\d{{1,2}})\b"),
    "glucose": re.compile(
        rf"\b(?:glucose|bm|cbg|blood sugar|sugar|capillary glucose){_END}"
        rf"{_GAP}{_NUMBER}\s*(mmol|mg)?"
    ),
    "lactate": re.compile(rf"\blactate{_END}{_GAP}{_NUMBER}"),
    "ketones": re.compile(rf"\bketones?{_END}{_GAP}{_NUMBER}"),
    "ph": re.compile(r"\bph\s*(?:of|was|is|:)?\s*(\d\.\d{1,2})\b"),
}


@dataclass(frozen=True)
class Vitals:
    """The vital signs and a few bedside results a message states (None where it does not)."""

    temperature: float | None = None  # degrees Celsius
    heart_rate: float | None = None
    resp_rate: float | None = None
    spo2: float | None = None
    systolic: float | None = None
    diastolic: float | None = None
    gcs: float | None = None
    glucose: float | None = None  # mmol/L
    lactate: float | None = None
    ketones: float | None = None
    ph: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in self.__dict__.values())

    @property
    def news(self) -> int:
        """A NEWS2-style early-warning score from the signs given (0 for those not given;
        consciousness counts when GCS is under 15)."""
        score = 0
        if (r := self.resp_rate) is not None:
            score += 3 if r <= 8 or r >= 25 else 2 if r >= 21 else 1 if r <= 11 else 0
        if (s := self.spo2) is not None:
            score += 3 if s <= 91 else 2 if s <= 93 else 1 if s <= 95 else 0
        if (b := self.systolic) is not None:
            score += 3 if b <= 90 or b >= 220 else 2 if b <= 100 else 1 if b <= 110 else 0
        if (h := self.heart_rate) is not None:
            score += 3 if h <= 40 or h >= 131 else 2 if h >= 111 else 1 if h <= 50 or h >= 91 else 0
        if self.gcs is not None and self.gcs < 15:
            score += 3
        if (t := self.temperature) is not None:
            score += 3 if t <= 35 else 2 if t >= 39.1 else 1 if t <= 36 or t >= 38.1 else 0
        return score


def _value(text: str) -> float:
    return float(text.replace(",", "."))


def read_vitals(text: str) -> Vitals:
    """The vital signs in a message ("T 39.4", "pulse 125", "SpO2 88% on air", "BP 84/50",
    "GCS 8", "glucose 1.9 mmol/L", "a temperature of 101.5 F"); values outside a plausible
    range are ignored, so "for 3 days" is never a temperature."""
    lowered = (text or "").casefold()
    found: dict[str, float] = {}

    def first(name: str, low: float, high: float, convert=None) -> None:
        for m in _VITALS[name].finditer(lowered):
            value = convert(m) if convert else _value(m.group(1))
            if value is not None and low <= value <= high:
                found.setdefault(name, value)
                return

    def celsius(m: re.Match[str]) -> float | None:
        value = _value(m.group(1))
        if m.group(2) == "f" or 93 <= value <= 110:
            return round((value - 32) * 5 / 9, 1)
        return value

    def mmol(m: re.Match[str]) -> float:
        value = _value(m.group(1))
        return round(value / 18, 1) if m.group(2) == "mg" or value > 40 else value

    first("temperature", 30, 44, celsius)
    first("heart_rate", 20, 250)
    first("resp_rate", 4, 70)
    first("spo2", 50, 100)
    first("gcs", 3, 15)
    first("glucose", 0.5, 60, mmol)
    first("lactate", 0.2, 25)
    first("ketones", 0.1, 10)
    first("ph", 6.5, 7.8)
    for m in _VITALS["blood_pressure"].finditer(lowered):
        systolic, diastolic = float(m.group(1)), float(m.group(2))
        if 50 <= systolic <= 260 and 20 <= diastolic <= 160 and systolic > diastolic:
            found.update(systolic=systolic, diastolic=diastolic)
            break
    return Vitals(**found)


def _vital_features(v: Vitals) -> tuple[float, ...]:
    def above(value, limit):
        return value is not None and value >= limit

    def below(value, limit):
        return value is not None and value <= limit

    news = v.news
    return (
        float(v.any),
        min(news, 10) / 10,
        float(news >= 5),
        float(news >= 7),
        float(above(v.temperature, 38.0)),
        float(below(v.temperature, 35.0)),
        float(above(v.heart_rate, 130)),
        float(below(v.spo2, 91)),
        float(below(v.systolic, 90)),
        float(above(v.systolic, 180) or above(v.diastolic, 110)),
        float(below(v.gcs, 12)),
        float(below(v.glucose, 3.5)),
        float(above(v.glucose, 20) or above(v.ketones, 3) or below(v.ph, 7.3)),
        float(above(v.lactate, 4)),
        float(v.any and news == 0),
    )


VITAL_FEATURES = (
    "vitals_given",
    "news",
    "news_5_or_more",
    "news_7_or_more",
    "fever",
    "hypothermia",
    "heart_rate_130",
    "spo2_91_or_less",
    "systolic_90_or_less",
    "severe_hypertension",
    "gcs_12_or_less",
    "low_glucose",
    "high_glucose_or_acidosis",
    "lactate_4",
    "vitals_all_normal",
)


# --- framing and findings -----------------------------------------------------------------------


@functools.cache
def _phrases() -> tuple[tuple[str, tuple], ...]:
    """(feature name, compiled phrases) for each framing and finding list in rules.yaml."""
    data = tables()
    return tuple(
        (name, tuple(compile_phrase(p) for p in phrases))
        for section in ("framing", "findings")
        for name, phrases in data[section].items()
    )


PHRASE_FEATURES = tuple(name for section in ("framing", "findings") for name in tables()[section])
STORY_FEATURES = PHRASE_FEATURES + VITAL_FEATURES


def story_features(text: str) -> tuple[float, ...]:
    """STORY_FEATURES of a whole message: its framing, the findings it names (rules.yaml) and
    its vital signs, 0 or 1 each (the early-warning score scaled to 0..1)."""
    normal = normalise(text or "")
    phrases = tuple(float(any(find(p, normal) for p in compiled)) for _, compiled in _phrases())
    return phrases + _vital_features(read_vitals(text))
