"""Study statistics over the review store, and a dataset export of its votes and ratings.

    python -m medchat.review_stats summary [--db data/reviews.sqlite]     # JSON on stdout
    python -m medchat.review_stats export FOLDER [--db data/reviews.sqlite]

    from medchat.review_stats import export, run_embedders, summarize_store
    summary = summarize_store("data/reviews.sqlite", embedders=run_embedders("runs/eval"))
    summary["ratings"]["tuned"]["avg_score"]  # {"value", "ci_low", "ci_high", "n", "reason"}
    export("data/reviews.sqlite", "exports/study")  # then load_dataset("exports/study", "ratings")

Owns the figures a study organiser reports: mean rating and TREC LiveQA avgScore per side, the
tuned-over-base vote win rate, inter-rater agreement, per-reviewer counts, the Spearman
correlation of rating with cosine per embedder and, for answers with statements (K-QA), the
reviewers' comprehensiveness and hallucination per side and the statement judge's agreement
with the reviewers. Every figure is a dict with its n; where the
data are too few, value is None and reason says why. Intervals are 95% percentile bootstraps
drawn from numpy's default_rng(seed), so the same seed gives the same interval.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import rankdata

from medchat.errors import MedchatError
from medchat.reviews import MARKS, RATING_LABELS, SIDES, STATEMENT_KINDS, WINNERS, ReviewStore

Rows = pd.DataFrame | Sequence[Mapping[str, Any]]
SCALE = tuple(sorted(RATING_LABELS))  # (1, 2, 3, 4)
UNIT = ["source", "item_id", "side"]  # one answer; each reviewer rates it at most once
CI_LEVEL = 0.95

# Field meanings, for the dataset card; every field not in NOT_TEXT is text.
NOT_TEXT = {
    "id": pa.int64(),
    "rating": pa.int64(),
    "cosine": pa.float64(),
    "sources_in_prompt": pa.int64(),
    "rating_id": pa.int64(),
    "position": pa.int64(),
}
# The prompt behind an answer (medchat.reviews), in every table.
PROMPT_FIELDS = {
    "prompt_style": "The prompt style the answer was written with (medchat.prompts "
    "PromptStyle.id: legacy, plain-<hash> or sources:<method>:k<k>-<hash>); null when unknown.",
    "sources_in_prompt": "1 when the prompt had a block of NIH sources, 0 when not; null when "
    "unknown.",
    "prompt_sources": "The NIH passages in the prompt, in order, as JSON [{key, url}]; [] when "
    "none; null when unknown.",
}
VOTE_FIELDS = {
    "id": "Row id in the review store.",
    "created_at": "When the vote was cast (UTC, ISO 8601).",
    "question": "The question both models answered.",
    "answer_a": "The answer shown as A.",
    "answer_b": "The answer shown as B.",
    "a_is": "Which model wrote answer A: base or tuned (hidden from the voter).",
    "vote": "What the voter picked: A, B, tie or both_bad.",
    "winner": "The vote mapped to models: base, tuned, tie or both_bad.",
    "params": "Generation settings used for both answers, as JSON (seed: the sampling seed).",
    "model": "The base model's name.",
    "adapter": "The fine-tuned adapter that makes the tuned model.",
    "reviewer": "The voter: signed-in username, typed name, or anon-<id> of a browser session.",
    **PROMPT_FIELDS,
}
RATING_FIELDS = {
    "id": "Row id in the review store.",
    "created_at": "When the answer was first rated (UTC, ISO 8601).",
    "updated_at": "When this reviewer last changed the rating (UTC, ISO 8601).",
    "source": "Where the answer came from: `eval:<run name>` or `compare`.",
    "item_id": "The question's key in the run, or the vote id for compare.",
    "side": "Which model wrote the answer: base or tuned (hidden from the rater).",
    "question": "The question.",
    "answer": "The rated answer.",
    "rating": "TREC LiveQA scale: " + ", ".join(f"{k} {v}" for k, v in RATING_LABELS.items()),
    "note": "The rater's free-text note.",
    "reviewer": "The rater: signed-in username, typed name, or anon-<id> of a browser session.",
    "reference": "The reference answer shown to the rater; empty when none.",
    "cosine": "Cosine similarity of answer and reference; null when none.",
    "embedder": "The embedder that computed cosine; null when unknown.",
    **PROMPT_FIELDS,
}

MARK_FIELDS = {
    "id": "Row id of the mark in the review store.",
    "rating_id": "The `id` of the rating (ratings table) this mark was saved with.",
    "source": "Where the answer came from: `eval:<run name>`.",
    "item_id": "The question's key in the run.",
    "side": "Which model wrote the answer: base or tuned (hidden from the rater).",
    "reviewer": "The rater: signed-in username, typed name, or anon-<id> of a browser session.",
    "position": "The statement's place in the question's list (0 first): must-have statements "
    "first, then nice-to-have, as in the run's verdicts.",
    "kind": "must_have (a good answer must say it) or nice_to_have (it may say it).",
    "statement": "The statement, as written by the physicians of the statement set (K-QA).",
    "mark": "The rater's judgment: covered (the answer says it), contradicted (the answer says "
    "something that cannot be true with it) or missing (the answer does not say it).",
    "judge": "The run's automatic statement judge (offline or llm:<model>); null without one.",
    "judge_verdict": "That judge's verdict on the same answer and statement: entailed, "
    "contradicted, neither or unparsed; null without a judge. Never shown to the rater.",
    "updated_at": "When the rater last saved this rating and its marks (UTC, ISO 8601).",
}


def figure(
    value: float | None,
    n: int,
    ci: tuple[float, float] | None = None,
    reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One reported number: value, its 95% CI (None when not computed), its n and why not."""
    low, high = ci if ci is not None else (None, None)
    return {"value": value, "ci_low": low, "ci_high": high, "n": n, "reason": reason} | extra


def summarize(
    ratings: Rows,
    votes: Rows,
    *,
    marks: Rows = (),
    embedders: Mapping[str, str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Every study figure from ratings and votes (the store's rows, as dicts or DataFrames).

    ratings["<side>"]: "mean" rating (1-4) and "avg_score", the TREC LiveQA avgScore
        mean(rating - 1) on 0-3; CIs resample answers, keeping all ratings of one together.
    votes["win_rate"]: tuned wins / (tuned wins + base wins). Ties and both_bad votes are left
        out of the rate (neither model won) and reported in votes["counts"] and
        votes["tie_share"] / ["both_bad_share"] over all votes; the CI resamples decisive votes.
    agreement: Krippendorff's alpha (ordinal) over answers rated by >= 2 named reviewers, and
        quadratic-weighted Cohen's kappa for each reviewer pair sharing >= 2 answers. Anonymous
        ratings (reviewer "") are left out: the store keeps one anonymous rating per answer,
        whoever gave it.
    reviewers: {name: {"ratings": n, "votes": n}}; "" is anonymous.
    cosine_spearman: {embedder: Spearman rho of cosine vs rating}, one per embedder, never
        pooled. The embedder comes from the "embedder" column (stored since schema 2)
        or `embedders` ({source: embedder name}, see run_embedders); ratings with a cosine and
        no known embedder are counted in "cosine_without_embedder" and not used.
    statements: from the statement marks (ReviewStore.statement_marks()), see
        statement_figures: per side the reviewers' comprehensiveness and hallucination, the
        judge's on the same statements, and the judge's kappa with the reviewers.
    """
    r = _ratings(ratings, embedders or {})
    v = _frame(votes, VOTE_FIELDS)
    # Each figure draws from its own default_rng(seed), so adding data to one figure never
    # moves the interval of another.
    return {
        "scale": {"labels": dict(RATING_LABELS), "avg_score": "rating - 1, so 0-3"},
        "ratings": {
            "n": len(r),
            **{side: _side_figures(r[r["side"] == side], seed, n_boot) for side in SIDES},
        },
        "votes": _vote_figures(v, seed, n_boot),
        "agreement": _agreement(r),
        "reviewers": _reviewer_counts(r, v),
        **_cosine_figures(r, seed, n_boot),
        "statements": statement_figures(marks, seed=seed, n_boot=n_boot),
    }


def summarize_store(
    store: ReviewStore | str | Path,
    *,
    embedders: Mapping[str, str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """summarize() over every rating, vote and statement mark of a ReviewStore or a
    reviews.sqlite path."""
    ratings, votes, marks = _store_rows(store)
    return summarize(ratings, votes, marks=marks, embedders=embedders, seed=seed, n_boot=n_boot)


def statement_figures(marks: Rows, *, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """The reviewers' statement judgments, per side and against the automatic judge.

    Per side (base, tuned), pooled over every reviewer's marks:
        "comprehensiveness": must-have statements marked covered / must-have statements marked;
        "hallucination": statements marked contradicted / statements marked (must + nice);
        "judge": {judge: the same two shares from that judge's verdicts (entailed for covered)
            on the same marked statements, unparsed verdicts left out}.
        CIs resample answers (an answer's marks by all its reviewers stay together).
    "judge_agreement": {judge: Cohen's kappa of covered-vs-not, the reviewer's mark (covered
        or not) against the judge's verdict (entailed or not), over every mark whose statement
        the judge gave a verdict on; n = those marks; "agreement" is the share that agree}.
    """
    m = _frame(marks, MARK_FIELDS)
    unknown = set(m["mark"].dropna()) - set(MARKS) | set(m["kind"].dropna()) - set(STATEMENT_KINDS)
    if unknown:
        raise MedchatError(
            f"Statement marks hold {sorted(unknown)}; marks are {', '.join(MARKS)} on "
            f"{' or '.join(STATEMENT_KINDS)} statements."
        )
    out: dict[str, Any] = {"n": len(m), "answers": int(m.groupby(UNIT).ngroups) if len(m) else 0}
    verdict = m["judge_verdict"].where(m["judge_verdict"] != "unparsed")
    for side in SIDES:
        part = m[m["side"] == side]
        judged = {}
        for judge, group in part[verdict[part.index].notna()].groupby("judge", sort=True):
            judged[str(judge)] = _shares(group, group["judge_verdict"], seed, n_boot)
        out[side] = _shares(part, part["mark"].map(_AS_VERDICT), seed, n_boot) | {"judge": judged}
    agreement = {}
    for judge, group in m[verdict.notna()].groupby("judge", sort=True):
        agreement[str(judge)] = _judge_kappa(
            (group["mark"] == "covered").to_numpy(int),
            (group["judge_verdict"] == "entailed").to_numpy(int),
        )
    out["judge_agreement"] = agreement
    out["judge_agreement_reason"] = (
        None if agreement else "no marked statement has a verdict of the run's judge"
    )
    return out


# A reviewer's mark in the judge's words, so one function computes both sides' shares.
_AS_VERDICT = {"covered": "entailed", "contradicted": "contradicted", "missing": "neither"}


def _shares(marks: pd.DataFrame, verdicts: pd.Series, seed: int, n_boot: int) -> dict:
    """comprehensiveness and hallucination of `marks` with their `verdicts` (entailed,
    contradicted, neither), pooled, CIs from resampling answers."""
    must = marks["kind"] == "must_have"
    return {
        "comprehensiveness": _pooled_share(
            marks[must], verdicts[must] == "entailed", seed, n_boot, "must-have statements"
        ),
        "hallucination": _pooled_share(
            marks, verdicts == "contradicted", seed, n_boot, "statements"
        ),
    }


def _pooled_share(marks: pd.DataFrame, hit: pd.Series, seed: int, n_boot: int, what: str) -> dict:
    """hits / rows over `marks`, with a 95% bootstrap CI over answers (clusters)."""
    if marks.empty:
        return figure(None, 0, reason=f"no marked {what}", answers=0)
    grouped = hit.astype(float).groupby([marks[c] for c in UNIT]).agg(["sum", "count"])
    hits, counts = grouped["sum"].to_numpy(float), grouped["count"].to_numpy(float)
    value = float(hits.sum() / counts.sum())
    if len(hits) < 2:
        return figure(
            value, len(marks), reason="a CI needs marks on at least 2 answers", answers=len(hits)
        )
    idx = np.random.default_rng(seed).integers(0, len(hits), size=(n_boot, len(hits)))
    ci = _ci(hits[idx].sum(axis=1) / counts[idx].sum(axis=1))
    return figure(value, len(marks), ci, answers=len(hits))


def _judge_kappa(human: np.ndarray, judge: np.ndarray) -> dict:
    n = len(human)
    agree = float((human == judge).mean()) if n else None
    if n < 2:
        return figure(
            None, n, reason="kappa needs at least 2 statements both judged", agreement=agree
        )
    # With two categories, quadratic weights are 0 on the diagonal and 1 off it: this is
    # Cohen's unweighted kappa of covered (1) vs not (0).
    kappa = weighted_kappa(human.tolist(), judge.tolist(), scale=(0, 1))
    if np.isnan(kappa):
        why = "the reviewers or the judge said one and the same thing throughout; kappa undefined"
        return figure(None, n, reason=why, agreement=agree)
    return figure(kappa, n, agreement=agree)


def run_embedders(*runs_dirs: str | Path) -> dict[str, str]:
    """{"eval:<run name>": embedder} from the summary.json of each finished evaluation run."""
    from medchat.evaluation import SUMMARY, list_runs

    found = {}
    for folder in list_runs(*runs_dirs):
        summary = folder / SUMMARY
        if summary.is_file():
            name = json.loads(summary.read_text(encoding="utf-8")).get("embedder")
            if name:
                found[f"eval:{folder.name}"] = str(name)
    return found


def weighted_kappa(a: Sequence[int], b: Sequence[int], scale: Sequence[int] = SCALE) -> float:
    """Cohen's kappa with quadratic weights (i - j)^2 over the full `scale`.

    kappa = 1 - sum(W * observed) / sum(W * expected), expected = outer product of margins.
    NaN when the expected disagreement is 0 (both raters gave one and the same value).
    """
    index = {value: i for i, value in enumerate(scale)}
    k = len(scale)
    observed = np.zeros((k, k))
    for x, y in zip(a, b, strict=True):
        observed[index[int(x)], index[int(y)]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    steps = np.arange(k)
    weights = (steps[:, None] - steps[None, :]) ** 2
    disagreement = float((weights * expected).sum())
    if disagreement == 0:
        return float("nan")
    return 1.0 - float((weights * observed).sum()) / disagreement


def export(
    store_or_frames: ReviewStore | str | Path | tuple[Rows, Rows] | tuple[Rows, Rows, Rows],
    out_dir: str | Path,
    *,
    embedders: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write votes, ratings and statement marks as CSV and Parquet plus a README.md dataset
    card; returns the paths.

    `store_or_frames` is a ReviewStore, a reviews.sqlite path or (ratings, votes[, marks]). The
    card's `configs:` make `datasets.load_dataset(str(out_dir), "ratings")` (or "votes",
    "statements") work.
    """
    if isinstance(store_or_frames, tuple):
        ratings, votes, *rest = store_or_frames
        marks = rest[0] if rest else ()
    else:
        ratings, votes, marks = _store_rows(store_or_frames)
    tables = {
        "votes": _frame(votes, VOTE_FIELDS),
        "ratings": _ratings(ratings, embedders or {}),
        "statements": _frame(marks, MARK_FIELDS),
    }
    all_fields = {"votes": VOTE_FIELDS, "ratings": RATING_FIELDS, "statements": MARK_FIELDS}
    out = Path(out_dir).expanduser()
    paths: dict[str, Path] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in tables.items():
            fields = all_fields[name]
            schema = pa.schema([(col, NOT_TEXT.get(col, pa.string())) for col in fields])
            frame = frame[list(fields)].astype(object).where(frame[list(fields)].notna(), None)
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            paths[f"{name}.parquet"] = out / f"{name}.parquet"
            pq.write_table(table, paths[f"{name}.parquet"])
            paths[f"{name}.csv"] = out / f"{name}.csv"
            frame.to_csv(paths[f"{name}.csv"], index=False)
        paths["README.md"] = out / "README.md"
        paths["README.md"].write_text(
            _card(len(tables["votes"]), len(tables["ratings"]), len(tables["statements"])),
            encoding="utf-8",
        )
    except OSError as err:
        raise MedchatError(
            f"Cannot write the review export to {out} ({err}); choose a writable folder."
        ) from err
    return paths


# ---- pieces ----------------------------------------------------------------------------------


def _store_rows(store: ReviewStore | str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(ratings, votes, statement marks) of a store or a reviews.sqlite path."""
    if isinstance(store, ReviewStore):
        return store.ratings(), store.votes(), store.statement_marks()
    path = Path(store).expanduser()
    if not path.is_file():
        raise MedchatError(f"There is no review database at {path}; give the reviews.sqlite path.")
    with ReviewStore(path) as opened:
        return opened.ratings(), opened.votes(), opened.statement_marks()


def _frame(rows: Rows, fields: Mapping[str, Any]) -> pd.DataFrame:
    """The rows as a DataFrame with at least the store's columns (missing ones are null)."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for col in fields:
        if col not in frame.columns:
            frame[col] = None
    if "params" in fields:  # the store decodes params to a dict; tables keep the JSON text
        frame["params"] = [
            p if p is None or isinstance(p, str) else json.dumps(p, sort_keys=True)
            for p in frame["params"]
        ]
    frame["reviewer"] = frame["reviewer"].fillna("").astype(str)
    return frame


def _ratings(rows: Rows, embedders: Mapping[str, str]) -> pd.DataFrame:
    """Ratings checked to be on the 1-4 scale, with embedder filled from {source: name}."""
    r = _frame(rows, RATING_FIELDS)
    r["rating"] = pd.to_numeric(r["rating"])
    if not r["rating"].isin(SCALE).all():
        raise MedchatError(f"Ratings must be whole numbers in {SCALE}; the store's scale is 1-4.")
    r["rating"] = r["rating"].astype("int64")
    r["cosine"] = pd.to_numeric(r["cosine"]).astype("float64")
    r["embedder"] = r["embedder"].where(r["embedder"].notna(), r["source"].map(embedders))
    return r


def _ci(stats: np.ndarray) -> tuple[float, float]:
    tail = (1 - CI_LEVEL) / 2
    low, high = np.nanquantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def _side_figures(r: pd.DataFrame, seed: int, n_boot: int) -> dict:
    """Mean rating and avgScore of one side; the bootstrap resamples answers (clusters)."""
    n = len(r)
    if n == 0:
        reason = "no ratings for this side"
        return {"mean": figure(None, 0, reason=reason), "avg_score": figure(None, 0, reason=reason)}
    grouped = r.groupby(UNIT)["rating"].agg(["sum", "count"])
    sums, counts = grouped["sum"].to_numpy(float), grouped["count"].to_numpy(float)
    mean = float(sums.sum() / counts.sum())
    ci, reason = None, "a CI needs ratings of at least 2 answers"
    if len(sums) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
        ci, reason = _ci(sums[idx].sum(axis=1) / counts[idx].sum(axis=1)), None
    shifted = (ci[0] - 1, ci[1] - 1) if ci else None
    return {
        "mean": figure(mean, n, ci, reason, answers=len(sums)),
        "avg_score": figure(mean - 1, n, shifted, reason, answers=len(sums)),
    }


def _vote_figures(v: pd.DataFrame, seed: int, n_boot: int) -> dict:
    counts = {w: int((v["winner"] == w).sum()) for w in WINNERS}
    total, decisive = len(v), counts["base"] + counts["tuned"]
    wins = np.array([1.0] * counts["tuned"] + [0.0] * counts["base"])
    if decisive == 0:
        rate = figure(None, 0, reason="no vote picked one model over the other")
    elif decisive == 1:
        rate = figure(float(wins[0]), 1, reason="a CI needs at least 2 decisive votes")
    else:
        idx = np.random.default_rng(seed).integers(0, decisive, size=(n_boot, decisive))
        rate = figure(float(wins.mean()), decisive, _ci(wins[idx].mean(axis=1)))
    return {
        "n": total,
        "counts": counts,
        "win_rate": rate,
        **{
            f"{kind}_share": figure(counts[kind] / total, total)
            if total
            else figure(None, 0, reason="no votes")
            for kind in ("tie", "both_bad")
        },
    }


def _agreement(r: pd.DataFrame) -> dict:
    named = r[r["reviewer"] != ""].drop_duplicates([*UNIT, "reviewer"], keep="last")
    grid = named.pivot(index="reviewer", columns=UNIT, values="rating")  # reviewer x answer
    shared = grid.loc[:, grid.notna().sum(axis=0) >= 2].dropna(how="all")
    data = shared.to_numpy(float)
    n_units, n_raters = data.shape[1], data.shape[0]
    if len(grid) < 2:
        alpha = figure(None, n_units, reason="agreement needs at least 2 named reviewers")
    elif n_units == 0:
        alpha = figure(None, 0, reason="no answer was rated by 2 or more named reviewers")
    elif len(np.unique(data[~np.isnan(data)])) < 2:
        alpha = figure(None, n_units, reason="every shared rating is the same; alpha undefined")
    else:
        value = krippendorff.alpha(
            reliability_data=data, level_of_measurement="ordinal", value_domain=list(SCALE)
        )
        alpha = figure(float(value), n_units, reviewers=n_raters)
    pairs = []
    for a, b in itertools.combinations(grid.index, 2):
        both = grid.loc[[a, b]].dropna(axis=1)
        if both.shape[1] >= 2:
            kappa = weighted_kappa(both.loc[a].tolist(), both.loc[b].tolist())
            why = "each gave one and the same rating throughout; kappa undefined"
            value, why = (None, why) if np.isnan(kappa) else (kappa, None)
            pairs.append(figure(value, both.shape[1], reason=why, reviewers=[a, b]))
    return {
        "krippendorff_alpha": alpha,
        "weighted_kappa": pairs,
        "weighted_kappa_reason": None if pairs else "no two named reviewers share 2 rated answers",
        "anonymous_ratings_left_out": int((r["reviewer"] == "").sum()),
    }


def _reviewer_counts(r: pd.DataFrame, v: pd.DataFrame) -> dict[str, dict[str, int]]:
    names = sorted(set(r["reviewer"]) | set(v["reviewer"]))
    rated, voted = r["reviewer"].value_counts(), v["reviewer"].value_counts()
    return {n: {"ratings": int(rated.get(n, 0)), "votes": int(voted.get(n, 0))} for n in names}


def _cosine_figures(r: pd.DataFrame, seed: int, n_boot: int) -> dict:
    r = r[r["cosine"].notna()]
    known = r[r["embedder"].notna()]
    found = {}
    for name, group in known.groupby("embedder", sort=True):
        found[str(name)] = _spearman_figure(
            group["cosine"].to_numpy(float), group["rating"].to_numpy(float), seed, n_boot
        )
    return {"cosine_spearman": found, "cosine_without_embedder": len(r) - len(known)}


def _spearman_figure(x: np.ndarray, y: np.ndarray, seed: int, n_boot: int) -> dict:
    n = len(x)
    if n < 3:
        return figure(None, n, reason="Spearman's rho needs at least 3 rated answers with cosine")
    rho = _rowwise_spearman(x[None, :], y[None, :])[0]
    if np.isnan(rho):
        return figure(None, n, reason="cosine or rating is constant; rho undefined")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = _rowwise_spearman(x[idx], y[idx])
    valid = int(np.isfinite(boots).sum())
    # Resamples where one column came out constant have no rho; the CI is over the rest.
    ci = _ci(boots) if valid else None
    reason = None if ci else "no resample had a defined rho"
    return figure(float(rho), n, ci, reason, boot_valid=valid)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair: Pearson of average ranks; NaN where a row is constant."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=1) / denom, np.nan)


def _card(n_votes: int, n_ratings: int, n_marks: int) -> str:
    def table(fields: Mapping[str, Any]) -> str:
        rows = [f"| `{k}` | {NOT_TEXT.get(k, 'string')} | {v} |" for k, v in fields.items()]
        return "\n".join(["| field | type | meaning |", "|---|---|---|", *rows])

    return f"""---
configs:
- config_name: ratings
  data_files: ratings.parquet
- config_name: votes
  data_files: votes.parquet
- config_name: statements
  data_files: statements.parquet
---
# medchat review study

Human reviews of a base and a fine-tuned medical chat model. ratings ({n_ratings} rows): single
answers rated on the TREC LiveQA 1-4 scale; votes ({n_votes} rows): blind A/B votes; statements
({n_marks} rows): for answers to questions with physician statements (K-QA), the rater's mark
on each statement (covered, contradicted or missing) beside the automatic judge's verdict. Load
one with `datasets.load_dataset("<this folder>", "ratings")`, `"votes"` or `"statements"`; the
same rows are in the CSVs.

**These reviews are not medical advice.** They are opinions about machine-written answers,
which may be wrong or unsafe; ask a clinician about any health question.

## ratings

{table(RATING_FIELDS)}

## votes

{table(VOTE_FIELDS)}

## statements

One row per statement of a rated answer; `rating_id` joins it to its rating. Comprehensiveness
is the share of `must_have` marks that are `covered`, hallucination the share of all marks that
are `contradicted`.

{table(MARK_FIELDS)}
"""


# ---- command line: the organisers' way in when the app runs without sign-in ----------------
def main(argv: Sequence[str] | None = None) -> int:
    """Print the study summary as JSON, or export every vote, rating, statement mark and thumb
    to a folder.

    The database and the run folders (for the embedder of each run's cosines) default to the
    app's settings (MEDCHAT_DATA_DIR, MEDCHAT_RUNS_DIR).
    """
    from medchat.settings import Settings

    parser = argparse.ArgumentParser(
        prog="python -m medchat.review_stats", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=("summary", "export"))
    parser.add_argument("folder", nargs="?", help="export: the folder to write")
    parser.add_argument("--db", help="the review database (default: the app's reviews.sqlite)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        db = Path(args.db).expanduser() if args.db else settings.reviews_db
        embedders = run_embedders(*settings.run_dirs)
        if args.command == "summary":
            found = summarize_store(db, embedders=embedders)
            print(json.dumps(found, indent=2, default=str))
            return 0
        if not args.folder:
            raise MedchatError(
                "export needs a folder to write: python -m medchat.review_stats export FOLDER."
            )
        if not db.is_file():
            raise MedchatError(f"There is no review database at {db}; give it with --db.")
        with ReviewStore(db) as store:
            paths = export(store, args.folder, embedders=embedders)
            store.export_csv("feedback", Path(args.folder).expanduser() / "feedback.csv")
        print("\n".join(str(p) for p in [*paths.values(), Path(args.folder) / "feedback.csv"]))
        return 0
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
