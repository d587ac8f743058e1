"""What a training run writes into its output_dir beside the trainer's own files.

    python -m train --config train/recipes/smollm2-135m-lora.yaml   # writes all of these

`train.sft.train` writes the adapter (cast to `adapter_save_dtype` by `cast_adapter`),
split.json, the prompt style, loss.png (`plot_losses`) and, last, the record DONE_FILE
(`write_record`, one atomic rename): a folder without it is not a finished adapter. The record
names the libraries and the commit it was trained with. `resume_checkpoint` picks the
checkpoint a `--resume_from_checkpoint` run continues from.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path

from medchat.errors import MedchatError

DONE_FILE = "medchat_training.json"
SAVE_DTYPES = ("float32", "float16", "bfloat16")  # adapter_save_dtype's choices


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if len(sha) == 40 else None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def write_record(out: Path, record: dict) -> None:
    """out/DONE_FILE, written whole or not at all."""
    tmp = out / (DONE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(out / DONE_FILE)


def cast_adapter(path: Path, dtype: str) -> str:
    """Rewrite the saved adapter weights in `dtype`; the dtype(s) the file holds after.

    The trainer saves the LoRA weights in the dtype they trained in: bf16 under QLoRA (trl
    casts them, as the QLoRA paper does), float32 otherwise. The file holds what the recipe
    asks for either way (float32 by default; float16 halves the file), and the training
    record says which."""
    import torch
    from safetensors.torch import load_file, save_file

    if dtype not in SAVE_DTYPES:
        raise MedchatError(
            f"adapter_save_dtype {dtype!r} is unknown; use float32, float16 or bfloat16."
        )
    tensors = load_file(path)
    wanted = getattr(torch, dtype)
    if any(t.dtype != wanted for t in tensors.values() if t.is_floating_point()):
        tensors = {
            k: v.to(wanted).contiguous() if v.is_floating_point() else v for k, v in tensors.items()
        }
        save_file(tensors, path, metadata={"format": "pt"})
    return tensor_dtypes(tensors)


def tensor_dtypes(tensors: dict) -> str:
    """The floating-point dtypes of `tensors`, as a name ("float32") or names joined by "+"."""
    names = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    return "+".join(sorted(names))


def resume_checkpoint(resume, out: Path) -> str | None:
    """The checkpoint folder to resume from: the last complete one in `out` for "true",
    "last" or "1", the one given otherwise; None when not resuming."""
    if not resume:
        return None
    if str(resume).lower() in ("true", "last", "1"):
        # A kill during a save leaves a checkpoint without trainer_state.json (written last).
        checkpoints = sorted(
            (
                p
                for p in out.glob("checkpoint-*")
                if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()
            ),
            key=lambda p: int(p.name.split("-")[-1]),
        )
        if not checkpoints:
            raise MedchatError(f"No checkpoint-* folder in {out} to resume from; train without it.")
        return str(checkpoints[-1])
    if not Path(resume).is_dir():
        raise MedchatError(f"Checkpoint {resume!r} does not exist; give a checkpoint-N folder.")
    return str(resume)


def last_value(history: list[dict], key: str):
    """The last logged value of `key` in the trainer's log history, or None."""
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def jsonable(obj):
    """`obj` as plain JSON types (anything else as its str)."""
    return json.loads(json.dumps(obj, default=str))


def plot_losses(history: list[dict], path: Path) -> None:
    """loss.png: the training loss and the validation loss by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
