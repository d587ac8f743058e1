"""python -m eval.retrieval --questions Q.jsonl --out HITS.jsonl | --consumer [--tune] | --methods

Three uses:
- `--questions Q.jsonl --out HITS.jsonl`: for lines {"id", "question"}, write per question
  {"id", "sources": [...]} with exactly the sources the app shows for it (empty when none): each
  with source, document_id, qid (MedQuAD's), url, title, score, covered (false for the "not
  covered, see this MedlinePlus page" links) and method.
- `--consumer`: the topic method on the consumer question set (eval/consumer_set.py): the
  report half by default; `--tune` searches the relevance floors on the tuning half instead;
  plus MedQuAD validation (own page in the top 3) and MedicationQA (wrong passages, the right
  MedlinePlus drug page) and the time per question. Writes runs/retrieval/consumer.json.
- `--methods bm25,dense,hybrid` (below): the passage methods on MedQuAD's own questions.

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


def hit_record(hit) -> dict:
    p = hit.passage
    return {
        "source": p.source,
        "document_id": p.document_id,
        "qid": p.qid,
        "url": p.url,
        "title": p.title,
        "score": round(float(hit.score), 4),
        "covered": bool(hit.covered),
        "archived": bool(p.archived),
        "method": hit.method,
        "key": p.key,
    }


def write_hits(library, questions_path: Path, out: Path, k: int) -> int:
    """The batch command: the app's sources for each question of a JSONL file."""
    from tqdm import tqdm

    rows = []
    for n, line in enumerate(questions_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            rows.append((item["id"], str(item["question"])))
        except (ValueError, KeyError, TypeError):
            raise MedchatError(
                f"Line {n} of {questions_path} is not a JSON object with id and question."
            ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for id_, question in tqdm(rows, desc="Retrieving", unit="question"):
            hits = library.search(question, k) if question.strip() else []
            record = {"id": id_, "sources": [hit_record(h) for h in hits]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(rows)


def consumer_metrics(shown: dict[str, list], labelled: list[dict]) -> dict:
    """Figures of the sources shown per question id against the assessor's labels.

    - found: of the questions MedQuAD has a relevant page for, the share shown one;
    - top_precision: of the questions shown a source, the share whose first is relevant;
    - told_not_covered: of the questions MedQuAD has nothing for, the share shown no passage.
    A shown passage nobody judged counts as not relevant (reported as `unjudged`)."""
    has = [r for r in labelled if r["medquad_has"]]
    has_not = [r for r in labelled if not r["medquad_has"]]

    def covered(r):
        return [h for h in shown[r["id"]] if h.covered]

    given = [r for r in labelled if covered(r)]
    unjudged = sum(1 for r in labelled for h in covered(r) if h.passage.key not in set(r["judged"]))
    return {
        "n": len(labelled),
        "with_relevant_page": len(has),
        "found": _share(any(h.passage.key in r["relevant"] for h in covered(r)) for r in has),
        "top_precision": _share(covered(r)[0].passage.key in r["relevant"] for r in given),
        "given_a_source": len(given),
        "told_not_covered": _share(not covered(r) for r in has_not),
        "nothing_in_medquad": len(has_not),
        "unjudged_shown": unjudged,
    }


def _share(flags) -> float | None:
    flags = list(flags)
    return round(float(np.mean(flags)), 4) if flags else None


def fit_relevance(
    library, labelled: list[dict], k: int, min_precision: float = 0.4, found: dict | None = None
) -> dict:
    """Fit the relevance model on the tuning half: a logistic regression of "relevant" on the
    candidates' features (a candidate nobody judged is not used), then the threshold with the
    best balanced accuracy (the mean of: a relevant page shown where MedQuAD has one, none
    shown where it has none) among those with a top-source precision of at least
    `min_precision`. `found`: the questions' candidates, when already computed."""
    from sklearn.linear_model import LogisticRegression

    from medchat.retrieval.library import FEATURES, RelevanceModel, with_model

    if found is None:
        found = {r["id"]: library.candidates(r["question"], k) for r in labelled}
    found = {r["id"]: found[r["id"]] for r in labelled}
    x, y = [], []
    for r in labelled:
        for item in found[r["id"]]["items"]:
            key = library.passages[item["row"]].key
            if key in r["judged"]:
                x.append(item["features"][1:])
                y.append(key in r["relevant"])
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(np.array(x), np.array(y))
    weights = (float(clf.intercept_[0]), *(float(w) for w in clf.coef_[0]))
    grid = []
    for threshold in np.arange(0.05, 0.96, 0.01):
        model = RelevanceModel(weights, float(threshold))
        lib = with_model(library, model)
        m = consumer_metrics({i: lib.decide(c, k) for i, c in found.items()}, labelled)
        balanced = ((m["found"] or 0) + (m["told_not_covered"] or 0)) / 2
        grid.append((round(float(threshold), 2), balanced, m))
    ok = [g for g in grid if (g[2]["top_precision"] or 0) >= min_precision] or grid
    threshold, balanced, metrics = max(ok, key=lambda g: (g[1], g[2]["top_precision"] or 0))
    return {
        "features": list(FEATURES),
        "weights": [round(w, 4) for w in weights],
        "threshold": threshold,
        "candidates": len(y),
        "relevant_candidates": int(sum(y)),
        "balanced_accuracy": round(balanced, 4),
        "tune_metrics": metrics,
    }


def medicationqa_metrics(library, path: Path, k: int) -> dict:
    """MedicationQA: the share given a passage (MedQuAD holds no drug text, so a passage
    whose title does not name the question's drug is a wrong one), and for the questions
    whose answer comes from a MedlinePlus drug page, the share shown that page's link."""
    import re

    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    wrong, pages, page_hits = [], 0, 0
    for row in df.itertuples(index=False):
        hits = library.search(row.question, k)
        drug = (row.focus or "").lower()
        wrong.append(any(h.covered and drug and drug not in h.passage.title.lower() for h in hits))
        page = re.search(r"/druginfo/meds/(a\d+)\.html", row.url or "")
        if page:
            pages += 1
            page_hits += any(page.group(1) in h.passage.url for h in hits)
    return {
        "n": len(df),
        "wrong_passage": _share(wrong),
        "drug_pages": pages,
        "drug_page_shown": round(page_hits / pages, 4) if pages else None,
    }


def medquad_validation(library, k: int = 3) -> dict:
    """MedQuAD validation questions (seed 0 split): own NIH page among the shown sources."""
    from medchat.data import DEFAULT_DATA, load_pairs, split_by_group

    df, _ = load_pairs(DEFAULT_DATA)
    rows = split_by_group(df, seed=0, validation_fraction=0.05, test_fraction=0.1)["validation"]
    shown = library.search_many(rows["question"].tolist(), k)
    own = [
        any(h.covered and h.passage.document_id == d for h in hs)
        for hs, d in zip(shown, rows["document_id"], strict=True)
    ]
    return {"n": len(rows), "own_page_in_top": _share(own), "k": k}


def consumer_report(
    library, *, half: str, k: int, tune: bool, medicationqa: Path | None, min_precision=0.4
):
    from eval import consumer_set

    # Tuning also reads the 350 later tuning questions; the report half stays as it was.
    labelled = consumer_set.load(half=half, extra=tune)
    out: dict = {"half": half, "k": k}
    if tune:
        from medchat.retrieval.library import RELEVANCE_FILE

        fitted = fit_relevance(library, labelled, k, min_precision)
        fitted["provenance"] = (
            "fitted on the tuning half of the consumer set and the later tuning questions "
            f"({len(labelled)} K-QA questions, "
            f"{fitted['candidates']} judged candidates) by python -m eval.retrieval --consumer "
            "--tune"
        )
        RELEVANCE_FILE.write_text(json.dumps(fitted, indent=1) + "\n", encoding="utf-8")
        out["tuned"] = fitted
        return out
    started = time.perf_counter()
    shown = {r["id"]: library.search(r["question"], k) for r in labelled}
    out["seconds_per_question"] = (time.perf_counter() - started) / max(1, len(labelled))
    out["consumer"] = consumer_metrics(shown, labelled)
    # The previous default on the same questions: hybrid over the whole message, its
    # MedQuAD-chosen cosine floor.
    before = {r["id"]: library.index.search(r["question"], k) for r in labelled}
    out["consumer_hybrid_before"] = consumer_metrics(before, labelled)
    out["relevance"] = {"threshold": library.model.threshold, "from": library.model.provenance}
    out["medquad_validation"] = medquad_validation(library, k)
    if medicationqa is not None and medicationqa.is_file():
        out["medicationqa"] = medicationqa_metrics(library, medicationqa, k)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.retrieval",
        description="Measure retrieval, or write the sources the app shows for questions.",
    )
    parser.add_argument("--questions", help="JSONL of {id, question}: write their sources")
    parser.add_argument("--consumer", action="store_true", help="the consumer-set figures")
    parser.add_argument("--tune", action="store_true", help="with --consumer: tune the floors")
    parser.add_argument("--top", type=int, default=3, help="sources per question (default 3)")
    parser.add_argument(
        "--min-precision",
        type=float,
        default=0.4,
        help="with --tune: the top-source precision the threshold must keep (default 0.4)",
    )
    parser.add_argument("--methods", default="bm25,dense,hybrid", help="comma-separated methods")
    parser.add_argument("--k", default="1,3,5", help="comma-separated k for recall@k")
    parser.add_argument(
        "--medicationqa",
        default=str(MEDICATIONQA / "medicationqa.csv"),
        help="MedicationQA CSV (skipped when missing)",
    )
    parser.add_argument("--out", default=None, help="where to write (JSON, or JSONL of hits)")
    args = parser.parse_args(argv)
    if args.questions or args.consumer:
        try:
            from medchat.metrics import Embedder
            from medchat.retrieval import load_index
            from medchat.settings import Settings

            library = load_index(
                method="topic", cache_dir=Settings().cache_dir, embedder=Embedder("bundled")
            )
            if args.questions:
                if not args.out:
                    raise MedchatError("--questions needs --out, the JSONL file to write.")
                if not Path(args.questions).is_file():
                    raise MedchatError(f"No questions file at {args.questions!r}.")
                n = write_hits(library, Path(args.questions), Path(args.out), args.top)
                print(f"{n} questions: sources in {args.out}")
                return 0
            payload = consumer_report(
                library,
                half="tune" if args.tune else "report",
                k=args.top,
                tune=args.tune,
                medicationqa=Path(args.medicationqa) if args.medicationqa else None,
                min_precision=args.min_precision,
            )
        except MedchatError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        out = Path(args.out or f"runs/retrieval/consumer-{payload['half']}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1))
        print(json.dumps(payload, indent=1))
        return 0
    args.out = args.out or "runs/retrieval/summary.json"
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
