"""A run folder: its files, writing them safely, resuming into it, and reading runs back.

    out = default_out_dir(config, settings.runs_dir)      # <runs_dir>/<time>-<adapter>
    previous = previous_config(out, identity)             # None for a new folder
    summary, results = load_run(out)                      # a finished run
    folders = list_runs(*settings.run_dirs)               # the app's Evaluate tab

A run folder holds config.json (what was run), results.jsonl (one line per question, appended
after every batch), summary.json, report.md and similarity.png. A rerun resumes a folder only
when every IDENTITY_FIELDS value of its config.json matches, and with the same embedder.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd

from medchat import metrics
from medchat.errors import MedchatError
from medchat.evaluation.config import EvalConfig
from medchat.settings import Settings

log = logging.getLogger(__name__)

CONFIG = "config.json"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.md"
PLOT = "similarity.png"
SIDES = ("base", "tuned")  # every result line scores both, base_* and tuned_*
# The fields of one results.jsonl line, in order; qtype and url only when the data has them.
RESULT_FIELDS = (
    "key",
    "question",
    "reference",
    "base_answer",
    "tuned_answer",
    "base_cosine",
    "tuned_cosine",
    "base_rouge_l",
    "tuned_rouge_l",
    "base_tokens",
    "tuned_tokens",
    "base_hit_limit",
    "tuned_hit_limit",
    "base_repetition",
    "tuned_repetition",
    "generation_seconds",
    "scoring_seconds",
)
OPTIONAL_FIELDS = ("qtype", "url")
# With retrieval: the passages put into the prompt, and what each side did with them.
RETRIEVAL_FIELDS = (
    "sources",
    "topic_hit",
    "base_citations",
    "tuned_citations",
    "base_not_covered",
    "tuned_not_covered",
)
# config.json fields that must match for a rerun to resume into the same folder.
IDENTITY_FIELDS = (
    "adapter",
    "data",
    "split",
    "limit",
    "seed",
    "batch_size",
    "max_new_tokens",
    "generation",
    "n",
    "sample_sha",
    "retrieval",
    "judge",
)


def default_out_dir(config: EvalConfig, runs_dir: Path | None = None) -> Path:
    """`<runs_dir>/<timestamp>-<adapter name>`, a fresh folder (runs_dir None: Settings()'s)."""
    if runs_dir is None:
        runs_dir = Settings().runs_dir
    name = Path(config.adapter.rstrip("/\\")).name  # a folder's or a hub id's last part
    name = re.sub(r"[^\w.-]+", "-", name).strip("-.") or "adapter"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(runs_dir) / f"{stamp}-{name}"
    k = 2
    while out.exists():
        out = Path(runs_dir) / f"{stamp}-{name}-{k}"
        k += 1
    return out


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file through a temporary sibling and a rename: readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_results(path: Path, *, repair: bool = False) -> list[dict]:
    """The records of a results.jsonl, skipping a half-written last line.

    That line is a crash in the middle of an append, or a run still writing. `repair=True`
    (only for the run that will append next) also cuts it from the file, so the next append
    starts on a clean line; readers such as the app leave the file alone.
    """
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    good_end = raw.rfind(b"\n") + 1
    if good_end < len(raw) and repair:
        log.warning("Dropping a half-written last line of %s.", path)
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    records = []
    for number, line in enumerate(raw[:good_end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise MedchatError(
                f"Line {number} of {str(path)!r} is not valid JSON; use another --out."
            ) from None
    return records


def append_results(path: Path, records: Sequence[dict]) -> None:
    """Append records to a results.jsonl, one line each, on disk before this returns."""
    with open(path, "a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def previous_config(out: Path, identity: dict) -> dict | None:
    """config.json of a run to resume (None for a new folder); a mismatch is a MedchatError."""
    config_file = out / CONFIG
    if not config_file.is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise MedchatError(
                f"{str(out)!r} exists and is not an evaluation run folder; use another --out."
            )
        return None
    previous = json.loads(config_file.read_text())
    for name in IDENTITY_FIELDS:
        if previous.get(name) != identity[name]:
            raise MedchatError(
                f"Run folder {str(out)!r} holds a run with {name} {previous.get(name)!r}, not "
                f"{identity[name]!r}; rerun with its settings to resume, or use another --out."
            )
    return previous


def check_embedder_name(out: Path, previous: dict | None, wanted: str | None) -> None:
    """Before an embedder is loaded: a resumed run's --embedder must be the one it recorded
    (its name or the source it was loaded from); None takes any."""
    if previous and wanted:
        recorded = (previous.get("embedder"), previous.get("embedder_source"))
        if wanted not in recorded:
            raise MedchatError(
                f"Run folder {str(out)!r} was scored with embedder {recorded[0]!r} and one run "
                f"never mixes two embedders; pass --embedder {recorded[1]} or use another --out."
            )


def check_embedder(out: Path, previous: dict | None, embedder: metrics.Embedder) -> None:
    """A resumed run is scored with the embedder it recorded."""
    if previous and previous.get("embedder") != embedder.name:
        raise MedchatError(
            f"Run folder {str(out)!r} was scored with embedder {previous.get('embedder')!r} and "
            f"one run never mixes two embedders; pass --embedder "
            f"{previous.get('embedder_source')} or use another --out."
        )


# -- reading runs back (the app's Evaluate tab) ----------------------------------------------
def load_run(folder: Path | str) -> tuple[dict, pd.DataFrame]:
    """(summary.json as a dict, results.jsonl as a DataFrame) of a finished run."""
    folder = Path(folder)
    summary_file = folder / SUMMARY
    if not summary_file.is_file():
        raise MedchatError(
            f"{str(folder)!r} has no summary.json; finish the run by rerunning it with "
            f"--out {folder}."
        )
    summary = json.loads(summary_file.read_text())
    records = read_results(folder / RESULTS)
    results = pd.DataFrame(records) if records else pd.DataFrame(columns=list(RESULT_FIELDS))
    return summary, results


def list_runs(*runs_dirs: Path | str) -> list[Path]:
    """Run folders (those with a config.json) under the given folders, newest first.

    A name found in two folders is listed once, from the first folder that has it.
    """
    runs: dict[str, Path] = {}
    for runs_dir in runs_dirs:
        runs_dir = Path(runs_dir).expanduser()
        if runs_dir.is_dir():
            for p in runs_dir.iterdir():
                if (p / CONFIG).is_file():
                    runs.setdefault(p.name, p)
    return sorted(runs.values(), key=lambda p: ((p / CONFIG).stat().st_mtime, p.name), reverse=True)
