"""The engine on tiny random models (and one short run of the real embedded model): streaming,
EOS, cancellation, base-vs-tuned pairs, batches and the model lock."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from contextlib import contextmanager, nullcontext

import pytest
import torch

from medchat.engine import BASE, Engine, GenerationParams, adapter_mode
from medchat.errors import MedchatError
from medchat.loading import load_model
from medchat.prompts import SYSTEM_PROMPT, render_ids
from medchat.settings import Settings

QUESTION = "What is glaucoma?"
QUESTIONS = (
    "Is flu contagious?",
    "What is glaucoma and how is it usually treated?",
    "How is type 2 diabetes treated in older adults who also have chronic kidney disease?",
)
PARAMS = GenerationParams(max_new_tokens=12)


def final(items: Iterable):
    """The last item a stream yields."""
    last = deque(items, maxlen=1)
    return last[0] if last else None


def decode(engine: Engine, ids: list[int]) -> str:
    """Text of generated ids, as the engine shows it."""
    return engine.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd").strip()


def greedy_ids(engine: Engine, messages, n: int, *, tuned: bool = True) -> list[int]:
    """New token ids from a plain greedy generate() call, outside the engine."""
    ids = torch.tensor([render_ids(engine.tokenizer, messages)])
    side = nullcontext() if tuned else engine.model.disable_adapter()
    with side, torch.inference_mode():
        out = engine.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            repetition_penalty=PARAMS.repetition_penalty,
            pad_token_id=engine.tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


@contextmanager
def count_steps(engine: Engine):
    """Record one entry per forward pass (decoding step): the id of the thread that ran it."""
    calls: list[int] = []
    head = engine.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda *_: calls.append(threading.get_ident()))
    try:
        yield calls
    finally:
        handle.remove()


def wait_for_no_threads(engine: Engine, seconds: float = 1.0) -> list[threading.Thread]:
    deadline = time.monotonic() + seconds
    while engine.alive_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.alive_threads


# -- streaming ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tuned", [True, False])
def test_stream_grows_and_ends_at_the_batch_answer(llama_engine, tuned):
    engine = llama_engine
    msgs = engine.messages(QUESTION)
    texts = list(engine.stream(msgs, PARAMS, tuned=tuned))
    assert len(texts) > 3
    for before, after in zip(texts, texts[1:], strict=False):
        assert after.startswith(before) and len(after) > len(before)
    side = "tuned" if tuned else "base"
    batch = engine.generate_batch([msgs], PARAMS, sides=(side,))[0][side]
    assert texts[-1] == batch.text
    assert texts[-1] == decode(engine, greedy_ids(engine, msgs, PARAMS.max_new_tokens, tuned=tuned))
    assert not engine.alive_threads


def test_stream_stops_at_eos(fresh_llama_engine):
    engine = fresh_llama_engine
    msgs = engine.messages(QUESTION)
    ids = greedy_ids(engine, msgs, PARAMS.max_new_tokens)
    assert len(ids) == PARAMS.max_new_tokens and not set(ids) & engine.eos_ids
    # Make a token the model is known to produce greedily count as end-of-sequence.
    k = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    engine.eos_ids = engine.eos_ids | {ids[k]}
    expected = decode(engine, ids[:k])
    assert expected != decode(engine, ids)

    with count_steps(engine) as steps:
        assert final(engine.stream(msgs, PARAMS)) == expected
    assert len(steps) <= k + 1  # generate() itself stopped, not just the text
    gen = engine.generate_batch([msgs], PARAMS, sides=("tuned",))[0]["tuned"]
    assert (gen.text, gen.n_tokens, gen.hit_limit) == (expected, k, False)


def test_closing_the_stream_stops_generation(fresh_llama_engine):
    engine = fresh_llama_engine
    params = GenerationParams(max_new_tokens=2000)
    with count_steps(engine) as steps:
        stream = engine.stream(engine.messages(QUESTION), params)
        for i, _ in enumerate(stream):
            if i == 2:
                break
        assert engine.alive_threads  # still generating
        start = time.monotonic()
        stream.close()
        assert wait_for_no_threads(engine) == []
        assert time.monotonic() - start < 1.0
    assert len(steps) < 200  # far from the 2000 it was asked for
    assert engine.lock.acquire(timeout=1)  # the model is free again
    engine.lock.release()


def test_stop_ends_a_generation_whose_stream_was_never_closed(fresh_llama_engine):
    """What a Ctrl-C leaves behind: a stream abandoned mid-answer, its thread still in torch.
    stop() ends that thread before the interpreter could shut down under it."""
    engine = fresh_llama_engine
    stream = engine.stream(engine.messages(QUESTION), GenerationParams(max_new_tokens=2000))
    next(stream), next(stream)
    assert engine.alive_threads  # still generating, nobody closes the stream
    start = time.monotonic()
    assert engine.stop(timeout=10) is True
    assert engine.alive_threads == [] and time.monotonic() - start < 2.0
    stream.close()


def test_cancel_from_another_thread_ends_the_stream(fresh_llama_engine):
    engine = fresh_llama_engine
    params = GenerationParams(max_new_tokens=2000)
    seen, at_cancel = 0, None
    with count_steps(engine) as steps:
        for _ in engine.stream(engine.messages(QUESTION), params):
            seen += 1
            if seen == 3:
                canceller = threading.Thread(target=engine.cancel)
                canceller.start()
                canceller.join()
                at_cancel = len(steps)
        # The loop ended by itself: the worker stopped and the stream finished.
        ended = len(steps)
    assert at_cancel is not None
    assert ended <= at_cancel + 2  # within a decoding step of the cancel
    assert wait_for_no_threads(engine) == []


def test_a_request_cancelled_while_waiting_for_the_model_ends_at_once(fresh_llama_engine):
    engine = fresh_llama_engine
    done = threading.Event()

    def ask() -> None:
        for _ in engine.stream(engine.messages(QUESTION), GenerationParams(max_new_tokens=50)):
            pass
        done.set()

    with engine.lock:  # another answer holds the model
        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.2)
        assert not done.is_set()
        engine.cancel()
        # The waiting request gives up without the model ever being free.
        assert done.wait(timeout=1.0)
    asker.join(timeout=1.0)
    assert wait_for_no_threads(engine) == []


# -- base and tuned -------------------------------------------------------------------------------
def test_stream_pair_matches_separate_streams(llama_engine):
    engine = llama_engine
    msgs = engine.messages(QUESTION)
    pairs = list(engine.stream_pair(msgs, PARAMS))
    assert len(pairs) > 3
    for (b0, t0), (b1, t1) in zip(pairs, pairs[1:], strict=False):
        assert b1.startswith(b0) and t1.startswith(t0)
    base, tuned = pairs[-1]
    assert base == final(engine.stream(msgs, PARAMS, tuned=False))
    assert tuned == final(engine.stream(msgs, PARAMS, tuned=True))
    n = PARAMS.max_new_tokens
    assert base == decode(engine, greedy_ids(engine, msgs, n, tuned=False))
    assert tuned == decode(engine, greedy_ids(engine, msgs, n, tuned=True))
    assert base != tuned  # the random adapter changes the answer


def test_pair_and_tuned_side_need_an_adapter(tiny_llama_profile, cache_dir):
    engine = Engine(load_model(tiny_llama_profile, None, cache_dir=cache_dir, device="cpu"))
    assert not engine.has_adapter and engine.info()["adapter"] == "none"
    msgs = engine.messages(QUESTION)
    with pytest.raises(MedchatError, match="adapter"):
        next(engine.stream_pair(msgs, PARAMS))
    with pytest.raises(MedchatError, match="adapter"):
        engine.generate_batch([msgs], PARAMS, sides=("tuned",))
    # The base model alone still answers, with or without tuned=True.
    assert final(engine.stream(msgs, PARAMS)) == final(engine.stream(msgs, PARAMS, tuned=False))


def test_generate_batch_matches_single_runs(llama_engine):
    engine = llama_engine
    convs = [engine.messages(q) for q in QUESTIONS]
    assert len({len(render_ids(engine.tokenizer, c)) for c in convs}) == 3  # padding is exercised
    out = engine.generate_batch(convs, PARAMS, sides=("base", "tuned"))
    assert len(out) == 3
    for conv, item in zip(convs, out, strict=True):
        assert set(item) == {"base", "tuned"}
        for side, gen in item.items():
            assert gen.n_tokens == PARAMS.max_new_tokens and gen.hit_limit
            assert gen.text == final(engine.stream(conv, PARAMS, tuned=side == "tuned"))
        assert item["base"].text != item["tuned"].text


def test_generate_batch_counts_tokens_per_row(fresh_llama_engine):
    engine = fresh_llama_engine
    n = PARAMS.max_new_tokens
    convs = [engine.messages(q) for q in QUESTIONS]
    rows = {
        (i, side): greedy_ids(engine, conv, n, tuned=side == "tuned")
        for i, conv in enumerate(convs)
        for side in ("base", "tuned")
    }
    first = rows[(1, "tuned")]
    k = next(i for i in range(2, n) if first[i] not in first[:i])
    eos = first[k]
    engine.eos_ids = engine.eos_ids | {eos}

    out = engine.generate_batch(convs, PARAMS, sides=("base", "tuned"))
    for (i, side), ids in rows.items():
        stop = ids.index(eos) if eos in ids else n
        gen = out[i][side]
        assert gen.n_tokens == stop, (i, side)
        assert gen.hit_limit == (eos not in ids), (i, side)
        assert gen.text == decode(engine, ids[:stop]), (i, side)
    assert out[1]["tuned"].n_tokens == k and not out[1]["tuned"].hit_limit


def test_generate_batch_rejects_unknown_sides(llama_engine):
    with pytest.raises(MedchatError, match="Unknown side"):
        llama_engine.generate_batch([llama_engine.messages(QUESTION)], PARAMS, sides=("gpt",))


# -- one side at a time: no mixed-adapter batch --------------------------------------------------
@pytest.fixture
def mixed_batch_calls(monkeypatch):
    """Calls of peft's per-row (mixed-adapter) LoRA forward while the test runs: the real
    method, counted on its class."""
    from peft.tuners.lora.layer import Linear

    calls = []
    real = Linear._mixed_batch_forward

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("adapter_names"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Linear, "_mixed_batch_forward", counted)
    return calls


@pytest.fixture(scope="module")
def base_only_engine(tiny_llama_profile, cache_dir):
    """The same tiny Llama without any adapter."""
    return Engine(load_model(tiny_llama_profile, None, cache_dir=cache_dir, device="cpu"))


def test_a_base_stream_is_the_model_without_its_adapter(
    llama_engine, base_only_engine, mixed_batch_calls
):
    msgs = llama_engine.messages(QUESTION)
    base = final(llama_engine.stream(msgs, PARAMS, tuned=False))
    batch = llama_engine.generate_batch(
        [llama_engine.messages(q) for q in QUESTIONS], PARAMS, sides=("base",)
    )
    assert mixed_batch_calls == []  # the adapter was switched off, not masked row by row
    assert base == final(base_only_engine.stream(msgs, PARAMS))
    alone = base_only_engine.generate_batch(
        [base_only_engine.messages(q) for q in QUESTIONS], PARAMS, sides=("base",)
    )
    assert batch == alone
    # ... and it is on again afterwards: the tuned answer differs from the base one.
    assert final(llama_engine.stream(msgs, PARAMS)) == decode(
        llama_engine, greedy_ids(llama_engine, msgs, PARAMS.max_new_tokens)
    )
    assert final(llama_engine.stream(msgs, PARAMS)) != base


def test_a_tuned_stream_or_batch_uses_no_mixed_batch(llama_engine, mixed_batch_calls):
    msgs = llama_engine.messages(QUESTION)
    tuned = final(llama_engine.stream(msgs, PARAMS))
    batch = llama_engine.generate_batch([msgs], PARAMS, sides=("tuned",))[0]["tuned"]
    assert mixed_batch_calls == []
    assert (
        tuned
        == batch.text
        == decode(llama_engine, greedy_ids(llama_engine, msgs, PARAMS.max_new_tokens))
    )


def test_pairs_still_use_the_mixed_batch(llama_engine, mixed_batch_calls):
    msgs = llama_engine.messages(QUESTION)
    final(llama_engine.stream_pair(msgs, PARAMS))
    assert mixed_batch_calls  # one generate for both sides
    assert all(names == [BASE, llama_engine.loaded.adapter_name] for names in mixed_batch_calls)


def test_a_tuned_answer_waiting_behind_a_base_answer_gets_the_adapter(fresh_llama_engine):
    """The adapter is off for exactly one generation: a tuned request that starts while a base
    answer runs waits for the model and then answers with the adapter on, and a base answer
    cut short leaves the adapter on."""
    engine = fresh_llama_engine
    msgs = engine.messages(QUESTIONS[1])
    expected = decode(engine, greedy_ids(engine, msgs, PARAMS.max_new_tokens))
    results: dict[str, str] = {}
    base_stream = engine.stream(msgs, GenerationParams(max_new_tokens=2000), tuned=False)
    next(base_stream), next(base_stream)  # the base answer holds the model now

    def ask_tuned() -> None:
        results["tuned"] = final(engine.stream(msgs, PARAMS))

    asker = threading.Thread(target=ask_tuned)
    asker.start()
    time.sleep(0.1)
    assert "tuned" not in results  # waiting for the model
    base_stream.close()  # cut short: the adapter must come back on
    asker.join(timeout=60)
    assert results["tuned"] == expected
    assert engine.model.get_model_status().enabled is True  # peft: every LoRA layer is on


@pytest.mark.parametrize(
    ("names", "mode"),
    [
        (None, "plain"),
        ([], "plain"),
        (["tuned"], "plain"),
        (["tuned", "tuned"], "plain"),
        ([BASE], "base"),
        ([BASE, BASE, BASE], "base"),
        ([BASE, "tuned"], "mixed"),
        (["tuned", BASE, "tuned"], "mixed"),
    ],
)
def test_adapter_mode(names, mode):
    assert adapter_mode(names) == mode


# -- the lock -----------------------------------------------------------------------------------
def test_two_threads_stream_one_after_the_other(fresh_llama_engine):
    engine = fresh_llama_engine
    params = GenerationParams(max_new_tokens=40)
    convs = {"a": engine.messages(QUESTIONS[0]), "b": engine.messages(QUESTIONS[2])}
    expected = {name: final(engine.stream(msgs, params)) for name, msgs in convs.items()}
    results: dict[str, str] = {}

    def ask(name: str) -> None:
        results[name] = final(engine.stream(convs[name], params))

    with count_steps(engine) as steps:
        threads = [threading.Thread(target=ask, args=(name,)) for name in convs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert results == expected
    # The lock serialised the model: every step of one generation, then every step of the other.
    assert len(steps) == 2 * params.max_new_tokens
    switches = sum(1 for x, y in zip(steps, steps[1:], strict=False) if x != y)
    assert switches == 1


# -- prompts, sampling, info ----------------------------------------------------------------------
def test_messages_fit_the_context_window(llama_engine):
    engine = llama_engine  # context window 512
    history = [
        (f"Tell me about eye problem number {i}. " * 2, f"Problem {i} is common. " * 4)
        for i in range(20)
    ]
    msgs = engine.messages(QUESTION, history, max_new_tokens=256)
    assert len(render_ids(engine.tokenizer, msgs)) <= 512 - 256
    assert 3 <= len(msgs) < 2 + 2 * len(history)
    assert msgs[-1]["content"] == QUESTION
    assert msgs[-2]["content"] == history[-1][1].strip()  # the newest exchange is kept


def test_mistral_engine_folds_the_system_prompt(mistral_engine):
    engine = mistral_engine
    msgs = engine.messages(QUESTION)
    assert msgs == [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{QUESTION}"}]
    base, tuned = final(engine.stream_pair(msgs, PARAMS))
    assert base == final(engine.stream(msgs, PARAMS, tuned=False))
    assert tuned == final(engine.stream(msgs, PARAMS, tuned=True))
    assert base and tuned and base != tuned


def test_sampling_is_seeded_and_bounded(llama_engine):
    engine = llama_engine
    msgs = engine.messages(QUESTION)
    params = GenerationParams(max_new_tokens=10, temperature=1.0, top_p=0.95)
    torch.manual_seed(123)
    first = engine.generate_batch([msgs], params, sides=("tuned",))[0]["tuned"]
    torch.manual_seed(123)
    again = engine.generate_batch([msgs], params, sides=("tuned",))[0]["tuned"]
    assert first == again
    assert first.n_tokens == 10 and first.text
    assert first.text != final(engine.stream(msgs, GenerationParams(max_new_tokens=10)))


@pytest.mark.parametrize(
    "field, value",
    [("max_new_tokens", 0), ("temperature", 2.5), ("top_p", 0.0), ("repetition_penalty", 0.5)],
)
def test_bad_generation_params(field, value):
    with pytest.raises(MedchatError, match=field):
        GenerationParams(**{field: value})


def test_info_describes_the_model(llama_engine, tiny_llama_profile, tiny_llama_adapter):
    info = llama_engine.info()
    assert info["profile"] == "tiny-llama"
    assert info["base_model"] == info["base_source"] == tiny_llama_profile.model_id
    assert info["adapter"] == str(tiny_llama_adapter)
    assert (info["device"], info["dtype"]) == ("cpu", "float32")


# -- the real embedded model ----------------------------------------------------------------------
@pytest.mark.embedded
def test_embedded_model_answers_in_english(cache_dir):
    settings = Settings.from_env(
        env={}, profile="smollm2-135m", adapter="none", cache_dir=cache_dir, device="cpu"
    )
    engine = Engine.from_settings(settings)
    msgs = engine.messages("What are the symptoms of glaucoma?")
    text = final(engine.stream(msgs, GenerationParams(max_new_tokens=16)))
    assert text
    assert sum(c.isascii() for c in text) / len(text) > 0.95
    assert len(re.findall(r"[A-Za-z]{2,}", text)) >= 5
    assert re.search(r"\b(the|of|and|is|are|can|glaucoma|eye|eyes|vision)\b", text, re.I)
