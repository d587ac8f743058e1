"""python -m eval.consumer_set pool [--extra] [--out FILE] | answered [--half H] | show

The consumer question set: real patient questions from K-QA (MIT; assets/data/kqa), a seeded
sample of 250 (the 201 answered by physicians, and 49 more), each split once into a tuning half
and a report half, with relevance labels for the passages the candidate retrieval methods find.

How it was made (the labels were written and committed before any retrieval setting was tuned):
1. `pool`: for every question, the union of the top passages of the candidate methods
   (hybrid on the whole message, as the app searched before; bm25, dense and hybrid on the
   question sentence(s); the topic method's passages), with no relevance floor.
2. An assessor read each question and each pooled passage and labelled the passage relevant
   (it answers the question or a central part of it) or not, the question self-contained or
   not (a follow-up such as "Is it contagious?" names no topic), and whether MedQuAD has
   anything on it (any pooled passage relevant). Labels: tests/data/consumer_labels.jsonl.
3. Thresholds are tuned on the `tune` half only; figures are reported on the `report` half
   (`load(half="report")` is read by eval.retrieval's report and nothing else; a test checks).
4. `pool --extra`: 350 more K-QA questions (none of the 250, seeded: 200 of any length, then
   150 of at least 10 words, since most short ones are follow-ups), all for tuning, pooled
   the same way plus every candidate the topic method scores, and labelled by the same
   instruction (tests/data/consumer_tune_extra_*.jsonl). They were added after the report half
   had been scored, to give the relevance model more than 126 questions to learn from; the
   report half is unchanged.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KQA = REPO / "assets" / "data" / "kqa"
POOL = REPO / "tests" / "data" / "consumer_pool.jsonl"
LABELS = REPO / "tests" / "data" / "consumer_labels.jsonl"
SEED = 20261206
EXTRA = 49  # unanswered K-QA questions sampled beside the 201 answered ones
POOL_K = 3  # top passages of each candidate method
EXTRA_POOL = REPO / "tests" / "data" / "consumer_tune_extra_pool.jsonl"
EXTRA_LABELS = REPO / "tests" / "data" / "consumer_tune_extra_labels.jsonl"
EXTRA_SEED = 20261207
EXTRA_TUNE = 200  # more tuning questions, outside the 250
EXTRA_LONG = 150  # ... and more of at least LONG_WORDS words (most short ones are follow-ups)
LONG_WORDS = 10


def questions(seed: int = SEED, extra: int = EXTRA) -> list[dict]:
    """The sampled questions: {"id", "question", "answered", "half", ["answer", "must_have",
    "nice_to_have"]}; ids are stable (kqa-a-N: answered row N, kqa-q-N: question row N)."""
    answered = [json.loads(line) for line in (KQA / "questions_w_answers.jsonl").open()]
    others = [json.loads(line) for line in (KQA / "questions.jsonl").open()]
    asked = {a["Question"].strip().lower() for a in answered}
    rows = [
        {
            "id": f"kqa-a-{i}",
            "question": a["Question"].strip(),
            "answered": True,
            "answer": a["Free_form_answer"],
            "must_have": a.get("Must_have") or [],
            "nice_to_have": a.get("Nice_to_have") or [],
        }
        for i, a in enumerate(answered)
    ]
    rng = random.Random(seed)
    pool = [(i, q) for i, q in enumerate(others) if q["Question"].strip().lower() not in asked]
    for i, q in rng.sample(pool, extra):
        rows.append({"id": f"kqa-q-{i}", "question": q["Question"].strip(), "answered": False})
    # Halves: shuffled once, alternating within answered and unanswered questions.
    for flag in (True, False):
        group = [r for r in rows if r["answered"] is flag]
        rng.shuffle(group)
        for n, r in enumerate(group):
            r["half"] = "tune" if n % 2 == 0 else "report"
    return rows


def extra_questions(
    seed: int = EXTRA_SEED, n: int = EXTRA_TUNE, long: int = EXTRA_LONG
) -> list[dict]:
    """More tuning questions: K-QA questions whose text is none of the 250's (so no report
    question is among them), each text once, `n` sampled with a fixed seed, then `long` more
    of at least LONG_WORDS words (of the first 200, 21 had a relevant page: most were
    follow-ups such as "Am I contagious?"); ids kqa-t-N (question row N); all for tuning."""
    taken = {r["question"].strip().lower() for r in questions()}
    others = [json.loads(line) for line in (KQA / "questions.jsonl").open()]
    pool, seen = [], set()
    for i, q in enumerate(others):
        text = q["Question"].strip()
        if text.lower() not in taken and text.lower() not in seen:
            seen.add(text.lower())
            pool.append((i, text))
    rng = random.Random(seed)
    first = sorted(rng.sample(pool, n))
    picked = set(first)
    rest = [(i, text) for i, text in pool if (i, text) not in picked]
    rest = [(i, text) for i, text in rest if len(text.split()) >= LONG_WORDS]
    return [
        {"id": f"kqa-t-{i}", "question": text, "answered": False, "half": "tune"}
        for i, text in first + sorted(rng.sample(rest, long))
    ]


def build_pool(out: Path = POOL, rows: list[dict] | None = None) -> Path:
    from tqdm import tqdm

    from medchat.metrics import Embedder
    from medchat.retrieval import load_index
    from medchat.retrieval.questions import analyse
    from medchat.settings import Settings

    embedder = Embedder("bundled")
    cache = Settings().cache_dir
    library = load_index(method="topic", cache_dir=cache, embedder=embedder)
    hybrid = library.index
    bm25 = load_index(method="bm25", cache_dir=cache)
    dense = load_index(method="dense", cache_dir=cache, embedder=embedder)
    rows = questions() if rows is None else rows
    with out.open("w", encoding="utf-8") as f:
        for row in tqdm(rows, desc="Pooling", unit="question"):
            q = row["question"]
            asked = analyse(q).query
            found = []
            found += [(h.passage, "hybrid-message") for h in hybrid.search(q, POOL_K, min_score=-1)]
            for name, index in (("bm25", bm25), ("dense", dense), ("hybrid", hybrid)):
                found += [(h.passage, name) for h in index.search(asked, POOL_K, min_score=-9)]
            # Every candidate the topic method scores (its pages and its passage ranking's).
            items = library.candidates(q, POOL_K)["items"]
            found += [(library.passages[it["row"]], "topic") for it in items]
            candidates: dict[str, dict] = {}
            for p, method in found:
                c = candidates.setdefault(
                    p.key,
                    {
                        "key": p.key,
                        "title": p.title,
                        "source": p.source,
                        "document_id": p.document_id,
                        "qid": p.qid,
                        "medquad_question": p.question,
                        "text": p.text,
                        "methods": [],
                    },
                )
                if method not in c["methods"]:
                    c["methods"].append(method)
            record = {k: row[k] for k in ("id", "question", "answered", "half")}
            record["candidates"] = list(candidates.values())
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out


def load(half: str | None = None, path: Path = LABELS, *, extra: bool = False) -> list[dict]:
    """The labelled questions (joined with the sample), of one half or both; `extra` adds the
    350 later tuning questions (to the tuning half and to both)."""
    if half not in (None, "tune", "report"):
        raise ValueError("half is tune, report or None")
    if extra and half == "report":
        raise ValueError("the extra questions are all for tuning")
    labels = {}
    for file in [path, EXTRA_LABELS] if extra else [path]:
        for line in file.open(encoding="utf-8"):
            if line.strip():
                item = json.loads(line)
                labels[item["id"]] = item
    out = []
    for row in questions() + (extra_questions() if extra else []):
        if half is not None and row["half"] != half:
            continue
        if row["id"] in labels:
            out.append({**row, **labels[row["id"]]})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.consumer_set", description=__doc__.split("\n")[2]
    )
    parser.add_argument(
        "action",
        choices=["pool", "answered", "show"],
        help="pool: write the candidates; answered: write the physician-answered questions of "
        "--half as question,answer JSONL for python -m eval --data; show: count the halves",
    )
    parser.add_argument("--out", default=None, help="where to write")
    parser.add_argument(
        "--extra",
        action="store_true",
        help="pool: the 350 later tuning questions (default out: " + str(EXTRA_POOL.name) + ")",
    )
    parser.add_argument("--half", choices=["tune", "report"], default="report")
    args = parser.parse_args(argv)
    if args.action == "pool":
        if args.extra:
            print(build_pool(Path(args.out or EXTRA_POOL), extra_questions()))
        else:
            print(build_pool(Path(args.out or POOL)))
    elif args.action == "answered":
        out = Path(args.out or f"runs/kqa-{args.half}-answered.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = [r for r in questions() if r["answered"] and r["half"] == args.half]
        with out.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"id": r["id"], "question": r["question"],
                                    "answer": r["answer"]}, ensure_ascii=False) + "\n")  # fmt: skip
        print(f"{len(rows)} answered questions of the {args.half} half in {out}")
    else:
        rows = questions()
        tune = sum(r["half"] == "tune" for r in rows)
        print(f"{len(rows)} questions: {tune} tune, {len(rows) - tune} report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
