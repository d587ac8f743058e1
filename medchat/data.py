"""Question-answer data: load, clean, split without leaks, and turn into chat examples.

    df, report = load_pairs(DEFAULT_DATA)            # CSV/JSON/JSONL/parquet or a hub id
    splits = split_by_group(df, seed=0)              # {"train", "validation", "test"} frames
    write_split(out_dir / "split.json", splits, ...) # eval scores exactly these held-out rows

Every row gets a stable `key` (a hash of its cleaned question and answer), so a split written
beside an adapter can be re-selected from the same file later. DEFAULT_DATA is the MedQuAD copy
that ships in assets/data/; a record names data by its sha256 (`LoadReport.sha256`), and
`shipped_data_for(sha256)` finds the shipped copy again when a recorded path is gone.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / "assets" / "data" / "medquad.parquet"
# The parquet's key-value metadata names the CSV it was converted from (same rows, same order).
SHIPPED_METADATA_KEY = b"medchat"
# Hub MedQuAD copies (lavita/MedQuAD) name the columns differently; renamed to the names of the
# shipped file when that name is not already taken.
HUB_COLUMNS = {
    "question_type": "qtype",
    "question_focus": "focus",
    "document_source": "source",
    "document_url": "url",
    "question_id": "qid",
}
# An answer found word for word in more than this many documents is a template (GHR's
# inheritance paragraphs, CancerGov's clinical-trials paragraph): it says nothing about any one
# document, so it joins its rows to each other but not to their documents.
TEMPLATE_DOCUMENTS = 10
QUESTION_NAMES = ("question", "questions", "q", "input", "prompt", "instruction")
# free_form_answer: K-QA's physician answers (assets/data/kqa/questions_w_answers.jsonl)
ANSWER_NAMES = ("answer", "answers", "a", "output", "response", "completion", "free_form_answer")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class LoadReport:
    source: str
    rows_read: int
    empty_dropped: int
    duplicates_dropped: int
    rows_kept: int
    sha256: str | None = None  # of a local file
    hub_id: str | None = None  # of a hub dataset, with the commit it was read at (when known)
    revision: str | None = None

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


def normalize_answer(answer: str) -> str:
    """The grouping form of an answer: lower case, no punctuation, single spaces."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", answer.lower())).strip()


def row_key(question: str, answer: str) -> str:
    return hashlib.sha1(f"{question}\x1f{answer}".encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of a local file, or None when `path` is not a file (a hub id)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_data_for(sha256: str | None) -> Path | None:
    """DEFAULT_DATA when `sha256` is its own, or that of the CSV it was converted from (the
    same rows); else None. Lets a record written on another machine find the shipped copy."""
    if not sha256 or not DEFAULT_DATA.is_file():
        return None
    if sha256 == file_sha256(DEFAULT_DATA):
        return DEFAULT_DATA
    import pyarrow.parquet as pq

    meta = (pq.read_schema(DEFAULT_DATA).metadata or {}).get(SHIPPED_METADATA_KEY)
    converted_from = json.loads(meta).get("converted_from_sha256") if meta else None
    return DEFAULT_DATA if sha256 == converted_from else None


def portable_source(source: str | Path) -> str:
    """A data source as a record should name it: repository files relative to the repository
    root (the same on every clone), anything else as given."""
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return path.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            pass
    return str(source)


def _read_frame(source: str) -> tuple[pd.DataFrame, dict]:
    """(the raw rows, their identity: sha256 of a file, or hub_id and revision)."""
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
    return _read_file(path, source, suffix), {"sha256": file_sha256(path)}


def _read_file(path: Path, source: str, suffix: str) -> pd.DataFrame:
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


def _read_hub(dataset_id: str) -> tuple[pd.DataFrame, dict]:
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset_id, split="train")
    except Exception as err:
        raise MedchatError(
            f"Could not load {dataset_id!r} as a file or hub dataset ({type(err).__name__}); "
            "check the path or id."
        ) from None
    try:  # the commit read, so a record names the exact data; unknown offline
        from huggingface_hub import HfApi

        revision = HfApi().dataset_info(dataset_id).sha
    except Exception:
        revision = None
    return ds.to_pandas(), {"hub_id": dataset_id, "revision": revision}


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
    source: str | Path, *, question_column: str | None = None, answer_column: str | None = None
) -> tuple[pd.DataFrame, LoadReport]:
    """Read Q&A pairs, clean them, drop empty and duplicate pairs, and add a `key` column.

    Extra columns (qtype, focus, source, url, document_id, ...) are kept; lavita/MedQuAD's names
    (question_type, question_focus, document_source, document_url, question_id) become those of
    the shipped file (qtype, focus, source, url, qid). Raises MedchatError
    for a missing, unreadable or empty file and for missing question/answer columns.
    """
    raw, identity = _read_frame(str(source))
    if raw.empty:
        raise MedchatError(f"Data {source!r} has no rows; give a file with question-answer pairs.")
    raw = raw.rename(columns={k: v for k, v in HUB_COLUMNS.items() if v not in raw.columns})
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
    report = LoadReport(str(source), n_read, n_empty, n_dup, len(df), **identity)
    return df, report


def template_answers(df: pd.DataFrame, answers: list[str] | None = None) -> set[str]:
    """Normalised answers found in more than TEMPLATE_DOCUMENTS documents (or, without a
    document_id column, under that many different questions). `answers`: the normalised
    answers of `df`, when already at hand."""
    by = "document_id" if "document_id" in df.columns else "question"
    owners = df[by].map(normalize_question) if by == "question" else df[by]
    if answers is None:
        answers = [normalize_answer(a) for a in df["answer"]]
    counts = pd.Series(list(owners), index=answers).groupby(level=0)
    spread = counts.nunique()
    return set(spread[spread > TEMPLATE_DOCUMENTS].index)


def group_ids(df: pd.DataFrame) -> list[int]:
    """Connected groups: rows sharing a normalised question, a document_id or a normalised
    answer are one group (union-find). A template answer (see template_answers) joins its rows
    to each other, not to their documents: it would otherwise chain hundreds of documents into
    one group half the size of MedQuAD."""
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

    answers = [normalize_answer(a) for a in df["answer"]]
    templates = template_answers(df, answers)
    link([normalize_question(q) for q in df["question"]])
    link(answers)
    if "document_id" in df.columns:
        documents = zip(df["document_id"], answers, strict=True)
        link([d if a not in templates else None for d, a in documents])
    return [find(i) for i in range(len(df))]


def split_by_group(
    df: pd.DataFrame, *, seed: int = 0, validation_fraction=0.05, test_fraction=0.1
) -> dict[str, pd.DataFrame]:
    """A seeded train/validation/test split where no group falls on two sides.

    Groups are drawn in a seeded random order; each goes to the first held-out side still short
    of its share, unless it is larger than half that share and than twice the mean group size
    (then to train), so one large group never makes up most of a held-out side.
    """
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
    ordinary = 2 * len(df) / len(sizes)  # twice the mean group size
    side_of: dict[int, str] = {}
    filled = {"test": 0, "validation": 0}
    for g in order:
        side = "train"
        for name in ("test", "validation"):
            size = int(sizes[g])
            if filled[name] < wanted[name] and size <= max(wanted[name] / 2, ordinary):
                side = name
                filled[name] += size
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


def sample_across(frame: pd.DataFrame, n: int, *, seed: int, by: str = "source") -> pd.DataFrame:
    """A seeded sample of `n` rows spread over the values of `by` in proportion to their rows
    (every value with a share of at least one row is present); a plain shuffle without `by`."""
    shuffled = frame.sample(frac=1.0, random_state=seed)
    if by in shuffled.columns and len(shuffled) > n:
        # Interleave: the k-th row of a value with m rows sits at (k + 0.5) / m.
        values = shuffled[by].fillna("")
        position = (values.groupby(values).cumcount() + 0.5) / values.map(values.value_counts())
        shuffled = shuffled.assign(_position=position.to_numpy()).sort_values(
            "_position", kind="stable"
        )
        shuffled = shuffled.drop(columns="_position")
    return shuffled.head(n).reset_index(drop=True)


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


# GARD's symptom answers wrap a Human Phenotype Ontology table in the same ~200 words every
# time: an introduction with a table header before it, a note on frequencies after it.
HPO_INTRO = re.compile(
    r"The Human Phenotype Ontology provides the following list of signs and symptoms for "
    r"(?P<name>.+?)\. If the information is available, the table below includes how often the "
    r"symptom is seen in people with this condition\. You can use the MedlinePlus Medical "
    r"Dictionary to look up the definitions for these medical terms\. Signs and Symptoms "
    r"Approximate number of patients \(when available\)"
)
HPO_OUTRO = re.compile(
    r"The Human Phenotype Ontology \(HPO\) has collected information on how often a sign or "
    r"symptom occurs in a condition\..*?the sign or symptom may be rare or common\.?",
    re.DOTALL,
)
# A table row: a term, then its frequency ("90%", "7.5%", "5/25") or "-" when unknown.
HPO_ROW = re.compile(r"\s*(.+?)\s+(?:\d+(?:\.\d+)?%|\d+/\d+|-)(?=\s|$)")
HPO_MODES = ("cut", "drop", "keep")


def has_hpo_boilerplate(answer: str) -> bool:
    return HPO_INTRO.search(answer) is not None


def cut_hpo_boilerplate(answer: str) -> str:
    """The answer without GARD's Human Phenotype Ontology boilerplate: the prose around the
    table is kept and the table becomes a list of its signs (frequencies left out: they are
    bins of a rough estimate). "" when nothing but the boilerplate and the echoed question is
    left. Answers without the boilerplate come back unchanged."""
    intro = HPO_INTRO.search(answer)
    if intro is None:
        return answer
    before = answer[: intro.start()].strip()
    rest = answer[intro.end() :]
    outro = HPO_OUTRO.search(rest)
    table, after = (rest[: outro.start()], rest[outro.end() :]) if outro else (rest, "")
    signs = [m.group(1) for m in HPO_ROW.finditer(table.replace("\n", " "))]
    name = intro.group("name")
    parts = [before] if before else []
    if signs:
        parts.append(f"Signs and symptoms of {name} can include:")
        parts.extend(f"- {sign}" for sign in signs)
    if after.strip():
        parts.append(after.strip())
    content = "\n".join(parts)
    echoed = re.fullmatch(r"What (are|is) the (signs and )?symptoms of .*?\?", before)
    if not signs and not after.strip() and (not before or echoed):
        return ""
    return content


def handle_hpo_boilerplate(frame: pd.DataFrame, mode: str) -> tuple[pd.DataFrame, dict]:
    """Apply `mode` (cut, drop or keep) to the answers carrying the HPO boilerplate; returns
    the rows and counts {"rows": with the boilerplate, "cut": shortened, "dropped": left out}."""
    if mode not in HPO_MODES:
        raise MedchatError(f"hpo_boilerplate {mode!r} is unknown; use cut, drop or keep.")
    marked = frame["answer"].map(has_hpo_boilerplate)
    stats = {"rows": int(marked.sum()), "cut": 0, "dropped": 0}
    if mode == "keep" or not stats["rows"]:
        return frame, stats
    if mode == "drop":
        stats["dropped"] = stats["rows"]
        return frame[~marked].reset_index(drop=True), stats
    answers = frame["answer"].where(~marked, frame["answer"].map(cut_hpo_boilerplate))
    empty = answers == ""
    stats["dropped"] = int(empty.sum())
    stats["cut"] = stats["rows"] - stats["dropped"]
    return frame.assign(answer=answers)[~empty].reset_index(drop=True), stats


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
