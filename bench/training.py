"""LoRA training tokens/s, packed (padding-free) vs padded, on the CPU recipe and MedQuAD rows.

    python -m bench --only train
    python -m bench --only train --train-variants padded,packed,packed_sdpa --train-batch 6

Every variant is built the way the training script builds it: the CPU recipe
(train/recipes/smollm2-135m-lora.yaml) read by train.sft's own parser with flags on top,
train.sft.build_datasets and train.model.load_for_training, then trl's SFTTrainer with the
recipe's LoRA, its collator and its loss. One fresh model per variant, from the same seed.

Each step, every variant trains on exactly the same rows, drawn at random as a padded
recipe's sampler draws them, from the same LoRA start, so tokens/s and losses compare like
with like:
- `packed`: the recipe (`packing: true`, `attn_implementation: sdpa_varlen`): the step's
  rows end to end in one padding-free row, attention within each row (train/packing.py).
  With padding-free batches, which pack a row came in changes nothing but the step's rows.
- `padded`: `--packing false --attn_implementation sdpa`: one row per batch row, padded to the
  longest, with the padding mask.
- `packed_sdpa`: the packed row under plain sdpa (the block-diagonal mask over the whole row),
  what packing cost before sdpa_varlen.
The optimizer loop is written out (as Trainer runs it in one process, without mixed
precision) so the variants' steps can alternate: A B C, C B A, ... Drift on a shared machine
then hits every variant alike. The first step is a warm-up and is left out of the rates.

Correctness: the mean loss over the same steps is compared, and one batch of the same rows is
scored by one model both ways in eval mode (no dropout): the two losses must agree to rounding.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import log

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "train" / "recipes" / "smollm2-135m-lora.yaml"
FLAGS = {
    "padded": ["--packing", "false", "--attn_implementation", "sdpa"],
    "packed": ["--packing", "true"],  # the recipe's own attention: sdpa_varlen
    "packed_sdpa": ["--packing", "true", "--attn_implementation", "sdpa"],
}


def _parse(argv: list[str]):
    from train.sft import parse_args

    return parse_args(argv)


def _trainer(common: list[str], train_ds, *, variant: str, out: Path):
    """An SFTTrainer set up as the training script would, with its own fresh model."""
    from trl import get_peft_config

    from medchat.profiles import resolve_profile
    from train.model import load_for_training
    from train.sft import sft_trainer

    flags = FLAGS[variant]
    script_args, sft_config, model_config = _parse([*common, "--output_dir", str(out), *flags])
    profile = resolve_profile(script_args.profile)
    torch.manual_seed(sft_config.seed)  # the same LoRA initialisation for every variant
    model, tokenizer, _ = load_for_training(script_args, sft_config, model_config, profile)
    peft_config = get_peft_config(model_config)
    trainer = sft_trainer(model, tokenizer, sft_config, train_ds, peft_config=peft_config)
    trainer.create_optimizer_and_scheduler(num_training_steps=sft_config.max_steps)
    return trainer


def as_pack(row: dict) -> dict:
    """A tokenised row as a one-example pack, the form trl's padding-free collator takes."""
    return {**row, "seq_lengths": [len(row["input_ids"])]}


def _label_count(batch: dict) -> int:
    """Tokens the loss averages over: labels after the causal shift that are not -100."""
    return int(batch["labels"][..., 1:].ne(-100).sum())


def _optimizer_step(trainer, micro_batches: list[dict]) -> dict:
    """One optimizer step over `micro_batches` (gradients accumulated), as Trainer does it."""
    model = trainer.model
    model.train()
    n_items = sum(_label_count(b) for b in micro_batches)
    loss_sum = 0.0
    for batch in micro_batches:
        inputs = trainer._prepare_inputs(batch)
        loss = trainer.compute_loss(model, inputs, num_items_in_batch=n_items)
        loss.backward()
        loss_sum += float(loss.detach())
    if trainer.args.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    fed = sum(int(b["input_ids"].numel()) for b in micro_batches)
    return {"loss": loss_sum, "fed_tokens": fed}


def same_rows_losses(padded, packed, rows: list[dict]) -> tuple[float, float]:
    """The loss of the same rows, batched padded and padding-free, scored by one model.

    The packed trainer's model (sdpa_varlen) scores both: the padded batch goes through its
    plain-SDPA path with the padding mask, the packed row through the per-example path.
    """
    model = packed.model
    model.eval()
    losses = []
    with torch.no_grad():
        for batch in (padded.data_collator(rows), packed.data_collator([as_pack(r) for r in rows])):
            losses.append(float(packed.compute_loss(model, packed._prepare_inputs(batch))))
    return losses[0], losses[1]


def measure_training(
    *,
    data: str,
    recipe: Path = RECIPE,
    steps: int = 10,
    batch: int = 6,
    rows: int = 160,
    variants: tuple[str, ...] = ("padded", "packed"),
    cache_dir: str | None = None,
) -> dict:
    """packed_speedup (packed ÷ padded tokens/s on the same rows) and the loss checks."""
    from medchat.profiles import resolve_profile
    from train.sft import build_datasets

    common = [
        "--config",
        str(recipe),
        "--data_file",
        data,
        "--max_steps",
        str(steps),
        "--max_train_samples",
        str(rows),
        "--max_eval_samples",
        "0",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
    ]
    if cache_dir:
        common += ["--cache_dir", str(cache_dir)]
    with tempfile.TemporaryDirectory(prefix="medchat-bench-train-") as tmp:
        # 1. The rows, exactly as the training script selects and formats them.
        script_args, sft_config, _ = _parse([*common, "--output_dir", tmp])
        train_ds, _, _, _ = build_datasets(script_args, resolve_profile(script_args.profile))
        # 2. One trainer (own model, optimizer, collator) per variant.
        trainers = {}
        for name in variants:
            log(f"training: setting up {name}")
            trainers[name] = _trainer(common, train_ds, variant=name, out=Path(tmp) / name)
        tokenised = trainers["padded"].train_dataset  # one tokenised row per example
        if len(tokenised) < steps * batch:
            raise ValueError(
                f"{len(tokenised)} rows is fewer than {steps} steps x {batch} rows; raise "
                "--train-rows."
            )
        order = torch.randperm(len(tokenised), generator=torch.Generator().manual_seed(0))
        # 3. The steps, variants alternating; each step's rows are the same for all.
        log(f"training: {steps} steps of {batch} rows, variants {', '.join(variants)}")
        history: dict[str, list[dict]] = {name: [] for name in variants}
        first_rows = None
        for step in range(steps):
            picked = order[step * batch : (step + 1) * batch]
            step_rows = [{k: tokenised[int(i)][k] for k in ("input_ids", "labels")} for i in picked]
            first_rows = first_rows or step_rows
            real = sum(len(r["input_ids"]) for r in step_rows)
            names = list(variants) if step % 2 == 0 else list(variants)[::-1]
            for name in names:
                trainer = trainers[name]
                start = time.perf_counter()
                if name == "padded":
                    micro = [trainer.data_collator(step_rows)]
                else:
                    micro = [trainer.data_collator([as_pack(r) for r in step_rows])]
                result = _optimizer_step(trainer, micro)
                result["seconds"] = time.perf_counter() - start
                result["real_tokens"] = real
                result["rows"] = len(step_rows)
                history[name].append(result)
        lengths = [len(x) for x in tokenised["input_ids"]]
        shape = batch_shape(
            lengths,
            trainers["packed"].train_dataset,
            batch_sizes=(batch, 16),
            max_length=sft_config.max_length,
        )
        shape["attn_implementation"] = {
            name: t.model.config._attn_implementation for name, t in trainers.items()
        }
        pad_loss, pack_loss = same_rows_losses(
            trainers["padded"], trainers["packed"], first_rows[: min(6, len(first_rows))]
        )
        del trainers
    out = summarize(history, pad_loss, pack_loss, steps, batch, rows, sft_config, recipe)
    out["row_shapes"] = shape
    return out


def batch_shape(
    lengths: list[int],
    packed_ds,
    *,
    batch_sizes: tuple[int, ...],
    max_length: int,
    draws: int = 2000,
) -> dict:
    """What padding costs, from the rows' token lengths.

    The share of padding in random batches of each of `batch_sizes` rows padded to their
    longest (the step of this benchmark, and the 16 rows of a padded recipe), and how full
    trl's packs are (real tokens over packs x max_length).
    """
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor(lengths, dtype=torch.float64)
    out = {
        "rows": len(lengths),
        "row_tokens_median": float(t.median()),
        "row_tokens_min": int(t.min()),
        "row_tokens_max": int(t.max()),
    }
    for size in batch_sizes:
        batches = t[torch.randint(len(lengths), (draws, size), generator=gen)]
        padding = 1 - batches.sum() / (batches.max(dim=1).values.sum() * size)
        out[f"padding_share_random_batch_{size}"] = float(padding)
    pack_lengths = [sum(x) for x in packed_ds["seq_lengths"]]
    out["rows_per_pack"] = len(lengths) / len(pack_lengths)
    out["pack_fill"] = sum(pack_lengths) / (len(pack_lengths) * max_length)
    return out


def summarize(history, pad_loss, pack_loss, steps, batch, rows, sft_config, recipe) -> dict:
    timed = {name: h[1:] for name, h in history.items()}  # step 1 is the warm-up

    def rate(name: str) -> float:
        return sum(s["real_tokens"] for s in timed[name]) / sum(s["seconds"] for s in timed[name])

    def speedup(name: str) -> float:
        # Per step, the padded time over this variant's time on the same rows; the median.
        pairs = zip(timed["padded"], timed[name], strict=True)
        return statistics.median(p["seconds"] / v["seconds"] for p, v in pairs)

    def mean_loss(name: str) -> float:
        return statistics.fmean(s["loss"] for s in history[name])

    variants = {}
    for name, steps_done in history.items():
        fed = sum(s["fed_tokens"] for s in timed[name])
        real = sum(s["real_tokens"] for s in timed[name])
        variants[name] = {
            "tokens_per_s": rate(name),
            "seconds_per_step": statistics.fmean(s["seconds"] for s in timed[name]),
            "real_tokens_per_step": real / len(timed[name]),
            "fed_tokens_per_step": fed / len(timed[name]),
            "padding_share": 1 - real / fed,
            "rows_per_step": statistics.fmean(s["rows"] for s in steps_done),
            "mean_loss": mean_loss(name),
            "losses": [round(s["loss"], 4) for s in steps_done],
            "seconds": [round(s["seconds"], 2) for s in steps_done],
        }
    out = {
        "packed_speedup": speedup("packed"),
        "packed_loss_rel_diff": abs(mean_loss("packed") - mean_loss("padded"))
        / mean_loss("padded"),
        "same_rows_loss_rel_diff": abs(pack_loss - pad_loss) / pad_loss,
        "same_rows_losses": {"padded": pad_loss, "packed": pack_loss},
        "train_setup": {
            "recipe": str(recipe.relative_to(REPO)) if recipe.is_relative_to(REPO) else str(recipe),
            "steps": steps,
            "rows_per_step": batch,
            "max_train_samples": rows,
            "max_length": sft_config.max_length,
            "learning_rate": sft_config.learning_rate,
            "lora_dropout_active": True,
        },
        "train_variants": variants,
    }
    if "packed_sdpa" in history:
        out["packed_sdpa_speedup"] = speedup("packed_sdpa")
    return out
