"""What a turn shows the reader, decided in one place; the CLI and the tabs only render it.

    view = present(turn, answer)         # once the answer is written (or before: answer "")
    view.warning                         # the line that goes BEFORE the answer, or ""
    for group in view.groups: ...        # the lists under it: group.heading, group.items
    view = present_general_info(turn)    # after an emergency notice: NIH text, word for word

The rules:
- An answer written without NIH sources in its prompt (retrieval off, no NIH page matched,
  or an adapter trained without sources) gets a warning before its text, where the eye lands.
- "Sources" lists the passages that were in the prompt, numbered as the prompt numbered
  them; its heading says the numbers match the [n] in the answer only when the answer cites
  one of them.
- "Further reading (not used to write this answer)" lists pages found for the question that
  were not in the prompt.
- A page the library only points to (`hit.covered` False: a MedlinePlus page whose text it
  does not hold) is shown as such and never as a source; a retired NIH site's page
  (`hit.passage.archived`) is marked "(archived page)".
- A title and link shows once in a list (the [n] of its passages together).
- General information after an emergency notice is the retrieved passages themselves with
  their links, or a plain statement that there is no NIH text for it and the advice to get
  help; never text the model wrote.
- An urgent notice ("worth seeing a doctor within a day") is quiet: a paragraph above the
  answer, never an alert, and the answer always follows (`notice_kind`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medchat.pipeline import GENERAL_INFO_HEADING, covered

WARNING_HEAD = "Not from NIH sources"
# The warning's body (after WARNING_HEAD), by why the prompt had no NIH text: nothing was
# looked up, nothing in the library matched, or what matched was kept out of the prompt.
MODEL_OWN = "this answer is the model's own and may be wrong. Check with a clinician."
NOT_IN_LIBRARY = f"no NIH page in medchat's library covers this question, so {MODEL_OWN}"
NOT_USED = (
    "this answer is the model's own and may be wrong; the NIH pages listed under it were "
    "found for the question but not used to write it. Check with a clinician."
)
SOURCES_HEADING = "Sources"
CITED_HEADING = "Sources (the numbers match the [n] in the answer)"
CITED_HEADING_PAIR = "Sources (the numbers match the [n] in the answers)"
READING_HEADING = "Further reading (not used to write this answer)"
GENERAL_SOURCES_HEADING = "From NIH pages in medchat's library, word for word"
NO_NIH_TEXT = (
    "There is no NIH text in medchat's library for this. If this might be an emergency, do "
    "not wait: call your local emergency number now (911 in the US, 112 in the EU, 999 in the "
    "UK) or ask someone near you to call."
)
ARCHIVED = "(archived page)"
POINTER = "Not covered by the NIH library here; see"  # then the page's title and its site
DEFAULT_POINTER_SITE = "MedlinePlus"
# MedQuAD names its sites by code; a reader sees the site's own name (the prompt keeps the code
# the adapters were trained with).
SITE_NAMES = {
    "MPlusHealthTopics": "MedlinePlus",
    "MPlusDrugs": "MedlinePlus",
    "MPlusHerbsSupplements": "MedlinePlus",
    "ADAM": "MedlinePlus",
    "GHR": "MedlinePlus Genetics",
    "CancerGov": "National Cancer Institute",
}


@dataclass(frozen=True)
class Item:
    """One page in a list: its title, site and link; for passages the library holds, their
    text and (in the prompt) their [n]."""

    title: str
    site: str = ""
    url: str = ""
    numbers: tuple[int, ...] = ()  # the [n] of its passages in the prompt; () when not in it
    texts: tuple[str, ...] = ()  # the passages, as the library holds them
    covered: bool = True  # False: the library only points to this page
    archived: bool = False  # a retired NIH site's page

    @property
    def label(self) -> str:
        return f"{self.title} ({self.site})" if self.site else self.title

    @property
    def pointer_site(self) -> str:
        return self.site or DEFAULT_POINTER_SITE

    @property
    def linkable(self) -> bool:
        return self.url.startswith(("https://", "http://"))


@dataclass(frozen=True)
class Group:
    heading: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class View:
    warning: str = ""  # the warning's body (after WARNING_HEAD), shown before the answer
    groups: tuple[Group, ...] = ()  # shown under the answer
    heading: str = ""  # above everything (general information)
    note: str = ""  # a sentence of its own (no NIH text for general information)


def _item(hit: Any, number: int | None = None) -> Item:
    p = getattr(hit, "passage", hit)
    source = str(getattr(p, "source", "") or "")
    return Item(
        title=str(getattr(p, "title", "") or getattr(p, "question", "") or "NIH page"),
        site=SITE_NAMES.get(source, source),
        url=str(getattr(p, "url", "") or ""),
        numbers=(number,) if number is not None else (),
        texts=(str(getattr(p, "text", "") or "").strip(),) if covered(hit) else (),
        covered=covered(hit),
        archived=bool(getattr(p, "archived", False)),
    )


def _merged(items: Sequence[Item], shown: set[tuple[str, str]] | None = None) -> tuple[Item, ...]:
    """Items with one entry per title and link (numbers and texts joined); those already in
    `shown` are left out (and added to it)."""
    shown = shown if shown is not None else set()
    out: list[Item] = []
    index: dict[tuple[str, str], int] = {}
    for item in items:
        key = (item.title.strip().lower(), item.url.strip())
        if key in index:
            i = index[key]
            first = out[i]
            texts = first.texts + tuple(t for t in item.texts if t not in first.texts)
            out[i] = Item(
                first.title,
                first.site,
                first.url,
                first.numbers + item.numbers,
                texts,
                first.covered or item.covered,
                first.archived,
            )
        elif key not in shown:
            index[key] = len(out)
            out.append(item)
    shown.update(index)
    return tuple(out)


def notice_kind(flag: Any) -> str:
    """How a turn's notice shows: "alert" (an emergency, the crisis lines, the resources for a
    question about suicide: an alert before anything else), "quiet" (urgent: see a doctor within
    a day; a plain paragraph above the answer, which follows), or "" (no notice)."""
    if flag is None:
        return ""
    return "quiet" if getattr(flag, "level", "") == "urgent" else "alert"


def cites(answers: Sequence[str], n: int) -> bool:
    """Whether any answer cites one of the n numbered sources ([1] .. [n])."""
    from medchat.retrieval import citations

    return any(1 <= c <= n for answer in answers for c in citations(answer or ""))


def warning(turn: Any) -> str:
    """The warning's body for an answer to `turn`, "" when its prompt had NIH passages."""
    if turn.sources:
        return ""
    if turn.sources is None and turn.reading is None:  # nothing was looked up
        return MODEL_OWN
    if any(covered(h) for h in turn.reading or ()):
        return NOT_USED
    return NOT_IN_LIBRARY


def present(turn: Any, answer: str | Sequence[str] = "") -> View:
    """What goes with the answer(s) to `turn`: the warning before, the lists under it.

    `answer`: the answer, or both answers of a comparison (one prompt, one list of sources).
    """
    answers = [answer] if isinstance(answer, str) else list(answer)
    in_prompt = tuple(turn.sources or ())
    shown: set[tuple[str, str]] = set()
    groups = []
    if in_prompt:
        if cites(answers, len(in_prompt)):
            heading = CITED_HEADING if len(answers) == 1 else CITED_HEADING_PAIR
        else:
            heading = SOURCES_HEADING
        items = _merged([_item(h, n) for n, h in enumerate(in_prompt, 1)], shown)
        groups.append(Group(heading, items))
    further = _merged([_item(h) for h in turn.reading or ()], shown)
    if further:
        groups.append(Group(READING_HEADING, further))
    return View(warning=warning(turn), groups=tuple(groups))


def present_general_info(turn: Any) -> View:
    """General information after an emergency notice: the NIH passages found for the
    message, word for word with their links, or NO_NIH_TEXT when there are none."""
    items = _merged([_item(h) for h in turn.reading or ()])
    has_text = any(item.texts for item in items)
    groups = (Group(GENERAL_SOURCES_HEADING, items),) if items else ()
    return View(
        groups=groups,
        heading=GENERAL_INFO_HEADING,
        note="" if has_text else NO_NIH_TEXT,
    )
