"""Reference answers for the questions of an evaluation set, and the embedder that scores
answers against them: what Compare, Evaluate and Review show beside an answer.

`ReferenceBook(pipeline, settings)` loads the data (MEDCHAT_EVAL_DATA, else the data recorded
beside the adapter) and the embedder on first use; `check_eval_data` is the start-up check.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from medchat.errors import MedchatError
from medchat.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    question: str
    answer: str
    n_answers: int  # how many reference answers the data holds for this question


EMBEDDER_RETRY_S = 300.0  # how long a failed embedder load is not retried


class ReferenceBook:
    """Reference answers from the evaluation data, and the embedder that scores against them.

    The data is settings.eval_data, else the data file recorded beside the engine's adapter
    (medchat_training.json). Both are loaded on first use, once, behind a lock; when there is
    no data, `lookup` returns None and `available` says why.
    """

    def __init__(self, pipeline, settings: Settings):
        self.pipeline = pipeline
        self.settings = settings
        self._lock = threading.Lock()
        self._index: dict[str, list[tuple[str, str]]] | None = None
        self._embedder = None
        self._embedder_failure: tuple[float, MedchatError] | None = None
        self.problem = ""  # why no reference data could be loaded, once tried

    def data_source(self) -> str | None:
        """The data file or hub id to read, or None when there is none."""
        from medchat.evaluation import EvalConfig, resolve_adapter, resolve_data

        if self.settings.eval_data:
            path = Path(self.settings.eval_data).expanduser()
            return str(path) if path.exists() else self.settings.eval_data
        adapter = self.pipeline.adapter
        if not adapter:
            self.problem = "no evaluation data is set (MEDCHAT_EVAL_DATA) and no adapter is loaded"
            return None
        try:
            source = resolve_data(EvalConfig(adapter=adapter), resolve_adapter(adapter))
        except MedchatError as err:
            self.problem = str(err)
            return None
        return source

    def _load(self) -> dict[str, list[tuple[str, str]]]:
        from medchat.data import load_pairs, normalize_question

        with self._lock:
            if self._index is not None:
                return self._index
            index: dict[str, list[tuple[str, str]]] = {}
            source = self.data_source()
            if source:
                try:
                    frame, _ = load_pairs(source)
                except MedchatError as err:
                    self.problem = str(err)
                    log.warning("No reference answers: %s", err)
                else:
                    for question, answer in zip(frame["question"], frame["answer"], strict=True):
                        index.setdefault(normalize_question(question), []).append(
                            (question, answer)
                        )
            self._index = index
            return index

    def lookup(self, question: str) -> Reference | None:
        """The reference answer for a question of the evaluation data, else None."""
        from medchat.data import normalize_question

        found = self._load().get(normalize_question(question or ""))
        if not found:
            return None
        return Reference(question=found[0][0], answer=found[0][1], n_answers=len(found))

    def embedder(self):
        """The embedder the settings name (MEDCHAT_EMBEDDER, else the default), loaded once.

        A failure to load it is a MedchatError of one sentence. The same error is given again
        for EMBEDDER_RETRY_S, so a Space whose hub and bundled model both fail does not try a
        download on every comparison; after that the next call tries again.
        """
        from medchat.metrics import embedder_for

        with self._lock:
            if self._embedder is None:
                failed = self._embedder_failure
                if failed is not None and time.monotonic() - failed[0] < EMBEDDER_RETRY_S:
                    raise failed[1]
                try:
                    self._embedder = embedder_for(self.settings)
                except MedchatError as err:
                    self._embedder_failure = (time.monotonic(), err)
                    raise
            return self._embedder

    def cosines(self, answers: list[str], reference: str) -> list[float]:
        embedder = self.embedder()
        return [float(x) for x in embedder.cosine(list(answers), [reference] * len(answers))]


def check_eval_data(settings: Settings) -> None:
    """Stop at start-up, in one sentence, when MEDCHAT_EVAL_DATA names a file that can't be read.

    Otherwise the app would start and reference answers would silently be missing. A hub
    dataset id (org/name, no file suffix) is left for first use, since reading it needs the
    network.
    """
    from medchat.data import load_pairs

    source = settings.eval_data
    if not source:
        return
    path = Path(source).expanduser()
    if not path.exists() and not path.suffix and not source.startswith((".", "~", "/")):
        return  # a hub dataset id
    try:
        load_pairs(source)
    except MedchatError as err:
        raise MedchatError(f"MEDCHAT_EVAL_DATA: {err}") from err
