"""Fit the triage classifier on the training lines and print its cross-validated figures.

    python -m medchat.safety_train              # refit, print CV figures, write classifier.npz
    python -m medchat.safety_train --dry-run    # CV figures only, nothing written

Reads `medchat/safety_data/redflags_train.jsonl` (text, emergency, level, category, lang,
family; `voice` on the long lines) and nothing else: the held-out files in tests/ are for the
final score only and no code here opens them. Steps:
1. Split every line into the parts triage scores (`safety.split_parts`: the whole, each
   sentence, each window of two sentences), embed each part (all-MiniLM-L6-v2) and compute its
   rule and story features.
2. Cross-validate, folds grouped by paraphrase family (StratifiedGroupKFold), so no family is
   both trained on and scored. Each fold fits two multinomial logistic regressions, "combined"
   (embedding + rule and story features + character n-grams) and "classifier" (embedding
   alone), on the whole text of every training line (its class: the emergency category,
   "urgent", "self_harm_info" or "none") plus every other part of the self-care lines as "none"
   (no part of a self-care story is an emergency; which part of an emergency story carries it
   is not labelled, so those parts are not trained on).
3. On the out-of-fold scores (the highest over a line's parts), pick each head's emergency
   threshold, the highest whose recall reaches `--target-recall`, then its urgent threshold,
   the one that gives the best three-level accuracy over the lines. Print recall, false
   positives, three-level accuracy and category agreement for the rules alone, the classifier
   alone and the combined method.
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
FIELDS = ("text", "emergency", "level", "category", "lang", "family")
LEVELS = ("emergency", "urgent", "self-care")
HEADS = safety.HEADS
METHODS = ("rules", "classifier", "combined")
# The long descriptions are few beside the short lines; each of their parts weighs this much
# in the fit (grouped cross-validation: 4 gave fewer false alarms on them than 1 or 10).
LONG_WEIGHT = 4.0
# The most self-care lines that may get a notice (emergency or urgent) under cross-validation.
SELF_CARE_NOTICE_LIMIT = 0.10


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
        if row["level"] not in LEVELS or row["emergency"] != (row["level"] == "emergency"):
            raise MedchatError(
                f"{path}:{number} has level {row['level']!r}; use one of {', '.join(LEVELS)}, "
                "with emergency true exactly for the emergencies."
            )
        rows.append(row)
    return rows


def label(row: dict) -> str:
    """The class a line trains: its category when an emergency, else self_harm_info, urgent
    or none."""
    if row["emergency"]:
        return row["category"]
    if row["category"] == safety.INFO_CATEGORY:
        return safety.INFO_CATEGORY
    return safety.URGENT_CATEGORY if row["level"] == "urgent" else "none"


def class_names(rows: list[dict]) -> tuple[str, ...]:
    emergencies = sorted({row["category"] for row in rows if row["emergency"]})
    return ("none", safety.INFO_CATEGORY, safety.URGENT_CATEGORY, *emergencies)


@dataclass(frozen=True)
class Featurised:
    """Everything the fits need, computed once per line and part."""

    parts: safety.Parts
    embeddings: np.ndarray  # one row per part
    part_labels: np.ndarray  # class index a part trains, -1 when it is not trained on
    labels: np.ndarray  # class index per line
    groups: np.ndarray  # paraphrase family per line
    emergency: np.ndarray  # bool per line
    by_line: tuple[np.ndarray, ...]  # the part indices of each line
    weights: np.ndarray  # per part: LONG_WEIGHT for the parts of long descriptions, else 1

    @property
    def hits(self) -> list:
        return [self.parts.hits[i[0]] for i in self.by_line]


def featurise(rows: list[dict], classes: tuple[str, ...]) -> Featurised:
    parts = safety.split_parts([row["text"] for row in rows])
    labels = np.array([classes.index(label(row)) for row in rows])
    part_labels = np.full(len(parts.texts), -1)
    none = classes.index("none")
    for i, (line, whole) in enumerate(zip(parts.owner, parts.whole, strict=True)):
        row = rows[line]
        if whole:
            part_labels[i] = labels[line]
        elif row["level"] == "self-care" and row["category"] != safety.INFO_CATEGORY:
            part_labels[i] = none
    return Featurised(
        parts=parts,
        embeddings=safety.embed(parts.texts),
        part_labels=part_labels,
        labels=labels,
        groups=np.array([row["family"] for row in rows]),
        emergency=np.array([bool(row["emergency"]) for row in rows]),
        by_line=tuple(np.flatnonzero(parts.owner == i) for i in range(len(rows))),
        weights=np.where(long_lines(rows)[parts.owner], LONG_WEIGHT, 1.0),
    )


def fit_head(
    x, labels: np.ndarray, n_classes: int, c: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of a multinomial logistic regression, one row per class in order;
    a class absent from `labels` gets zero weights and a very low intercept (probability 0)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=3000)
    model.fit(x, labels, sample_weight=weights)
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


def level_of(flag) -> str:
    """The three-level outcome of a flag: emergency, urgent, or self-care (no notice, or the
    suicide-question resources, which say nothing about seeing a doctor)."""
    if flag is None or flag.level == "info":
        return "self-care"
    return flag.level


def pick_urgent_threshold(
    concern: np.ndarray, before: list[str], levels: list[str], weight: np.ndarray
) -> float:
    """The urgent threshold with the best weighted three-level accuracy, given each line's
    urgent score (`concern`) and its outcome without the urgent notice (`before`), among those
    that give at most SELF_CARE_NOTICE_LIMIT of the self-care lines a notice of either kind."""
    truth = np.array(levels)
    free = np.array([b == "self-care" for b in before])
    base = np.array(before) == truth
    self_care = truth == "self-care"
    already = int((self_care & ~free).sum())
    best, best_score = np.inf, float((base * weight).sum())
    for threshold in np.unique(concern[free]) - 1e-6:
        urgent = free & (concern >= threshold)
        noticed = already + int((urgent & self_care).sum())
        if noticed > SELF_CARE_NOTICE_LIMIT * max(int(self_care.sum()), 1):
            continue
        right = np.where(urgent, truth == "urgent", base)
        score = float((right * weight).sum())
        if score > best_score + 1e-9:
            best, best_score = float(threshold), score
    return best


def outcomes(method: str, head, classes: tuple[str, ...], probs, data: Featurised) -> list:
    """safety.decide for each line (probabilities one row per part)."""
    hits = data.parts.hits
    if method == "rules":
        return [safety.decide_by_rules([hits[i] for i in rows]) for rows in data.by_line]
    return [
        safety.decide(method, head, classes, probs[rows], [hits[i] for i in rows])
        for rows in data.by_line
    ]


def figures(rows: list[dict], flags: list) -> dict:
    """Recall, false positives, three-level accuracy, category agreement and self-harm
    handling of some flags.

    An emergency is caught by an emergency flag; a line that is not an emergency is a false
    positive when it gets one. A self-care line is "noticed" when it gets the emergency or
    the urgent notice. Questions about suicide should get self_harm_info; first-person
    self-harm should get the crisis notice and no answer.
    """
    pairs = list(zip(rows, flags, strict=True))
    caught = [(r, f) for r, f in pairs if r["emergency"]]
    hits = [(r, f) for r, f in caught if f is not None and f.is_emergency]
    ordinary = [(r, f) for r, f in pairs if not r["emergency"]]
    false = [(r, f) for r, f in ordinary if f is not None and f.is_emergency]
    info = [(r, f) for r, f in ordinary if r["category"] == safety.INFO_CATEGORY]
    self_harm = [(r, f) for r, f in caught if r["category"] == "self_harm"]
    self_care = [(r, f) for r, f in pairs if r.get("level") == "self-care"]
    urgent = [(r, f) for r, f in pairs if r.get("level") == "urgent"]
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
        "lines": len(pairs),
        "level_right": sum(level_of(f) == r.get("level") for r, f in pairs),
        "three_level": sum(level_of(f) == r.get("level") for r, f in pairs) / max(len(pairs), 1),
        "self_care": len(self_care),
        "self_care_noticed": sum(level_of(f) != "self-care" for _, f in self_care),
        "urgent_lines": len(urgent),
        "urgent_as_urgent": sum(level_of(f) == "urgent" for _, f in urgent),
    }


def cross_validate(
    rows: list[dict],
    data: Featurised,
    classes: tuple[str, ...],
    folds: int = 5,
    c: float = 16.0,
    target_recall: float = 0.95,
    seed: int = 0,
    probs: dict[str, np.ndarray] | None = None,
) -> dict:
    """Out-of-fold thresholds and figures of each method, folds grouped by family; the flags
    themselves under "flags". `probs`: out_of_fold_probs already computed."""
    if probs is None:
        probs = out_of_fold_probs(rows, data, classes, folds, c, seed)
    return {
        method: evaluate(method, rows, data, classes, probs.get(method), target_recall)
        for method in METHODS
    }


def out_of_fold_probs(
    rows: list[dict],
    data: Featurised,
    classes: tuple[str, ...],
    folds: int = 5,
    c: float = 16.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per head, each part's class probabilities from the fold that did not train on its
    line's family."""
    from sklearn.model_selection import StratifiedGroupKFold

    parts = data.parts
    probs = {head: np.zeros((len(parts.texts), len(classes))) for head in HEADS}
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    inputs = {head: safety.features_for(head, data.embeddings, parts) for head in HEADS}
    for train, test in splitter.split(np.zeros(len(rows)), data.emergency, data.groups):
        fit_rows = np.flatnonzero(np.isin(parts.owner, train) & (data.part_labels >= 0))
        score_rows = np.flatnonzero(np.isin(parts.owner, test))
        for head in HEADS:
            x = inputs[head]
            coef, intercept = fit_head(
                x[fit_rows], data.part_labels[fit_rows], len(classes), c, data.weights[fit_rows]
            )
            probs[head][score_rows] = safety.Head(coef, intercept, 0.0).probabilities(x[score_rows])
    return probs


def line_scores(method: str, data: Featurised, classes, probs) -> tuple[np.ndarray, np.ndarray]:
    """Each line's emergency score (its highest part's; infinite when an urgent rule phrase
    flags it, as the combined method lets it) and urgent score."""
    emergency, concern = safety.scores(classes, probs)
    line_emergency = np.array([emergency[i].max() for i in data.by_line])
    line_concern = np.array([concern[i].max() for i in data.by_line])
    if method == "combined":  # urgent rule phrases flag whatever the score
        pet = safety.LEXICAL_FEATURES.index("pet")
        urgent = np.array(
            [
                any(data.parts.hits[i].urgent and not data.parts.hits[i].features[pet] for i in r)
                for r in data.by_line
            ]
        )
        line_emergency = np.where(urgent, np.inf, line_emergency)
    return line_emergency, line_concern


def long_lines(rows: list[dict]) -> np.ndarray:
    """True for the long descriptions (the lines that carry a `voice`)."""
    return np.array(["voice" in row for row in rows])


def evaluate(method, rows, data: Featurised, classes, probs, target_recall: float) -> dict:
    """Thresholds picked on out-of-fold probabilities, and the figures they give."""
    if method == "rules":
        flags = outcomes(method, None, classes, None, data)
        return {
            "threshold": 0.0,
            "urgent_threshold": np.inf,
            "flags": flags,
            **figures(rows, flags),
        }
    line_emergency, line_concern = line_scores(method, data, classes, probs)
    threshold = pick_threshold(line_emergency, data.emergency, target_recall)
    head = safety.Head(np.zeros(1), np.zeros(1), threshold)
    before = [level_of(f) for f in outcomes(method, head, classes, probs, data)]
    weight = long_lines(rows).astype(float)  # the urgent level is taught by the long lines
    urgent_threshold = pick_urgent_threshold(
        line_concern, before, [r["level"] for r in rows], weight
    )
    head = safety.Head(np.zeros(1), np.zeros(1), threshold, urgent_threshold)
    flags = outcomes(method, head, classes, probs, data)
    return {
        "threshold": threshold,
        "urgent_threshold": urgent_threshold,
        "flags": flags,
        **figures(rows, flags),
    }


def fit(
    rows: list[dict], data: Featurised, classes: tuple[str, ...], cv: dict, c: float = 16.0
) -> safety.Classifier:
    """Both heads fitted on all lines, with the thresholds chosen by cross-validation."""
    from types import MappingProxyType

    heads = {}
    trained = np.flatnonzero(data.part_labels >= 0)
    for head in HEADS:
        x = safety.features_for(head, data.embeddings, data.parts)
        coef, intercept = fit_head(
            x[trained], data.part_labels[trained], len(classes), c, data.weights[trained]
        )
        heads[head] = safety.Head(
            coef, intercept, cv[head]["threshold"], cv[head]["urgent_threshold"]
        )
    return safety.Classifier(classes, MappingProxyType(heads), file_sha256(TRAIN_PATH))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def format_table(cv: dict) -> str:
    lines = [
        "| method | thresholds | recall | false positives | three-level | self-care noticed "
        "| urgent as urgent | category agrees | suicide questions -> info "
        "| self-harm -> no answer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        f = cv[method]
        thresholds = (
            "—"
            if method == "rules"
            else f"{f['threshold']:.3f} / {f.get('urgent_threshold', 0.0):.3f}"
        )
        lines.append(
            f"| {method} | {thresholds} | {f['caught']}/{f['emergencies']} = {f['recall']:.3f} "
            f"| {f['false_positives']}/{f['ordinary']} = {f['fpr']:.3f} "
            f"| {f['level_right']}/{f['lines']} = {f['three_level']:.3f} "
            f"| {f['self_care_noticed']}/{f['self_care']} "
            f"| {f['urgent_as_urgent']}/{f['urgent_lines']} "
            f"| {f['same_category']}/{f['caught']} | {f['info_as_info']}/{f['info_lines']} "
            f"| {f['self_harm_no_answer']}/{f['self_harm_lines']} |"
        )
    return "\n".join(lines)


def subset(rows: list[dict], cv: dict, keep: np.ndarray) -> dict:
    """The figures of each method over some of the lines (e.g. the long ones)."""
    chosen = [r for r, k in zip(rows, keep, strict=True) if k]
    out = {}
    for method, f in cv.items():
        flags = [g for g, k in zip(f["flags"], keep, strict=True) if k]
        out[method] = {**f, **figures(chosen, flags)}
    return out


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
    print(f"\nthe {int(long_lines(rows).sum())} long descriptions among them:")
    print(format_table(subset(rows, cv, long_lines(rows))))
    if not args.dry_run:
        fit(rows, data, classes, cv, args.c).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
