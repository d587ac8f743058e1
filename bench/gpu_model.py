"""The GPU check's setup (`bench/gpu.py`): the model folder, its adapter, the tokenizer.

    python bench/gpu.py --out $OUT/gpu.json --offline   # the command that uses it

A random-init model of Mistral-7B-Instruct-v0.2's exact shape (or the tiny one with --tiny)
goes into a private, offline Hugging Face cache under the real hub id, with the v1 tokenizer
that travels in this repository, so the real profiles load it unchanged; a random r-64 LoRA
adapter trained "on" that id goes beside it. `copy_bandwidth` measures the memory bandwidth
that bounds decoding.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.gpu_env import release, sync
from bench.gpu_report import median, say

MODEL_ID = "mistralai/Mistral-7B-Instruct-v0.2"  # what both Mistral profiles load
COMMIT = "0" * 40  # the private cache's one snapshot
# The transformers the exact token ids were taken with; under others a mismatch is a warning.
TOKENIZER_CHECKED_WITH = (5, 24)
LORA_R = 64


def isolate_hub(scratch: Path) -> Path:
    """A private, offline Hugging Face cache (set before transformers is imported)."""
    hub = scratch / "hub"
    os.environ["HF_HUB_CACHE"] = str(hub)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    repo = hub / ("models--" + MODEL_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def tokenizer_file(given: str | None) -> Path:
    from medchat.testing import MISTRAL_V1_TOKENIZER

    path = Path(given).expanduser() if given else MISTRAL_V1_TOKENIZER
    if not path.is_file():
        raise RuntimeError(f"no tokenizer file at {path}")
    return path


def mistral_config(tiny: bool):
    from medchat.testing import MISTRAL_7B, TINY_MISTRAL
    from medchat.testing import mistral_config as config_of

    return config_of(TINY_MISTRAL if tiny else MISTRAL_7B)


def write_model(args, snapshot: Path, adapter_dir: Path, section: dict) -> None:
    """Random bf16 weights (EOS never chosen) + tokenizer in the cache; a random r-64 LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medchat.testing import MISTRAL_7B, ROPE_THETA, write_mistral_tokenizer

    config = mistral_config(args.tiny)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        model.get_output_embeddings().weight[config.eos_token_id].zero_()
    model.eval()
    sync(args.device)
    section["build_s"] = round(time.perf_counter() - t0, 1)
    section["parameters"] = sum(p.numel() for p in model.parameters())
    section["config"] = {k: getattr(config, k, None) for k in MISTRAL_7B} | {
        "rope_theta": ROPE_THETA,
        "head_dim": getattr(config, "head_dim", None),
    }
    t0 = time.perf_counter()
    model.save_pretrained(snapshot, max_shard_size="5GB")
    write_mistral_tokenizer(snapshot, tokenizer_file(args.tokenizer))
    section["save_s"] = round(time.perf_counter() - t0, 1)
    section["model_gib"] = round(
        sum(f.stat().st_size for f in snapshot.glob("*.safetensors")) / 2**30, 2
    )

    t0 = time.perf_counter()
    torch.manual_seed(1)
    lora = LoraConfig(
        r=LORA_R,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules="all-linear",
        init_lora_weights=False,  # random A and B: the tuned model differs from the base
        task_type="CAUSAL_LM",
    )
    tuned = get_peft_model(model, lora)
    tuned.save_pretrained(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = MODEL_ID  # what medchat's adapter check compares
    cfg_path.write_text(json.dumps(cfg, indent=2))
    section["adapter"] = {
        "r": LORA_R,
        "target_modules": sorted(cfg.get("target_modules") or []),
        "parameters": sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n),
        "save_s": round(time.perf_counter() - t0, 1),
    }
    del tuned, model
    release(args.device)


def check_tokenizer(section: dict, notes: list[str]) -> None:
    """The v1 tokenizer, as the profiles load it, gives Mistral's own ids: exactly under the
    transformers they were taken with (5.24 and later), a warning in `notes` under others."""
    import transformers

    from medchat.loading import load_tokenizer
    from medchat.profiles import MISTRAL_7B_BF16
    from medchat.testing import GLAUCOMA_IDS

    tok = load_tokenizer(MISTRAL_7B_BF16, MODEL_ID)
    ids = tok("What is glaucoma?", add_special_tokens=False)["input_ids"]
    section["tokenizer"] = {"class": type(tok).__name__, "glaucoma_ids_match": ids == GLAUCOMA_IDS}
    if ids == GLAUCOMA_IDS:
        return
    message = f"the v1 tokenizer gave {ids} for 'What is glaucoma?', not {GLAUCOMA_IDS}"
    release = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    if release >= TOKENIZER_CHECKED_WITH:
        raise RuntimeError(message)
    warning = f"{message} (transformers {transformers.__version__}; ids taken with 5.24)"
    section["tokenizer"]["warning"] = warning
    notes.append("warning: " + warning)
    say("  warning: " + warning)


def copy_bandwidth(device: str, tiny: bool) -> dict:
    """Bytes read + written per second by a device-to-device copy of a large buffer."""
    import torch

    n = (64 if tiny else 4096) * 2**20
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    times = []
    for _ in range(5 if tiny else 20):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    del src, dst
    return {"bytes": n, "bandwidth_gb_s": round(2 * n / median(times) / 1e9, 1)}
