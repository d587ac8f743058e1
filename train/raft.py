"""Retrieval-augmented training examples (RAFT): the passages a training prompt carries.

    python -m train --config train/recipes/smollm2-135m-lora.yaml --retrieval true

With `retrieval` on, `train.sft.build_datasets` asks a `RaftBuilder` for each training
question's passages, searched as serving searches them (`retrieval_method`; `topic` is the
app's default, the Library) but in an index of the training split only, and for the answer to
train on: citing the question's own passage when it is among them,
or opening with NOT_COVERED when nothing on its topic is.
"""

from __future__ import annotations

import re
from pathlib import Path

from medchat.errors import MedchatError


class RaftBuilder:
    """Training prompts with retrieved passages, from an index of the training split only.

    For each question the index is searched as serving searches it. With probability
    `raft_gold_fraction` the question's own passage is among them (put in place of the last
    hit when retrieval missed it) and the answer cites it after its first sentence; otherwise
    every passage of its own document is taken out, and the answer starts with NOT_COVERED
    unless a remaining passage is on the same topic (same focus)."""

    def __init__(self, script_args, train_frame):
        from medchat.retrieval import METHODS, load_index

        if script_args.retrieval_method not in METHODS:
            raise MedchatError("retrieval_method must be bm25, dense, hybrid or topic.")
        if not 0.0 <= script_args.raft_gold_fraction <= 1.0:
            raise MedchatError("raft_gold_fraction must be between 0 and 1.")
        self.k = script_args.retrieval_k
        self.gold_fraction = script_args.raft_gold_fraction
        # The shipped library's index (dense vectors cached), cut to the training rows; `topic`
        # is the app's Library (topics named, then the hybrid ranking) over the same rows, so
        # no validation or test passage can be found.
        full = load_index(
            script_args.data_file,
            method=script_args.retrieval_method,
            cache_dir=Path(script_args.cache_dir).expanduser(),
            progress=True,
        )
        self.index = full.restricted(set(train_frame["key"]), name="training split")
        self.by_key = {p.key: p for p in self.index.passages}
        self.counts = {"gold": 0, "same_topic": 0, "not_covered": 0}

    def example(self, question: str, key: str, answer: str, *, seed: int):
        import random

        from medchat.prompts import NOT_COVERED
        from medchat.retrieval import Hit, same_topic

        rng = random.Random(seed)
        own = self.by_key.get(key)
        # "Not covered" pointers (the topic library's links to pages it holds no text for)
        # never go in a prompt, as in serving.
        hits = [h.passage for h in self.index.search(question, k=self.k + 4) if h.covered]
        if own is not None and rng.random() < self.gold_fraction:
            passages = [p for p in hits if p.key != own.key][: self.k]
            slot = rng.randrange(min(len(passages), self.k - 1) + 1)
            passages = (passages[:slot] + [own] + passages[slot:])[: self.k]
            rank = passages.index(own) + 1
            self.counts["gold"] += 1
            answer = cite_after_first_sentence(answer, rank)
        else:
            document = own.document_id if own is not None else None
            passages = [
                p for p in hits if p.key != key and (not document or p.document_id != document)
            ]
            passages = passages[: self.k]
            if own is not None and any(same_topic(p.title, own.title) for p in passages):
                self.counts["same_topic"] += 1
            else:
                self.counts["not_covered"] += 1
                answer = f"{NOT_COVERED}\n\n{answer}"
        return [Hit(p, 0.0, n) for n, p in enumerate(passages, 1)], answer


def cite_after_first_sentence(answer: str, rank: int) -> str:
    """The answer with " [rank]" before the full stop of its first sentence (or at its end)."""
    match = re.search(r"\.(?=\s|$)", answer)
    if match is None:
        return f"{answer} [{rank}]"
    return f"{answer[: match.start()]} [{rank}]{answer[match.start() :]}"
