"""The question(s) inside a message, and what kind of question each is.

    q = analyse("I've had back pain for 3 weeks. Is ibuprofen safe with my blood pressure pills?")
    q.questions   # ["Is ibuprofen safe with my blood pressure pills?"]
    q.qtypes      # ("interaction",)
    q.medquad_qtypes  # MedQuAD's question types it maps to ((): none of MedQuAD's)

People write a story first and the question last, or two questions in one message: the
background is context, not the question. The question types are MedQuAD's (information,
symptoms, treatment, causes, ...) plus the consumer types MedQuAD holds no text for (side
effects, dosage, interaction, usage), which MedicationQA's questions are mostly about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"(?<=[.?!])\s+|\n+")
_QUESTION_START = re.compile(
    r"^(what|what's|whats|how|why|when|where|which|who|whom|whose|is|are|am|was|were|can|could|"
    r"should|shall|do|does|did|will|would|may|might|must|have|has|any|anything|tell me|"
    r"explain|please|i want to know|i wonder|i was wondering|wondering)\b",
    re.IGNORECASE,
)
_LEADING_FILLER = re.compile(
    r"^(hi|hello|hey|ok|okay|alright|so|also|and|but|well|wait|thanks|thank you|doctor|doc|"
    r"one more question|one question|another question|quick question)\b[\s,.:;!-]*",
    re.IGNORECASE,
)

# Question types, in the order they are tested (the first that matches a question leads).
# MedQuAD's own types, then the consumer types MedQuAD has no text for.
QTYPE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("side effects", r"side[\s-]?effects?|adverse|reaction to (it|this|the)"),
    ("dosage", r"\bdos(e|es|age|ing)\b|\bmg\b|milligram|how (much|many|often) (should|can|do|to)"),
    (
        "interaction",
        r"\b(take|taking|took|mix|mixing|combine|combining|interact\w*)\b.*\b(with|and|together)"
        r"\b|\binteract\w*|together with|at the same time",
    ),
    (
        "symptoms",
        r"symptom|\bsigns?\b|feel like|look like|how do i know if|warning signs|"
        # "Could burning when I pee be a UTI?": is what I feel a symptom of this?
        r"\b(could|might|can)\s+(?!(it|this|that|they|these|those|there)\b)\w+\b.{0,60}?"
        r"\bbe\s+(a|an)\s+(?!side\b)",
    ),
    (
        "treatment",
        r"\btreat\w*|\bcure\w*|therap\w*|remed\w*|get rid of|what can i (take|do)|"
        r"how (do|can|to) (i |you )?(manage|relieve|stop|heal|fix)|\bhelp (with|for)\b|"
        r"medicine for|medication for|surgery|\bused (for|to treat)\b",
    ),
    (
        "causes",
        r"\bcause[sd]?\b|causing|why (do|does|did|am|is|are|would)|reason for|what makes|"
        r"\btrigger",
    ),
    ("exams and tests", r"\btest\w*|diagnos\w*|\bexam\w*|screen\w*|\bscan\b|mri|x-ray|biopsy"),
    (
        "outlook",
        r"prognosis|outlook|life expectancy|surviv\w*|go away|recover\w*|how long (will|does|do)|"
        r"permanent|fatal|\bdie\b|curable|get better",
    ),
    ("prevention", r"prevent\w*|avoid|reduce (the |my )?risk|vaccin\w*|protect"),
    ("inheritance", r"inherit\w*|hereditary|genetic|pass (it )?(on|down)|run in (the |my )?famil"),
    ("frequency", r"how common|how many people|how rare|prevalen\w*"),
    ("susceptibility", r"who (gets|is at risk)|at risk|risk factor|more likely"),
    ("complications", r"complication|lead to|dangerous|serious|harm\w*"),
    ("contagion", r"contagious|catch it|spread|transmit\w*|infectious"),
    ("information", r"what (is|are)|what's|whats|tell me (more )?about|explain|mean"),
)
CONSUMER_ONLY = frozenset({"side effects", "dosage", "interaction", "contagion"})
# A consumer type read as the nearest MedQuAD type, where one exists.
TO_MEDQUAD = {"contagion": "causes"}


@dataclass(frozen=True)
class Analysis:
    text: str  # the whole message
    questions: tuple[str, ...]  # its question sentences (the message itself when none)
    context: tuple[str, ...]  # the other sentences (background)
    qtypes: tuple[str, ...]  # question types found, first the leading one

    @property
    def query(self) -> str:
        """What to search with: the questions; a question of under five words with the
        sentence before it (a follow-up like "Is it safe?" needs its story)."""
        question = " ".join(self.questions)
        if len(question.split()) < 5 and self.context:
            return f"{self.context[-1]} {question}"
        return question

    @property
    def medquad_qtypes(self) -> tuple[str, ...]:
        """The question types as MedQuAD names them (consumer-only types dropped, or mapped)."""
        out = []
        for t in self.qtypes:
            t = TO_MEDQUAD.get(t, t)
            if t not in CONSUMER_ONLY and t not in out:
                out.append(t)
        return tuple(out)

    @property
    def consumer_only(self) -> bool:
        """The leading question type is one MedQuAD holds no text for (dosage, side effects,
        interactions)."""
        return bool(self.qtypes) and self.qtypes[0] in CONSUMER_ONLY - set(TO_MEDQUAD)


# A message that leans on something it does not say: a follow-up sent on its own ("What about
# bronchitis?", "Do you think it's poison ivy?").
_FOLLOW_OPENER = re.compile(
    r"^\s*(?:(?:ok(?:ay)?|so|and|oh|but|also|well|then|alright)[,.!]?\s+)*"
    r"(?:what\s+about|how\s+about|what\s+bout)\b",
    re.IGNORECASE,
)
_ASKS_OPINION = re.compile(
    r"\b(?:do|did)\s+you\s+(?:think|suspect)\s+(?:it|its|it's|this|that)\b"
    r"|\bwould\s+you\s+say\b|\byou\s+(?:said|mentioned)\b",
    re.IGNORECASE,
)


def leans_on_earlier(analysis: Analysis) -> bool:
    """Whether a message, sent on its own, leans on something it does not say: its question
    opens with "what about" or "how about", or it asks what the reader thinks of something
    unnamed or said before ("do you think it's poison ivy?", "why would you say not
    bacteria?"). "Do you think my headaches could be migraines?" and "What if I miss a
    dose?" stand alone."""
    asked = " ".join(analysis.questions)
    return bool(_FOLLOW_OPENER.search(asked) or _ASKS_OPINION.search(analysis.text))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text or "") if s and s.strip()]


def is_question(sentence: str) -> bool:
    s = _LEADING_FILLER.sub("", sentence.strip()).strip()
    return s.endswith("?") or bool(_QUESTION_START.match(s))


def question_types(text: str) -> tuple[str, ...]:
    lowered = (text or "").lower()
    return tuple(name for name, pattern in QTYPE_PATTERNS if re.search(pattern, lowered))


def analyse(text: str) -> Analysis:
    parts = sentences(text)
    questions = [p for p in parts if is_question(p)]
    context = [p for p in parts if p not in questions]
    if not questions:
        questions, context = parts[-1:] or [text.strip()], parts[:-1]
    return Analysis(
        text=text,
        questions=tuple(questions),
        context=tuple(context),
        qtypes=question_types(" ".join(questions)),
    )
