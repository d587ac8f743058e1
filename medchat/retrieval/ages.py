"""Whom a message is about, child or adult, and which NIH pages are written for the other group.

Some NIH pages are written for one age group: "Urinary Tract Infections in Children", "Kidney
Stones in Adults", "Childhood Hodgkin Lymphoma", "Exercise for Seniors". A message about a
78-year-old mother that finds the children's page finds a page that does not answer it.
`for_other_age(title, ages_asked_about(text))` tells such a page; a message that says nothing of
age, or speaks of both groups ("I'm 40 and my 3 year old has a cough"), keeps every page.
"""

from __future__ import annotations

import re

CHILD, ADULT = "child", "adult"
ADULT_AGE = 18

_CHILD_WORDS = (
    r"child|children|childhood|kids?|bab(?:y|ies)|toddlers?|infants?|newborns?|preschoolers?|"
    r"teens?|teenagers?|adolescents?|pediatric|paediatric"
)
_ADULT_WORDS = r"adults?|elderly|seniors?|older adults?|older people"
# Titles: a page for one group names it as a word of its own; "Infantile Refsum disease" or
# "Juvenile arthritis" name a disease, not the readers, and keep their page.
_TITLE_CHILD = re.compile(rf"\b(?:{_CHILD_WORDS})\b", re.IGNORECASE)
_TITLE_ADULT = re.compile(rf"\b(?:{_ADULT_WORDS})\b|\badult-onset\b", re.IGNORECASE)

_RELATIVE_ADULTS = (
    r"mother|father|mom|mum|mommy|dad|daddy|husband|wife|grandmother|grandfather|grandma|"
    r"granny|grandpa|grandparents?|parents?|boyfriend|girlfriend|fianc[eé]e?|mother-in-law|"
    r"father-in-law"
)
_ADULT_PERSON = re.compile(
    rf"\b(?:my|our|his|her)\s+(?:\w+\s+)?(?:{_RELATIVE_ADULTS})\b|\b(?:{_ADULT_WORDS})\b",
    re.IGNORECASE,
)
_CHILD_PERSON = re.compile(rf"\b(?:{_CHILD_WORDS})\b|\blittle ones?\b", re.IGNORECASE)
# "a 78 year old", "78-year-old", "78 yrs old", "78 yo", "78 y/o" (not "for 3 years", a
# duration); "aged 70", "age 60"; "I'm 34", "he is 5".
_AGE_UNIT = re.compile(r"\b(\d{1,3})\s*-?\s*(?:(?:years?|yrs?)[\s-]*old|y/?o)\b", re.IGNORECASE)
_AGE_WORD = re.compile(r"\bage(?:d)?\s*:?\s*(\d{1,3})\b", re.IGNORECASE)
_AGE_IS = re.compile(
    rf"\b(?:i\s+am|i'm|im|he\s+is|she\s+is|he's|she's|(?:{_RELATIVE_ADULTS}|son|daughter)\s+is)"
    r"\s+(\d{1,3})\b(?!\s*(?:[%/'\u2019°]|\.\d|(?:percent|mg|mcg|kgs?|lbs?|pounds|degrees|mm|"
    r"cm|ml|units?|over|weeks|months|days|hours|minutes|ft|feet|foot|inch|inches|of)\b))",
    re.IGNORECASE,
)
_YOUNG_UNIT = re.compile(
    r"\b\d{1,2}\s*-?\s*(?:months?|weeks?|days?|mos?)\s*-?\s*old\b", re.IGNORECASE
)


def ages_asked_about(text: str) -> frozenset[str]:
    """The age groups `text` speaks of: CHILD, ADULT, both, or neither."""
    text = text or ""
    groups = set()
    ages = [int(m.group(1)) for p in (_AGE_UNIT, _AGE_WORD, _AGE_IS) for m in p.finditer(text)]
    ages = [a for a in ages if 0 < a <= 120]
    if any(a >= ADULT_AGE for a in ages) or _ADULT_PERSON.search(text):
        groups.add(ADULT)
    if any(a < ADULT_AGE for a in ages) or _CHILD_PERSON.search(text) or _YOUNG_UNIT.search(text):
        groups.add(CHILD)
    return frozenset(groups)


def title_age(title: str) -> str | None:
    """The age group a page is written for, by its title: CHILD, ADULT, or None (everyone, or
    both named)."""
    child, adult = bool(_TITLE_CHILD.search(title or "")), bool(_TITLE_ADULT.search(title or ""))
    if child == adult:
        return None
    return CHILD if child else ADULT


def for_other_age(title: str, groups: frozenset[str]) -> bool:
    """Whether the page titled `title` is written for another age group than the one a message
    speaks of alone (`groups`, its `ages_asked_about`): a children's page for a 78-year-old."""
    return len(groups) == 1 and title_age(title) not in (None, *groups)
