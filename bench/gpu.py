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

This file parses the flags and runs the parts in order; each part lives beside it:
gpu_env.py (packages, pip, the device), gpu_model.py (setup: model folder, adapter,
tokenizer, bandwidth), gpu_steps.py (the measurements through a Pipeline), gpu_local.py
(local_bf16, local_4bit), gpu_train.py, gpu_vllm.py, and gpu_report.py (the JSON, the time
budget and the watchdog).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ leads sys.path; the repository root must instead (medchat, train).
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import gpu_train, gpu_vllm  # noqa: E402
from bench.gpu_env import (  # noqa: E402
    check_packages,
    environment,
    missing_line,
    offline_from_environment,
)
from bench.gpu_local import local_part  # noqa: E402
from bench.gpu_model import check_tokenizer, copy_bandwidth, isolate_hub, write_model  # noqa: E402
from bench.gpu_report import Report, say  # noqa: E402


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

    timer = report.start_watchdog(args.grace_s, summarize, cleanup)

    # Packages: what each part lacks; pip only when asked, and never offline without wheels.
    lacking = check_packages(report, args)
    gpu_vllm.choose_interpreter(report, args, ctx, scratch)

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
            lambda s: gpu_vllm.vllm_part(report, args, ctx, s),
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
