"""Evaluation entry point: `python -m eval --adapter PATH_OR_ID` (see eval/__main__.py)."""
