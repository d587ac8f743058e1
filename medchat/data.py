"""Question-answer data: load, clean, split without leaks, and turn into chat examples.

    df, report = load_pairs("data.csv")              # CSV/JSON/JSONL/parquet or a hub id
    splits = split_by_group(df, seed=0)              # {"train", "validation", "test"} frames
    write_split(out_dir / "split.json", splits, ...) # eval scores exactly these held-out rows

Every row gets a stable `key` (a hash of its cleaned question and answer), so a split written
beside an adapter can be re-selected from the same file later.
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from medchat.errors import MedchatError

QUESTION_NAMES = ("question", "questions", "q", "input", "prompt", "instruction")
ANSWER_NAMES = ("answer", "answers", "a", "output", "response", "completion")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class LoadReport:
    source: str
    rows_read: int
    empty_dropped: int
    duplicates_dropped: int
    rows_kept: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.rows_read} rows read, {self.empty_dropped} empty and "
            f"{self.duplicates_dropped} duplicate pairs dropped, {self.rows_kept} kept"
        )


def clean_text(text: object) -> str:
    """Collapse whitespace runs; keep one line break per paragraph or list item."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    s = unicodedata.normalize("NFC", str(text)).replace("\r\n", "\n").replace("\r", "\n")
    s = re.sub(r"[ \t\u00a0]{2,}- ", "\n- ", s)  # MedQuAD runs bullets together with spaces
    lines = [re.sub(r"[ \t\u00a0\f\v]+", " ", line).strip() for line in s.split("\n")]
    return "\n".join(line for line in lines if line)


def normalize_question(question: str) -> str:
    """The grouping form of a question: lower case, no punctuation, single spaces."""
    q = question.lower().replace("(are)", "").replace("(is)", "")
    q = re.sub(r"[^\w\s]", " ", q)
    return re.sub(r"\s+", " ", q).strip()


def row_key(question: str, answer: str) -> str:
    return hashlib.sha1(f"{question}\x1f{answer}".encode()).hexdigest()[:16]


def _read_frame(source: str) -> pd.DataFrame:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise MedchatError(f"Data path {source!r} is a folder; give a CSV, JSON, JSONL or parquet.")
    if not path.exists():
        if suffix in (".csv", ".json", ".jsonl", ".parquet", ".tsv") or source.startswith(
            (".", "/", "~")
        ):
            raise MedchatError(f"Data file {source!r} does not exist; check the path.")
        return _read_hub(source)
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise MedchatError(f"Data file {source!r} is empty; give a file with rows.") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        text = str(err).strip()
        first = textwrap.shorten(text.splitlines()[0], 160) if text else type(err).__name__
        raise MedchatError(
            f"Could not read data file {source!r} ({first}); check that it is valid {suffix[1:]}."
        ) from None
    raise MedchatError(
        f"Data file {source!r} has an unknown type; use .csv, .tsv, .json, .jsonl or .parquet."
    )


def _read_hub(dataset_id: str) -> pd.DataFrame:
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset_id, split="train")
    except Exception as err:
        raise MedchatError(
            f"Could not load {dataset_id!r} as a file or hub dataset ({type(err).__name__}); "
            "check the path or id."
        ) from None
    return ds.to_pandas()


def _find_column(df: pd.DataFrame, given: str | None, names: tuple[str, ...], what: str) -> str:
    if given:
        if given not in df.columns:
            raise MedchatError(
                f"Column {given!r} is not in the data (columns: {', '.join(map(str, df.columns))})."
            )
        return given
    lower = {str(c).lower(): c for c in df.columns}
    for name in names:
        if name in lower:
            return lower[name]
    raise MedchatError(
        f"The data has no {what} column (columns: {', '.join(map(str, df.columns))}); "
        f"name one '{what}' or pass --{what}_column."
    )


def load_pairs(
    source: str, *, question_column: str | None = None, answer_column: str | None = None
) -> tuple[pd.DataFrame, LoadReport]:
    """Read Q&A pairs, clean them, drop empty and duplicate pairs, and add a `key` column.

    Extra columns (qtype, focus, source, url, document_id, ...) are kept. Raises MedchatError
    for a missing, unreadable or empty file and for missing question/answer columns.
    """
    raw = _read_frame(str(source))
    if raw.empty:
        raise MedchatError(f"Data {source!r} has no rows; give a file with question-answer pairs.")
    qcol = _find_column(raw, question_column, QUESTION_NAMES, "question")
    acol = _find_column(raw, answer_column, ANSWER_NAMES, "answer")
    clash = [c for c in ("question", "answer") if c in raw.columns and c not in (qcol, acol)]
    df = raw.drop(columns=clash).rename(columns={qcol: "question", acol: "answer"}).copy()
    df["question"] = df["question"].map(clean_text)
    df["answer"] = df["answer"].map(clean_text)
    n_read = len(df)
    df = df[(df["question"] != "") & (df["answer"] != "")]
    n_empty = n_read - len(df)
    df = df.drop_duplicates(subset=["question", "answer"])
    n_dup = n_read - n_empty - len(df)
    if df.empty:
        raise MedchatError(f"Data {source!r} has no non-empty question-answer pairs.")
    df = df.reset_index(drop=True)
    df["key"] = [row_key(q, a) for q, a in zip(df["question"], df["answer"], strict=True)]
    report = LoadReport(str(source), n_read, n_empty, n_dup, len(df))
    return df, report


def group_ids(df: pd.DataFrame) -> list[int]:
    """Connected groups: rows sharing a normalised question or a document_id are one group."""
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(column_values) -> None:
        first: dict[object, int] = {}
        for i, value in enumerate(column_values):
            if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
                continue
            if value in first:
                a, b = find(i), find(first[value])
                if a != b:
                    parent[a] = b
            else:
                first[value] = i

    link([normalize_question(q) for q in df["question"]])
    if "document_id" in df.columns:
        link(list(df["document_id"]))
    return [find(i) for i in range(len(df))]


def split_by_group(
    df: pd.DataFrame, *, seed: int = 0, validation_fraction=0.05, test_fraction=0.1
) -> dict[str, pd.DataFrame]:
    """A seeded train/validation/test split where no group falls on two sides."""
    if not (0 <= validation_fraction < 1 and 0 < test_fraction < 1):
        raise MedchatError(
            "Split fractions must be between 0 and 1; check the test/validation sizes."
        )
    if validation_fraction + test_fraction >= 1:
        raise MedchatError("Test and validation fractions add up to 1 or more; make them smaller.")
    groups = pd.Series(group_ids(df), index=df.index)
    sizes = groups.value_counts()
    order = sizes.sample(frac=1.0, random_state=seed).index.tolist()
    wanted = {"test": test_fraction * len(df), "validation": validation_fraction * len(df)}
    side_of: dict[int, str] = {}
    filled = {"test": 0, "validation": 0}
    for g in order:
        side = "train"
        for name in ("test", "validation"):
            if filled[name] < wanted[name]:
                side = name
                filled[name] += int(sizes[g])
                break
        side_of[g] = side
    sides = groups.map(side_of)
    splits = {name: df[sides == name].reset_index(drop=True) for name in SPLITS}
    empty = [
        name for name in SPLITS if splits[name].empty and (name != "validation" or wanted[name])
    ]
    if empty:
        raise MedchatError(
            f"The split leaves {', '.join(empty)} empty ({len(df)} rows in "
            f"{len(order)} groups); give more data or change the split fractions."
        )
    return splits


def write_split(path: Path, splits: dict[str, pd.DataFrame], *, source: str, seed: int) -> None:
    """split.json: the held-out row keys, so evaluation re-selects exactly those rows."""
    payload = {
        "source": str(source),
        "seed": seed,
        "sizes": {name: len(frame) for name, frame in splits.items()},
        "validation": splits["validation"]["key"].tolist(),
        "test": splits["test"]["key"].tolist(),
    }
    Path(path).write_text(json.dumps(payload, indent=1))


def read_split(path: Path) -> dict:
    """Read a split.json (a file, or the adapter folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "split.json"
    if not path.is_file():
        raise MedchatError(f"No split.json at {str(path)!r}; use --split all or another adapter.")
    return json.loads(path.read_text())


def select_split(df: pd.DataFrame, split: dict, name: str) -> pd.DataFrame:
    """The rows of `df` whose keys are in split[name] ("test" or "validation")."""
    if name not in split:
        raise MedchatError(f"The split has no {name!r} side; use test or validation.")
    keys = set(split[name])
    rows = df[df["key"].isin(keys)].reset_index(drop=True)
    if rows.empty:
        raise MedchatError(
            f"None of the {len(keys)} {name} rows of the split are in this data; pass the file "
            "the adapter was trained on."
        )
    return rows


def shorten_answer(answer: str, max_words: int) -> str:
    """Cut an answer to about `max_words` words, at the end of a sentence when possible."""
    if max_words <= 0 or len(answer.split()) <= max_words:
        return answer
    # Cut after the max_words-th word, keeping the original spacing and line breaks.
    spans = list(re.finditer(r"\S+", answer))
    cut = answer[: spans[max_words - 1].end()]
    end = max(cut.rfind(". "), cut.rfind(".\n"), cut.rfind("? "), cut.rfind("! "))
    if cut.endswith((".", "?", "!")):
        return cut
    if end >= len(cut) // 2:
        return cut[: end + 1]
    return cut.rstrip(",;: ") + "."
