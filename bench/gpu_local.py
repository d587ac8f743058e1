"""The GPU check's local parts (`bench/gpu.py`): local_bf16 and local_4bit.

    python bench/gpu.py --out $OUT/gpu.json --offline   # runs both on a CUDA GPU

Each loads one real profile (`mistral-7b-bf16`, or `mistral-7b` in 4-bit NF4) with the
check's adapter through the app's own `make_backend(Settings(...))` (load_model -> Engine ->
LocalBackend), runs the shared steps under a Pipeline, and records load time, peak memory and
the share of the bandwidth limit the stream reached.
"""

from __future__ import annotations

import time

from bench.gpu_env import NEEDS, memory, missing_line, missing_packages, release, sync
from bench.gpu_report import Report, Skipped
from bench.gpu_steps import exercise


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
