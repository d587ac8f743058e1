"""python -m eval.judge_run RUN_DIR [--statements kqa|FILE] [--judge offline|llm] [--out DIR]

Statement scores for a run that was made without them: each base and tuned answer of RUN_DIR
is judged against the statements of its question in a statement set (K-QA by default; its
questions are matched by their normalised text), and a copy of the run is written with the
verdicts, comprehensiveness and hallucination in results.jsonl, summary.json and report.md,
exactly as `python -m eval --judge ...` would have written them. The answers are not
generated again, so a run on K-QA's questions costs only the judging.

    python -m eval.judge_run runs/eval/kqa-report-off                 # -> kqa-report-off-offline
    python -m eval.judge_run RUN --judge llm --judge-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from medchat.errors import MedchatError

CONFIG, RESULTS, SUMMARY, REPORT, PLOT = (
    "config.json",
    "results.jsonl",
    "summary.json",
    "report.md",
    "similarity.png",
)


def statements_for(results: pd.DataFrame, statement_set: pd.DataFrame) -> pd.DataFrame:
    """must_have / nice_to_have per row of `results`, matched on the normalised question.

    A MedchatError names how many questions of the run the set does not hold."""
    from medchat.data import normalize_question
    from medchat.statements import MUST, NICE

    by_question = {
        normalize_question(q): (m, n)
        for q, m, n in zip(
            statement_set["question"], statement_set[MUST], statement_set[NICE], strict=True
        )
    }
    found = [by_question.get(normalize_question(q)) for q in results["question"]]
    missing = sum(f is None for f in found)
    if missing:
        raise MedchatError(
            f"{missing} of the run's {len(results)} questions are not in the statement set; "
            "judge a run made on that set's questions."
        )
    return pd.DataFrame({MUST: [f[0] for f in found], NICE: [f[1] for f in found]})


def judge_run(
    run: Path,
    out: Path,
    *,
    statements: str = "kqa",
    judge_name: str = "offline",
    judge_url: str | None = None,
    judge_model: str | None = None,
    embedder=None,
) -> Path:
    """Write `out`: the run of `run` with statement verdicts and scores. Returns `out`."""
    from medchat import metrics
    from medchat.evaluation import read_results, summarize, write_run_folder
    from medchat.judges import make_judge
    from medchat.statements import load_statement_set, statement_fields

    run, out = Path(run), Path(out)
    if not (run / SUMMARY).is_file():
        raise MedchatError(f"{str(run)!r} is not a finished evaluation run (no {SUMMARY}).")
    if out.exists() and any(out.iterdir()):
        raise MedchatError(f"{str(out)!r} already holds files; choose another --out.")
    config = json.loads((run / CONFIG).read_text())
    summary = json.loads((run / SUMMARY).read_text())
    records = read_results(run / RESULTS)
    results = pd.DataFrame(records)
    lists = statements_for(results, load_statement_set(statements))
    embedder = embedder or metrics.Embedder("bundled")
    judge = make_judge(judge_name, embedder=embedder, url=judge_url, model=judge_model)
    texts = {side: list(results[f"{side}_answer"]) for side in ("base", "tuned")}
    fields = statement_fields(judge, lists, texts)
    for record, extra in zip(records, fields, strict=True):
        record.update(extra)
    judged = pd.DataFrame(records)
    info = judge.info()
    new_summary = summarize(
        judged, embedder=summary["embedder"], seed=int(config.get("seed") or 0), judge=info
    )
    for key in ("run", "timing"):
        if key in summary:
            new_summary[key] = summary[key]
    config["judge"] = info["name"] if judge_name == "offline" else f"llm:{judge.model}"
    config["judge_info"] = info
    config["statements_added_from"] = {"run": run.name, "statement_set": statements}
    return write_run_folder(out, config, records, new_summary)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval.judge_run",
        description="Add statement scores (comprehensiveness, hallucination) to a finished "
        "evaluation run, judging its answers without generating them again.",
    )
    parser.add_argument("run", type=Path, help="a finished run folder (runs/eval/...)")
    parser.add_argument(
        "--statements",
        default="kqa",
        help="the statement set its questions come from: kqa (default) or a K-QA-format file",
    )
    parser.add_argument("--judge", choices=("offline", "llm"), default="offline")
    parser.add_argument("--judge-url", help="the llm judge's server, e.g. http://HOST:PORT/v1")
    parser.add_argument("--judge-model", help="the llm judge's model name on that server")
    parser.add_argument("--out", type=Path, help="where to write (default: RUN-<judge>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from eval.__main__ import show_run

    args = parse_args(argv)
    out = args.out or args.run.with_name(f"{args.run.name}-{args.judge}")
    try:
        folder = judge_run(
            args.run,
            out,
            statements=args.statements,
            judge_name=args.judge,
            judge_url=args.judge_url,
            judge_model=args.judge_model,
        )
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return show_run(folder, f"Saved {folder}")


if __name__ == "__main__":
    raise SystemExit(main())
