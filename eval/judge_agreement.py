"""python -m eval.judge_agreement --judge offline|llm [--judge-url URL --judge-model NAME]

How closely a statement judge agrees with K-QA's physicians, on the report half of their
labelled (answer, statement) pairs (eval.kqa_nli): n, accuracy and Cohen's kappa against the
physicians' majority on entailed vs not, contradiction recall, beside the physicians' own
pairwise kappas on the same pairs. The figure is saved with the judge
(assets/judges/offline.json, or assets/judges/llm-<model>.json) so that every score the judge
produces can be shown next to it.

    python -m eval.judge_agreement --fit          # fit the offline judge on the fit half only

The offline judge is fitted on the fit half alone; its weights are written to
assets/judges/offline.json (the agreement already there is dropped: refitted weights need a new
report).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from eval import kqa_nli
from medchat.errors import MedchatError

REPO = Path(__file__).resolve().parents[1]
JUDGES = REPO / "assets" / "judges"
FOLDS = 5
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


# -- fitting the offline judge (fit half only) ---------------------------------------------
def _grouped_folds(groups: np.ndarray, k: int = FOLDS) -> list[np.ndarray]:
    ids = sorted(set(groups))
    return [np.isin(groups, ids[i::k]) for i in range(k)]


def _logistic(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x, y)


def _out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float) -> np.ndarray:
    """Each pair's probability from a model fitted on the other folds' questions."""
    p = np.zeros(len(y))
    for held in _grouped_folds(groups):
        if len(set(y[~held])) < 2:
            p[held] = y[~held].mean()
            continue
        p[held] = _logistic(x[~held], y[~held], c).predict_proba(x[held])[:, 1]
    return p


def _best_threshold(y: np.ndarray, p: np.ndarray, score) -> float:
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    values = [score(y, p >= t) for t in grid]
    return float(grid[int(np.argmax(values))])


def _kappa(y, pred) -> float:
    return kqa_nli.cohen_kappa(list(map(bool, y)), list(map(bool, pred)))


def _f2(y, pred) -> float:
    tp = float(np.sum(y & pred))
    recall, precision = tp / max(1, y.sum()), tp / max(1, pred.sum())
    return 0.0 if tp == 0 else 5 * precision * recall / (4 * precision + recall)


def fit_offline(embedder, out: Path = JUDGES / "offline.json") -> dict:
    """Fit both models of the offline judge on the fit half; write and return the record.

    The regularisation C and the thresholds are chosen by 5-fold cross-validation over the fit
    half's questions (grouped: a question's pairs are never on both sides of a fold): C and the
    entailment threshold for kappa, the contradiction threshold for F2 (recall counts double,
    there are few contradictions).
    """
    from sklearn.preprocessing import StandardScaler

    from medchat.offline_judge import FEATURES, LogisticModel, features

    frame = kqa_nli.load(half="fit")
    x_raw = features(list(zip(frame["answer"], frame["statement"], strict=True)), embedder)
    scaler = StandardScaler().fit(x_raw)
    x, groups = scaler.transform(x_raw), frame["qid"].to_numpy()
    record: dict = {"features": list(FEATURES), "embedder": embedder.name}
    targets = {"entailed": (_kappa, True), "contradicted": (_f2, False)}
    for verdict, (score, tune_c) in targets.items():
        y = (frame["majority"] == verdict).to_numpy()
        cv = {}
        for c in C_GRID if tune_c else (0.1,):
            p = _out_of_fold(x, y, groups, c)
            t = _best_threshold(y, p, score)
            cv[c] = (score(y, p >= t), t)
        c = max(cv, key=lambda k: cv[k][0])
        model = _logistic(x, y, c)
        record[verdict] = LogisticModel(
            scaler.mean_, scaler.scale_, model.coef_[0], model.intercept_[0], cv[c][1]
        ).as_dict()
        record[verdict]["C"] = c
        record[verdict]["cross_validated"] = {"score": round(cv[c][0], 4), "on": score.__name__}
    record["fit"] = {
        "half": "fit",
        "pairs": len(frame),
        "questions": int(frame["qid"].nunique()),
        "labels": frame["majority"].value_counts().to_dict(),
        "split": kqa_nli.SPLIT.relative_to(REPO).as_posix(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


# -- agreement on the report half ----------------------------------------------------------
def agreement(frame: pd.DataFrame, verdicts: list[str], seconds: float) -> dict:
    """The judge's agreement with the physicians' majority over the pairs of `frame`."""
    majority = frame["majority"].tolist()
    parsed = [v != "unparsed" for v in verdicts]
    truth = [m == "entailed" for m in majority]
    said = [v == "entailed" for v in verdicts]
    contradictions = [i for i, m in enumerate(majority) if m == "contradicted"]
    flagged = [i for i, v in enumerate(verdicts) if v == "contradicted"]
    hit = [i for i in contradictions if verdicts[i] == "contradicted"]
    return {
        "half": "report",
        "n": len(frame),
        "questions": int(frame["qid"].nunique()),
        "accuracy": round(float(np.mean([a == b for a, b in zip(truth, said, strict=True)])), 4),
        "kappa": round(kqa_nli.cohen_kappa(truth, said), 4),
        "contradictions": len(contradictions),
        "contradiction_recall": round(len(hit) / len(contradictions), 4)
        if contradictions
        else None,
        "contradiction_precision": round(len(hit) / len(flagged), 4) if flagged else None,
        "unparsed": int(len(parsed) - sum(parsed)),
        "physician_kappas": kqa_nli.physician_kappas(frame),
        "seconds_per_pair": round(seconds / max(1, len(frame)), 4),
        "labels": kqa_nli.LABELS.relative_to(REPO).as_posix(),
    }


def judge_file(judge) -> Path:
    if judge.name == "offline":
        return JUDGES / "offline.json"
    model = re.sub(r"[^\w.-]+", "-", getattr(judge, "model", "")).strip("-.") or "model"
    return JUDGES / f"llm-{model}.json"


def report(judge, save: bool = True) -> dict:
    """Judge the report half, print the figures, and save them in the judge's file."""
    frame = kqa_nli.load(half="report")
    started = time.perf_counter()
    judgements = judge.judge(list(zip(frame["answer"], frame["statement"], strict=True)))
    seconds = time.perf_counter() - started
    figures = agreement(frame, [j.verdict for j in judgements], seconds)
    figures["judge"] = judge.identity
    if save:
        path = judge_file(judge)
        record = json.loads(path.read_text()) if path.is_file() else judge.info()
        record["agreement"] = figures
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    return figures


def format_figures(figures: dict) -> str:
    doctors = figures["physician_kappas"]
    recall = figures["contradiction_recall"]
    return "\n".join(
        [
            f"judge {figures['judge']} on the report half: n = {figures['n']} pairs "
            f"({figures['questions']} questions)",
            f"  accuracy {figures['accuracy']:.3f}, Cohen's kappa {figures['kappa']:.3f} "
            "vs the physicians' majority (entailed vs not)",
            f"  contradiction recall {'n/a' if recall is None else f'{recall:.2f}'} "
            f"({figures['contradictions']} contradictions), unparsed {figures['unparsed']}",
            "  physicians' pairwise kappas: "
            + ", ".join(f"{k} {v:.3f}" for k, v in doctors.items()),
            f"  {figures['seconds_per_pair']:.3f} s per (answer, statement)",
        ]
    )


def main(argv=None) -> int:
    from medchat.judges import add_judge_flags, make_judge

    parser = argparse.ArgumentParser(prog="python -m eval.judge_agreement", description=__doc__)
    parser.add_argument(
        "--fit", action="store_true", help="fit the offline judge on the fit half, and stop"
    )
    parser.add_argument("--no-save", action="store_true", help="print only; save nothing")
    add_judge_flags(parser, default="offline")
    args = parser.parse_args(argv)
    from medchat.metrics import Embedder

    try:
        embedder = Embedder("bundled")
        if args.fit:
            record = fit_offline(embedder)
            print(json.dumps({k: record[k] for k in ("fit", "entailed", "contradicted")}))
            return 0
        judge = make_judge(
            args.judge, embedder=embedder, url=args.judge_url, model=args.judge_model
        )
        print(format_figures(report(judge, save=not args.no_save)))
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
