"""Cost of the red-flag check per message, with the embedder already loaded.

    python -c "from bench.safety import run; print(run())"

`safety_ms_per_message`: median milliseconds of `classify` (rules + embedding + classifier)
over a mix of short messages, after one warm-up call loads the embedder. `safety_rules_ms`:
the same with `method="rules"`, the fallback when the embedder is unavailable. Goal: under 20
ms per message on the two-core CPU. `safety_load_s`: the one-off embedder load (first call).
"""

from __future__ import annotations

import statistics
import time

MESSAGES = (
    "my dad has crushing chest pain going down his left arm",
    "What are the symptoms of glaucoma?",
    "my baby has had diarrhoea all day and hasn't had a wet nappy",
    "¿Cuáles son los síntomas de un infarto?",
    "I can't stop thinking about ending it",
    "how do I store insulin when travelling?",
    "mein Sohn hat Fieber und einen steifen Nacken",
    "my dog ate chocolate, is it dangerous?",
)


def median_ms(fn, repeats: int, messages=MESSAGES) -> float:
    """Median milliseconds of `fn(message)` over `messages`, `repeats` times each."""
    times = []
    for _ in range(repeats):
        for message in messages:
            start = time.perf_counter()
            fn(message)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run(log=print, repeats: int = 5) -> dict:
    from medchat import safety

    start = time.perf_counter()
    safety.classify("warm-up: load the embedder and the classifier")
    load_s = time.perf_counter() - start
    if safety.embedder() is None:
        log("safety: the embedder is unavailable; only the rules were timed")
    full = median_ms(safety.classify, repeats)
    rules = median_ms(lambda m: safety.classify(m, method="rules"), repeats)
    log(f"safety: {full:.1f} ms per message, rules alone {rules:.2f} ms, load {load_s:.1f} s")
    return {
        "safety_ms_per_message": round(full, 2),
        "safety_rules_ms": round(rules, 3),
        "safety_load_s": round(load_s, 2),
    }
