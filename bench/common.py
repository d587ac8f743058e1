"""What every benchmark shares: interleaved timing, medians, and a fixed-length engine.

Absolute timings on a shared 2-core machine drift by tens of percent within a minute, so no
figure here is an absolute time: each is a ratio of two measurements taken side by side.
`interleave` runs the variants in alternating order (A B C, C B A, A B C, ...), which cancels a
linear drift, and each ratio is the median over repeats of the ratio within one repeat.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from medchat.engine import Engine, GenerationParams
from medchat.testing import MEDICAL_QUESTIONS

# Eight different questions, for the figures that send several at once.
QUESTIONS = MEDICAL_QUESTIONS[:8]
QUESTION = QUESTIONS[0]
# The app's defaults: greedy decoding with a mild repetition penalty.
REPETITION_PENALTY = 1.1


def log(message: str) -> None:
    """Progress on stderr, so the table on stdout stays clean."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleave(
    runs: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every run `repeats` times, alternating the order each repeat.

    Returns ({name: [seconds per repeat]}, {name: the last result}).
    """
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            dt, results[name] = timed(runs[name])
            seconds[name].append(dt)
    return seconds, results


def alternate(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Like `interleave`, for runs that time themselves: {name: [returned value per repeat]}."""
    names = list(runs)
    values: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            values[name].append(float(runs[name]()))
    return values


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run fn in a fresh thread and return its result (or raise its error).

    The engine generates in a fresh worker thread. A baseline run in the main thread instead
    would not be comparable: with 2 cores, GNU OpenMP throttles its spin-waiting as soon as two
    threads each own a team of workers, and alternating compute between the main thread and
    worker threads slows both by up to 25%. Baselines therefore run the way the engine runs.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # re-raised in the caller
            box["error"] = err

    thread = threading.Thread(target=run, name="bench-baseline")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over repeats of num[i] / den[i]: each ratio compares neighbours in time."""
    return median([a / b for a, b in zip(num, den, strict=True)])


def params(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=REPETITION_PENALTY
    )


class FixedLengthEngine(Engine):
    """The engine, with EOS suppressed until max_new_tokens: every answer has the same length.

    Only the generation config changes (transformers' `min_new_tokens`, a logits processor that
    masks EOS); streaming, threads, locks and decoding are the engine's own. Comparisons of
    tokens/s then compare equal amounts of work. The engine has no public switch for this.
    """

    def _generation_config(self, params: GenerationParams):
        config = super()._generation_config(params)
        config.min_new_tokens = params.max_new_tokens
        return config

    def generation_config(self, params: GenerationParams):
        """The exact config `stream` uses, for a plain `model.generate` to compare against."""
        return self._generation_config(params)
