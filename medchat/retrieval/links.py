"""NIH links as they open today.

MedQuAD was collected in 2017. Since then MedlinePlus moved from www.nlm.nih.gov/medlineplus
to medlineplus.gov, Genetics Home Reference (ghr.nlm.nih.gov) became MedlinePlus Genetics, GARD
moved its disease pages from /gard/ to /diseases/, and NIHSeniorHealth was retired (its pages are
gone; the Internet Archive keeps copies). `live_link` maps each to where the page lives now, or
to its archived copy, marked as such.
"""

from __future__ import annotations

import re
from typing import NamedTuple

ARCHIVE = "https://web.archive.org/web/2017/"


class Link(NamedTuple):
    url: str
    archived: bool  # the site is retired: the link opens an archived copy


_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (
        re.compile(r"^https?://(www\.)?nlm\.nih\.gov/medlineplus/(.*)$"),
        r"https://medlineplus.gov/\2",
    ),
    (
        re.compile(r"^https?://ghr\.nlm\.nih\.gov/(condition|gene|chromosome)/([^/?#]+)/?$"),
        r"https://medlineplus.gov/genetics/\1/\2/",
    ),
    (
        re.compile(r"^https?://rarediseases\.info\.nih\.gov/gard/(\d+)/([^/?#]+)/?$"),
        r"https://rarediseases.info.nih.gov/diseases/\1/\2",
    ),
    (re.compile(r"^http://((www\.)?[a-z]+\.nih\.gov/.*)$"), r"https://\1"),
    (re.compile(r"^http://(www\.cdc\.gov/.*)$"), r"https://\1"),
)
_RETIRED = re.compile(r"^https?://(www\.)?nihseniorhealth\.gov/")


def live_link(url: str) -> Link:
    """Where the page of `url` lives now; an archived copy for a retired site."""
    url = (url or "").strip()
    if not url:
        return Link("", False)
    if _RETIRED.match(url):
        return Link(ARCHIVE + url, True)
    for pattern, replacement in _RULES:
        if pattern.match(url):
            return Link(pattern.sub(replacement, url), False)
    return Link(url, False)
