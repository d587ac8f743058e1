"""python -m eval.kqa_nli split      # write assets/judges/kqa_nli_split.json (done once)

K-QA's physician labels for judges (MIT; assets/data/kqa/NLI_medical_annotator.csv): 399
(answer, statement) pairs, each labelled Entailment / Neutral / Contradiction by three
physicians (label_0..2) and their majority. The answers are four LLMs' answers to 50 of K-QA's
patient questions; the statements are K-QA's must-have and nice-to-have statements.

The pairs are split once, by question (every pair of a question on one side), into a `fit` half
and a `report` half; the question ids of each half are committed in
assets/judges/kqa_nli_split.json before any judge was fitted. Judges are fitted on the fit half
only (eval.judge_agreement's fit); agreement figures come from the report half
(`load(half="report")` is read by eval.judge_agreement's report and nothing else; a test checks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from itertools import combinations
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "assets" / "data" / "kqa" / "NLI_medical_annotator.csv"
SPLIT = REPO / "assets" / "judges" / "kqa_nli_split.json"
SEED = 20261207
HALVES = ("fit", "report")
# The physicians' words, as the judges' verdicts name them.
VERDICT_OF = {"Entailment": "entailed", "Contradiction": "contradicted", "Neutral": "neither"}


def question_id(question: str) -> str:
    """A stable id of a K-QA question: a hash of its stripped text."""
    return "q-" + hashlib.sha1(question.strip().encode()).hexdigest()[:10]


def pairs(path: Path = LABELS) -> pd.DataFrame:
    """All 399 labelled pairs: question, qid, answer, statement, kind (must/nice), llm,
    majority and label_0..2 as verdicts (entailed / neither / contradicted)."""
    raw = pd.read_csv(path, index_col=0)
    frame = pd.DataFrame(
        {
            "question": raw["Question"].str.strip(),
            "qid": raw["Question"].map(question_id),
            "answer": raw["answer"],
            "statement": raw["claim"],
            "kind": raw["category_x"].map({"Must_have": "must", "Nice_to_have": "nice"}),
            "llm": raw["llm_x"],
            "majority": raw["majority_label"].map(VERDICT_OF),
        }
    )
    for i in range(3):
        frame[f"label_{i}"] = raw[f"label_{i}"].map(VERDICT_OF)
    return frame.reset_index(drop=True)


def make_split(frame: pd.DataFrame, seed: int = SEED) -> dict[str, list[str]]:
    """Question ids per half: sorted, shuffled with `seed`, the first half of them `fit`."""
    ids = sorted(set(frame["qid"]))
    random.Random(seed).shuffle(ids)
    middle = (len(ids) + 1) // 2
    return {"fit": sorted(ids[:middle]), "report": sorted(ids[middle:])}


def read_split(path: Path = SPLIT) -> dict[str, list[str]]:
    record = json.loads(path.read_text())
    return {half: record[half] for half in HALVES}


def load(half: str, path: Path = LABELS, split: Path = SPLIT) -> pd.DataFrame:
    """The labelled pairs of one half ("fit" or "report")."""
    if half not in HALVES:
        raise ValueError("half is fit or report")
    frame = pairs(path)
    ids = set(read_split(split)[half])
    return frame[frame["qid"].isin(ids)].reset_index(drop=True)


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two equally long label sequences (1 = perfect, 0 = chance)."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty sequences")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((a.count(k) / n) * (b.count(k) / n) for k in labels)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def physician_kappas(frame: pd.DataFrame) -> dict[str, float]:
    """The physicians' pairwise kappas on entailment vs not, over the pairs of `frame`."""
    entailed = {i: (frame[f"label_{i}"] == "entailed").tolist() for i in range(3)}
    return {
        f"{i}-{j}": round(cohen_kappa(entailed[i], entailed[j]), 4)
        for i, j in combinations(range(3), 2)
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.kqa_nli", description=__doc__)
    parser.add_argument("action", choices=["split", "show"])
    args = parser.parse_args(argv)
    frame = pairs()
    if args.action == "split":
        split = make_split(frame)
        SPLIT.parent.mkdir(parents=True, exist_ok=True)
        record = {"labels": LABELS.relative_to(REPO).as_posix(), "seed": SEED, **split}
        record["questions"] = dict(sorted(zip(frame["qid"], frame["question"], strict=True)))
        SPLIT.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {SPLIT}")
    split = read_split()
    for half in HALVES:
        rows = frame[frame["qid"].isin(set(split[half]))]
        counts = rows["majority"].value_counts().to_dict()
        print(f"{half}: {len(split[half])} questions, {len(rows)} pairs, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
