"""python bench/gpu.py --out $OUT/gpu.json: the GPU check, one command, no network needed.

    python bench/gpu.py --out $OUT/gpu.json             # 1 H100/H200, < 8 min, offline
    python bench/gpu.py --out $OUT/gpu.json --install-missing --install-vllm   # online machine
    python bench/gpu.py --out $OUT/gpu.json --wheels /data/wheels --install-missing  # offline
    python bench/gpu.py --tiny --device cpu --out /tmp/g.json   # every part on a CPU, ~30 s
    python bench/gpu.py --tiny --device cpu --vllm-python .venv-vllm/bin/python --out /tmp/g.json

It writes a random-init model with Mistral-7B-Instruct-v0.2's exact config (hidden 4096, 32
layers, 32 heads, 8 KV heads, intermediate 14336, vocab 32000, rope theta 1e6, no sliding
window) and the real v1 tokenizer (assets/tokenizers/mistral-v1, in this repository) into a
private Hugging Face cache as `mistralai/Mistral-7B-Instruct-v0.2`, with the hub offline, plus a
random LoRA adapter (r 64, every linear layer) trained "on" that id. So the real profiles
`mistral-7b` (4-bit NF4) and `mistral-7b-bf16` load it unchanged, exactly as on a user's
machine. EOS's row of the output layer is zero, so greedy decoding never picks EOS and every
answer runs to max_new_tokens: token counts are exact and runs compare equal work.

Offline (`--offline`, or PIP_NO_INDEX=1 in the environment) it never runs pip. A part whose
packages are missing is skipped with one line naming them and how to bring them; the others
run. pip runs only when asked: `--install-missing` (from PyPI, or with `--wheels DIR` from a
folder of wheels, `pip install --no-index --find-links DIR`), `--install-vllm` (online only).

Parts, each guarded (a failure is one line in the JSON and the next part runs):
- setup: the model folder, the adapter, the tokenizer check; bandwidth: a device copy, for the
  bandwidth limit of decoding.
- local_bf16, local_4bit: `make_backend(Settings(profile=..., adapter=..., device=...))`, i.e.
  load_model -> Engine -> LocalBackend, under a Pipeline: prepare, stream (time to first
  token, tokens/s), stream of the base model, stream_pair, generate_batch of 16 questions
  (both sides), cancel by closing a stream and by `pipeline.cancel()` (seconds until the
  engine's worker thread is gone), and peak GPU memory.
- train (bench/gpu_train.py, needs trl and datasets): 20 optimizer steps of the QLoRA recipe
  (train/recipes/mistral-7b-qlora.yaml: 4-bit, packed, sdpa_varlen) on that model and the
  shipped MedQuAD rows, LoRA in bf16 when bitsandbytes is missing; tokens/s, peak memory,
  losses, and which attention ran the packed rows (torch's varlen_attn kernel on a GPU), after
  a check that a packed row gives every example the logits it gets alone.
- vllm: `medchat.serve.Server` for the same folder and adapter (bf16, `serve_config`), the
  openai backend from `Settings(backend="openai", ...)`, then stream, base stream, pair, 8
  concurrent streams against 1, generate_batch of 16, and cancel (until the server's
  `vllm:num_requests_running` is back to 0).

Parts that would overrun --budget-s (450) are skipped with a note, and a watchdog ends the run
at budget + --grace-s whatever happens, so one H200 run fits in 8 minutes. The JSON is
rewritten after every step; vLLM's log goes next to it (`<out stem>_vllm.log`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ leads sys.path; the repository root must instead (medchat, train).
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import gpu_train, gpu_vllm  # noqa: E402
from bench.gpu_report import Report, Skipped, median, one_line, say  # noqa: E402

MODEL_ID = "mistralai/Mistral-7B-Instruct-v0.2"  # what both Mistral profiles load
COMMIT = "0" * 40  # the private cache's one snapshot
# The transformers the exact token ids were taken with; under others a mismatch is a warning.
TOKENIZER_CHECKED_WITH = (5, 24)
LORA_R = 64
QUESTION = "What are the symptoms of glaucoma?"
QUESTIONS = [
    "What are the symptoms of glaucoma?",
    "What causes gout?",
    "How is asthma treated?",
    "What is psoriasis?",
    "Who is at risk for osteoporosis?",
    "What are the treatments for migraine?",
    "How do I know if I have anemia?",
    "What is the outlook for people with celiac disease?",
    "How is type 2 diabetes diagnosed?",
    "What are the side effects of statins?",
    "What causes kidney stones?",
    "How can I lower my blood pressure?",
    "What is the difference between a cold and the flu?",
    "How is Lyme disease spread?",
    "What are the early signs of Parkinson's disease?",
    "What is shingles and who should get the vaccine?",
]
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "sentencepiece",
    "httpx",
    "numpy",
    "sentence_transformers",
    "trl",
    "datasets",
)
# What each part imports (beyond the standard library); a part with one missing is skipped.
NEEDS = {
    "setup": ("torch", "transformers", "peft", "accelerate", "sentencepiece", "numpy"),
    "local": ("httpx",),  # the pipeline's imports, beyond setup's
    "4bit": ("bitsandbytes",),
    "train": ("trl", "datasets", "pandas", "pyarrow"),
}
PIP_NAMES = {  # as requirements.txt pins them
    "transformers": "transformers>=5.0,<6",
    "peft": "peft>=0.21,<0.22",
    "accelerate": "accelerate>=1.10",
    "bitsandbytes": "bitsandbytes>=0.46.1",
    "sentencepiece": "sentencepiece>=0.2",
}


# -- arguments and the JSON ------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/gpu_results.json"))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 256-wide model")
    parser.add_argument(
        "--tokenizer", help="a tokenizer.model file (default: assets/tokenizers/mistral-v1)"
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="per timed local answer")
    parser.add_argument("--vllm-new-tokens", type=int, default=256, help="per vLLM answer")
    parser.add_argument("--cancel-tokens", type=int, default=1024, help="answers cut short")
    parser.add_argument("--streams", type=int, default=8, help="concurrent vLLM streams")
    parser.add_argument("--budget-s", type=float, default=450, help="skip parts after this")
    parser.add_argument("--grace-s", type=float, default=45, help="hard stop: budget + this")
    parser.add_argument("--scratch", type=Path, help="folder for the model (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the model folder")
    parser.add_argument("--skip", default="", help="comma list: bandwidth, bf16, 4bit, train, vllm")
    parser.add_argument("--train-steps", type=int, default=20, help="optimizer steps")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never run pip (also when PIP_NO_INDEX=1): skip what is missing",
    )
    parser.add_argument(
        "--wheels", type=Path, help="with --install-missing: pip installs from this folder only"
    )
    parser.add_argument("--vllm-python", help="the interpreter that runs vLLM")
    parser.add_argument(
        "--install-vllm", action="store_true", help="pip install vllm into a new virtualenv"
    )
    parser.add_argument("--install-timeout-s", type=float, default=300)
    parser.add_argument(
        "--install-missing",
        action="store_true",
        help="pip install missing packages (bitsandbytes, trl, datasets, ...) first",
    )
    parser.add_argument("--vllm-gpu-memory", type=float, default=0.6, help="its memory share")
    parser.add_argument("--vllm-ready-s", type=float, default=300, help="vLLM start-up limit")
    parser.add_argument(
        "--vllm-eager", action="store_true", help="no compile or CUDA graphs: starts faster"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.new_tokens = min(args.new_tokens, 16)
        args.vllm_new_tokens = min(args.vllm_new_tokens, 16)
        args.cancel_tokens = min(args.cancel_tokens, 512)
        args.train_steps = min(args.train_steps, 3)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.offline = args.offline or offline_from_environment()
    return args


def offline_from_environment() -> bool:
    """PIP_NO_INDEX set to a true value: pip may not reach an index, so it is not run."""
    return os.environ.get("PIP_NO_INDEX", "").strip().lower() in ("1", "true", "yes", "on")


# -- the environment -------------------------------------------------------------------------
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


def missing_packages(names) -> list[str]:
    import importlib.util

    out = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except (ImportError, ValueError):
            out.append(name)
    return out


def how_to_bring(names: list[str], args) -> str:
    """One sentence: how to make `names` importable on this machine."""
    pip = " ".join(PIP_NAMES.get(n, n) for n in names)
    if args.offline:
        return (
            f"offline: copy wheels of {pip} and their dependencies into a folder and add "
            "--wheels FOLDER --install-missing"
        )
    return f"pip install {pip}, or add --install-missing"


def missing_line(names: list[str], args) -> str:
    return f"missing {', '.join(names)}; {how_to_bring(names, args)}"


def install_missing(names: list[str], wheels: Path | None = None) -> dict:
    pip = [PIP_NAMES.get(n, n) for n in names if n != "torch"]
    if not pip:
        return {"installed": [], "note": "nothing to install" if not names else "torch missing"}
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if wheels is not None:
        cmd += ["--no-index", "--find-links", str(wheels)]
    cmd += ["--retries", "1", "--timeout", "20", *pip]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"packages": pip, "exit": done.returncode, "last": lines[-1][:300] if lines else ""}


def environment(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info: dict = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "device": device,
        "cpus": os.cpu_count(),
    }
    for name in PACKAGES + ("vllm",):
        try:
            info[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            info[name] = None
    import torch

    info["torch_cuda"] = torch.version.cuda
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=15,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["nvidia_smi"] = None
    return info


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def memory(device: str) -> dict:
    if device == "cuda":
        import torch

        return {
            "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"process_peak_rss_mib": round(rss)}


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# -- setup: the model folder and the adapter -------------------------------------------------
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


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a decoding step reads: all but the input embedding table, plus
    bitsandbytes' quantisation state."""
    embed = model.get_input_embeddings().weight
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor is embed or tensor.data_ptr() in seen or tensor.device.type == "meta":
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        for t in (getattr(state, "absmax", None), getattr(state, "code", None)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


# -- measurements through a Pipeline (either backend) ---------------------------------------
def params(n: int):
    from medchat.engine import GenerationParams

    return GenerationParams(max_new_tokens=n, temperature=0.0, repetition_penalty=1.1)


def timed_stream(pipeline, turn, *, tuned: bool = True) -> dict:
    """One `pipeline.stream`: first text, end, tokens/s (every answer is max_new_tokens)."""
    n = turn.params.max_new_tokens
    t0 = time.perf_counter()
    first, updates, text = None, 0, ""
    for shown in pipeline.stream(turn, tuned=tuned):
        if first is None:
            first = time.perf_counter() - t0
        updates, text = updates + 1, shown
    total = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("the stream yielded nothing")
    decode = (n - 1) / (total - first) if total > first and n > 1 else None
    return {
        "tokens": n,
        "seconds": round(total, 3),
        "ttft_s": round(first, 3),
        "tokens_per_s": decode,
        "end_to_end_tokens_per_s": n / total,
        "updates": updates,
        "chars": len(text),
    }


def timed_pair(pipeline, turn, one_seconds: float | None) -> dict:
    n = turn.params.max_new_tokens
    t0 = time.perf_counter()
    first, updates, pair = None, 0, ("", "")
    for shown in pipeline.stream_pair(turn):
        if first is None:
            first = time.perf_counter() - t0
        updates, pair = updates + 1, shown
    total = time.perf_counter() - t0
    return {
        "tokens_each": n,
        "seconds": round(total, 3),
        "ttft_s": round(first, 3) if first is not None else None,
        "tokens_per_s": 2 * n / total,
        "pair_ratio": total / one_seconds if one_seconds else None,
        "sides_differ": pair[0] != pair[1],
        "updates": updates,
    }


def timed_batch(pipeline, n: int) -> dict:
    p = params(n)
    t0 = time.perf_counter()
    answers = pipeline.generate_batch(QUESTIONS, p)
    total = time.perf_counter() - t0
    gens = [g for item in answers for g in item.values()]
    counts = [g.n_tokens for g in gens]
    return {
        "questions": len(QUESTIONS),
        "answers": len(gens),
        "seconds": round(total, 3),
        "answers_per_s": len(gens) / total,
        "tokens_per_s": sum(counts) / total,
        "tokens_min_max": [min(counts), max(counts)],
        "hit_limit": sum(g.hit_limit for g in gens),
        "sides_differ": sum(item["base"].text != item["tuned"].text for item in answers),
    }


def wait_for(check: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until check() is true, or None when it never was within timeout."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if check():
            return time.perf_counter() - t0
        time.sleep(0.01)
    return None


def cancel_by_close(pipeline, turn, busy: Callable[[], float], after: int = 5) -> dict:
    """Read a few updates of a long answer, close the stream, time until nothing runs."""
    stream = pipeline.stream(turn)
    updates = 0
    for _ in stream:
        updates += 1
        if updates >= after:
            break
    running = busy()
    t0 = time.perf_counter()
    stream.close()
    closed = time.perf_counter() - t0
    idle = wait_for(lambda: busy() == 0, 30)
    return {
        "max_new_tokens": turn.params.max_new_tokens,
        "updates_read": updates,
        "running_before": running,
        "close_s": round(closed, 3),
        "idle_s": round(closed + idle, 3) if idle is not None else None,
        "still_running_after_30_s": idle is None,
    }


def cancel_by_call(pipeline, turn, busy: Callable[[], float], after: int = 5) -> dict:
    """`pipeline.cancel()` from another thread mid-answer (the Stop button): the stream ends."""
    updates, fired, text = 0, None, ""
    t0 = time.perf_counter()
    for shown in pipeline.stream(turn):
        updates, text = updates + 1, shown
        if updates == after:
            fired = time.perf_counter()
            threading.Thread(target=pipeline.cancel, name="bench-cancel").start()
    ended = time.perf_counter()
    if fired is None:
        raise RuntimeError(f"the answer ended after {updates} updates, before the cancel")
    idle = wait_for(lambda: busy() == 0, 30)
    return {
        "max_new_tokens": turn.params.max_new_tokens,
        "updates": updates,
        "answer_chars": len(text),
        "cut_short": updates < turn.params.max_new_tokens,
        "stream_end_s": round(ended - fired, 3),
        "idle_s": round(ended - fired + idle, 3) if idle is not None else None,
        "total_s": round(ended - t0, 3),
    }


def exercise(
    report: Report, section: dict, pipeline, n: int, cancel_n: int, *, busy, tokens_s0: float
) -> None:
    """The steps both backends share, with answers of n tokens (cancel: of up to cancel_n).
    tokens_s0: a guess of tokens/s until one is measured, for the time budget."""
    t0 = time.perf_counter()
    turn = pipeline.prepare(QUESTION, params=params(n))
    cold = time.perf_counter() - t0
    speed = {"tps": tokens_s0}

    def est(tokens: float) -> float:
        return 5 + tokens / speed["tps"]

    def prepare() -> dict:
        from medchat.prompts import render_ids

        warm = []
        for q in QUESTIONS[1:4]:
            t0 = time.perf_counter()
            pipeline.prepare(q, params=params(n))
            warm.append(time.perf_counter() - t0)
        return {
            "first_s": cold,
            "warm_s": median(warm),
            "answerable": turn.answerable,
            "flag": turn.flag.category if turn.flag else None,
            "prompt_tokens": len(render_ids(pipeline.backend.tokenizer, turn.messages or [])),
        }

    report.step(section, "prepare", prepare)
    if not turn.answerable:
        raise RuntimeError(f"the benchmark question got no prompt: {turn.error}")

    def warmup() -> dict:
        short = pipeline.prepare(QUESTION, params=params(8))
        return timed_stream(pipeline, short)

    report.step(section, "warmup", warmup, estimate_s=est(8) + 20)
    stream = report.step(section, "stream", lambda: timed_stream(pipeline, turn), estimate_s=est(n))
    if stream and stream.get("tokens_per_s"):
        speed["tps"] = stream["end_to_end_tokens_per_s"]
    one_s = stream["seconds"] if stream else None
    report.step(
        section,
        "stream_base",
        lambda: timed_stream(pipeline, turn, tuned=False),
        estimate_s=est(n),
    )
    pair_turn = pipeline.prepare(QUESTION, params=params(n), pair=True)
    report.step(
        section, "stream_pair", lambda: timed_pair(pipeline, pair_turn, one_s), estimate_s=est(n)
    )
    report.step(section, "batch_16", lambda: timed_batch(pipeline, n), estimate_s=est(3 * n))
    long_turn = pipeline.prepare(QUESTION, params=params(cancel_n))
    report.step(
        section,
        "cancel_close",
        lambda: cancel_by_close(pipeline, long_turn, busy),
        estimate_s=est(20) + 5,
    )
    report.step(
        section,
        "cancel_call",
        lambda: cancel_by_call(pipeline, long_turn, busy),
        estimate_s=est(20) + 5,
    )


# -- the parts -------------------------------------------------------------------------------
def local_part(report: Report, args, ctx: dict, profile_name: str, section: dict) -> None:
    from medchat.backends import make_backend
    from medchat.errors import MedchatError
    from medchat.pipeline import Pipeline
    from medchat.profiles import PROFILES
    from medchat.settings import Settings

    profile = PROFILES[profile_name]
    if profile.load_in_4bit and args.device == "cuda" and missing_packages(NEEDS["4bit"]):
        raise Skipped(missing_line(missing_packages(NEEDS["4bit"]), args))
    settings = Settings(
        profile=profile_name,
        adapter=str(ctx["adapter"]),
        device=args.device,
        cache_dir=ctx["scratch"] / "medchat-cache",
        max_new_tokens=args.new_tokens,
        # --tiny checks the script: no index of 16,000 passages embedded on a CPU first.
        retrieval="off" if args.tiny else "auto",
    )
    section["profile"] = profile_name
    section["retrieval"] = settings.retrieval
    if args.device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        backend = make_backend(settings)
    except MedchatError as err:
        if profile.needs_cuda and args.device != "cuda":
            raise Skipped(str(err)) from None  # the app's own refusal, as a user would see it
        raise
    section["load_s"] = round(time.perf_counter() - t0, 1)
    engine = backend.engine
    section["info"] = backend.info()
    section["memory_after_load"] = memory(args.device)
    weights = weight_bytes_per_token(engine.model)
    section["weight_bytes_per_token"] = weights
    pipeline = Pipeline(backend, settings)
    try:
        exercise(
            report,
            section,
            pipeline,
            args.new_tokens,
            args.cancel_tokens,
            busy=lambda e=engine: len(e.alive_threads),
            tokens_s0=10.0 if args.device == "cuda" else 40.0,
        )
        sync(args.device)
        section["memory_peak"] = memory(args.device)
        section["threads_left"] = len(engine.alive_threads)
        stream = section.get("steps", {}).get("stream", {})
        bw = ctx.get("bandwidth_gb_s")
        if bw and stream.get("tokens_per_s"):
            limit = bw * 1e9 / weights
            section["bandwidth_limit_tokens_per_s"] = round(limit, 1)
            section["share_of_bandwidth_limit"] = round(stream["tokens_per_s"] / limit, 3)
    finally:
        backend.close()
        del pipeline, backend, engine
        release(args.device)


def vllm_part(report: Report, args, ctx: dict, section: dict) -> None:
    import dataclasses

    from medchat.backends import make_backend
    from medchat.pipeline import Pipeline
    from medchat.serve import Server, serve_config
    from medchat.settings import Settings

    python, how = ctx["vllm_python"], ctx["vllm_how"]
    installer = ctx.get("installer")
    if python is None and installer is not None:
        ok, what = installer.wait(report.left() - 150)
        section["install"] = what
        if not ok:
            section["install_log_tail"] = gpu_vllm.tail(installer.log, 15)
            raise Skipped(what)
        python, how = str(installer.python), "installed by --install-vllm"
    if python is None:
        raise Skipped(how)
    section["python"], section["found_by"] = python, how
    section["vllm_version"] = gpu_vllm.version(python)
    report.write()

    profile = "mistral-7b-bf16"
    serve_settings = Settings(
        profile=profile,
        adapter=str(ctx["adapter"]),
        device=args.device,
        cache_dir=ctx["scratch"] / "medchat-cache",
    )
    extra: tuple[str, ...] = ()
    if args.device == "cuda":
        extra = ("--gpu-memory-utilization", str(args.vllm_gpu_memory), "--max-num-seqs", "32")
    if args.vllm_eager:
        extra += ("--enforce-eager",)
    config = serve_config(serve_settings, host="127.0.0.1", port=gpu_vllm.free_port(), extra=extra)
    # serve_config names the hub id; the folder behind it is the same files, without asking
    # vLLM to resolve a hub id offline.
    config = dataclasses.replace(config, model_source=str(ctx["snapshot"]))
    log = args.out.with_name(args.out.stem + "_vllm.log")
    log.unlink(missing_ok=True)
    server = Server(config, python, log_path=log)
    section["command"] = " ".join(server.command)
    section["log"] = str(log)
    ctx["server"] = server
    t0 = time.perf_counter()
    try:
        try:
            server.start()
            url = server.wait_ready(timeout=max(10.0, min(args.vllm_ready_s, report.left() - 60)))
        except Exception:
            section["log_tail"] = gpu_vllm.tail(log, 25)
            raise
        section["ready_s"] = round(time.perf_counter() - t0, 1)
        say(f"  vLLM ready after {section['ready_s']} s at {url}")
        settings = Settings(
            backend="openai",
            server_url=url,
            profile=profile,
            cache_dir=ctx["scratch"] / "medchat-cache",
            max_new_tokens=args.vllm_new_tokens,
        )
        backend = make_backend(settings)  # OpenAIBackend.from_settings
        section["info"] = backend.info()
        pipeline = Pipeline(backend, settings)

        def busy() -> float:
            value = gpu_vllm.requests_running(backend)
            if value is None:
                raise RuntimeError("the server's /metrics has no vllm:num_requests_running")
            return value

        try:
            n = args.vllm_new_tokens
            exercise(report, section, pipeline, n, args.cancel_tokens, busy=busy, tokens_s0=20.0)
            report.step(
                section,
                f"concurrent_{args.streams}",
                lambda: concurrency(pipeline, n, args.streams),
                estimate_s=30,
            )
            section["requests_running_at_end"] = busy()
        finally:
            backend.close()
    finally:
        server.stop()
        ctx["server"] = None


def concurrency(pipeline, n: int, streams: int) -> dict:
    """`streams` streams of different questions at once against one alone."""
    turns = [pipeline.prepare(q, params=params(n)) for q in QUESTIONS[:streams]]
    one = timed_stream(pipeline, turns[0])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(turns)) as pool:
        many = list(pool.map(lambda t: timed_stream(pipeline, t), turns))
    wall = time.perf_counter() - t0
    return {
        "streams": len(turns),
        "one_seconds": one["seconds"],
        "all_seconds": round(wall, 3),
        "ratio": wall / one["seconds"],
        "aggregate_tokens_per_s": len(turns) * n / wall,
        "one_tokens_per_s": one["end_to_end_tokens_per_s"],
        "ttft_s_median": median(m["ttft_s"] for m in many),
        "ttft_s_max": max(m["ttft_s"] for m in many),
    }


def summarize(data: dict) -> dict:
    parts = data["parts"]

    def get(part: str, step: str, key: str):
        return (parts.get(part, {}).get("steps", {}).get(step) or {}).get(key)

    out: dict = {"device": data.get("environment", {}).get("gpu") or "cpu"}
    for part in ("local_bf16", "local_4bit", "train", "vllm"):
        p = parts.get(part, {})
        if p.get("status") in (None, "skipped"):
            out[part] = p.get("status") and f"skipped: {p.get('reason')}"
            continue
        if part == "train":
            out[part] = gpu_train.summary(p)
            continue
        out[part] = {
            "status": p.get("status"),
            "stream_tokens_per_s": get(part, "stream", "tokens_per_s"),
            "ttft_s": get(part, "stream", "ttft_s"),
            "base_stream_tokens_per_s": get(part, "stream_base", "tokens_per_s"),
            "pair_ratio": get(part, "stream_pair", "pair_ratio"),
            "batch_answers_per_s": get(part, "batch_16", "answers_per_s"),
            "cancel_close_idle_s": get(part, "cancel_close", "idle_s"),
            "cancel_call_idle_s": get(part, "cancel_call", "idle_s"),
            "peak_gib": (p.get("memory_peak") or {}).get("peak_allocated_gib"),
            "load_s": p.get("load_s"),
        }
        if part == "vllm":
            out[part]["ready_s"] = p.get("ready_s")
            for key in ("ratio", "aggregate_tokens_per_s"):
                out[part][f"concurrent_{key}"] = next(
                    (v.get(key) for k, v in p.get("steps", {}).items() if k.startswith("concur")),
                    None,
                )
    return out


# -- the run ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="medchat-gpu-", dir=args.scratch))
    snapshot = isolate_hub(scratch)  # before transformers is imported
    report = Report(args.out, args.budget_s)
    report.data["args"] = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    ctx: dict = {"scratch": scratch, "snapshot": snapshot, "adapter": scratch / "adapter-r64"}
    say(
        f"writing {args.out}; device {args.device}; tiny={args.tiny}; offline={args.offline}; "
        f"scratch {scratch}"
    )

    def cleanup() -> None:
        server = ctx.get("server")
        if server is not None:
            server.stop(timeout=10)
        if ctx.get("installer") is not None:
            ctx["installer"].stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    def watchdog() -> None:
        report.data["notes"].append(
            f"watchdog: stopped at {time.perf_counter() - START:.0f} s "
            f"(budget {args.budget_s:.0f} s + grace {args.grace_s:.0f} s)"
        )
        for part in report.data["parts"].values():
            if part.get("status") == "running":
                part["status"] = "stopped by the watchdog"
        say("watchdog: out of time, stopping")
        try:
            for _ in range(3):  # the main thread may be changing the data right now
                try:
                    report.data["summary"] = summarize(report.data)
                    report.write()
                    break
                except RuntimeError:
                    time.sleep(0.2)
            cleanup()
        finally:
            os._exit(3)

    timer = threading.Timer(args.budget_s + args.grace_s, watchdog)
    timer.daemon = True
    timer.start()

    # 1. Packages: what each part lacks; pip only when asked, and never offline without wheels.
    wanted = [*NEEDS["setup"], *NEEDS["local"]]
    if args.device == "cuda" and "4bit" not in args.skip:
        wanted += NEEDS["4bit"]
    if "train" not in args.skip:
        wanted += NEEDS["train"]
    if args.install_missing and missing_packages(wanted):
        if args.offline and args.wheels is None:
            report.data["install_missing"] = {
                "skipped": "offline: pip is not run (add --wheels FOLDER to install from wheels)"
            }
            say("install: skipped, offline (add --wheels FOLDER to install from wheels)")
        else:
            report.data["install_missing"] = install_missing(missing_packages(wanted), args.wheels)
    lacking = {part: missing_packages(names) for part, names in NEEDS.items()}
    report.data["missing_packages"] = {part: names for part, names in lacking.items() if names}

    python, how = gpu_vllm.locate(args.vllm_python)
    if python is None and args.offline:
        how = (
            "vllm is not importable here and pip is not run offline; bring an interpreter with "
            "vLLM (a virtualenv copied in) and pass --vllm-python PATH"
        )
    ctx["vllm_python"], ctx["vllm_how"] = python, how
    if python is None and args.install_vllm and args.offline:
        report.data["notes"].append("--install-vllm: not run, offline")
    elif python is None and args.install_vllm and "vllm" not in args.skip:
        try:
            ctx["installer"] = gpu_vllm.Installer(
                scratch / "vllm-venv", scratch / "pip-vllm.log", args.install_timeout_s
            ).start()
            report.data["notes"].append("pip install vllm ran in the background from the start")
        except Exception as err:
            ctx["vllm_how"] = f"could not start pip install vllm: {one_line(err)}"

    if lacking["setup"]:
        # Nothing can run without these; every part says so in one line.
        why = missing_line(lacking["setup"], args)
        for name in ("setup", "bandwidth", "local_bf16", "local_4bit", "train", "vllm"):
            report.part(name, lambda s: None, estimate_s=0, skip=why)
        report.data["summary"] = summarize(report.data)
        timer.cancel()
        cleanup()
        report.write()
        return 1

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.device == "cuda" and not torch.cuda.is_available():
        report.data["error"] = "--device cuda but no CUDA GPU is visible; use --device cpu"
        report.write()
        say(report.data["error"])
        cleanup()
        return 2
    report.data["environment"] = environment(args.device)
    report.write()

    try:

        def setup(section: dict) -> None:
            write_model(args, snapshot, ctx["adapter"], section)
            check_tokenizer(section, report.data["notes"])

        if report.part("setup", setup, estimate_s=0)["status"] != "ok":
            report.data["notes"].append("setup failed: nothing else can run")
            return 1

        def bandwidth(section: dict) -> None:
            section.update(copy_bandwidth(args.device, args.tiny))
            ctx["bandwidth_gb_s"] = section["bandwidth_gb_s"]

        skip = args.skip
        report.part(
            "bandwidth", bandwidth, estimate_s=10, skip="--skip" if "bandwidth" in skip else None
        )
        for name, profile, estimate in (
            ("local_bf16", "mistral-7b-bf16", 60),
            ("local_4bit", "mistral-7b", 80),
        ):
            why = "--skip" if name.split("_")[1] in skip else None
            lacks = lacking["local"] + (lacking["4bit"] if name == "local_4bit" else [])
            if why is None and lacks and (args.device == "cuda" or name == "local_bf16"):
                why = missing_line(lacks, args)
            report.part(
                name,
                lambda s, p=profile: local_part(report, args, ctx, p, s),
                estimate_s=estimate if not args.tiny else 5,
                skip=why,
            )
        why = "--skip" if "train" in skip else None
        if why is None and lacking["train"]:
            why = missing_line(lacking["train"], args)
        report.part(
            "train",
            lambda s: gpu_train.train_part(report, args, ctx, s),
            estimate_s=150 if not args.tiny else 20,
            skip=why,
        )
        report.part(
            "vllm",
            lambda s: vllm_part(report, args, ctx, s),
            estimate_s=150 if args.device == "cuda" else 90,
            skip="--skip" if "vllm" in skip else None,
        )
        report.data["summary"] = summarize(report.data)
        report.write()
        say("summary: " + json.dumps(report.data["summary"], default=str))
        statuses = [p.get("status", "") for p in report.data["parts"].values()]
        return 1 if any(s.startswith(("failed", "partly")) for s in statuses) else 0
    finally:
        timer.cancel()
        cleanup()
        report.write()


if __name__ == "__main__":
    sys.exit(main())
