"""The Review tab's logic: the queue of answers to rate and the statement marks a rating carries.

The queue holds both answers of every question of every evaluation run (source
"eval:<run name>", item id = the question's key) and both answers of every Compare vote
(source "compare", item id = the vote id), each with its reference, cosine, prompt record and,
for a run on a statement set, its statements with the run's judge verdicts. A reviewer is
handed answers that have fewer ratings than wanted and that they have not rated, in an order
of their own, the nearly finished first. The tab itself is medchat.ui.review.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
from pathlib import Path
from typing import Any

from medchat.errors import MedchatError
from medchat.evaluation import RESULTS, list_runs, read_results
from medchat.references import ReferenceBook
from medchat.reviews import MARKS, SIDES
from medchat.statements import MUST, NICE, run_judge

ALL_SOURCES = "Everything"
COMPARE = "compare"

# Statement checklist: one radio per statement, from a fixed pool (K-QA has at most 19 per
# question); an answer with more shows the first MAX_STATEMENTS and says so.
MAX_STATEMENTS = 32


def item_id(item: dict) -> tuple[str, str, str]:
    return (item["source"], item["item_id"], item["side"])


def _run_prompt(folder: Path) -> dict[str, Any]:
    """The prompt style of a run and whether its prompts had sources (config.json); for a run
    saved before they were recorded, worked out from its adapter and retrieval when the
    adapter's folder is here, else unknown (None)."""
    from medchat.evaluation import CONFIG
    from medchat.prompts import read_style

    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"prompt_style": None, "sources_in_prompt": None}
    retrieval = config.get("retrieval")
    style = config.get("prompt_style")
    adapter = Path(str(config.get("adapter") or "")).expanduser()
    if style is None and config.get("adapter") and adapter.is_dir():
        try:
            style = read_style(adapter).served(retrieval).id
        except MedchatError:
            style = None
    had = config.get("sources_in_prompt")
    if had is None and "retrieval" in config:
        had = retrieval is not None
    return {"prompt_style": style, "sources_in_prompt": had}


def _run_item_prompt(run_prompt: dict[str, Any], record: dict) -> dict[str, Any] | None:
    """The prompt record of one question of a run: the run's style, and the passages in the
    question's prompt (its "sources"); None when none of it is known."""
    known = "sources" in record or run_prompt["sources_in_prompt"] is not None
    if not known and run_prompt["prompt_style"] is None:
        return None
    sources = [
        {"key": str(s.get("key", "")), "url": str(s.get("url", ""))}
        for s in record.get("sources") or ()
    ]
    return run_prompt | {"prompt_sources": sources if known else None}


def _prompt_of_vote(vote: dict) -> dict[str, Any] | None:
    """A vote's prompt record, as add_rating takes it (None when the vote has none)."""
    if vote.get("prompt_style") is None and vote.get("sources_in_prompt") is None:
        return None
    had = vote.get("sources_in_prompt")
    sources = vote.get("prompt_sources")
    return {
        "prompt_style": vote.get("prompt_style"),
        "sources_in_prompt": None if had is None else bool(had),
        "prompt_sources": json.loads(sources) if sources else None,
    }


def _run_embedder(folder: Path) -> str | None:
    """The embedder named in a run's summary.json (what its cosines came from), else None."""
    try:
        return json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("embedder")
    except (OSError, ValueError):
        return None


def item_statements(record: dict, side: str, judge: str | None) -> list[dict]:
    """One side's statements of a run record, must-have first, each with the run's judge and
    its verdict (None without one): [{kind, statement, judge, judge_verdict}]; [] without."""
    statements = [(MUST, s) for s in record.get(MUST) or ()]
    statements += [(NICE, s) for s in record.get(NICE) or ()]
    verdicts = record.get(f"{side}_verdicts") or []
    if len(verdicts) != len(statements):  # no judge (--judge none), or a record out of shape
        verdicts = [None] * len(statements)
    return [
        {
            "kind": kind,
            "statement": text,
            "judge": judge if verdict is not None else None,
            "judge_verdict": verdict,
        }
        for (kind, text), verdict in zip(statements, verdicts, strict=True)
    ]


class ReviewQueue:
    """The answers to review, gathered from run folders and the vote table on each request."""

    def __init__(self, run_dirs: tuple[Path, ...], store, refs: ReferenceBook, wanted: int = 2):
        self.run_dirs = tuple(Path(d) for d in run_dirs)
        self.store = store
        self.refs = refs
        self.wanted = wanted  # ratings per answer, from different reviewers

    def sources(self) -> list[str]:
        return [ALL_SOURCES, COMPARE, *(f"eval:{p.name}" for p in list_runs(*self.run_dirs))]

    def items(self, source: str = ALL_SOURCES) -> list[dict[str, Any]]:
        """Every reviewable answer of `source` (both sides of each question)."""
        source = source or ALL_SOURCES
        if source not in self.sources():
            raise MedchatError(f"There is no review source {source!r}; pick one from the list.")
        items: list[dict[str, Any]] = []
        for folder in list_runs(*self.run_dirs):
            name = f"eval:{folder.name}"
            if source not in (ALL_SOURCES, name):
                continue
            embedder = _run_embedder(folder)
            run_prompt = _run_prompt(folder)
            judge = run_judge(folder)
            for record in read_results(folder / RESULTS):
                prompt = _run_item_prompt(run_prompt, record)
                for side in SIDES:
                    cosine = record.get(f"{side}_cosine")
                    items.append(
                        {
                            "source": name,
                            "item_id": str(record["key"]),
                            "side": side,
                            "question": record["question"],
                            "answer": record[f"{side}_answer"],
                            "reference": record.get("reference") or "",
                            "cosine": float(cosine) if cosine is not None else None,
                            "embedder": embedder if cosine is not None else None,
                            "prompt": prompt,
                            "statements": item_statements(record, side, judge),
                        }
                    )
        if source in (ALL_SOURCES, COMPARE):
            for vote in self.store.votes():
                answers = {vote["a_is"]: vote["answer_a"]}
                answers[_other(vote["a_is"])] = vote["answer_b"]
                for side in SIDES:
                    items.append(
                        {
                            "source": COMPARE,
                            "item_id": str(vote["id"]),
                            "side": side,
                            "question": vote["question"],
                            "answer": answers[side],
                            "reference": None,  # looked up when shown
                            "cosine": None,
                            "embedder": None,
                            "prompt": _prompt_of_vote(vote),
                            "statements": [],
                        }
                    )
        return items

    def next_item(self, reviewer: str, source: str, skipped: list) -> tuple[dict | None, int, int]:
        """(the next answer for this reviewer or None, answers they rated here, answers still
        open to them) in `source`.

        Open: fewer than `wanted` ratings and not yet rated by this reviewer. Each reviewer
        gets an order of their own, stable across visits, so the two answers to one question
        rarely come one after the other; answers nearest to `wanted` ratings come first, so
        items get finished rather than all started.
        """
        items = self.items(source)
        seed = int(hashlib.sha256(reviewer.encode()).hexdigest()[:16], 16)
        random.Random(seed).shuffle(items)
        counts = self.store.rating_counts()
        mine = self.store.rated_keys(reviewer)
        todo = [
            i for i in items if item_id(i) not in mine and counts.get(item_id(i), 0) < self.wanted
        ]
        todo.sort(key=lambda i: -counts.get(item_id(i), 0))  # stable: the shuffle breaks ties
        skip = {tuple(s) for s in skipped}
        fresh = [i for i in todo if item_id(i) not in skip]
        item = (fresh or todo or [None])[0]
        if item is not None and item["reference"] is None:
            ref = self.refs.lookup(item["question"])
            item = item | {"reference": ref.answer if ref else ""}
        done = sum(1 for i in items if item_id(i) in mine)
        return item, done, len(todo)


def with_mark_parameters(fn):
    """`fn(..., *values)` as the API shows it: its *values as mark_1 .. mark_MAX_STATEMENTS,
    each defaulting to None, so a caller names the marks it gives (or gives them in order) and
    may leave them out for an answer without statements."""
    signature = inspect.signature(fn)
    named = [p for p in signature.parameters.values() if p.kind is not p.VAR_POSITIONAL]
    marks = [
        inspect.Parameter(f"mark_{i + 1}", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
        for i in range(MAX_STATEMENTS)
    ]
    fn.__signature__ = signature.replace(parameters=[*named, *marks])
    return fn


def statement_marks(statements: list[dict], values) -> list[dict] | None:
    """The marks to save with a rating: each shown statement with the rater's mark (and the
    run's judge verdict); None for an answer without statements. A statement left unmarked is
    refused, naming how many."""
    values = list(values)
    shown_statements = statements[:MAX_STATEMENTS]
    extra = [v for v in values[len(shown_statements) :] if v is not None]
    if extra:
        raise MedchatError(
            f"The shown answer has {len(shown_statements)} statements to mark, and marks were "
            "given past the last one; give one mark per statement."
        )
    if not statements:
        return None
    values = values[: len(shown_statements)]
    values += [None] * (len(shown_statements) - len(values))
    unmarked = [i + 1 for i, v in enumerate(values) if v is None]
    if unmarked:
        raise MedchatError(
            f"Mark every statement covered, contradicted or missing before saving "
            f"({len(unmarked)} of {len(shown_statements)} unmarked)."
        )
    bad = [v for v in values if v not in MARKS]
    if bad:
        raise MedchatError(f"{bad[0]!r} is not a mark; use covered, contradicted or missing.")
    return [s | {"mark": v} for s, v in zip(shown_statements, values, strict=True)]


def _other(side: str) -> str:
    return "tuned" if side == "base" else "base"
