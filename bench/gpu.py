"""Mistral-7B-shaped benchmarks on one CUDA GPU, without hub access and without the repo's venv.

    python3 bench/gpu.py --out bench/gpu_results.json        # on the GPU machine, < 8 min
    python3 bench/gpu.py --tiny --device cpu --out /tmp/g.json  # smoke run of every code path

What it measures, on a random-init model with Mistral-7B-Instruct-v0.2's exact config and the
real v1 tokenizer (from mistral_common, or the folder or file given by --tokenizer):
1. device-to-device copy bandwidth (read + write bytes per second);
2. decode tokens/s at batch 1 in bf16, as a share of the bandwidth limit (weight bytes read
   per token against the copy bandwidth);
3. pair_ratio: a two-row mixed-adapter generate (base row + random LoRA row) ÷ one LoRA row;
4. the same decode figures in 4-bit NF4 (bitsandbytes, double quantisation, bf16 compute);
5. QLoRA training tokens/s and peak memory over --train-steps steps on MedQuAD-shaped rows
   (lengths log-normal, median 250 tokens, tail cut at 1024), trl's packing (best-fit
   decreasing, padding-free) with the recipes' sdpa_varlen attention (train/packing.py) vs
   padded batches under sdpa, and the time one MedQuAD epoch would take; when time is left,
   the packed batches under plain sdpa too (its mask spans the whole flattened row).

Only torch, transformers, peft and accelerate are required. A part whose package is missing
(bitsandbytes for 4-bit, trl and datasets for training) is skipped, and the JSON says why. The
JSON is rewritten after every part, so a run stopped by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

START = time.perf_counter()

MISTRAL_7B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=32000,
    rope_theta=1e6,
    max_position_embeddings=32768,
    sliding_window=None,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
TINY = dict(
    MISTRAL_7B,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=2048,
)
TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "legacy": False,
}
GLAUCOMA_IDS = [1, 1824, 349, 1272, 581, 675, 28708, 28804]  # "What is glaucoma?" in v1
SYSTEM = (
    "You are medchat, an assistant that answers health and medical questions for the public. "
    "Answer in plain language: say what the condition or treatment is, its usual causes, signs, "
    "tests and treatments when they matter, and when to see a doctor."
)
QUESTION = "What are the symptoms of glaucoma?"


def say(message: str) -> None:
    print(f"[gpu {time.perf_counter() - START:6.1f}s] {message}", flush=True)


def have(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/gpu_results.json"))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model")
    parser.add_argument("--tokenizer", help="tokenizer.model.v1 file or a tokenizer folder")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=8, help="rows or packs per step")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--epoch-tokens", type=float, default=3.7e6, help="MedQuAD train tokens")
    parser.add_argument("--epoch-rows", type=int, default=14000)
    parser.add_argument("--budget-s", type=float, default=420, help="skip parts after this")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the 4-bit copy")
    parser.add_argument("--skip", default="", help="comma list: bf16, pair, nf4, train")
    args = parser.parse_args(argv)
    if args.tiny:
        args.new_tokens = min(args.new_tokens, 16)
        args.train_steps = min(args.train_steps, 3)
        args.train_batch = min(args.train_batch, 2)
        args.max_length = min(args.max_length, 256)
        args.repeats = 1
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


class Report:
    """The JSON being built; written after every part."""

    def __init__(self, path: Path, budget_s: float):
        self.path, self.budget_s = path, budget_s
        self.data: dict = {"parts": {}, "notes": []}

    def part(self, name: str, fn, *args, estimate_s: float = 0.0, skip_reason: str | None = None):
        """Run one part: record its result, or why it was skipped or failed."""
        elapsed = time.perf_counter() - START
        if skip_reason is None and elapsed + estimate_s > self.budget_s:
            skip_reason = f"time budget: {elapsed:.0f} s used, about {estimate_s:.0f} s needed"
        if skip_reason:
            say(f"{name}: skipped ({skip_reason})")
            self.data["parts"][name] = {"status": "skipped", "reason": skip_reason}
            self.write()
            return None
        say(f"{name}: start")
        t0 = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as err:  # one part failing must not lose the others
            say(f"{name}: FAILED {type(err).__name__}: {err}")
            self.data["parts"][name] = {
                "status": "failed",
                "reason": f"{type(err).__name__}: {str(err)[:500]}",
                "traceback": traceback.format_exc()[-2000:],
            }
            self.write()
            return None
        seconds = round(time.perf_counter() - t0, 1)
        self.data["parts"][name] = {"status": "ok", "seconds": seconds, **(result or {})}
        say(f"{name}: done in {seconds} s")
        self.write()
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - START, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")


# -- set-up ----------------------------------------------------------------------------------
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def environment(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "device": device}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception:  # not installed: say so
            info[name] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def load_tokenizer(path: str | None):
    """The Mistral v1 sentencepiece tokenizer as a transformers tokenizer, or None and why."""
    from transformers import AutoTokenizer

    source = Path(path) if path else None
    if source is None:
        spec = importlib.util.find_spec("mistral_common")
        if spec is None or not spec.submodule_search_locations:
            return None, "mistral_common is not importable and --tokenizer was not given"
        source = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
    if source.is_dir():
        return AutoTokenizer.from_pretrained(str(source)), str(source)
    if not source.is_file():
        return None, f"{source} does not exist"
    if not have("sentencepiece"):
        return None, "sentencepiece is not installed (transformers then misreads the file)"
    folder = Path(tempfile.mkdtemp(prefix="mistral-v1-"))
    shutil.copy(source, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    return AutoTokenizer.from_pretrained(str(folder)), str(source)


def prompt_ids(tokenizer, vocab: int) -> tuple[list[int], str]:
    """Mistral v0.2's [INST] prompt with the system text folded in, as the app builds it."""
    text = f"<s> [INST] {SYSTEM}\n\n{QUESTION} [/INST]"
    if tokenizer is None:
        import random

        rng = random.Random(0)
        return [1] + [rng.randrange(3, vocab) for _ in range(80)], "synthetic ids"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, "v1 tokenizer"


def build_config(tiny: bool):
    from transformers import MistralConfig

    kwargs = dict(TINY if tiny else MISTRAL_7B)
    theta = kwargs.pop("rope_theta")
    try:  # transformers 5 keeps rope settings in rope_parameters
        config = MistralConfig(
            **kwargs, rope_parameters={"rope_type": "default", "rope_theta": theta}
        )
    except TypeError:
        config = MistralConfig(**kwargs, rope_theta=theta)
    got = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if got is None:
        got = getattr(config, "rope_theta", None)
    if got != theta:
        raise ValueError(f"rope theta came out as {got}, not {theta}")
    return config


def config_summary(config) -> dict:
    keys = list(MISTRAL_7B)
    out = {k: getattr(config, k, None) for k in keys if k != "rope_theta"}
    out["rope_theta"] = (getattr(config, "rope_parameters", None) or {}).get(
        "rope_theta", getattr(config, "rope_theta", None)
    )
    out["head_dim"] = getattr(config, "head_dim", None)
    return out


def build_model(config, device: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return model


# -- measurements ----------------------------------------------------------------------------
def copy_bandwidth(device: str, tiny: bool) -> dict:
    """Bytes read + written per second by a device-to-device copy of a large buffer."""
    import torch

    n = (64 if tiny else 4096) * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    times = []
    for _ in range(5 if tiny else 20):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    best = sorted(times)[len(times) // 2]
    del src, dst
    return {"copy_bytes": n, "bandwidth_gb_s": 2 * n / best / 1e9, "copy_seconds_median": best}


def weight_bytes_per_token(model) -> int:
    """Bytes a decode step reads from weights: every parameter and quantisation buffer except
    the input embedding table (of which one row per token is read)."""
    embed = model.get_input_embeddings().weight
    total = 0
    seen = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen or tensor is embed or tensor.device.type == "meta":
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    for module in model.modules():  # bitsandbytes keeps absmax and friends in quant_state
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            continue
        for name in ("absmax", "code"):
            t = getattr(state, name, None)
            if t is not None:
                total += t.numel() * t.element_size()
        nested = getattr(state, "state2", None)
        if nested is not None and getattr(nested, "absmax", None) is not None:
            total += nested.absmax.numel() * nested.absmax.element_size()
    return total


def generate_seconds(model, ids, n_new: int, device: str, **kwargs) -> float:
    import torch

    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(
            **ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, **kwargs
        )
        sync(device)
        dt = time.perf_counter() - t0
    if out.shape[1] - ids["input_ids"].shape[1] != n_new:
        raise RuntimeError(f"generate made {out.shape[1] - ids['input_ids'].shape[1]} tokens")
    return dt


def batch_of(ids: list[int], rows: int, device: str) -> dict:
    import torch

    t = torch.tensor([ids] * rows, device=device)
    return {"input_ids": t, "attention_mask": torch.ones_like(t)}


def decode_speed(model, ids: list[int], args, bandwidth: float | None) -> dict:
    """Decode tokens/s at batch 1: (N - 1) tokens over t(N new) - t(1 new), median of repeats."""
    device = args.device
    one = batch_of(ids, 1, device)
    pad = model.generation_config.pad_token_id or 2
    generate_seconds(model, one, 4, device, pad_token_id=pad)  # warm-up
    full, prefill = [], []
    for r in range(args.repeats):
        for name in ("full", "prefill") if r % 2 == 0 else ("prefill", "full"):
            n = args.new_tokens if name == "full" else 1
            (full if name == "full" else prefill).append(
                generate_seconds(model, one, n, device, pad_token_id=pad)
            )
    per_token = [(f - p) / (args.new_tokens - 1) for f, p in zip(full, prefill, strict=True)]
    per_token_s = sorted(per_token)[len(per_token) // 2]
    tokens_per_s = 1 / per_token_s
    weight_bytes = weight_bytes_per_token(model)
    out = {
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "decode_tokens_per_s": tokens_per_s,
        "end_to_end_tokens_per_s": args.new_tokens / sorted(full)[len(full) // 2],
        "weight_bytes_per_token": weight_bytes,
        "seconds_full": full,
        "seconds_prefill_only": prefill,
    }
    if bandwidth:
        limit = bandwidth * 1e9 / weight_bytes
        out["bandwidth_limit_tokens_per_s"] = limit
        out["share_of_bandwidth_limit"] = tokens_per_s / limit
    return out


def pair_ratio(model, ids: list[int], args) -> dict:
    """Two-row mixed-adapter generate (base + random LoRA) ÷ one LoRA row, same length."""
    from peft import LoraConfig, get_peft_model

    device = args.device
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules="all-linear",
        init_lora_weights=False,  # random A and B: the adapter changes the output
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.eval()
    pad = model.generation_config.pad_token_id or 2
    one, two = batch_of(ids, 1, device), batch_of(ids, 2, device)
    names = ["__base__", "default"]
    generate_seconds(peft_model, two, 4, device, pad_token_id=pad, adapter_names=names)
    generate_seconds(peft_model, one, 4, device, pad_token_id=pad)
    seconds: dict[str, list[float]] = {"one": [], "pair": []}
    for r in range(max(2, args.repeats)):
        for name in ("one", "pair") if r % 2 == 0 else ("pair", "one"):
            extra = {"adapter_names": names} if name == "pair" else {}
            batch = two if name == "pair" else one
            seconds[name].append(
                generate_seconds(
                    peft_model, batch, args.new_tokens, device, pad_token_id=pad, **extra
                )
            )
    ratios = sorted(p / o for p, o in zip(seconds["pair"], seconds["one"], strict=True))
    peft_model.unload()  # the LoRA layers out, the base model back as it was
    return {"pair_ratio": ratios[len(ratios) // 2], "seconds": seconds, "lora_r": 16}


def load_nf4(model, args, holder: list) -> dict:
    """Save the random bf16 model, reload it in 4-bit NF4 as the app's loader does.

    The 4-bit model is appended to `holder`; the figures are returned."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    scratch = Path(tempfile.mkdtemp(prefix="mistral-random-", dir=args.scratch))
    try:
        t0 = time.perf_counter()
        model.save_pretrained(scratch, max_shard_size="5GB")
        saved = time.perf_counter() - t0
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        t0 = time.perf_counter()
        device_map = {"": 0} if args.device.startswith("cuda") else {"": "cpu"}
        nf4 = AutoModelForCausalLM.from_pretrained(
            scratch, quantization_config=quant, dtype=torch.bfloat16, device_map=device_map
        )
        nf4.eval()
        loaded = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    holder.append(nf4)
    return {"save_seconds": round(saved, 1), "load_4bit_seconds": round(loaded, 1)}


def medquad_lengths(n: int, max_length: int, seed: int = 0) -> list[int]:
    """Row lengths shaped like MedQuAD in the chat format: log-normal, median 250 tokens,
    sigma 0.55 (so a few percent pass 600 and a few per thousand reach the cut)."""
    import random

    rng = random.Random(seed)
    return [
        max(48, min(max_length, int(rng.lognormvariate(math.log(250), 0.55)))) for _ in range(n)
    ]


def training_rows(n: int, max_length: int, vocab: int, seed: int = 0) -> list[dict]:
    """Pre-tokenised prompt-completion rows: the first ~35% is prompt, the rest completion."""
    import random

    rng = random.Random(seed)
    rows = []
    for length in medquad_lengths(n, max_length, seed):
        ids = [1] + [rng.randrange(3, vocab) for _ in range(length - 2)] + [2]
        prompt = max(8, int(0.35 * length))
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (length - prompt)})
    return rows


def train_variant(
    model, tokenizer, rows, packing: bool, args, quantized: bool, attention: str
) -> tuple:
    """Train one variant with trl's SFTTrainer; (figures, the base model without LoRA)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    cuda = args.device.startswith("cuda")
    counter = {"real": 0, "fed": 0}

    class Counting(SFTTrainer):
        def compute_loss(self, model, inputs, *a, **kw):
            if model.training:
                ids = inputs["input_ids"]
                mask = inputs.get("attention_mask")
                counter["real"] += int(mask.sum()) if mask is not None else int(ids.numel())
                counter["fed"] += int(ids.numel())
            return super().compute_loss(model, inputs, *a, **kw)

    class Clock(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_train_begin(self, *a, **kw):
            sync(args.device)
            self.last, self.seen = time.perf_counter(), dict(counter)

        def on_step_end(self, *a, **kw):
            sync(args.device)
            now = time.perf_counter()
            step = {k: counter[k] - self.seen[k] for k in counter}
            step["seconds"] = now - self.last
            self.steps.append(step)
            self.last, self.seen = now, dict(counter)

    out_dir = tempfile.mkdtemp(prefix="qlora-bench-")
    config = SFTConfig(
        output_dir=out_dir,
        max_steps=args.train_steps,
        per_device_train_batch_size=args.train_batch,
        gradient_accumulation_steps=1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        max_grad_norm=0.3,
        max_length=args.max_length,
        packing=packing,
        packing_strategy="bfd",
        completion_only_loss=True,
        gradient_checkpointing=True,
        bf16=cuda,
        optim="paged_adamw_8bit" if (quantized and cuda) else "adamw_torch",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    clock = Clock()
    model.set_attn_implementation(attention)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = Counting(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    timed = clock.steps[1:] or clock.steps
    seconds = sum(s["seconds"] for s in timed)
    real = sum(s["real"] for s in timed)
    fed = sum(s["fed"] for s in timed)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "packing": packing,
        "attention": attention,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "tokens_per_s": real / seconds,
        "real_tokens_per_step": real / len(timed),
        "fed_tokens_per_step": fed / len(timed),
        "seconds_per_step": seconds / len(timed),
        "mean_loss": sum(losses) / len(losses) if losses else None,
        "steps": len(clock.steps),
    }
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    base = trainer.model.unload()  # LoRA out again, for the next variant
    del trainer
    shutil.rmtree(out_dir, ignore_errors=True)
    return result, base


def register_varlen() -> str:
    """The recipes' sdpa_varlen attention, from this repository's train/packing.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from train.packing import register

    return register()


def training(model, tokenizer, args, quantized: bool, vocab: int) -> dict:
    """QLoRA (or plain LoRA when 4-bit is unavailable) tokens/s, packed vs padded."""
    per_step = args.train_batch * args.max_length
    n_rows = max(64, int(3 * args.train_steps * per_step / 250))
    rows = training_rows(n_rows, args.max_length, vocab)
    varlen = register_varlen()
    results = {}
    variants = (("packed", True, varlen), ("padded", False, "sdpa"), ("packed_sdpa", True, "sdpa"))
    spent = []
    for name, packing, attention in variants:
        left = args.budget_s - (time.perf_counter() - START)
        if name == "packed_sdpa" and left < 1.5 * max(spent):
            results[name] = {"skipped": f"time budget: {left:.0f} s left"}
            continue
        say(f"training: {name} ({attention}), {args.train_steps} steps of {args.train_batch}")
        t0 = time.perf_counter()
        results[name], model = train_variant(
            model, tokenizer, rows, packing, args, quantized, attention
        )
        spent.append(time.perf_counter() - t0)
        gc.collect()
    packed, padded = results["packed"], results["padded"]
    lengths = [len(r["input_ids"]) for r in rows]
    mean_len = sum(lengths) / len(lengths)
    return {
        "quantization": "nf4" if quantized else "none",
        "rows_drawn": n_rows,
        "row_length_median": sorted(lengths)[len(lengths) // 2],
        "row_length_mean": mean_len,
        "packed_speedup": packed["tokens_per_s"] / padded["tokens_per_s"],
        "packed_sdpa_speedup": (
            results["packed_sdpa"]["tokens_per_s"] / padded["tokens_per_s"]
            if "tokens_per_s" in results["packed_sdpa"]
            else None
        ),
        "epoch_tokens": args.epoch_tokens,
        "epoch_hours_packed": args.epoch_tokens / packed["tokens_per_s"] / 3600,
        "epoch_hours_padded": args.epoch_tokens / padded["tokens_per_s"] / 3600,
        "variants": results,
    }


# -- the run ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(args.out, args.budget_s)
    say(f"writing {args.out}; device {args.device}; tiny={args.tiny}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; use --device cpu.", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda or args.tiny else torch.float32
    report.data["environment"] = environment(args.device)
    report.data["args"] = {
        k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()
    }
    config = build_config(args.tiny)
    report.data["config"] = config_summary(config)
    tokenizer, source = load_tokenizer(args.tokenizer)
    report.data["tokenizer"] = {"source": source}
    if tokenizer is not None:
        # transformers 5 does not add BOS for this tokenizer by default; compare the rest.
        check = tokenizer("What is glaucoma?", add_special_tokens=False)["input_ids"]
        report.data["tokenizer"]["glaucoma_ids_match"] = check == GLAUCOMA_IDS[1:]
    ids, kind = prompt_ids(tokenizer, config.vocab_size)
    report.data["prompt"] = {"tokens": len(ids), "kind": kind}
    report.write()

    bw = report.part("bandwidth", copy_bandwidth, args.device, args.tiny, estimate_s=5)
    bandwidth = bw["bandwidth_gb_s"] if bw else None
    say("building the bf16 model")
    model = build_model(config, args.device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    report.data["config"]["parameters"] = n_params
    report.part(
        "decode_bf16",
        decode_speed,
        model,
        ids,
        args,
        bandwidth,
        estimate_s=30,
        skip_reason="--skip" if "bf16" in args.skip else None,
    )
    report.part(
        "pair_bf16",
        pair_ratio,
        model,
        ids,
        args,
        estimate_s=40,
        skip_reason="--skip" if "pair" in args.skip else None,
    )

    nf4 = None
    if not have("bitsandbytes"):
        reason = "bitsandbytes is not installed"
    elif "nf4" in args.skip:
        reason = "--skip"
    else:
        reason = None
    holder: list = []
    report.part("load_nf4", load_nf4, model, args, holder, estimate_s=90, skip_reason=reason)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if holder:
        nf4 = holder.pop()
        report.part("decode_nf4", decode_speed, nf4, ids, args, bandwidth, estimate_s=40)
    else:
        report.part("decode_nf4", decode_speed, skip_reason="no 4-bit model (see load_nf4)")

    train_reason = None
    missing = [m for m in ("trl", "datasets") if not have(m)]
    if missing:
        train_reason = f"{' and '.join(missing)} not installed"
    elif "train" in args.skip:
        train_reason = "--skip"
    elif tokenizer is None:
        train_reason = "no tokenizer (trl needs one for padding)"
    quantized = nf4 is not None
    if nf4 is None and train_reason is None:
        if cuda:
            train_reason = "no 4-bit model (see load_nf4), so no QLoRA"
        else:
            nf4 = build_model(config, args.device, torch.float32)
            report.data["notes"].append("training ran without 4-bit: no quantised model on CPU")
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    report.part(
        "train_qlora",
        training,
        nf4,
        tokenizer,
        args,
        quantized,
        config.vocab_size,
        estimate_s=150,
        skip_reason=train_reason,
    )
    report.write()
    summary = summarize(report.data)
    report.data["summary"] = summary
    report.write()
    say("summary: " + json.dumps(summary))
    return 0


def summarize(data: dict) -> dict:
    """The headline figures, pulled from the parts that ran."""
    parts = data["parts"]

    def get(part: str, key: str):
        p = parts.get(part, {})
        return p.get(key) if p.get("status") == "ok" else None

    train = parts.get("train_qlora", {})
    variants = train.get("variants", {}) if train.get("status") == "ok" else {}
    return {
        "bandwidth_gb_s": get("bandwidth", "bandwidth_gb_s"),
        "bf16_decode_tokens_per_s": get("decode_bf16", "decode_tokens_per_s"),
        "bf16_share_of_bandwidth_limit": get("decode_bf16", "share_of_bandwidth_limit"),
        "nf4_decode_tokens_per_s": get("decode_nf4", "decode_tokens_per_s"),
        "nf4_share_of_bandwidth_limit": get("decode_nf4", "share_of_bandwidth_limit"),
        "pair_ratio": get("pair_bf16", "pair_ratio"),
        "qlora_packed_tokens_per_s": variants.get("packed", {}).get("tokens_per_s"),
        "qlora_padded_tokens_per_s": variants.get("padded", {}).get("tokens_per_s"),
        "qlora_packed_peak_gib": variants.get("packed", {}).get("peak_memory_gib"),
        "qlora_padded_peak_gib": variants.get("padded", {}).get("peak_memory_gib"),
        "packed_speedup": train.get("packed_speedup"),
        "packed_sdpa_speedup": train.get("packed_sdpa_speedup"),
        "epoch_hours_packed": train.get("epoch_hours_packed"),
    }


if __name__ == "__main__":
    sys.exit(main())
