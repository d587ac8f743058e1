"""The command line, the organisers' way in when the app runs without sign-in:

python -m medchat.review_stats summary [--db data/reviews.sqlite]     # JSON on stdout
python -m medchat.review_stats export FOLDER [--db data/reviews.sqlite]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medchat.errors import MedchatError
from medchat.review_stats.dataset import export
from medchat.review_stats.figures import summarize_store
from medchat.review_stats.tables import run_embedders
from medchat.reviews import ReviewStore

DESCRIPTION = (
    "Study statistics over the review store, and a dataset export of its votes and ratings."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the study summary as JSON, or export every vote, rating, statement mark and thumb
    to a folder.

    The database and the run folders (for the embedder of each run's cosines) default to the
    app's settings (MEDCHAT_DATA_DIR, MEDCHAT_RUNS_DIR).
    """
    from medchat.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m medchat.review_stats", description=DESCRIPTION)
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
