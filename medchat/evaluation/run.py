"""An evaluation run, step by step: choose the rows, open (or resume) the run folder, load the
model and the embedder, answer and score batch by batch, then summarise and report.

    python -m eval --adapter runs/adapters/smollm2-medquad --split test --limit 64

    folder = run_evaluation(EvalConfig(adapter="runs/adapters/smollm2-medquad", limit=64))

Rerunning with the same config and the same out folder resumes: questions already in
results.jsonl are skipped. The run's Settings (default: Settings(), never the environment;
the command line passes Settings.from_env()) give the backend and profile a config leaves
unset, the retrieval method and k, the retrieval cache and the default runs folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from medchat import metrics
from medchat.data import LoadReport, load_pairs
from medchat.errors import MedchatError
from medchat.evaluation.config import (
    EvalConfig,
    resolve_adapter,
    resolve_data,
    select_rows,
    trained_on,
)
from medchat.evaluation.folder import (
    CONFIG,
    OPTIONAL_FIELDS,
    PLOT,
    REPORT,
    RESULTS,
    SIDES,
    SUMMARY,
    append_results,
    check_embedder,
    check_embedder_name,
    default_out_dir,
    previous_config,
    read_results,
    write_atomic,
)
from medchat.evaluation.policy import eval_index, retrieval_for
from medchat.evaluation.report import render_report, similarity_png, summarize
from medchat.evaluation.scoring import judge_name, make_run_judge, score_batch
from medchat.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], Any]


@dataclass
class Plan:
    """What a run scores (step 1), decided before anything heavy is loaded."""

    adapter: str  # resolved: the adapter's absolute folder, or its hub id
    data_report: LoadReport
    rows: pd.DataFrame
    keys: list[str]
    retrieval: dict | None  # {"method", "k"}, or None for prompts without sources
    identity: dict  # what config.json records and a resumed folder must match


@dataclass
class Sitting:
    """The run folder as this sitting finds it (step 2)."""

    out: Path
    previous: dict | None  # its config.json; None for a new folder (until step 3 writes it)
    done: dict[str, dict]  # key -> the saved record of every question already scored
    todo: pd.DataFrame  # the rows left


@dataclass
class Tools:
    """What answers and scores the rows left (step 3)."""

    pipeline: Any  # a medchat.pipeline.Pipeline, the adapter attached
    embedder: metrics.Embedder
    judge: Any  # the statement judge, or None
    index: Any  # the retrieval index searched, or None without retrieval


def run_evaluation(
    config: EvalConfig,
    engine=None,
    embedder: metrics.Embedder | None = None,
    progress: Progress | None = None,
    *,
    settings: Settings | None = None,
) -> Path:
    """Generate, score and report; return the run folder.

    `engine` (a Pipeline, a backend, or an in-process Engine, with the adapter attached) and
    `embedder` are loaded when not given; an embedder passed here wins over config.embedder.
    `progress(done, total)` is called at the start and after every batch is saved (an
    exception it raises stops the run, and the saved batches stay for a resume). `settings`
    (default Settings()) fill in what the config leaves unset.
    """
    settings = settings if settings is not None else Settings()
    started = time.perf_counter()
    # 1. Check the adapter, read the data, choose the rows: cheap, so bad input fails fast.
    plan = plan_run(config, settings)

    # 2. Open the run folder; a folder with the same config is resumed.
    sitting = open_folder(config, plan, settings, embedder_given=embedder is not None)

    # 3. Load the embedder and the model, only when there is something left to generate; a
    #    new folder then gets its config.json.
    tools = None
    if not sitting.todo.empty:
        tools = load_tools(config, plan, sitting, engine, embedder, settings)
        if sitting.previous is None:
            sitting.previous = write_config(sitting.out, plan, tools)
    setup_seconds = time.perf_counter() - started

    # 4. Generate and score batch by batch; every batch is on disk before the next starts.
    n_new, scoring_seconds = 0, 0.0  # this sitting's
    if tools is not None:
        n_new, scoring_seconds = answer_and_score(config, plan, sitting, tools, progress)
    elif progress is not None:
        progress(len(plan.rows), len(plan.rows))  # nothing left to do

    # 5. Summarise everything in the folder (this sitting and earlier ones), then report.
    t_summary = time.perf_counter()
    summary, results = summarize_run(config, plan, sitting)
    summary_seconds = time.perf_counter() - t_summary
    summary["timing"] = run_timing(
        results,
        started=started,
        setup_seconds=setup_seconds,
        scoring_seconds=scoring_seconds + summary_seconds,
        summary_seconds=summary_seconds,
        n_new=n_new,
    )
    write_outputs(sitting.out, summary, results)
    return sitting.out


# -- 1. what to score --------------------------------------------------------------------------
def plan_run(config: EvalConfig, settings: Settings) -> Plan:
    """The adapter, the data and its rows, the retrieval, and the identity of the run."""
    adapter = resolve_adapter(config.adapter)
    data = resolve_data(config, adapter)
    frame, data_report = load_pairs(data)
    rows = select_rows(frame, config, adapter)
    keys = rows["key"].tolist()
    retrieval = retrieval_for(config, adapter, settings)
    identity = {
        "adapter": adapter,
        "data": data,
        "data_sha256": data_report.sha256,  # the data's identity; `data` is this machine's path
        "split": config.split,
        "limit": config.limit,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "max_new_tokens": config.max_new_tokens,
        "generation": config.generation_params().as_dict(),
        "n": len(keys),
        "sample_sha": hashlib.sha1("\n".join(keys).encode()).hexdigest(),
        "retrieval": retrieval,
        # Statement sets: the judge's name ("offline", "llm:<model>"); None without statements.
        "judge": judge_name(config, rows),
    }
    return Plan(adapter, data_report, rows, keys, retrieval, identity)


# -- 2. the run folder -------------------------------------------------------------------------
def open_folder(
    config: EvalConfig, plan: Plan, settings: Settings, *, embedder_given: bool
) -> Sitting:
    """The run folder (config.out, else a new one under settings.runs_dir), what it holds and
    what is left; a folder of another configuration or embedder is refused."""
    out = Path(config.out) if config.out else default_out_dir(config, settings.runs_dir)
    previous = previous_config(out, plan.identity)
    wanted = set(plan.keys)
    saved = read_results(out / RESULTS, repair=True) if previous else []
    done = {r["key"]: r for r in saved if r.get("key") in wanted}
    todo = plan.rows[~plan.rows["key"].isin(done)].reset_index(drop=True)
    log.info("Run folder %s: %d questions, %d already done.", out, len(plan.rows), len(done))
    if not todo.empty and not embedder_given:
        check_embedder_name(out, previous, config.embedder)
    return Sitting(out, previous, done, todo)


# -- 3. the model, the embedder, the judge and the index ---------------------------------------
def load_tools(
    config: EvalConfig,
    plan: Plan,
    sitting: Sitting,
    engine,
    embedder: metrics.Embedder | None,
    settings: Settings,
) -> Tools:
    """Load what the rows left need, checking each against a resumed folder's record."""
    from medchat.pipeline import as_pipeline

    index = None
    if plan.retrieval is not None:
        index = eval_index(
            config, plan.adapter, plan.retrieval, plan.data_report.sha256, plan.keys, settings
        )
    embedder = embedder or metrics.Embedder(config.embedder)
    check_embedder(sitting.out, sitting.previous, embedder)
    judge = make_run_judge(config, plan.identity["judge"], embedder, sitting.previous, sitting.out)
    pipeline = as_pipeline(
        engine if engine is not None else build_pipeline(config, settings), settings
    )
    check_engine(pipeline, config, plan.adapter, sitting.previous, sitting.out)
    return Tools(pipeline, embedder, judge, index)


def build_pipeline(config: EvalConfig, settings: Settings | None = None):
    """The request pipeline over the backend the config (else `settings`) names.

    The local backend loads the base model with the adapter attached; the openai backend
    connects to the server, which must serve that adapter.
    """
    from medchat.backends import BACKEND_FLAGS, make_backend
    from medchat.pipeline import Pipeline

    overrides: dict[str, Any] = {"adapter": config.adapter}
    for key in ("profile", *BACKEND_FLAGS):
        if getattr(config, key):
            overrides[key] = getattr(config, key)
    settings = dataclasses.replace(settings if settings is not None else Settings(), **overrides)
    return Pipeline(make_backend(settings), settings)


def check_engine(pipeline, config: EvalConfig, adapter: str, previous: dict | None, out: Path):
    """The loaded model carries the adapter and profile asked for (and a resumed run's)."""
    if not pipeline.has_adapter:
        raise MedchatError("The loaded model has no fine-tuned adapter; load it with --adapter.")
    loaded = pipeline.adapter
    local = Path(str(loaded)).expanduser()
    loaded = str(local.resolve()) if local.exists() else str(loaded)
    if loaded != adapter:
        raise MedchatError(
            f"The loaded model carries adapter {pipeline.adapter!r}, not {config.adapter!r}; "
            "load the adapter you want to evaluate."
        )
    name = pipeline.profile.name
    if config.profile not in (None, "auto") and config.profile != name:
        raise MedchatError(
            f"The loaded model uses profile {name!r}, not {config.profile!r}; "
            "load that profile or drop --profile."
        )
    if previous and previous.get("profile") != name:
        raise MedchatError(
            f"Run folder {str(out)!r} was generated with profile {previous.get('profile')!r}, "
            f"not {name!r}; pass --profile {previous.get('profile')} or use another --out."
        )


def write_config(out: Path, plan: Plan, tools: Tools) -> dict:
    """Create the run folder with its config.json (what was run); return that record."""
    pipeline, embedder, judge, index = tools.pipeline, tools.embedder, tools.judge, tools.index
    record = plan.identity | {
        "embedder": embedder.name,
        "embedder_source": embedder.source,
        "embedder_max_seq_length": embedder.max_seq_length,
        "profile": pipeline.profile.name,
        "engine": pipeline.info(),
        "data_report": plan.data_report.as_dict(),
        "index": index.identity if index is not None else None,
        # The prompt both sides were given: the adapter's style (medchat.prompts), with a
        # sources block exactly when `retrieval` is set.
        "prompt_style": pipeline.style.served(plan.retrieval).id,
        "sources_in_prompt": plan.retrieval is not None,
        "judge_info": judge.info() if judge is not None else None,
        "created": _now(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG, json.dumps(record, indent=1) + "\n")
    return record


# -- 4. answer and score -----------------------------------------------------------------------
def answer_and_score(
    config: EvalConfig, plan: Plan, sitting: Sitting, tools: Tools, progress: Progress | None
) -> tuple[int, float]:
    """Answer the rows left with both sides and score them, appending each batch to
    results.jsonl (and to sitting.done); return (questions scored, scoring seconds)."""
    from tqdm.auto import tqdm

    from medchat.pipeline import covered

    done, index = sitting.done, tools.index
    total, params = len(plan.rows), config.generation_params()
    extra_columns = [c for c in OPTIONAL_FIELDS if c in plan.rows.columns]
    n_new, scoring_seconds = 0, 0.0
    bar = tqdm(total=total, initial=len(done), unit="q", desc="evaluating", smoothing=0.1)
    try:
        if progress is not None:
            progress(len(done), total)
        for start in range(0, len(sitting.todo), config.batch_size):
            batch = sitting.todo.iloc[start : start + config.batch_size]
            t0 = time.perf_counter()
            questions = list(batch["question"])
            sources = None
            if index is not None:  # a page the library only points to is no passage
                found = index.search_many(questions, plan.retrieval["k"])
                sources = [[h for h in hits if covered(h)] for hits in found]
            answers = tools.pipeline.generate_batch(questions, params, sides=SIDES, sources=sources)
            t1 = time.perf_counter()
            records = score_batch(
                batch, answers, tools.embedder, extra_columns, sources, tools.judge
            )
            t2 = time.perf_counter()
            for r in records:
                r["generation_seconds"] = round((t1 - t0) / len(records), 4)
                r["scoring_seconds"] = round((t2 - t1) / len(records), 4)
            append_results(sitting.out / RESULTS, records)
            done.update((r["key"], r) for r in records)
            scoring_seconds += t2 - t1
            n_new += len(records)
            bar.update(len(records))
            if progress is not None:
                progress(len(done), total)
    finally:
        bar.close()
    return n_new, scoring_seconds


# -- 5. summary and report ---------------------------------------------------------------------
def summarize_run(config: EvalConfig, plan: Plan, sitting: Sitting) -> tuple[dict, pd.DataFrame]:
    """(summary.json less its timing, the results frame) of every question of the run."""
    previous = sitting.previous
    results = pd.DataFrame([sitting.done[k] for k in plan.keys])
    summary = summarize(
        results, embedder=previous["embedder"], seed=config.seed, judge=previous.get("judge_info")
    )
    summary["run"] = {
        "adapter": previous["adapter"],
        "data": previous["data"],
        "split": previous["split"],
        # Whether these questions are the adapter's own training data (then split matters).
        "data_is_training": trained_on(previous["adapter"], previous.get("data_sha256")),
        "limit": previous["limit"],
        "profile": previous["profile"],
        "base_model": previous.get("engine", {}).get("base_model"),
        "max_new_tokens": previous["max_new_tokens"],
        "folder": str(sitting.out),
        "retrieval": previous.get("retrieval"),
        "index": previous.get("index"),
        "prompt_style": previous.get("prompt_style"),
        "sources_in_prompt": previous.get("sources_in_prompt"),
    }
    return summary, results


def run_timing(
    results: pd.DataFrame,
    *,
    started: float,
    setup_seconds: float,
    scoring_seconds: float,
    summary_seconds: float,
    n_new: int,
) -> dict:
    """summary.json's timing. Generation and scoring add up over every sitting of a resumed
    run (from results.jsonl); wall time and `scoring_seconds` are this sitting's."""
    wall = time.perf_counter() - started
    gen_all = float(results["generation_seconds"].sum())
    score_all = float(results["scoring_seconds"].sum()) + summary_seconds
    return {
        "wall_seconds": round(wall, 3),
        "setup_seconds": round(setup_seconds, 3),
        "generation_seconds": round(gen_all, 3),
        "scoring_seconds": round(score_all, 3),
        "answers_per_second": round(2 * len(results) / gen_all, 4) if gen_all > 0 else None,
        "scoring_share": round(score_all / (gen_all + score_all), 4) if gen_all > 0 else None,
        "wall_scoring_share": round(scoring_seconds / wall, 4),
        "items_this_run": n_new,
        "items_resumed": len(results) - n_new,
        "finished": _now(),
    }


def write_outputs(out: Path, summary: dict, results: pd.DataFrame) -> None:
    """summary.json, report.md and similarity.png, each written whole."""
    write_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    write_atomic(out / REPORT, render_report(summary))
    write_atomic(out / PLOT, similarity_png(results, embedder_name=summary["embedder"]))


def write_run_folder(out: Path, config: dict, records: list[dict], summary: dict) -> Path:
    """A whole run folder from records made elsewhere (a run judged again, runs merged):
    config.json, results.jsonl, then summary.json, report.md and similarity.png."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG, json.dumps(config, indent=1) + "\n")
    write_atomic(out / RESULTS, "".join(json.dumps(r) + "\n" for r in records))
    write_outputs(out, summary, pd.DataFrame(records))
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
