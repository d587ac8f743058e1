"""The evaluation path: answers/s batched vs one question at a time, and the scoring share.

    python -m bench --only eval

Runs `medchat.evaluation.run_evaluation` itself (data loading, the split, generation of base
and tuned answers, embedding, scoring, report) on the same held-out questions: with
--batch-size 16 and with --batch-size 1 (each question's base and tuned answers are still one
two-row batch, as the CLI does) in the order batched, one-by-one, batched; then once more
batched at the CLI's default answer length for the scoring share.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import log, median
from medchat.evaluation import SUMMARY, EvalConfig, run_evaluation


def _run(engine, embedder, config: EvalConfig) -> dict:
    start = time.perf_counter()
    folder = run_evaluation(config, engine=engine, embedder=embedder)
    wall = time.perf_counter() - start
    summary = json.loads((Path(folder) / SUMMARY).read_text())
    timing = summary["timing"]
    answers = 2 * summary["n"]
    tokens = summary["base"]["tokens"]["mean"] + summary["tuned"]["tokens"]["mean"]
    return {
        "wall_s": wall,
        "generation_s": timing["generation_seconds"],
        "scoring_s": timing["scoring_seconds"],
        "answers_per_s": answers / timing["generation_seconds"],
        "mean_answer_tokens": tokens / 2,
        "scoring_share_reported": timing["scoring_share"],
    }


def measure_evaluation(
    engine,
    embedder,
    *,
    adapter: str,
    data: str,
    n: int = 16,
    batch_size: int = 16,
    new_tokens: int = 16,
    score_tokens: int = 256,
) -> dict:
    """eval_speedup and scoring_share, with the raw figures of each run.

    eval_speedup compares --batch-size `batch_size` with --batch-size 1 at `new_tokens` (short,
    so the one-at-a-time run stays affordable). scoring_share comes from one more batched run
    at `score_tokens`, the evaluation's default answer length: the scoring cost per question is
    fixed, so its share depends on how long generation takes (0 = use the speed runs).
    """

    def config(size: int, tokens: int, name: str) -> EvalConfig:
        return EvalConfig(
            adapter=adapter,
            data=data,
            split="test",
            limit=n,
            seed=0,
            batch_size=size,
            max_new_tokens=tokens,
            out=Path(tmp) / name,
            profile=engine.profile.name,
        )

    runs: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="medchat-bench-eval-") as tmp:
        # Warm-up at the batched shape: the first generate of a new shape, and the embedder's
        # first encode, pay one-time costs that are no part of either figure.
        log("evaluation: warm-up (2 new tokens)")
        run_evaluation(config(batch_size, 2, "warm-up"), engine=engine, embedder=embedder)
        for k, size in enumerate((batch_size, 1, batch_size)):
            log(f"evaluation: {n} questions x base+tuned, --batch-size {size}, {new_tokens} tokens")
            mode = "batched" if size == batch_size else "single"
            runs.append((mode, _run(engine, embedder, config(size, new_tokens, f"run{k}"))))
        if score_tokens:
            log(f"evaluation: {n} questions, --batch-size {batch_size}, {score_tokens} tokens")
            scored = _run(engine, embedder, config(batch_size, score_tokens, "scoring"))
            runs.append(("scoring", scored))
    batched = [r for name, r in runs if name == "batched"]
    single = next(r for name, r in runs if name == "single")
    scoring_runs = [r for name, r in runs if name == "scoring"] or batched
    return {
        "eval_speedup": median([b["answers_per_s"] / single["answers_per_s"] for b in batched]),
        # Embedding and scoring against the whole run as the caller sees it (data loading,
        # generation, scoring, summary, report and plot), with the model and embedder loaded.
        "scoring_share": median([r["scoring_s"] / r["wall_s"] for r in scoring_runs]),
        "eval_questions": n,
        "eval_batch_size": batch_size,
        "eval_new_tokens": new_tokens,
        "eval_score_tokens": score_tokens or new_tokens,
        "eval_runs": [{"mode": name, **{k: round(v, 4) for k, v in r.items()}} for name, r in runs],
    }
