"""An evaluation run: answer held-out questions with the base and tuned model, score, report.

    python -m eval --adapter runs/adapters/smollm2-medquad --split test --limit 64

    folder = run_evaluation(EvalConfig(adapter="runs/adapters/smollm2-medquad", limit=64))
    summary, results = load_run(folder)

A run folder holds config.json (what was run), results.jsonl (one line per question, appended
after every batch), summary.json, report.md and similarity.png. Rerunning with the same
config and the same out folder resumes: questions already in results.jsonl are skipped. One
run folder never mixes two embedders or two configurations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medchat import metrics
from medchat.data import load_pairs, read_split, select_split, shipped_data_for
from medchat.errors import MedchatError
from medchat.judges import JUDGE_NAMES
from medchat.profiles import PROFILE_NAMES
from medchat.settings import REPO_ROOT
from medchat.statements import NAMED_SETS, statement_columns

log = logging.getLogger(__name__)

CONFIG = "config.json"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.md"
PLOT = "similarity.png"
TRAINING_RECORD = "medchat_training.json"  # written beside an adapter by the training script
EVAL_SPLITS = ("test", "validation", "all")
SIDES = ("base", "tuned")
# Greedy decoding with the app's default repetition penalty: scores are reproducible.
TEMPERATURE = 0.0
REPETITION_PENALTY = 1.1

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
NOT_COVERED_PATTERN = re.compile(r"(sources|they) do(es)? not cover", re.IGNORECASE)
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

Progress = Callable[[int, int], Any]


@dataclass
class EvalConfig:
    """What to evaluate and how; each field is the `python -m eval` flag of the same name.

    `data` None = the data file recorded beside the adapter by training. `split` picks the
    adapter's held-out test or validation rows (from its split.json) or `all` rows. `limit`
    None = every selected row, else a seeded sample of that many. `out` None = a new folder
    `<runs_dir>/<timestamp>-<adapter name>`. `profile` None = MEDCHAT_PROFILE or auto.
    `embedder` None = the default Embedder (see medchat.metrics). `data` "kqa" = K-QA's 201
    physician-answered questions with their statements (scored with split all). `judge`
    (statement sets only) None = offline, "none" = no statement scores.
    """

    adapter: str
    data: str | None = None
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    max_new_tokens: int = 256
    out: Path | None = None
    profile: str | None = None
    embedder: str | None = None
    # Where answers come from (not part of a run's identity): None = MEDCHAT_BACKEND, else
    # local. The openai backend needs server_url (or MEDCHAT_SERVER_URL).
    backend: str | None = None
    server_url: str | None = None
    server_base_model: str | None = None
    server_tuned_model: str | None = None
    # NIH sources in the prompt: None = as the adapter was trained (its prompt style), "on" or
    # "off". Scoring MedQuAD, the index holds only rows outside the adapter's held-out sides
    # (and outside those of `heldout_in`, another adapter whose test rows the scored rows
    # must also be: so two adapters are scored on rows neither was trained on).
    retrieval: str | None = None
    retrieval_method: str | None = None
    retrieval_k: int | None = None
    heldout_in: str | None = None
    # Who judges each answer against a statement set's statements (medchat.judges).
    judge: str | None = None
    judge_url: str | None = None
    judge_model: str | None = None

    def __post_init__(self) -> None:
        if not self.adapter or not str(self.adapter).strip():
            raise MedchatError("No adapter given; pass --adapter with a folder or hub id.")
        self.adapter = str(self.adapter).strip()
        if self.data is not None:
            self.data = str(self.data).strip() or None
        if self.out is not None:
            self.out = Path(self.out).expanduser()
        if self.data in NAMED_SETS and self.split == "test":
            self.split = "all"  # no adapter trained on a named statement set: no held-out rows
        checks = [
            (self.split in EVAL_SPLITS, "--split", "test, validation or all"),
            (self.limit is None or self.limit >= 1, "--limit", "at least 1 (or leave it out)"),
            (self.seed >= 0, "--seed", "0 or more"),
            (self.batch_size >= 1, "--batch-size", "at least 1"),
            (1 <= self.max_new_tokens <= 4096, "--max-new-tokens", "between 1 and 4096"),
            (
                self.profile is None or self.profile in PROFILE_NAMES,
                "--profile",
                "one of " + ", ".join(PROFILE_NAMES),
            ),
            (self.backend in (None, "local", "openai"), "--backend", "local or openai"),
            (self.retrieval in (None, "auto", "on", "off"), "--retrieval", "on or off"),
            (self.judge in (None, *JUDGE_NAMES), "--judge", "offline, llm or none"),
            (
                self.retrieval_method in (None, "bm25", "dense", "hybrid", "topic"),
                "--retrieval-method",
                "bm25, dense, hybrid or topic",
            ),
            (
                self.retrieval_k is None or 1 <= self.retrieval_k <= 8,
                "--retrieval-k",
                "a whole number from 1 to 8",
            ),
        ]
        for ok, flag, want in checks:
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise MedchatError(f"{flag} is {value!r}; set it to {want}.")

    def generation_params(self):
        from medchat.engine import GenerationParams

        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=TEMPERATURE,
            repetition_penalty=REPETITION_PENALTY,
        )


# -- choosing what to score ------------------------------------------------------------------
def resolve_adapter(adapter: str) -> str:
    """The adapter's absolute folder, or its hub id; a missing one is a MedchatError."""
    from medchat.loading import read_adapter_config

    _, location = read_adapter_config(adapter)
    path = Path(location).expanduser()
    return str(path.resolve()) if path.exists() else location


def _adapter_file(adapter: str, name: str) -> Path | None:
    """A file stored beside the adapter (local folder or hub repo), or None."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        return path / name if (path / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(adapter, name))
    except Exception:  # absent from the repo, or the hub is out of reach: same answer
        return None


def resolve_data(config: EvalConfig, adapter: str) -> str:
    """--data, else the data file that training recorded beside the adapter.

    A recorded path is tried as given, then from the repository root and the adapter folder;
    when it is found nowhere (a record written on another machine), the shipped MedQuAD copy
    is used if the recorded data_sha256 is its own or that of the CSV it was converted from.
    """
    if config.data in NAMED_SETS:
        return str(NAMED_SETS[config.data])
    if config.data:
        path = Path(config.data).expanduser()
        return str(path.resolve()) if path.exists() else config.data
    record = _adapter_file(adapter, TRAINING_RECORD)
    data_file, data_sha256 = None, None
    if record is not None:
        try:
            recorded = json.loads(record.read_text())
            data_file, data_sha256 = recorded.get("data_file"), recorded.get("data_sha256")
        except (OSError, ValueError, AttributeError):
            data_file = None
    if not data_file:
        raise MedchatError(
            f"Adapter {config.adapter!r} records no training data file; pass --data with the "
            "questions to score."
        )
    path = Path(data_file).expanduser()
    if not path.is_absolute() and not path.exists():
        # Recorded relative to where training ran: the repository root, or the adapter folder.
        for root in (REPO_ROOT, Path(adapter)):
            if (root / path).exists():
                path = root / path
                break
    if path.exists():
        return str(path.resolve())
    shipped = shipped_data_for(data_sha256)
    return str(shipped) if shipped is not None else str(data_file)


def _trained_on(adapter: str, data_sha256: str | None) -> bool:
    """True when the data of this sha256 is what the adapter's training record names."""
    record = _adapter_file(adapter, TRAINING_RECORD)
    if record is None or not data_sha256:
        return False
    try:
        recorded = json.loads(record.read_text()).get("data_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    if recorded == data_sha256:
        return True
    shipped = shipped_data_for(recorded)  # the shipped copy of what training read, by sha256
    return shipped is not None and shipped == shipped_data_for(data_sha256)


def select_rows(df: pd.DataFrame, config: EvalConfig, adapter: str) -> pd.DataFrame:
    """The rows to score: the split's rows (or all), a seeded sample of --limit, by key."""
    if config.split == "all":
        rows = df
    else:
        split_file = _adapter_file(adapter, "split.json")
        if split_file is None:
            raise MedchatError(
                f"Adapter {config.adapter!r} has no split.json, so it has no {config.split} "
                "rows; use --split all or an adapter from the training script."
            )
        split = read_split(split_file)
        if not split.get(config.split):
            other = "validation" if config.split == "test" else "test"
            raise MedchatError(
                f"The split of adapter {config.adapter!r} has no {config.split} rows; use "
                f"--split {other} or --split all."
            )
        rows = select_split(df, split, config.split)
        missing = len(set(split[config.split])) - len(rows)
        if missing:
            log.warning(
                "%d of the %d %s rows of the split are not in the data; scoring the rest.",
                missing,
                len(set(split[config.split])),
                config.split,
            )
    if config.heldout_in:
        if config.split == "all":
            raise MedchatError("--heldout-in needs --split test or validation, not all.")
        other = _heldout_split(config.heldout_in)
        rows = rows[rows["key"].isin(set(other.get(config.split) or ()))]
        if rows.empty:
            raise MedchatError(
                f"No {config.split} row of this adapter is also held out by "
                f"{config.heldout_in!r}; drop --heldout-in."
            )
    rows = rows.sort_values("key", kind="stable").reset_index(drop=True)
    if config.limit is not None and config.limit < len(rows):
        rows = rows.sample(n=config.limit, random_state=config.seed)
    return rows.sort_values("key", kind="stable").reset_index(drop=True)


def _heldout_split(adapter: str) -> dict:
    """The split.json of `adapter`: a trained adapter (folder or hub id), a folder holding a
    split.json, or a split.json file."""
    path = Path(adapter).expanduser()
    if path.is_file() or (path / "split.json").is_file():
        return read_split(path)
    split_file = _adapter_file(resolve_adapter(adapter), "split.json")
    if split_file is None:
        raise MedchatError(f"--heldout-in {adapter!r} has no split.json; give a trained adapter.")
    return read_split(split_file)


def held_out_keys(config: EvalConfig, adapter: str) -> set[str]:
    """Every row key held out (validation or test) by the adapter and by --heldout-in."""
    keys: set[str] = set()
    splits = []
    split_file = _adapter_file(adapter, "split.json")
    if split_file is not None:
        splits.append(read_split(split_file))
    if config.heldout_in:
        splits.append(_heldout_split(config.heldout_in))
    for split in splits:
        keys |= set(split.get("validation") or ()) | set(split.get("test") or ())
    return keys


def retrieval_for(config: EvalConfig, adapter: str) -> dict | None:
    """What retrieval a run uses ({"method", "k"}), or None for prompts without sources."""
    from medchat.prompts import read_style
    from medchat.settings import Settings

    path = Path(adapter)
    style = read_style(adapter) if path.is_dir() else None
    trained = (style.retrieval or {}) if style else {}
    wanted = config.retrieval or "auto"
    if wanted == "off" or (wanted == "auto" and not trained):
        return None
    settings = Settings.from_env()
    return {
        "method": config.retrieval_method or trained.get("method") or settings.retrieval_method,
        "k": int(config.retrieval_k or trained.get("k") or settings.retrieval_k),
    }


def eval_index(config: EvalConfig, adapter: str, retrieval: dict, data_sha: str | None, keys):
    """The index a run searches: the shipped MedQuAD, less every row held out from training
    when the scored data is MedQuAD itself (so no scored answer can be retrieved)."""
    from medchat.retrieval import load_index
    from medchat.settings import Settings

    index = load_index(method=retrieval["method"], cache_dir=Settings.from_env().cache_dir)
    if data_sha is None or data_sha != index.identity.get("data_sha256"):
        return index  # other questions (MedicationQA, your own file): the whole library
    if config.split == "all":
        raise MedchatError(
            "Scoring every MedQuAD row with retrieval would retrieve the answers themselves; "
            "use --split test or --retrieval off."
        )
    held = held_out_keys(config, adapter) | set(keys)
    train_keys = {p.key for p in index.passages} - held
    return index.restricted(train_keys, name="rows not held out by the scored adapter(s)")


def default_out_dir(config: EvalConfig, runs_dir: Path | None = None) -> Path:
    """`<runs_dir>/<timestamp>-<adapter name>`, a fresh folder."""
    if runs_dir is None:
        from medchat.settings import Settings

        runs_dir = Settings.from_env().runs_dir
    name = Path(config.adapter.rstrip("/\\")).name  # a folder's or a hub id's last part
    name = re.sub(r"[^\w.-]+", "-", name).strip("-.") or "adapter"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(runs_dir) / f"{stamp}-{name}"
    k = 2
    while out.exists():
        out = Path(runs_dir) / f"{stamp}-{name}-{k}"
        k += 1
    return out


# -- the run folder --------------------------------------------------------------------------
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


def _append_results(path: Path, records: Sequence[dict]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _previous_config(out: Path, identity: dict) -> dict | None:
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


def _check_embedder(out: Path, previous: dict | None, embedder: metrics.Embedder) -> None:
    if previous and previous.get("embedder") != embedder.name:
        raise MedchatError(
            f"Run folder {str(out)!r} was scored with embedder {previous.get('embedder')!r} and "
            f"one run never mixes two embedders; pass --embedder "
            f"{previous.get('embedder_source')} or use another --out."
        )


def _check_engine(pipeline, config: EvalConfig, adapter: str, previous: dict | None, out: Path):
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


def build_pipeline(config: EvalConfig):
    """The request pipeline over the backend the config (or MEDCHAT_BACKEND) names.

    The local backend loads the base model with the adapter attached; the openai backend
    connects to the server, which must serve that adapter.
    """
    from medchat.backends import BACKEND_FLAGS, make_backend
    from medchat.pipeline import Pipeline
    from medchat.settings import Settings

    overrides: dict[str, Any] = {"adapter": config.adapter}
    for key in ("profile", *BACKEND_FLAGS):
        if getattr(config, key):
            overrides[key] = getattr(config, key)
    settings = Settings.from_env(**overrides)
    return Pipeline(make_backend(settings), settings)


def judge_name(config: EvalConfig, rows: pd.DataFrame) -> str | None:
    """The statement judge a run names in its config: None without statements or with
    --judge none; "offline"; "llm:<model>" (the model as given, or the server's default)."""
    if statement_columns(rows) is None or config.judge == "none":
        return None
    if (config.judge or "offline") == "offline":
        return "offline"
    return f"llm:{config.judge_model or os.environ.get('MEDCHAT_JUDGE_MODEL') or 'default'}"


def make_run_judge(config: EvalConfig, name: str | None, embedder, previous, out: Path):
    """The run's statement judge (None without one); a resumed run must get the same judge."""
    if name is None:
        return None
    from medchat.judges import make_judge

    judge = make_judge(
        name.split(":")[0], embedder=embedder, url=config.judge_url, model=config.judge_model
    )
    recorded = ((previous or {}).get("judge_info") or {}).get("identity")
    if previous and recorded != judge.identity:
        raise MedchatError(
            f"Run folder {str(out)!r} was judged by {recorded!r}, not {judge.identity!r}, and one "
            "run never mixes two judges; use another --out."
        )
    return judge


# -- the run ---------------------------------------------------------------------------------
def run_evaluation(
    config: EvalConfig,
    engine=None,
    embedder: metrics.Embedder | None = None,
    progress: Progress | None = None,
) -> Path:
    """Generate, score and report; return the run folder.

    `engine` (a Pipeline, a backend, or an in-process Engine, with the adapter attached) and
    `embedder` are loaded when not given;
    an embedder passed here wins over config.embedder. `progress(done, total)` is called at
    the start and after every batch is saved (an exception it raises stops the run, and the
    saved batches stay for a resume).
    """
    started = time.perf_counter()
    # 1. Check the adapter, read the data, choose the rows: cheap, so bad input fails fast.
    adapter = resolve_adapter(config.adapter)
    data = resolve_data(config, adapter)
    frame, data_report = load_pairs(data)
    rows = select_rows(frame, config, adapter)
    keys = rows["key"].tolist()
    retrieval = retrieval_for(config, adapter)
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

    # 2. Open the run folder; a folder with the same config is resumed.
    out = Path(config.out) if config.out else default_out_dir(config)
    previous = _previous_config(out, identity)
    wanted = set(keys)
    saved = read_results(out / RESULTS, repair=True) if previous else []
    done = {r["key"]: r for r in saved if r.get("key") in wanted}
    todo = rows[~rows["key"].isin(done)].reset_index(drop=True)
    log.info("Run folder %s: %d questions, %d already done.", out, len(rows), len(done))
    if previous and not todo.empty and config.embedder and embedder is None:
        recorded = (previous.get("embedder"), previous.get("embedder_source"))
        if config.embedder not in recorded:
            raise MedchatError(
                f"Run folder {str(out)!r} was scored with embedder {recorded[0]!r} and one run "
                f"never mixes two embedders; pass --embedder {recorded[1]} or use another --out."
            )

    # 3. Load the embedder and the model, only when there is something left to generate.
    scoring_seconds = 0.0  # this sitting's
    n_new = 0
    index = None
    if not todo.empty:
        if retrieval is not None:
            index = eval_index(config, adapter, retrieval, data_report.sha256, keys)
        embedder = embedder or metrics.Embedder(config.embedder)
        _check_embedder(out, previous, embedder)
        judge = make_run_judge(config, identity["judge"], embedder, previous, out)
        from medchat.pipeline import as_pipeline, covered

        pipeline = as_pipeline(engine if engine is not None else build_pipeline(config), None)
        _check_engine(pipeline, config, adapter, previous, out)
        if previous is None:
            record = identity | {
                "embedder": embedder.name,
                "embedder_source": embedder.source,
                "embedder_max_seq_length": embedder.max_seq_length,
                "profile": pipeline.profile.name,
                "engine": pipeline.info(),
                "data_report": data_report.as_dict(),
                "index": index.identity if index is not None else None,
                # The prompt both sides were given: the adapter's style (medchat.prompts),
                # with a sources block exactly when `retrieval` is set.
                "prompt_style": pipeline.style.served(retrieval).id,
                "sources_in_prompt": retrieval is not None,
                "judge_info": judge.info() if judge is not None else None,
                "created": _now(),
            }
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / CONFIG, json.dumps(record, indent=1) + "\n")
            previous = record
    setup_seconds = time.perf_counter() - started

    # 4. Generate and score batch by batch; every batch is on disk before the next starts.
    if not todo.empty:
        from tqdm.auto import tqdm

        total, params = len(rows), config.generation_params()
        extra_columns = [c for c in OPTIONAL_FIELDS if c in rows.columns]
        bar = tqdm(total=total, initial=len(done), unit="q", desc="evaluating", smoothing=0.1)
        try:
            if progress is not None:
                progress(len(done), total)
            for start in range(0, len(todo), config.batch_size):
                batch = todo.iloc[start : start + config.batch_size]
                t0 = time.perf_counter()
                questions = list(batch["question"])
                sources = None
                if index is not None:  # a page the library only points to is no passage
                    found = index.search_many(questions, retrieval["k"])
                    sources = [[h for h in hits if covered(h)] for hits in found]
                answers = pipeline.generate_batch(questions, params, sides=SIDES, sources=sources)
                t1 = time.perf_counter()
                records = score_batch(batch, answers, embedder, extra_columns, sources, judge)
                t2 = time.perf_counter()
                for r in records:
                    r["generation_seconds"] = round((t1 - t0) / len(records), 4)
                    r["scoring_seconds"] = round((t2 - t1) / len(records), 4)
                _append_results(out / RESULTS, records)
                done.update((r["key"], r) for r in records)
                scoring_seconds += t2 - t1
                n_new += len(records)
                bar.update(len(records))
                if progress is not None:
                    progress(len(done), total)
        finally:
            bar.close()
    elif progress is not None:
        progress(len(rows), len(rows))  # nothing left to do

    # 5. Summarise everything in the folder (this sitting and earlier ones), then report.
    t_summary = time.perf_counter()
    results = pd.DataFrame([done[k] for k in keys])
    summary = summarize(
        results, embedder=previous["embedder"], seed=config.seed, judge=previous.get("judge_info")
    )
    summary["run"] = {
        "adapter": previous["adapter"],
        "data": previous["data"],
        "split": previous["split"],
        # Whether these questions are the adapter's own training data (then split matters).
        "data_is_training": _trained_on(previous["adapter"], previous.get("data_sha256")),
        "limit": previous["limit"],
        "profile": previous["profile"],
        "base_model": previous.get("engine", {}).get("base_model"),
        "max_new_tokens": previous["max_new_tokens"],
        "folder": str(out),
        "retrieval": previous.get("retrieval"),
        "index": previous.get("index"),
        "prompt_style": previous.get("prompt_style"),
        "sources_in_prompt": previous.get("sources_in_prompt"),
    }
    summary_seconds = time.perf_counter() - t_summary
    scoring_seconds += summary_seconds
    wall = time.perf_counter() - started
    # Generation and scoring add up over every sitting of a resumed run; wall time is this one's.
    gen_all = float(results["generation_seconds"].sum())
    score_all = float(results["scoring_seconds"].sum()) + summary_seconds
    summary["timing"] = {
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
    write_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    write_atomic(out / REPORT, render_report(summary))
    write_atomic(out / PLOT, similarity_png(results, embedder_name=summary["embedder"]))
    return out


def score_batch(
    batch: pd.DataFrame,
    answers: Sequence[dict],
    embedder: metrics.Embedder,
    extra_columns: Sequence[str] = (),
    sources: Sequence[Sequence[Any]] | None = None,
    judge=None,
) -> list[dict]:
    """results.jsonl records for one batch: both sides' answers scored against the reference;
    with `sources` (each question's retrieval hits), what each side cited; with a `judge` and a
    statement set, each side's verdict on every statement and its two statement scores."""
    from medchat.retrieval import citations, same_topic

    refs = batch["answer"].tolist()
    texts = {side: [a[side].text for a in answers] for side in SIDES}
    # One encode call for the batch: base answers, tuned answers and references together.
    cos = embedder.cosine(texts["base"] + texts["tuned"], refs + refs)
    cosine = {"base": cos[: len(refs)], "tuned": cos[len(refs) :]}
    records = []
    for i, (_, row) in enumerate(batch.iterrows()):
        record: dict[str, Any] = {
            "key": row["key"],
            "question": row["question"],
            "reference": row["answer"],
        }
        for side in SIDES:
            record[f"{side}_answer"] = texts[side][i]
        for side in SIDES:
            record[f"{side}_cosine"] = float(cosine[side][i])
        for side in SIDES:
            record[f"{side}_rouge_l"] = metrics.rouge_l_f1(texts[side][i], refs[i])
        for side in SIDES:
            record[f"{side}_tokens"] = int(answers[i][side].n_tokens)
        for side in SIDES:
            record[f"{side}_hit_limit"] = bool(answers[i][side].hit_limit)
        for side in SIDES:
            record[f"{side}_repetition"] = metrics.repeated_ngram_share(texts[side][i])
        for column in extra_columns:
            value = row[column]
            record[column] = None if _missing(value) else str(value)
        if sources is not None:
            hits = sources[i]
            record["sources"] = [  # as numbered in the prompt
                {
                    "rank": n,
                    "key": h.passage.key,
                    "title": h.passage.title,
                    "url": h.passage.url,
                    "score": round(h.score, 4),
                }
                for n, h in enumerate(hits, 1)
            ]
            focus = "" if _missing(row.get("focus")) else str(row.get("focus", ""))
            record["topic_hit"] = bool(focus) and any(
                same_topic(h.passage.title, focus) for h in hits
            )
            for side in SIDES:
                record[f"{side}_citations"] = citations(texts[side][i])
                record[f"{side}_not_covered"] = bool(NOT_COVERED_PATTERN.search(texts[side][i]))
        records.append(record)
    if judge is not None and statement_columns(batch) is not None:
        from medchat.statements import statement_fields

        for record, fields in zip(records, statement_fields(judge, batch, texts), strict=True):
            record.update(fields)
    return records


def summarize(
    results: pd.DataFrame, *, embedder: str, seed: int = 0, judge: dict | None = None
) -> dict:
    """summary.json's scores from a results frame (timing and run details are added apart);
    `judge` is the statement judge's info (name, identity, agreement) of a statement set."""
    summary: dict[str, Any] = {"embedder": embedder, "n": len(results)}
    for side in SIDES:
        summary[side] = {
            "cosine": metrics.describe(results[f"{side}_cosine"], seed=seed),
            "rouge_l": metrics.describe(results[f"{side}_rouge_l"], seed=seed),
            "tokens": metrics.describe(results[f"{side}_tokens"], seed=seed),
            "repetition": metrics.describe(results[f"{side}_repetition"], seed=seed),
            "truncation_rate": float(results[f"{side}_hit_limit"].astype(bool).mean()),
        }
    if "sources" in results.columns:
        n_sources = results["sources"].map(len)
        summary["retrieval"] = {
            "with_sources": float((n_sources > 0).mean()),
            "mean_sources": float(n_sources.mean()),
            "topic_hit": float(results["topic_hit"].astype(bool).mean()),
        }
        for side in SIDES:
            cited = results[f"{side}_citations"]
            valid = [
                sum(1 for c in cs if 1 <= c <= n) for cs, n in zip(cited, n_sources, strict=True)
            ]
            total = int(cited.map(len).sum())
            summary[side]["citing_share"] = float((cited.map(len) > 0).mean())
            summary[side]["citations_valid"] = sum(valid) / total if total else None
            summary[side]["not_covered_share"] = float(
                results[f"{side}_not_covered"].astype(bool).mean()
            )
            no_sources = n_sources == 0
            summary[side]["not_covered_when_no_source"] = (
                float(results.loc[no_sources, f"{side}_not_covered"].astype(bool).mean())
                if no_sources.any()
                else None
            )
    summary["paired"] = {
        name: metrics.paired_summary(results[f"base_{name}"], results[f"tuned_{name}"], seed=seed)
        for name in ("cosine", "rouge_l")
    }
    by_qtype: dict[str, dict] = {}
    if "qtype" in results.columns and results["qtype"].notna().any():
        qtypes = results["qtype"].fillna("(none)")
        for qtype, group in results.groupby(qtypes, sort=False):
            base, tuned = group["base_cosine"].mean(), group["tuned_cosine"].mean()
            by_qtype[str(qtype)] = {
                "n": len(group),
                "base": float(base),
                "tuned": float(tuned),
                "diff": float(tuned - base),
            }
        by_qtype = dict(sorted(by_qtype.items(), key=lambda kv: (-kv[1]["n"], kv[0])))
    summary["by_qtype"] = by_qtype
    if "base_verdicts" in results.columns:
        from medchat.statements import summarize_statements

        summary["statements"] = summarize_statements(results, judge, seed=seed)
    return summary


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


# -- report and plot -------------------------------------------------------------------------
def _f(x, spec: str = ".3f") -> str:
    return "n/a" if x is None or _missing(x) else format(x, spec)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def render_report(summary: dict) -> str:
    """report.md: the run, a base-vs-tuned table, the breakdown by question type, timing."""
    run, timing = summary.get("run", {}), summary.get("timing", {})
    base, tuned, paired = summary["base"], summary["tuned"], summary["paired"]
    lines = [
        f"# Evaluation: {run.get('adapter', '?')}",
        "",
        f"- data: {run.get('data', '?')} (split {run.get('split', '?')}"
        + (f", sample of {run['limit']}" if run.get("limit") else "")
        + f"), n = {summary['n']}",
        f"- model: {run.get('base_model', '?')} (profile {run.get('profile', '?')}), greedy, "
        f"{run.get('max_new_tokens', '?')} new tokens at most",
        f"- embedder: {summary['embedder']}",
    ]
    if run.get("prompt_style"):
        lines.append(
            f"- prompt style: {run['prompt_style']} ("
            + ("with" if run.get("sources_in_prompt") else "without")
            + " NIH sources in the prompt)"
        )
    if run.get("split") == "all" and run.get("data_is_training"):
        lines.append("- note: split `all` includes rows the adapter was trained on")
    lines += [
        "",
        "| metric | base | tuned | tuned - base [95% CI] | tuned wins / ties |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("cosine", "cosine similarity"), ("rouge_l", "ROUGE-L F1")):
        p = paired[name]
        lines.append(
            f"| {label} | {_f(base[name]['mean'])} | {_f(tuned[name]['mean'])} | "
            f"{_f(p['mean_diff'], '+.3f')} [{_f(p['ci_low'], '+.3f')}, "
            f"{_f(p['ci_high'], '+.3f')}] | {_pct(p['win_rate'])} / {_pct(p['tie_rate'])} |"
        )
    lines += [
        f"| answer tokens (mean) | {_f(base['tokens']['mean'], '.1f')} | "
        f"{_f(tuned['tokens']['mean'], '.1f')} | | |",
        f"| hit the token limit | {_pct(base['truncation_rate'])} | "
        f"{_pct(tuned['truncation_rate'])} | | |",
        f"| repeated 3-grams (mean share) | {_f(base['repetition']['mean'])} | "
        f"{_f(tuned['repetition']['mean'])} | | |",
    ]
    if summary.get("statements"):
        from medchat.statements import judge_line, report_lines

        table = lines.index("| metric | base | tuned | tuned - base [95% CI] | tuned wins / ties |")
        lines.insert(table - 1, judge_line(summary["statements"]))
        lines += report_lines(summary["statements"])
    if summary.get("retrieval"):
        r = summary["retrieval"]
        lines += [
            f"| answers citing a source | {_pct(base.get('citing_share'))} | "
            f"{_pct(tuned.get('citing_share'))} | | |",
            f"| citations to a retrieved passage | {_pct(base.get('citations_valid'))} | "
            f"{_pct(tuned.get('citations_valid'))} | | |",
            f"| says its sources do not cover it | {_pct(base.get('not_covered_share'))} | "
            f"{_pct(tuned.get('not_covered_share'))} | | |",
            "",
            f"Retrieval ({run.get('retrieval', {}).get('method', '?')}, "
            f"k={run.get('retrieval', {}).get('k', '?')}, index of "
            f"{(run.get('index') or {}).get('passages', '?')} passages"
            + (
                f", restricted to {(run.get('index') or {}).get('restricted_to')}"
                if (run.get("index") or {}).get("restricted_to")
                else ""
            )
            + f"): {_pct(r['with_sources'])} of questions got a passage, "
            f"{_pct(r['topic_hit'])} one on their own topic.",
        ]
    if summary.get("by_qtype"):
        lines += [
            "",
            "Cosine similarity by question type:",
            "",
            "| qtype | n | base | tuned | tuned - base |",
            "|---|---|---|---|---|",
        ]
        for qtype, row in summary["by_qtype"].items():
            lines.append(
                f"| {qtype} | {row['n']} | {_f(row['base'])} | {_f(row['tuned'])} | "
                f"{_f(row['diff'], '+.3f')} |"
            )
    if timing:
        lines += [
            "",
            f"Time: generation {_f(timing.get('generation_seconds'), '.1f')} s "
            f"({_f(timing.get('answers_per_second'), '.2f')} answers/s), scoring "
            f"{_f(timing.get('scoring_seconds'), '.1f')} s "
            f"({_pct(timing.get('scoring_share'))} of generation + scoring); this sitting "
            f"{_f(timing.get('wall_seconds'), '.1f')} s wall "
            f"({_pct(timing.get('wall_scoring_share'))} scoring), "
            f"{timing.get('items_this_run', 0)} new and {timing.get('items_resumed', 0)} "
            "resumed questions.",
        ]
    lines += ["", f"![cosine similarity, base vs tuned]({PLOT})", ""]
    return "\n".join(lines)


def similarity_png(results: pd.DataFrame, *, embedder_name: str = "") -> bytes:
    """The two cosine distributions overlaid, and tuned against base per question, as PNG."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global figure state, thread-safe
    from matplotlib.ticker import MaxNLocator

    base = results["base_cosine"].to_numpy(dtype=float)
    tuned = results["tuned_cosine"].to_numpy(dtype=float)
    fig = Figure(figsize=(10, 4.2), dpi=100, layout="constrained", facecolor=PLOT_PAPER)
    hist, scatter = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    low = min(float(min(base.min(), tuned.min())) - 0.02, 0.0)
    bins = np.linspace(low, 1.0, 31)
    for values, label, color in ((base, "base", "tab:gray"), (tuned, "tuned", "tab:blue")):
        label = f"{label} (mean {values.mean():.3f})"
        hist.hist(values, bins=bins, alpha=0.55, color=color, label=label)
        hist.axvline(values.mean(), color=color, linestyle="--", linewidth=1.2)
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.set_xlabel("cosine similarity to the reference answer")
    hist.set_ylabel("questions")
    hist.legend(loc="upper left")
    hist.set_title(f"cosine similarity, n = {len(results)}")
    scatter.scatter(base, tuned, s=12, alpha=0.6, color="tab:blue")
    scatter.plot([low, 1.0], [low, 1.0], color="black", linewidth=0.8)
    scatter.set_xlim(low, 1.0)
    scatter.set_ylim(low, 1.0)
    scatter.set_aspect("equal")
    scatter.set_xlabel("base")
    scatter.set_ylabel("tuned")
    scatter.set_title("per question")
    scatter.text(
        0.03,
        0.95,
        "above the line: tuned closer",
        transform=scatter.transAxes,
        fontsize=8,
        va="top",
    )
    if embedder_name:
        fig.suptitle(f"embedder: {re.sub(r'[0-9a-f]{64}', _short_sha, embedder_name)}", fontsize=9)
    _on_paper(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=PLOT_PAPER, transparent=False)
    return buffer.getvalue()


# Plots are dark ink on an opaque white page: readable on a light or a dark app theme.
PLOT_PAPER = "white"
PLOT_INK = "#1f2937"


def _on_paper(fig) -> None:
    """Give every part of a figure explicit colours: dark ink on an opaque white page.

    Without this the PNG takes its colours from matplotlib's style and rcParams (a user's
    matplotlibrc, a dark style, transparent saving), and dark text on a transparent
    background disappears on a dark page.
    """
    from matplotlib.text import Text

    fig.set_facecolor(PLOT_PAPER)
    for ax in fig.axes:
        ax.set_facecolor(PLOT_PAPER)
        ax.tick_params(which="both", colors=PLOT_INK)
        for spine in ax.spines.values():
            spine.set_edgecolor(PLOT_INK)
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(PLOT_PAPER)
            legend.get_frame().set_edgecolor("#9ca3af")
    for text in fig.findobj(Text):
        text.set_color(PLOT_INK)


def _short_sha(match: re.Match) -> str:
    return match.group(0)[:12] + "..."


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
