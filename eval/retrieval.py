"""python -m eval.retrieval [--methods bm25,dense,hybrid] [--k 1,3,5] [--out FILE]

How well each retrieval method finds the NIH page behind a question, on MedQuAD's validation
split (where the relevance thresholds are chosen) and its test split (frozen: reported only),
both split as training splits them (seed 0, 5% validation, 10% test):
- document recall@k on the full index: a passage of the question's own document is retrieved;
- topic recall@k on the training-only index (what leak-free evaluation searches): a passage on
  the question's focus is retrieved, over the questions whose focus has a training passage;
- relevance: the best hit's score separates questions with such a passage from those without;
  the threshold is the one with the best balanced accuracy on validation;
- MedicationQA (consumer drug questions; MedQuAD has no drug pages): the share that gets any
  relevant passage under the chosen threshold (lower is more honest).
Prints a table and writes JSON (default runs/retrieval/summary.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from medchat.errors import MedchatError

MEDICATIONQA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "medicationqa"


def _norm(text: str) -> str:
    from medchat.data import normalize_question

    return normalize_question(text or "")


def best_threshold(covered: np.ndarray, uncovered: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy): scores >= threshold count as relevant."""
    values = np.unique(np.concatenate([covered, uncovered]))
    best = (float(values[0]), 0.0)
    for t in values:
        acc = 0.5 * ((covered >= t).mean() + (uncovered < t).mean())
        if acc > best[1]:
            best = (float(t), float(acc))
    return best


def top_scores(index, questions: list[str], k: int) -> tuple[list[list], np.ndarray]:
    """(hits without a relevance floor, the relevance of each question's top hit)."""
    hits = index.search_many(questions, k, min_score=-np.inf)
    best = np.array([h[0].score if h else -np.inf for h in hits])
    return hits, best


def measure(method: str, ks: list[int], df, splits, medicationqa, embedder) -> dict:
    from medchat.retrieval import load_index
    from medchat.settings import Settings

    kmax = max(ks)
    full = load_index(method=method, cache_dir=Settings().cache_dir, embedder=embedder)
    if len(full) != len(df):
        raise MedchatError("The index and the data differ in rows; rebuild the index.")
    train = full.restricted(set(splits["train"]["key"]), name="train split")
    train_topics = {_norm(p.title) for p in train.passages}
    out: dict = {"method": method}
    threshold = None
    for name in ("validation", "test"):
        rows = splits[name]
        questions = rows["question"].tolist()
        started = time.perf_counter()
        hits, _ = top_scores(full, questions, kmax)
        seconds = time.perf_counter() - started
        docs = rows["document_id"].tolist()
        recall_doc = {
            k: float(
                np.mean(
                    [
                        any(h.passage.document_id == d for h in hs[:k])
                        for hs, d in zip(hits, docs, strict=True)
                    ]
                )
            )
            for k in ks
        }
        hits_t, best_t = top_scores(train, questions, kmax)
        topics = [_norm(f) for f in rows["focus"]]
        coverable = np.array([t in train_topics for t in topics])
        recall_topic = {
            k: float(
                np.mean(
                    [
                        any(_norm(h.passage.title) == t for h in hs[:k])
                        for hs, t, c in zip(hits_t, topics, coverable, strict=True)
                        if c
                    ]
                )
            )
            for k in ks
        }
        if name == "validation":
            threshold, balanced = best_threshold(best_t[coverable], best_t[~coverable])
        relevant = best_t >= threshold
        out[name] = {
            "n": len(rows),
            "document_recall_full_index": recall_doc,
            "topic_recall_train_index": recall_topic,
            "coverable": int(coverable.sum()),
            "relevant_when_coverable": float(relevant[coverable].mean()),
            "relevant_when_not_coverable": float(relevant[~coverable].mean())
            if (~coverable).any()
            else None,
            "ms_per_query": 1000 * seconds / max(1, len(questions)),
        }
    out["threshold"] = threshold
    out["validation"]["balanced_accuracy"] = balanced
    if medicationqa is not None:
        _, best_m = top_scores(full, medicationqa, 1)
        out["medicationqa"] = {
            "n": len(medicationqa),
            "relevant_share": float((best_m >= threshold).mean()),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.retrieval", description=__doc__.split("\n")[2]
    )
    parser.add_argument("--methods", default="bm25,dense,hybrid", help="comma-separated methods")
    parser.add_argument("--k", default="1,3,5", help="comma-separated k for recall@k")
    parser.add_argument(
        "--medicationqa",
        default=str(MEDICATIONQA / "medicationqa.csv"),
        help="MedicationQA CSV (skipped when missing)",
    )
    parser.add_argument("--out", default="runs/retrieval/summary.json", help="JSON to write")
    args = parser.parse_args(argv)
    try:
        from medchat.data import DEFAULT_DATA, load_pairs, split_by_group
        from medchat.metrics import Embedder

        ks = sorted({int(k) for k in args.k.split(",")})
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        df, report = load_pairs(DEFAULT_DATA)
        splits = split_by_group(df, seed=0, validation_fraction=0.05, test_fraction=0.1)
        mqa = None
        if Path(args.medicationqa).is_file():
            mqa, _ = load_pairs(args.medicationqa)
            mqa = mqa["question"].tolist()
        embedder = Embedder("bundled") if {"dense", "hybrid"} & set(methods) else None
        results = [measure(m, ks, df, splits, mqa, embedder) for m in methods]
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    payload = {"data_sha256": report.sha256, "k": ks, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
