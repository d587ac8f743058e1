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

The package:
- `tables`: each table's fields and their meanings, the store's rows as DataFrames, and
  `run_embedders` (the embedder behind each run's cosines).
- `figures`: `summarize`, `summarize_store`, `statement_figures`, `weighted_kappa`.
- `dataset`: `export`, the CSV and Parquet tables with their dataset card.
- `cli`: `main`, the command line above.
"""

from medchat.review_stats.cli import main
from medchat.review_stats.dataset import export
from medchat.review_stats.figures import (
    CI_LEVEL,
    figure,
    statement_figures,
    summarize,
    summarize_store,
    weighted_kappa,
)
from medchat.review_stats.tables import (
    MARK_FIELDS,
    NOT_TEXT,
    PROMPT_FIELDS,
    RATING_FIELDS,
    SCALE,
    UNIT,
    VOTE_FIELDS,
    Rows,
    run_embedders,
)

__all__ = [
    "CI_LEVEL",
    "MARK_FIELDS",
    "NOT_TEXT",
    "PROMPT_FIELDS",
    "RATING_FIELDS",
    "SCALE",
    "UNIT",
    "VOTE_FIELDS",
    "Rows",
    "export",
    "figure",
    "main",
    "run_embedders",
    "statement_figures",
    "summarize",
    "summarize_store",
    "weighted_kappa",
]
