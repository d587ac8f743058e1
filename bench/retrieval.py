"""Cost of finding a message's NIH sources, as a ratio to the red-flag check that already runs
on every message (both measured in this run, on the same messages).

    python -m bench --only retrieval

`retrieval_ms_per_message`: median milliseconds of the default (topic) retrieval of one message
(question analysis, topics, hybrid ranking, the relevance decision), index loaded.
`retrieval_to_triage_ratio`: that over the median of `safety.classify` on the same messages.
`retrieval_load_s`: the one-off load of the index (shipped vectors, topic table).
"""

from __future__ import annotations

import time

from bench.safety import MESSAGES, median_ms

MORE = (
    "I've been taking ibuprofen for my back pain for 3 weeks, is that safe with my blood "
    "pressure pills?",
    "my mom has copd and a bad cough, what should she do?",
    "What is the usual dose of Advil for a grown man?",
)


def run(log=print, repeats: int = 3) -> dict:
    from medchat import safety
    from medchat.retrieval import default_index
    from medchat.settings import Settings

    start = time.perf_counter()
    library = default_index(Settings())
    load_s = time.perf_counter() - start
    safety.classify("warm-up: load the embedder and the classifier")
    library.search("warm-up: what is glaucoma?")
    messages = MESSAGES + MORE
    retrieval = median_ms(library.search, repeats, messages)
    triage = median_ms(safety.classify, repeats, messages)
    ratio = retrieval / triage if triage else float("nan")
    log(f"retrieval: {retrieval:.1f} ms per message, triage {triage:.1f} ms ({ratio:.1f}x)")
    return {
        "retrieval_ms_per_message": round(retrieval, 2),
        "triage_ms_same_messages": round(triage, 2),
        "retrieval_to_triage_ratio": round(ratio, 2),
        "retrieval_load_s": round(load_s, 2),
    }
