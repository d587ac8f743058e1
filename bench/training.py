"""LoRA training tokens/s with packing vs padding, on the CPU recipe and MedQuAD rows.

    python -m bench --only train

Each variant is the CPU recipe (train/recipes/smollm2-135m-lora.yaml) read by the training
script's own parser, with flags on top: the same rows, seed and number of steps; only the
batching differs. `padded` pads each batch to its longest row; `packed` is trl's best-fit-
decreasing packing, which trl always runs padding-free (a batch is one flattened row, and the
attention mask is derived from the position ids). Tokens counted are real (non-padding) tokens
fed to the model; the first step is left out of the rate as a warm-up.

Correctness: the mean training loss over the same steps is compared, and one batch of the
same rows is scored both ways by the same model (the losses must agree to rounding).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import log

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "train" / "recipes" / "smollm2-135m-lora.yaml"

# The variants: flags on top of the recipe. `packed_micro1` packs into one 320-token row per
# micro-batch and accumulates gradients over `batch_size` of them (see docs/bench.md).
VARIANTS = {
    "padded": ["--packing", "false"],
    "packed": ["--packing", "true", "--packing_strategy", "bfd"],
}


def _variant_flags(name: str, batch_size: int) -> list[str]:
    if name == "packed_micro1":
        return [
            "--packing",
            "true",
            "--packing_strategy",
            "bfd",
            "--per_device_train_batch_size",
            "1",
            "--gradient_accumulation_steps",
            str(batch_size),
        ]
    return list(VARIANTS[name])


def _trainer_class():
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class CountingTrainer(SFTTrainer):
        """SFTTrainer that counts the real and the padded tokens of every batch it trains on."""

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                ids = inputs["input_ids"]
                if "attention_mask" in inputs:
                    real = int(inputs["attention_mask"].sum())
                else:  # padding-free: one flattened row, no padding unless pad_to_multiple_of
                    real = int(ids.numel())
                self.bench_tokens["real"] += real
                self.bench_tokens["fed"] += int(ids.numel())
            return super().compute_loss(model, inputs, *args, **kwargs)

    class StepClock(TrainerCallback):
        """Seconds and tokens per optimizer step (data loading, forward, backward, update)."""

        def __init__(self, counter: dict):
            self.counter = counter
            self.steps: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()
            self.seen = dict(self.counter)

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            step = {k: self.counter[k] - self.seen[k] for k in self.counter}
            step["seconds"] = now - self.last
            self.steps.append(step)
            self.last, self.seen = now, dict(self.counter)

    return CountingTrainer, StepClock


def _parse(argv: list[str]):
    from train.sft import parse_args

    return parse_args(argv)


def run_variant(name: str, common: list[str], train_ds, batch_size: int, out: Path) -> dict:
    """Train one variant for the recipe's max_steps; tokens/s, losses, the trainer."""
    from transformers.trainer_callback import PrinterCallback
    from trl import get_peft_config

    from medchat.profiles import resolve_profile
    from train.sft import load_for_training

    CountingTrainer, StepClock = _trainer_class()
    script_args, sft_config, model_config = _parse(
        [*common, "--output_dir", str(out / name), *_variant_flags(name, batch_size)]
    )
    profile = resolve_profile(script_args.profile)
    torch.manual_seed(sft_config.seed)
    model, tokenizer, _ = load_for_training(script_args, sft_config, model_config, profile)
    counter = {"real": 0, "fed": 0}
    clock = StepClock(counter)
    trainer = CountingTrainer(
        model=model,
        args=sft_config,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_config),
        callbacks=[clock],
    )
    trainer.bench_tokens = counter
    trainer.remove_callback(PrinterCallback)  # keep the per-step log dicts off stdout
    log(f"training: {name}, {sft_config.max_steps} steps")
    trainer.train()
    timed = clock.steps[1:]  # the first step pays for warm-up
    seconds = sum(s["seconds"] for s in timed)
    real = sum(s["real"] for s in timed)
    fed = sum(s["fed"] for s in timed)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_s": real / seconds,
        "real_tokens_per_step": real / len(timed),
        "fed_tokens_per_step": fed / len(timed),
        "padding_share": 1 - real / fed if fed else 0.0,
        "seconds_per_step": seconds / len(timed),
        "mean_loss": sum(losses) / len(losses) if losses else float("nan"),
        "losses": [round(x, 4) for x in losses],
        "steps": len(clock.steps),
        "trainer": trainer,
    }


def same_rows_losses(padded, packed, n_rows: int = 6) -> tuple[float, float]:
    """The loss of the same rows, batched padded and padding-free, scored by one model."""
    rows = [padded.train_dataset[i] for i in range(n_rows)]
    keep = ("input_ids", "labels", "completion_mask")
    examples = [{k: v for k, v in row.items() if k in keep} for row in rows]
    model = padded.model
    model.eval()
    losses = []
    with torch.no_grad():
        for collator in (padded.data_collator, packed.data_collator):
            batch = padded._prepare_inputs(collator(examples))
            losses.append(float(padded.compute_loss(model, batch)))
    return losses[0], losses[1]


def measure_training(
    *,
    data: str,
    recipe: Path = RECIPE,
    steps: int = 10,
    batch_size: int = 4,
    rows: int = 160,
    variants: tuple[str, ...] = ("padded", "packed"),
    cache_dir: str | None = None,
) -> dict:
    """packed_speedup (packed ÷ padded real tokens/s) and the loss checks."""
    from medchat.profiles import resolve_profile
    from train.sft import build_datasets

    with tempfile.TemporaryDirectory(prefix="medchat-bench-train-") as tmp:
        common = [
            "--config",
            str(recipe),
            "--data_file",
            data,
            "--max_steps",
            str(steps),
            "--per_device_train_batch_size",
            str(batch_size),
            "--max_train_samples",
            str(rows),
            "--max_eval_samples",
            "0",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--logging_steps",
            "1",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
        ]
        if cache_dir:
            common += ["--cache_dir", str(cache_dir)]
        script_args, sft_config, _ = _parse([*common, "--output_dir", tmp])
        train_ds, _, _, _ = build_datasets(script_args, resolve_profile(script_args.profile))
        results = {}
        for name in variants:
            results[name] = run_variant(name, common, train_ds, batch_size, Path(tmp))
        pad_loss, pack_loss = same_rows_losses(
            results["padded"]["trainer"], results["packed"]["trainer"]
        )
    trainers = {name: r.pop("trainer") for name, r in results.items()}
    del trainers
    padded, packed = results["padded"], results["packed"]
    out = {
        "packed_speedup": packed["tokens_per_s"] / padded["tokens_per_s"],
        "packed_loss_rel_diff": abs(packed["mean_loss"] - padded["mean_loss"])
        / padded["mean_loss"],
        "same_rows_loss_rel_diff": abs(pack_loss - pad_loss) / pad_loss,
        "same_rows_losses": {"padded": pad_loss, "packed": pack_loss},
        "train_setup": {
            "recipe": str(recipe.relative_to(REPO)) if recipe.is_relative_to(REPO) else str(recipe),
            "steps": steps,
            "per_device_train_batch_size": batch_size,
            "max_train_samples": rows,
            "max_length": sft_config.max_length,
        },
        "train_variants": results,
    }
    if "packed_micro1" in results:
        out["packed_micro1_speedup"] = (
            results["packed_micro1"]["tokens_per_s"] / padded["tokens_per_s"]
        )
    return out
