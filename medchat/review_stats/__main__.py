"""python -m medchat.review_stats summary | export FOLDER: see medchat.review_stats.cli."""

import sys

from medchat.review_stats.cli import main

if __name__ == "__main__":
    sys.exit(main())
