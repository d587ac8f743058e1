"""An evaluation run: answer held-out questions with the base and tuned model, score, report.

    python -m eval --adapter runs/adapters/smollm2-medquad --split test --limit 64

    folder = run_evaluation(EvalConfig(adapter="runs/adapters/smollm2-medquad", limit=64))
    summary, results = load_run(folder)

A run folder holds config.json (what was run), results.jsonl (one line per question, appended
after every batch), summary.json, report.md and similarity.png. Rerunning with the same
config and the same out folder resumes: questions already in results.jsonl are skipped. One
run folder never mixes two embedders or two configurations.

The modules, each owning one thing:
- config.py: EvalConfig (the flags, validated), the adapter and data it names, the rows scored
  and the rows held out.
- policy.py: which NIH sources the prompts get (`--retrieval auto` asks the app's own rule,
  medchat.pipeline.sources_in_prompt) and the leak-free index they come from.
- folder.py: the run folder's files, atomic writes, resume checks, reading runs back.
- run.py: run_evaluation, in numbered steps, and the model it loads.
- scoring.py: score_batch (one batch's results.jsonl lines) and the statement judge.
- report.py: summarize (summary.json), render_report (report.md), similarity_png.
"""

from medchat.evaluation.config import (
    EVAL_SPLITS,
    REPETITION_PENALTY,
    TEMPERATURE,
    TRAINING_RECORD,
    EvalConfig,
    held_out_keys,
    resolve_adapter,
    resolve_data,
    select_rows,
    trained_on,
)
from medchat.evaluation.folder import (
    CONFIG,
    IDENTITY_FIELDS,
    OPTIONAL_FIELDS,
    PLOT,
    REPORT,
    RESULT_FIELDS,
    RESULTS,
    RETRIEVAL_FIELDS,
    SIDES,
    SUMMARY,
    default_out_dir,
    list_runs,
    load_run,
    previous_config,
    read_results,
    write_atomic,
)
from medchat.evaluation.policy import eval_index, retrieval_for
from medchat.evaluation.report import (
    PLOT_INK,
    PLOT_PAPER,
    render_report,
    similarity_png,
    summarize,
)
from medchat.evaluation.run import Progress, build_pipeline, run_evaluation, write_run_folder
from medchat.evaluation.scoring import (
    NOT_COVERED_PATTERN,
    judge_name,
    make_run_judge,
    score_batch,
)

__all__ = [
    "CONFIG",
    "EVAL_SPLITS",
    "IDENTITY_FIELDS",
    "NOT_COVERED_PATTERN",
    "OPTIONAL_FIELDS",
    "PLOT",
    "PLOT_INK",
    "PLOT_PAPER",
    "REPETITION_PENALTY",
    "REPORT",
    "RESULTS",
    "RESULT_FIELDS",
    "RETRIEVAL_FIELDS",
    "SIDES",
    "SUMMARY",
    "TEMPERATURE",
    "TRAINING_RECORD",
    "EvalConfig",
    "Progress",
    "build_pipeline",
    "default_out_dir",
    "eval_index",
    "held_out_keys",
    "judge_name",
    "list_runs",
    "load_run",
    "make_run_judge",
    "previous_config",
    "read_results",
    "render_report",
    "resolve_adapter",
    "resolve_data",
    "retrieval_for",
    "run_evaluation",
    "score_batch",
    "select_rows",
    "similarity_png",
    "summarize",
    "trained_on",
    "write_atomic",
    "write_run_folder",
]
