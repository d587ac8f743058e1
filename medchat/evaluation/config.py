"""What a run scores: EvalConfig (the `python -m eval` flags, validated), the adapter and data
it names, and the rows chosen from them (a split's held-out rows, a seeded sample).

    config = EvalConfig(adapter="runs/adapters/smollm2-medquad", limit=64)
    adapter = resolve_adapter(config.adapter)
    frame, _ = load_pairs(resolve_data(config, adapter))
    rows = select_rows(frame, config, adapter)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medchat.data import read_split, select_split, shipped_data_for
from medchat.errors import MedchatError
from medchat.judges import JUDGE_NAMES
from medchat.profiles import PROFILE_NAMES
from medchat.settings import REPO_ROOT
from medchat.statements import NAMED_SETS

log = logging.getLogger(__name__)

TRAINING_RECORD = "medchat_training.json"  # written beside an adapter by the training script
EVAL_SPLITS = ("test", "validation", "all")
# Greedy decoding with the app's default repetition penalty: scores are reproducible.
TEMPERATURE = 0.0
REPETITION_PENALTY = 1.1


@dataclass
class EvalConfig:
    """What to evaluate and how; each field is the `python -m eval` flag of the same name.

    `data` None = the data file recorded beside the adapter by training. `split` picks the
    adapter's held-out test or validation rows (from its split.json) or `all` rows. `limit`
    None = every selected row, else a seeded sample of that many. `out` None = a new folder
    `<runs_dir>/<timestamp>-<adapter name>`. `profile` None = the run's Settings (the command
    line reads MEDCHAT_PROFILE; default auto).
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
    # Where answers come from (not part of a run's identity): None = the run's Settings (the
    # command line reads MEDCHAT_BACKEND; default local). The openai backend needs server_url.
    backend: str | None = None
    server_url: str | None = None
    server_base_model: str | None = None
    server_tuned_model: str | None = None
    # NIH sources in the prompt: None or "auto" = as the app serves this adapter
    # (medchat.evaluation.policy), "on" = in every prompt, "off" = none. Scoring MedQuAD,
    # the index holds only rows outside the adapter's held-out sides (and outside those of
    # `heldout_in`, another adapter whose test rows the scored rows must also be: so two
    # adapters are scored on rows neither was trained on).
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


def trained_on(adapter: str, data_sha256: str | None) -> bool:
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
