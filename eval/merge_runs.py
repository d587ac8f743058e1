"""python -m eval.merge_runs RUN RUN [RUN ...] --out DIR

One run folder from several runs of the same system on different questions: an evaluation
split over machines or days (K-QA's two halves, generated apart), summarised as if it had been
one run. The runs must agree on everything that decides an answer or a score (adapter, base
model, generation settings, sources, embedder, statement judge); a question in two runs is
refused, never counted twice. The answers are not generated or scored again: the per-item
records are joined and the summary, report and plot are computed from them.

    python -m eval.merge_runs runs/eval/kqa-report-off-offline runs/eval/kqa-tune-off-offline \\
        --out runs/eval/kqa-all-off-offline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from medchat.errors import MedchatError
from medchat.evaluation.folder import CONFIG, REPORT, RESULTS, SUMMARY

# What must be the same in every run: what decides an answer or its score.
SAME = (
    "adapter",
    "profile",
    "max_new_tokens",
    "generation",
    "retrieval",
    "prompt_style",
    "sources_in_prompt",
    "embedder",
    "judge",
)


def _identity(config: dict) -> dict:
    """The settings of a run that must match for its records to be pooled."""
    identity = {key: config.get(key) for key in SAME}
    identity["base_model"] = (config.get("engine") or {}).get("base_model")
    identity["judge_identity"] = (config.get("judge_info") or {}).get("identity")
    return identity


def _read(run: Path) -> tuple[dict, dict, list[dict]]:
    from medchat.evaluation import read_results

    if not (run / SUMMARY).is_file():
        raise MedchatError(f"{str(run)!r} is not a finished evaluation run (no {SUMMARY}).")
    config = json.loads((run / CONFIG).read_text())
    summary = json.loads((run / SUMMARY).read_text())
    return config, summary, read_results(run / RESULTS)


def merge_runs(runs: list[Path], out: Path) -> Path:
    """Write `out`: the records of `runs` as one run, summarised. Returns `out`."""
    from medchat.data import normalize_question
    from medchat.evaluation import summarize, write_run_folder

    runs, out = [Path(r) for r in runs], Path(out)
    if len(runs) < 2:
        raise MedchatError("Give at least two run folders to merge.")
    if out.exists() and any(out.iterdir()):
        raise MedchatError(f"{str(out)!r} already holds files; choose another --out.")
    read = [_read(run) for run in runs]
    first = _identity(read[0][0])
    for run, (config, _, _) in zip(runs[1:], read[1:], strict=True):
        differ = [k for k, v in _identity(config).items() if v != first[k]]
        if differ:
            raise MedchatError(
                f"{run.name} was made with other settings than {runs[0].name} "
                f"({', '.join(differ)}); only runs of the same system can be merged."
            )
    records: list[dict] = []
    seen: dict[str, str] = {}
    for run, (_, _, rows) in zip(runs, read, strict=True):
        for row in rows:
            question = normalize_question(row["question"])
            if question in seen:
                raise MedchatError(
                    f"The question {row['question'][:60]!r} is in both {seen[question]} and "
                    f"{run.name}; merged runs must hold different questions."
                )
            seen[question] = run.name
            records.append(row)
    config, summary0 = read[0][0], read[0][1]
    judge = (summary0.get("statements") or {}).get("judge")
    results = pd.DataFrame(records)
    summary = summarize(
        results, embedder=summary0["embedder"], seed=int(config.get("seed") or 0), judge=judge
    )
    summary["run"] = dict(
        summary0.get("run") or {},
        data=" + ".join(str((s.get("run") or {}).get("data")) for _, s, _ in read),
        folder=str(out),
        merged_from=_names(runs),
    )
    merged = dict(config)
    merged.update(
        n=len(records),
        data=[c.get("data") for c, _, _ in read],
        data_sha256=[c.get("data_sha256") for c, _, _ in read],
        merged_from=_names(runs),
    )
    for key in ("sample_sha", "data_report", "created", "limit"):
        merged.pop(key, None)
    return write_run_folder(out, merged, records, summary)


def _names(runs: list[Path]) -> list[str]:
    return [run.name for run in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.merge_runs",
        description="Join finished evaluation runs of one system on different questions into "
        "one run folder (records joined, summary, report and plot computed from them; nothing "
        "generated or scored again).",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (runs/eval/...)")
    parser.add_argument("--out", type=Path, required=True, help="the merged run's folder")
    args = parser.parse_args(argv)
    try:
        folder = merge_runs(args.runs, args.out)
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((folder / REPORT).read_text())
    print(f"Saved {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
