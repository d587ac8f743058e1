"""The study's figures: mean rating and TREC LiveQA avgScore per side, the tuned-over-base vote
win rate, inter-rater agreement (Krippendorff's alpha, weighted kappa), per-reviewer counts,
the Spearman correlation of rating with cosine per embedder, and the statement figures
(comprehensiveness, hallucination, the judge's kappa with the reviewers).

Every figure is a dict with its n; where the data are too few, value is None and reason says
why. Intervals are 95% percentile bootstraps drawn from numpy's default_rng(seed).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
from scipy.stats import rankdata

from medchat.errors import MedchatError
from medchat.review_stats.tables import (
    MARK_FIELDS,
    SCALE,
    UNIT,
    VOTE_FIELDS,
    Rows,
    as_frame,
    ratings_frame,
    store_rows,
)
from medchat.reviews import MARKS, RATING_LABELS, SIDES, STATEMENT_KINDS, WINNERS, ReviewStore

CI_LEVEL = 0.95


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
    r = ratings_frame(ratings, embedders or {})
    v = as_frame(votes, VOTE_FIELDS)
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
    ratings, votes, marks = store_rows(store)
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
    m = as_frame(marks, MARK_FIELDS)
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
