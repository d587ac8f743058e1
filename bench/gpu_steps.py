"""The GPU check's measurements through a Pipeline (`bench/gpu.py`), for either backend.

    exercise(report, section, pipeline, n, cancel_n, busy=..., tokens_s0=10.0)

`exercise` runs the steps the local and vLLM parts share, each guarded by `Report.step`:
prepare, warmup, stream (time to first token, tokens/s), stream of the base model,
stream_pair, a batch of 16 questions on both sides, and cancel by closing a stream and by
`pipeline.cancel()` (seconds until `busy()` is 0). `concurrency` is the vLLM part's extra
step: several streams at once against one alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench.gpu_report import Report, median
from medchat.testing import MEDICAL_QUESTIONS

QUESTIONS = list(MEDICAL_QUESTIONS)
QUESTION = QUESTIONS[0]


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
