"""Engine overheads: streaming vs plain generate, time to first token, base-vs-tuned pairs.

    python -m bench --only stream,ttft

All runs use the embedded model with the shipped adapter, greedy decoding and a fixed answer
length (EOS masked), so every variant does the same number of decoding steps. Baselines run in
a fresh thread, as the engine's generation does (see bench.common.in_thread).
"""

from __future__ import annotations

import time

import torch

from bench.common import (
    FixedLengthEngine,
    alternate,
    in_thread,
    interleave,
    log,
    median,
    paired_ratio,
    params,
)
from medchat.prompts import render_ids


def _prompt(engine: FixedLengthEngine, messages) -> dict[str, torch.Tensor]:
    ids = torch.tensor([render_ids(engine.tokenizer, messages)], device=engine.model.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _drain(iterator) -> tuple[int, object]:
    """Consume a stream: (number of updates, the last one)."""
    n, last = 0, None
    for item in iterator:
        n, last = n + 1, item
    return n, last


def measure_streaming(
    engine: FixedLengthEngine,
    question: str,
    *,
    new_tokens: int = 128,
    pair_tokens: int = 64,
    repeats: int = 3,
    pair_repeats: int = 2,
) -> dict:
    """stream_ratio, pair_ratio and sequential_pair_ratio, with the raw times.

    stream_ratio: plain `model.generate` (same config, no streamer) vs `engine.stream`, at
    `new_tokens`. The pair figures: `engine.stream_pair` and `engine.stream(tuned=False)` then
    `engine.stream` vs one `engine.stream`, at `pair_tokens`. Every set alternates its order.
    """
    messages = engine.messages(question, max_new_tokens=new_tokens)
    batch = _prompt(engine, messages)
    prompt_len = batch["input_ids"].shape[1]
    long, short = params(new_tokens), params(pair_tokens)

    def plain(p=long) -> list[int]:
        def run():
            with engine.lock, torch.inference_mode():
                config = engine.generation_config(p)
                return engine.model.generate(**batch, generation_config=config)

        return in_thread(run)[0, prompt_len:].tolist()

    # Warm-up: the first call of each path pays one-time costs (allocations, lazy imports).
    warm = params(4)
    plain(warm)
    _drain(engine.stream(messages, warm))
    _drain(engine.stream_pair(messages, warm))
    log(f"streaming: {repeats} repeats of generate / stream, {new_tokens} tokens")
    seconds, results = interleave(
        {"generate": plain, "stream": lambda: _drain(engine.stream(messages, long))}, repeats
    )
    log(f"streaming: {pair_repeats} repeats of stream / base / pair, {pair_tokens} tokens")
    pair_seconds, _ = interleave(
        {
            "stream": lambda: _drain(engine.stream(messages, short)),
            "stream_base": lambda: _drain(engine.stream(messages, short, tuned=False)),
            "stream_pair": lambda: _drain(engine.stream_pair(messages, short)),
        },
        pair_repeats,
    )
    plain_ids = results["generate"]
    updates, stream_text = results["stream"]
    one = pair_seconds["stream"]
    sequential = [a + b for a, b in zip(pair_seconds["stream_base"], one, strict=True)]
    return {
        "stream_ratio": paired_ratio(seconds["generate"], seconds["stream"]),
        "pair_ratio": paired_ratio(pair_seconds["stream_pair"], one),
        "sequential_pair_ratio": paired_ratio(sequential, one),
        "stream_tokens": len(plain_ids),
        "pair_tokens": pair_tokens,
        "stream_updates": updates,
        "stream_text_matches_generate": stream_text == engine._decode(plain_ids),
        "prompt_tokens": prompt_len,
        "generate_tokens_per_s": len(plain_ids) / median(seconds["generate"]),
        "stream_tokens_per_s": len(plain_ids) / median(seconds["stream"]),
        "seconds": {
            **{name: [round(s, 3) for s in v] for name, v in seconds.items()},
            **{
                f"{name}@{pair_tokens}": [round(s, 3) for s in v]
                for name, v in pair_seconds.items()
            },
        },
    }


def measure_ttft(
    engine: FixedLengthEngine, question: str, *, new_tokens: int = 128, repeats: int = 5
) -> dict:
    """ttft_ratio: first streamed text ÷ (prefill + one decode step, run by hand)."""
    messages = engine.messages(question, max_new_tokens=new_tokens)
    p = params(new_tokens)
    batch = _prompt(engine, messages)

    def first_token() -> float:
        start = time.perf_counter()
        stream = engine.stream(messages, p)
        try:
            next(stream)
            return time.perf_counter() - start
        finally:
            stream.close()  # cancels the rest; not part of the time

    def prefill_and_step() -> float:
        start = time.perf_counter()
        with engine.lock, torch.inference_mode():
            # As generate does: logits for the last position only.
            out = engine.model(**batch, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1:].argmax(-1)
            mask = torch.cat([batch["attention_mask"], torch.ones_like(nxt)], dim=1)
            engine.model(
                input_ids=nxt,
                attention_mask=mask,
                past_key_values=out.past_key_values,
                use_cache=True,
                logits_to_keep=1,
            )
        return time.perf_counter() - start

    first_token()
    in_thread(prefill_and_step)
    log(f"first token: {repeats} repeats of stream-to-first-text / prefill + one step")
    seconds = alternate(
        {"stream": first_token, "direct": lambda: in_thread(prefill_and_step)}, repeats
    )
    return {
        "ttft_ratio": paired_ratio(seconds["stream"], seconds["direct"]),
        "ttft_s_median": median(seconds["stream"]),
        "prefill_plus_step_s_median": median(seconds["direct"]),
        "prompt_tokens": batch["input_ids"].shape[1],
        "seconds": {name: [round(s, 4) for s in v] for name, v in seconds.items()},
    }
