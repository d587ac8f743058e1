"""The one exception type a user can cause: its message is a single sentence naming the fix."""


class MedchatError(Exception):
    """A problem with the user's input or set-up (bad path, wrong adapter, no CUDA, ...).

    Entry points print `str(err)` and exit non-zero; the app shows it in the page. Anything else
    that escapes is a bug and keeps its traceback.
    """
