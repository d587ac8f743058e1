"""medchat: fine-tune an instruct LLM on medical Q&A, chat with it, compare and review it.

Run `python -m medchat --help` for the command line; `app.py` is the browser app.
"""

__version__ = "0.1.0"
