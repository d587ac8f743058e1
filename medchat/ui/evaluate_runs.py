"""The runs the Evaluate tab reads and starts: the run folders under the app's run
directories (`RunLibrary`), and the config of a small run started in the tab.

A run started here scores like `python -m eval` (medchat.evaluation), with the tab's sample
size and token limit; `run_unavailable` says why this app cannot start one.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import fields
from pathlib import Path

import pandas as pd

from medchat.errors import MedchatError
from medchat.evaluation import (
    PLOT,
    RESULTS,
    SUMMARY,
    EvalConfig,
    default_out_dir,
    list_runs,
    load_run,
    read_results,
)
from medchat.gpu import on_zero_gpu
from medchat.settings import Settings
from medchat.ui.common import export_dir


class RunLibrary:
    """The run folders under one directory, read back with a small cache."""

    def __init__(self, *run_dirs: Path):
        self.run_dirs = tuple(Path(d) for d in run_dirs)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, tuple[dict | None, pd.DataFrame]]] = {}
        self._exports = export_dir()

    def names(self) -> list[str]:
        return [p.name for p in list_runs(*self.run_dirs)]

    def folder(self, name: str) -> Path:
        """The folder of a listed run; anything else (a path, a stale name) is refused."""
        folders = {p.name: p for p in list_runs(*self.run_dirs)}
        if not name or name not in folders:
            raise MedchatError(
                f"There is no evaluation run named {name!r}; pick one from the list."
            )
        return folders[name]

    def load(self, name: str) -> tuple[dict | None, pd.DataFrame]:
        """(summary or None while the run is unfinished, results so far)."""
        folder = self.folder(name)
        stamp = tuple(_mtime(folder / f) for f in (SUMMARY, RESULTS))
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == stamp:
                return cached[1]
        if (folder / SUMMARY).is_file():
            summary, results = load_run(folder)
        else:
            summary, results = None, pd.DataFrame(read_results(folder / RESULTS))
        if not results.empty:
            results = results.assign(difference=results["tuned_cosine"] - results["base_cosine"])
        with self._lock:
            self._cache[name] = (stamp, (summary, results))
        return summary, results

    def export(self, name: str, results: pd.DataFrame) -> Path:
        path = self._exports / f"{name}-results.csv"
        results.to_csv(path, index=False)
        return path

    def plot(self, name: str) -> Path | None:
        """A copy of the run's similarity.png in the app's export folder (servable anywhere)."""
        source = self.folder(name) / PLOT
        if not source.is_file():
            return None
        target = self._exports / f"{name}-{PLOT}"
        shutil.copyfile(source, target)
        return target


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def run_unavailable(pipeline) -> str | None:
    """Why this app cannot start an evaluation run, or None when it can."""
    if on_zero_gpu():
        return (
            "Runs cannot start here: a ZeroGPU Space lends its GPU for one short call at a time. "
            "Run `python -m eval` on a machine of your own and copy the run folder in."
        )
    if not pipeline.has_adapter:
        return "No fine-tuned adapter is loaded, so there is nothing to evaluate; use --adapter."
    adapter = Path(str(pipeline.adapter)).expanduser()
    if adapter.is_dir() and not (adapter / "split.json").is_file():
        return (
            "The loaded adapter has no split.json, so its held-out questions are unknown; run "
            "`python -m eval --split all --data FILE` from the command line instead."
        )
    return None


# -- starting a run ---------------------------------------------------------------------------
# A run started here scores like `python -m eval` (EvalConfig's defaults: split, seed, greedy,
# token limit), so its numbers compare with the command line's; only the sample size is asked.
RUN_QUESTIONS = 8
RUN_MAX_NEW_TOKENS: int = {f.name: f.default for f in fields(EvalConfig)}["max_new_tokens"]


def run_batch_size(pipeline) -> int:
    """Questions per generation batch for a run started in the tab.

    The progress shown moves when a batch is scored and saved. On a CPU, batching buys little
    (a base+tuned pair took 1.68x one answer, two separate calls 1.88x), so one question per
    batch lets the progress move question by question; on a GPU or behind a model server,
    where batching pays, the run keeps `python -m eval`'s batch size.
    """
    device = str(pipeline.info().get("device", "")).lower()
    if device.startswith("cpu"):
        return 1
    return {f.name: f.default for f in fields(EvalConfig)}["batch_size"]


def run_config(pipeline, settings: Settings, n, max_tokens) -> EvalConfig:
    """The EvalConfig of a run started in the tab: `n` questions (default RUN_QUESTIONS) with at
    most `max_tokens` new tokens (default `python -m eval`'s), a new folder under runs_dir."""
    try:
        limit = RUN_QUESTIONS if n is None else int(n)
        tokens = RUN_MAX_NEW_TOKENS if max_tokens is None else int(max_tokens)
    except (TypeError, ValueError):
        raise MedchatError(
            f"Questions is {n!r} and max new tokens {max_tokens!r}; give two whole numbers."
        ) from None
    config = EvalConfig(
        adapter=str(pipeline.adapter),
        data=settings.eval_data or None,
        limit=limit,
        batch_size=run_batch_size(pipeline),
        max_new_tokens=tokens,
    )
    config.out = default_out_dir(config, settings.runs_dir)
    return config
