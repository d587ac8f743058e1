"""The GPU check's training part (`bench/gpu.py`): packed attention, then (Q)LoRA steps.

    python bench/gpu.py --out $OUT/gpu.json   # runs it when trl and datasets are installed

1. varlen_check: a small Mistral on the device (bf16 on a GPU) scores one packed row through
   sdpa_varlen, and each of its examples alone through plain SDPA; the largest logit
   difference, and which path ran the packed row (`varlen_attn`: torch's flash-attention
   kernel, one call per layer; `sdpa`: SDPA per example). On an H100 or H200 it must be the
   kernel: this is where that CUDA-only branch of train/packing.py runs.
2. steps: the recipe train/recipes/mistral-7b-qlora.yaml, read by train.sft's own parser, on
   the check's random Mistral-7B folder and the shipped MedQuAD rows: 4-bit NF4 with paged
   8-bit AdamW when bitsandbytes is installed, else LoRA on bf16 weights with AdamW; packed,
   gradient checkpointing, sdpa_varlen, as a user trains. --train-steps optimizer steps of 4
   packed rows of up to 1,024 tokens; tokens/s after the first step, peak memory, losses, and
   the packed kernel's calls.
"""

from __future__ import annotations

import importlib.util
import resource
import time
from contextlib import contextmanager
from pathlib import Path

from bench.gpu_report import say

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "train" / "recipes" / "mistral-7b-qlora.yaml"
LENGTHS = (37, 120, 64, 250, 9)  # the packed row of the varlen check


@contextmanager
def kernel_calls():
    """Counts train.packing's calls of the variable-length kernel while inside."""
    from train import packing

    calls = {"n": 0}
    real = packing.packed_kernel

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += out is not None
        return out

    packing.packed_kernel = counted
    try:
        yield calls
    finally:
        packing.packed_kernel = real


def expected_path(device: str, dtype) -> str:
    import torch

    from train.packing import varlen_kernel

    capability = torch.cuda.get_device_capability(0) if device == "cuda" else None
    return varlen_kernel(device, dtype, capability=capability, head_dim=64)


def varlen_check(device: str) -> dict:
    """A packed row against its examples alone, on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    from medchat.testing import TINY_MISTRAL, mistral_config
    from train.packing import VARLEN, register

    register()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = mistral_config(TINY_MISTRAL)
    torch.manual_seed(0)
    with torch.device(device):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        varlen = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=VARLEN)
    varlen.load_state_dict(plain.state_dict())
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 32000, (n,), generator=gen) for n in LENGTHS]
    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    packed = {
        "input_ids": torch.cat(rows)[None].to(device),
        "position_ids": torch.cat([torch.arange(n) for n in LENGTHS])[None].to(device),
        "cu_seq_lens_q": bounds.to(device),
        "cu_seq_lens_k": bounds.to(device),
        "max_length_q": max(LENGTHS),
        "max_length_k": max(LENGTHS),
    }
    with torch.no_grad(), kernel_calls() as calls:
        out = varlen(**packed, use_cache=False).logits[0].float()
        alone = torch.cat(
            [plain(input_ids=r[None].to(device), use_cache=False).logits[0].float() for r in rows]
        )
    diff = float((out - alone).abs().max())
    scale = float(alone.abs().max())
    path = expected_path(device, dtype)
    result = {
        "dtype": str(dtype).removeprefix("torch."),
        "lengths": list(LENGTHS),
        "path": path,
        "kernel_calls": calls["n"],
        "max_abs_diff": diff,
        "max_abs_logit": scale,
    }
    if (path == "varlen_attn") != (calls["n"] == config.num_hidden_layers):
        raise RuntimeError(f"expected the {path} path, got {calls['n']} kernel calls: {result}")
    if diff > (0.05 if dtype == torch.bfloat16 else 1e-4) * max(1.0, scale):
        raise RuntimeError(f"a packed row's logits differ from its examples alone: {result}")
    return result


def recipe_argv(args, snapshot: Path, out: Path, *, four_bit: bool) -> list[str]:
    """The QLoRA recipe, with what a short check changes."""
    batch = 2 if args.tiny else 4
    argv = ["--config", str(RECIPE), "--model_name_or_path", str(snapshot)]
    argv += ["--data_file", str(ROOT / "assets" / "data" / "medquad.parquet")]
    argv += ["--output_dir", str(out), "--max_steps", str(args.train_steps)]
    argv += ["--max_train_samples", str(args.train_steps * batch * 8), "--max_eval_samples", "0"]
    argv += ["--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1"]
    argv += ["--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1"]
    argv += ["--include_num_input_tokens_seen", "true", "--dataloader_num_workers", "0"]
    if not four_bit:
        argv += ["--load_in_4bit", "false", "--optim", "adamw_torch"]
    if args.device != "cuda":
        argv += ["--bf16", "false", "--dtype", "float32", "--gradient_checkpointing", "false"]
    if args.tiny:
        argv += ["--max_length", "256"]
    return argv


def train_steps(args, ctx: dict) -> dict:
    """--train-steps optimizer steps of the recipe; figures of the steps after the first."""
    import torch
    from transformers import TrainerCallback
    from trl import get_peft_config

    from medchat.profiles import resolve_profile
    from train.model import load_for_training
    from train.sft import build_datasets, drop_overlong, parse_args, sft_trainer

    four_bit = args.device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    argv = recipe_argv(args, ctx["snapshot"], ctx["scratch"] / "train", four_bit=four_bit)
    script_args, sft_config, model_config = parse_args(argv)
    profile = resolve_profile(script_args.profile)
    train_ds, _, _, _ = build_datasets(script_args, profile)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, tokenizer, _ = load_for_training(script_args, sft_config, model_config, profile)
    load_s = time.perf_counter() - t0
    train_ds, too_long = drop_overlong(train_ds, tokenizer, sft_config.max_length)
    marks: list[tuple[float, int, float | None]] = []

    class Marks(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            if args.device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), state.num_input_tokens_seen, None))

        def on_log(self, a, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and marks:
                marks[-1] = (*marks[-1][:2], float(logs["loss"]))

    peft_config = get_peft_config(model_config)
    trainer = sft_trainer(
        model, tokenizer, sft_config, train_ds, peft_config=peft_config, callbacks=[Marks()]
    )
    with kernel_calls() as calls:
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    losses = [m[2] for m in marks if m[2] is not None]
    timed = marks[-1][0] - marks[0][0] if len(marks) > 1 else None
    tokens = marks[-1][1] - marks[0][1] if len(marks) > 1 else None
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = {
        "weights": "4-bit NF4 (QLoRA)" if four_bit else str(model.dtype).removeprefix("torch."),
        "optimizer": sft_config.optim,
        "attn_implementation": model.config._attn_implementation,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "gradient_checkpointing": bool(sft_config.gradient_checkpointing),
        "load_s": round(load_s, 1),
        "rows": len(train_ds),
        "rows_too_long": too_long,
        "steps": trainer.state.global_step,
        "train_s": round(wall, 1),
        "tokens": marks[-1][1] if marks else None,
        "tokens_per_s": tokens / timed if timed else None,
        "seconds_per_step": timed / (len(marks) - 1) if timed else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "trainable_parameters": trainable,
        "packed_kernel_calls": calls["n"],
        "packed_path": expected_path(args.device, model.dtype if not four_bit else torch.bfloat16),
    }
    if args.device == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        result["process_peak_rss_mib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        )
    del trainer, model
    return result


def train_part(report, args, ctx: dict, section: dict) -> None:
    section["recipe"] = str(RECIPE.relative_to(ROOT))
    report.step(section, "varlen_check", lambda: varlen_check(args.device), estimate_s=10)
    steps = report.step(section, "steps", lambda: train_steps(args, ctx), estimate_s=60)
    if steps:
        say(f"  trained {steps['steps']} steps: {steps['weights']}, {steps['packed_path']}")


def summary(section: dict) -> dict:
    steps = section.get("steps", {})
    check = steps.get("varlen_check", {})
    run = steps.get("steps", {})
    return {
        "status": section.get("status"),
        "varlen_path": check.get("path"),
        "varlen_max_abs_diff": check.get("max_abs_diff"),
        "weights": run.get("weights"),
        "steps": run.get("steps"),
        "tokens_per_s": run.get("tokens_per_s"),
        "peak_gib": run.get("peak_gib"),
        "first_loss": run.get("first_loss"),
        "last_loss": run.get("last_loss"),
        "packed_kernel_calls": run.get("packed_kernel_calls"),
    }
