"""Fit the red-flag classifier on the training lines and print its cross-validated figures.

    python -m medchat.safety_train              # refit, print CV figures, write classifier.npz
    python -m medchat.safety_train --dry-run    # CV figures only, nothing written

Reads `medchat/safety_data/redflags_train.jsonl` (text, emergency, category, lang, family) and
nothing else: the held-out file in tests/ is for the final score only and no code here opens
it. Steps:
1. Embed every line (all-MiniLM-L6-v2) and compute its rule features (`safety.rule_hits`).
2. Cross-validate, folds grouped by paraphrase family (StratifiedGroupKFold), so no family is
   both trained on and scored. Each fold fits two multinomial logistic regressions: "combined"
   (embedding + rule features) and "classifier" (embedding alone).
3. On the out-of-fold scores, pick each head's threshold on the summed emergency probability:
   the highest one whose recall reaches `--target-recall`. Print recall, false-positive rate
   and category agreement for the rules alone, the classifier alone and the combined method.
4. Refit both heads on all lines and save them with their thresholds to
   `medchat/safety_data/classifier.npz` (arrays only, loaded with allow_pickle=False).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medchat import safety
from medchat.errors import MedchatError

TRAIN_PATH = safety.DATA_DIR / "redflags_train.jsonl"
FIELDS = ("text", "emergency", "category", "lang", "family")
HEADS = ("combined", "classifier")
METHODS = ("rules", "classifier", "combined")


def load_rows(path: Path = TRAIN_PATH) -> list[dict]:
    """The labelled lines of a JSONL file, checked field by field."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise MedchatError(f"{path}:{number} lacks {', '.join(missing)}; add the field.")
        rows.append(row)
    return rows


def label(row: dict) -> str:
    """The class a line trains: its category when an emergency, else self_harm_info or none."""
    if row["emergency"]:
        return row["category"]
    return safety.INFO_CATEGORY if row["category"] == safety.INFO_CATEGORY else "none"


def class_names(rows: list[dict]) -> tuple[str, ...]:
    emergencies = sorted({row["category"] for row in rows if row["emergency"]})
    return ("none", safety.INFO_CATEGORY, *emergencies)


@dataclass(frozen=True)
class Featurised:
    """Everything the fits need, computed once per line."""

    embeddings: np.ndarray
    texts: list[str]
    hits: list  # safety._RuleHits per line
    lexical: np.ndarray
    labels: np.ndarray  # class index per line
    groups: np.ndarray  # paraphrase family per line
    emergency: np.ndarray  # bool per line


def featurise(rows: list[dict], classes: tuple[str, ...]) -> Featurised:
    hits = [safety.rule_hits(row["text"]) for row in rows]
    return Featurised(
        texts=[row["text"] for row in rows],
        embeddings=safety.embed([row["text"] for row in rows]),
        hits=hits,
        lexical=np.array([h.features for h in hits], dtype=np.float32),
        labels=np.array([classes.index(label(row)) for row in rows]),
        groups=np.array([row["family"] for row in rows]),
        emergency=np.array([bool(row["emergency"]) for row in rows]),
    )


def fit_head(
    x: np.ndarray, labels: np.ndarray, n_classes: int, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of a multinomial logistic regression, one row per class in order;
    a class absent from `labels` gets zero weights and a very low intercept (probability 0)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(x, labels)
    coef = np.zeros((n_classes, x.shape[1]), dtype=np.float64)
    intercept = np.full(n_classes, -1e4)
    coef[model.classes_] = model.coef_
    intercept[model.classes_] = model.intercept_
    return coef, intercept


def pick_threshold(scores: np.ndarray, emergency: np.ndarray, target: float) -> float:
    """The highest threshold whose recall over the emergencies reaches `target`."""
    ranked = np.sort(scores[emergency])[::-1]
    needed = int(np.ceil(target * len(ranked)))
    # A hair below the score, so the same line still passes when its probabilities are
    # recomputed in another order of summation.
    return float(ranked[max(needed - 1, 0)]) - 1e-6


def outcomes(
    method: str,
    threshold: float,
    classes: tuple[str, ...],
    probs: np.ndarray | None,
    hits: list,
) -> list:
    """safety.decide for each line (probabilities one row per line)."""
    if method == "rules":
        return [safety.decide_by_rules([h]) for h in hits]
    return [
        safety.decide(method, threshold, classes, probs[i : i + 1], [h]) for i, h in enumerate(hits)
    ]


def figures(rows: list[dict], flags: list) -> dict:
    """Recall, false-positive rate, category agreement and self-harm handling of some flags.

    An emergency is caught by any flag but self_harm_info; an ordinary line is a false positive
    when it gets one. Questions about suicide should get self_harm_info; first-person
    self-harm should get the crisis notice and no answer.
    """
    caught = [(r, f) for r, f in zip(rows, flags, strict=True) if r["emergency"]]
    hits = [(r, f) for r, f in caught if f is not None and f.is_emergency]
    ordinary = [(r, f) for r, f in zip(rows, flags, strict=True) if not r["emergency"]]
    false = [(r, f) for r, f in ordinary if f is not None and f.is_emergency]
    info = [(r, f) for r, f in ordinary if r["category"] == safety.INFO_CATEGORY]
    self_harm = [(r, f) for r, f in caught if r["category"] == "self_harm"]
    return {
        "emergencies": len(caught),
        "caught": len(hits),
        "recall": len(hits) / max(len(caught), 1),
        "ordinary": len(ordinary),
        "false_positives": len(false),
        "fpr": len(false) / max(len(ordinary), 1),
        "same_category": sum(f.category == r["category"] for r, f in hits),
        "info_lines": len(info),
        "info_as_info": sum(f is not None and f.category == safety.INFO_CATEGORY for _, f in info),
        "self_harm_lines": len(self_harm),
        "self_harm_no_answer": sum(f is not None and not f.allow_answer for _, f in self_harm),
    }


def cross_validate(
    rows: list[dict],
    data: Featurised,
    classes: tuple[str, ...],
    folds: int = 5,
    c: float = 16.0,
    target_recall: float = 0.95,
    seed: int = 0,
) -> dict:
    """Out-of-fold thresholds and figures of each method, folds grouped by family."""
    from sklearn.model_selection import StratifiedGroupKFold

    probs = {head: np.zeros((len(rows), len(classes))) for head in HEADS}
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(data.embeddings, data.emergency, data.groups):
        for head in HEADS:
            x = safety.features_for(head, data.embeddings, data.lexical, data.texts)
            coef, intercept = fit_head(x[train], data.labels[train], len(classes), c)
            probs[head][test] = safety.Head(coef, intercept, 0.0).probabilities(x[test])
    emergency_columns = safety.emergency_columns(classes)
    result = {}
    for method in METHODS:
        threshold = 0.0
        if method != "rules":
            scores = probs[method][:, emergency_columns].sum(axis=1)
            if method == "combined":  # urgent rule phrases flag whatever the score
                pet = safety.LEXICAL_FEATURES.index("pet")
                urgent = np.array([h.urgent is not None and not h.features[pet] for h in data.hits])
                scores = np.where(urgent, np.inf, scores)
            threshold = pick_threshold(scores, data.emergency, target_recall)
        flags = outcomes(method, threshold, classes, probs.get(method), data.hits)
        result[method] = {"threshold": threshold, **figures(rows, flags)}
    return result


def fit(
    rows: list[dict], data: Featurised, classes: tuple[str, ...], thresholds: dict, c: float = 16.0
) -> safety.Classifier:
    """Both heads fitted on all lines, with the thresholds chosen by cross-validation."""
    heads = {}
    for head in HEADS:
        x = safety.features_for(head, data.embeddings, data.lexical, data.texts)
        coef, intercept = fit_head(x, data.labels, len(classes), c)
        heads[head] = safety.Head(coef, intercept, thresholds[head])
    return safety.Classifier(classes, safety.MappingProxyType(heads), file_sha256(TRAIN_PATH))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def format_table(cv: dict) -> str:
    lines = [
        "| method | threshold | recall | false positives | category agrees | "
        "suicide questions -> info | self-harm -> no answer |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        f = cv[method]
        threshold = "—" if method == "rules" else f"{f['threshold']:.3f}"
        lines.append(
            f"| {method} | {threshold} | {f['caught']}/{f['emergencies']} = {f['recall']:.3f} "
            f"| {f['false_positives']}/{f['ordinary']} = {f['fpr']:.3f} "
            f"| {f['same_category']}/{f['caught']} | {f['info_as_info']}/{f['info_lines']} "
            f"| {f['self_harm_no_answer']}/{f['self_harm_lines']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medchat.safety_train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--c", type=float, default=16.0, help="inverse L2 strength (16)")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=safety.CLASSIFIER_PATH)
    parser.add_argument("--dry-run", action="store_true", help="print CV figures, write nothing")
    args = parser.parse_args(argv)
    rows = load_rows(TRAIN_PATH)
    classes = class_names(rows)
    data = featurise(rows, classes)
    cv = cross_validate(rows, data, classes, args.folds, args.c, args.target_recall)
    families = len(set(data.groups))
    print(f"{len(rows)} training lines, {families} families, {args.folds} grouped folds")
    print(format_table(cv))
    if not args.dry_run:
        thresholds = {head: cv[head]["threshold"] for head in HEADS}
        fit(rows, data, classes, thresholds, args.c).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
