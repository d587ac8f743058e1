"""The engine keeps nothing per request once the request is over, and counts what it started."""

from __future__ import annotations

import gc
import threading

from medchat.engine import GenerationParams

PARAMS = GenerationParams(max_new_tokens=2)


def generation_threads() -> int:
    """Thread objects of generations still held by anything in this process."""
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, threading.Thread) and obj.name == "medchat-generate"
    )


def test_finished_generations_leave_no_thread_behind(fresh_llama_engine):
    engine = fresh_llama_engine
    messages = engine.messages("What causes gout?")
    before = generation_threads()
    for _ in range(12):
        list(engine.stream(messages, PARAMS))
        list(engine.stream_pair(messages, PARAMS))
    engine.generate_batch([messages] * 2, PARAMS)
    assert generation_threads() <= before  # nothing kept for the 25 finished requests
    assert engine.generations_started == 25
