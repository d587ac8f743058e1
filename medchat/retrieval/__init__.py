"""Retrieval over MedQuAD's NIH pages, so an answer can say where it comes from.

- `index`: passages (one per MedQuAD row) and the lexical, dense and hybrid rankings.
- `topics`: the topics a question names (focus names, synonyms, brands; misspellings too).
- `questions`: the question(s) inside a message and what kind of question each is.
- `links`: NIH links as they open today (retired sites mapped or marked archived).
"""

from medchat.retrieval.index import (
    CITATION,
    DEFAULT_K,
    DEFAULT_METHOD,
    DENSE_WORDS,
    INDEX_VERSION,
    METHODS,
    MIN_SCORE,
    PASSAGE_WORDS,
    RRF_K,
    SHIPPED_INDEX,
    Hit,
    Index,
    Passage,
    citations,
    default_index,
    load_index,
    passages_from,
    same_topic,
    vectors_name,
    vectors_path,
)

__all__ = [
    "CITATION",
    "DEFAULT_K",
    "DEFAULT_METHOD",
    "DENSE_WORDS",
    "INDEX_VERSION",
    "METHODS",
    "MIN_SCORE",
    "PASSAGE_WORDS",
    "RRF_K",
    "SHIPPED_INDEX",
    "Hit",
    "Index",
    "Passage",
    "citations",
    "default_index",
    "load_index",
    "passages_from",
    "same_topic",
    "vectors_name",
    "vectors_path",
]
