"""Cost of the red-flag check per message, with the embedder already loaded.

    python -c "from bench.safety import run; print(run())"

`safety_ms_per_message`: median milliseconds of `classify` (rules + embedding + classifier)
over a mix of short messages, after one warm-up call loads the embedder. `safety_rules_ms`:
the same with `method="rules"`, the fallback when the embedder is unavailable. Goal: under 20
ms per message on the two-core CPU. `safety_load_s`: the one-off embedder load (first call).
`safety_ms_beyond_shared` (short messages) and `safety_long_ms_beyond_shared` (long stories,
scored whole, by sentence and by pairs of sentences): what triage adds to a request once the
message's embedding, which retrieval computes anyway, is shared (medchat.metrics.
request_vectors, as the pipeline does); a long story's includes the story judge, whose own
time is `safety_story_judge_ms` (its encoder is a second one, so nothing is shared).
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
LONG_MESSAGES = (
    "My grandad is 83 and has had diabetes for years. He lives with us and is usually chatty. "
    "This morning he was slow to get up and didn't want breakfast. Now he is sweaty and "
    "confused and his sugar meter reads 2.1.",
    "Clinic note: 45M, 3 days productive cough, T 38.4, HR 96, RR 20, SpO2 96% on air, BP "
    "128/80. Eating and drinking, speaking in full sentences. Advice on fluids and review.",
    "I'm writing a first-aid leaflet for our running club. Last year one member collapsed at a "
    "race and was fine after treatment. Which warning signs of heat illness should we list?",
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
    safety.classify(LONG_MESSAGES[0])  # ... and the story judge
    load_s = time.perf_counter() - start
    if safety.embedder() is None:
        log("safety: the embedder is unavailable; only the rules were timed")
    full = median_ms(safety.classify, repeats)
    rules = median_ms(lambda m: safety.classify(m, method="rules"), repeats)
    log(f"safety: {full:.1f} ms per message, rules alone {rules:.2f} ms, load {load_s:.1f} s")
    out = {
        "safety_ms_per_message": round(full, 2),
        "safety_rules_ms": round(rules, 3),
        "safety_load_s": round(load_s, 2),
    }
    if safety.embedder() is not None:
        short = beyond_shared_ms(safety, MESSAGES, repeats)
        long = beyond_shared_ms(safety, LONG_MESSAGES, repeats)
        log(f"safety beyond the shared embedding: {short:.1f} ms short, {long:.1f} ms long")
        out.update(
            safety_ms_beyond_shared=round(short, 2), safety_long_ms_beyond_shared=round(long, 2)
        )
        from medchat.safety.judge import shipped

        judge = shipped()
        if judge is not None:
            story = median_ms(lambda m: judge.probabilities([m]), repeats, LONG_MESSAGES)
            log(f"safety: the story judge reads a long message in {story:.1f} ms")
            out["safety_story_judge_ms"] = round(story, 2)
    return out


def beyond_shared_ms(safety, messages, repeats: int) -> float:
    """Median milliseconds of `classify` once the message's own embedding is in the request's
    cache (retrieval computes it anyway): the rest of the parts, rules and classifier."""
    from medchat.metrics import request_vectors

    times = []
    for _ in range(repeats):
        for message in messages:
            with request_vectors():
                safety.embedder().encode([safety.plain_text(message)])  # what retrieval pays
                start = time.perf_counter()
                safety.classify(message)
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
