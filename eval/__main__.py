"""python -m eval --adapter PATH_OR_ID [--data FILE_OR_ID] [--split test|validation|all] [--limit N]

Answer held-out questions with the base model and the fine-tuned adapter in the same batches,
score both against the reference answers (embedding cosine, ROUGE-L, length, repetition), and
write a run folder: config.json, results.jsonl, summary.json, report.md, similarity.png.
Rerun with the same --out to resume an interrupted run. The work is done by
medchat.evaluation.run_evaluation; this module only parses flags and prints the report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medchat.backends import add_backend_flags, backend_overrides
from medchat.errors import MedchatError
from medchat.judges import add_judge_flags
from medchat.profiles import PROFILE_NAMES

EPILOG = """examples:
  python -m eval --adapter runs/adapters/smollm2-medquad --limit 64
  python -m eval --adapter runs/adapters/smollm2-medquad --split all --data my_qa.csv
  python -m eval --adapter ORG/ADAPTER --data medquad.csv --out runs/eval/first  # resumable
  python -m eval --adapter ADAPTER --retrieval on --limit 64   # prompts with NIH sources
  python -m eval --adapter ADAPTER --data kqa --limit 20       # + comprehensiveness and
      hallucination on K-QA's statements (offline judge; --judge llm --judge-url URL)
  python -m eval --adapter assets/adapters/smollm2-135m-medquad --limit 64 --backend openai
      --server-url http://127.0.0.1:8000/v1      # answers from a vLLM server (make serve)

The test and validation splits are the rows held out when the adapter was trained (its
split.json); --split all scores every row, training rows included."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="Score a LoRA adapter against its base model on held-out questions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--adapter", required=True, help="the adapter folder (from training) or a hub id"
    )
    parser.add_argument(
        "--data",
        help="questions and reference answers: CSV/JSON/JSONL/parquet or a hub dataset id, or "
        "kqa: K-QA's 201 physician-answered questions with must-have and nice-to-have "
        "statements (a file in K-QA's format also brings statements) "
        "(default: the data file recorded beside the adapter)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "validation", "all"),
        help="which rows to score (default: test; all for --data kqa)",
    )
    parser.add_argument(
        "--limit", type=int, help="score a seeded random sample of N rows (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sample and bootstrap seed (0)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="questions per generate call (default: 8); on a server, the requests sent at "
        "once are this times two (base and tuned), at most MEDCHAT_SERVER_MAX_IN_FLIGHT",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="answer length limit (default: 256)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="run folder; reuse one to resume it (default: <runs_dir>/<time>-<adapter>)",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        help="model profile (default: MEDCHAT_PROFILE, else auto)",
    )
    parser.add_argument(
        "--embedder",
        help="sentence-transformers folder or hub id for the cosine score, or 'bundled' "
        "(default: paraphrase-MiniLM-L6-v2 when cached, else the bundled all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--heldout-in",
        metavar="ADAPTER",
        help="score only rows that this other adapter also held out, and keep its held-out "
        "rows out of the retrieval index: two adapters trained on different splits are then "
        "compared on rows neither saw",
    )
    add_backend_flags(parser)
    add_judge_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from medchat.evaluation import EvalConfig, default_out_dir, run_evaluation
    from medchat.settings import Settings

    out = None
    try:
        settings = Settings.from_env()  # MEDCHAT_* variables; the flags below win over them
        config = EvalConfig(
            adapter=args.adapter,
            data=args.data,
            split=args.split,
            limit=args.limit,
            seed=args.seed,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            out=args.out,
            profile=args.profile,
            embedder=args.embedder,
            heldout_in=args.heldout_in,
            judge=args.judge,
            judge_url=args.judge_url,
            judge_model=args.judge_model,
            **backend_overrides(args),
        )
        out = config.out or default_out_dir(config, settings.runs_dir)
        config.out = out
        print(f"run folder: {out}", file=sys.stderr)
        folder = run_evaluation(config, settings=settings)
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun with --out {out} to resume.", file=sys.stderr)
        return 130
    return show_run(folder, f"run folder: {folder}")


def show_run(folder: Path, where: str) -> int:
    """Print a finished run's report.md, then `where` (the line naming its folder); the exit
    status 0. The evaluation commands (python -m eval, eval.judge_run) end with it."""
    from medchat.evaluation import REPORT

    print((folder / REPORT).read_text())
    print(where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
