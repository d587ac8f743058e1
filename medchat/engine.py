"""The engine owns one loaded model: it streams answers, base-vs-tuned pairs, and batches.

    engine = Engine.from_settings(Settings.from_env())
    msgs = engine.messages("What is glaucoma?")
    for text in engine.stream(msgs, GenerationParams(max_new_tokens=128)):
        print(text)                       # the answer so far
    for base, tuned in engine.stream_pair(msgs): ...

It knows token ids and chat messages, never the UI. Generation runs in a worker thread; a
lock serialises model access (PEFT's per-row adapter hooks and its adapter on/off switch are
shared state); closing a stream's generator, or `cancel()`, stops generation within one
decoding step.

Which adapter path a generation takes (`adapter_mode`): rows that all want the tuned model run
with the adapter on, rows that all want the base model run under peft's `disable_adapter()`,
and only a batch that mixes both (a base-vs-tuned pair) uses peft's mixed-adapter batch, which
pays a per-module gather of rows at every step (on a GPU, one device sync per LoRA layer).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from medchat.errors import MedchatError
from medchat.generation import (  # noqa: F401  (Generation and GenerationParams: re-exported)
    Generation,
    GenerationParams,
    check_sides,
    fitted_messages,
    prompt_budget,
)
from medchat.loading import LoadedModel, load_model
from medchat.prompts import Message, render_ids

BASE = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch
_END = object()

AdapterMode = Literal["plain", "base", "mixed"]


def adapter_mode(names: Sequence[str] | None) -> AdapterMode:
    """How to run rows that want the adapters `names` (one per row; None: no adapter loaded).

    "plain": generate as the model is (no adapter, or every row tuned: the adapter is on);
    "base": every row wants the base model, so the adapter is switched off for the call;
    "mixed": both kinds of rows, so peft picks the adapter per row (`adapter_names=`).
    """
    if not names:
        return "plain"
    kinds = {name == BASE for name in names}
    if kinds == {True}:
        return "base"
    if kinds == {False}:
        return "plain"
    return "mixed"


class _StopOnEvent(StoppingCriteria):
    """Stops every row once `event` is set (checked after each decoding step)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        # StoppingCriteriaList ORs this with a tensor on input_ids' device: on a GPU a CPU
        # tensor here fails the first decoding step.
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _BatchStreamer(BaseStreamer):
    """Collects new token ids per row and hands each step to the consumer through a queue.

    generate() calls put() once with the prompt ids, then once per decoding step with one id
    per row, then end(). Rows that have produced EOS stop growing.
    """

    def __init__(self, batch_size: int, eos_ids: set[int]):
        self.rows: list[list[int]] = [[] for _ in range(batch_size)]
        self.finished = [False] * batch_size
        self.eos_ids = eos_ids
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        step = value.reshape(len(self.rows), -1)[:, -1].tolist()
        for i, token in enumerate(step):
            if self.finished[i]:
                continue
            if token in self.eos_ids:
                self.finished[i] = True
            else:
                self.rows[i].append(token)
        self.queue.put(([list(r) for r in self.rows], list(self.finished)))

    def end(self) -> None:
        self.queue.put(_END)


class Engine:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.profile = loaded.profile
        self.lock = threading.Lock()
        self._active: set[threading.Event] = set()
        self._active_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.generations_started = 0  # generate() calls begun: what "the model was asked" means
        # A fast tokenizer must not be used by two threads at once, and Gradio runs events
        # in several threads: every use of it outside the model lock takes this one.
        self._tokenizer_lock = threading.Lock()
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = {int(e) for e in eos if e is not None}

    @classmethod
    def from_settings(cls, settings) -> Engine:
        from medchat.profiles import resolve_profile

        profile = resolve_profile(settings.profile)
        loaded = load_model(
            profile,
            settings.adapter_for(profile.name),
            cache_dir=settings.cache_dir,
            device=settings.device,
            token=settings.hf_token,
        )
        return cls(loaded)

    # -- what the UI and CLI show -------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        return self.loaded.adapter_name is not None

    def info(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "base_model": self.profile.model_id,
            "base_source": self.loaded.base_source,
            "adapter": self.loaded.adapter or "none",
            "device": self.loaded.device,
            "dtype": self.profile.dtype + (" (4-bit NF4)" if self.profile.load_in_4bit else ""),
            "load_seconds": round(self.loaded.load_seconds, 2),
        }

    # -- prompts ------------------------------------------------------------------------------
    def prompt_budget(self, max_new_tokens: int) -> int:
        return prompt_budget(self.profile.context_window, max_new_tokens)

    def messages(self, question: str, history=None, **prompt) -> list[Message]:
        """medchat.generation.fitted_messages with this model's profile and tokenizer (under
        the tokenizer lock: a fast tokenizer must not be used by two threads at once)."""
        with self._tokenizer_lock:
            return fitted_messages(self.profile, self.tokenizer, question, history, **prompt)

    def _render(self, messages: Sequence[Message]) -> list[int]:
        with self._tokenizer_lock:
            return render_ids(self.tokenizer, messages)

    # -- generation ---------------------------------------------------------------------------
    def stream(
        self, messages: Sequence[Message], params: GenerationParams | None = None, *, tuned=True
    ) -> Iterator[str]:
        """Yield the answer as it grows (the whole text so far at each step)."""
        names = None
        if self.has_adapter:
            names = [self.loaded.adapter_name if tuned else BASE]
        last = None
        for rows, _ in self._stream_rows([self._render(messages)], names, params):
            text = self._decode(rows[0])
            if text != last:
                last = text
                yield text

    def stream_pair(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> Iterator[tuple[str, str]]:
        """Yield (base_text, tuned_text) as both grow, from one two-row batched generate."""
        if not self.has_adapter:
            raise MedchatError("Compare needs a fine-tuned adapter; start with --adapter.")
        ids = self._render(messages)
        last = None
        for rows, _ in self._stream_rows([ids, ids], [BASE, self.loaded.adapter_name], params):
            pair = (self._decode(rows[0]), self._decode(rows[1]))
            if pair != last:
                last = pair
                yield pair

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: GenerationParams | None = None,
        *,
        sides: Sequence[str] = ("base", "tuned"),
    ) -> list[dict[str, Generation]]:
        """Answers for many conversations in one batch: each side of each gets one row.

        Returns, per conversation, {side: Generation}. `sides` are "base" and/or "tuned".
        """
        params = params or GenerationParams()
        check_sides(sides, self.has_adapter)
        prompts, names = [], []
        for conv in conversations:
            ids = self._render(conv)
            for side in sides:
                prompts.append(ids)
                names.append(BASE if side == "base" else self.loaded.adapter_name)
        if not self.has_adapter:
            names = None
        rows, finished = [[] for _ in prompts], [False] * len(prompts)
        for step in self._stream_rows(prompts, names, params):
            rows, finished = step
        out, k = [], 0
        for _ in conversations:
            item = {}
            for side in sides:
                hit = not finished[k] and len(rows[k]) >= params.max_new_tokens
                item[side] = Generation(self._decode(rows[k]), len(rows[k]), hit)
                k += 1
            out.append(item)
        return out

    def cancel(self) -> None:
        """Stop every generation in progress (each ends within one decoding step)."""
        with self._active_lock:
            for event in self._active:
                event.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Cancel every generation and wait up to `timeout` s for their threads to end; True
        when none is left. Call it before the process exits: a generation thread still in
        torch while the interpreter shuts down can crash it."""
        self.cancel()
        deadline = time.monotonic() + timeout
        for thread in self.alive_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.alive_threads

    @property
    def alive_threads(self) -> list[threading.Thread]:
        """Generation threads still running (tests use this to see cancellation work)."""
        with self._active_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            return list(self._threads)

    # -- internals ----------------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        # A multi-byte character split across tokens decodes to U+FFFD until it is complete.
        return text.rstrip("\ufffd").strip()

    def _batch(self, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = [[pad] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        device = self.model.device
        return {
            "input_ids": torch.tensor(ids, device=device),
            "attention_mask": torch.tensor(mask, device=device),
        }

    def _generation_config(self, params: GenerationParams) -> GenerationConfig:
        cfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if not params.greedy:
            cfg.temperature = params.temperature
            cfg.top_p = params.top_p
            cfg.top_k = 0
        return cfg

    def _stream_rows(
        self,
        prompts: list[list[int]],
        adapter_names: list[str] | None,
        params: GenerationParams | None,
    ) -> Iterator[tuple[list[list[int]], list[bool]]]:
        """Run generate() in a worker thread; yield (new ids per row, finished per row).

        Closing this generator sets the cancel event and waits for the worker to end.
        """
        params = params or GenerationParams()
        streamer = _BatchStreamer(len(prompts), self.eos_ids)
        cancel = threading.Event()
        errors: list[BaseException] = []
        kwargs: dict[str, Any] = dict(
            **self._batch(prompts),
            generation_config=self._generation_config(params),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_StopOnEvent(cancel)]),
        )
        mode = adapter_mode(adapter_names if self.has_adapter else None)
        if mode == "mixed":
            kwargs["adapter_names"] = list(adapter_names or ())

        def work() -> None:
            try:
                # Wait for the model, but give up at once when cancelled while waiting.
                while not self.lock.acquire(timeout=0.05):
                    if cancel.is_set():
                        return
                try:
                    if not cancel.is_set():
                        if params.seed is not None and not params.greedy:
                            torch.manual_seed(params.seed)  # under the lock: ours alone
                        # The adapter is switched off (and on again) under the lock, so no
                        # other generation ever sees it off.
                        side = self.model.disable_adapter() if mode == "base" else nullcontext()
                        with side, torch.inference_mode():
                            self.model.generate(**kwargs)
                finally:
                    self.lock.release()
            except BaseException as err:  # handed to the consumer, which re-raises it
                errors.append(err)
            finally:
                streamer.end()

        thread = threading.Thread(target=work, name="medchat-generate", daemon=True)
        with self._active_lock:
            self._active.add(cancel)
            self._threads = [t for t in self._threads if t.is_alive()]  # only running ones
            self._threads.append(thread)
            self.generations_started += 1
        thread.start()
        try:
            while True:
                item = streamer.queue.get()
                if item is _END:
                    break
                # Skip ahead to the newest step when the consumer is slower than the model.
                while True:
                    try:
                        nxt = streamer.queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _END:
                        streamer.queue.put(_END)
                        break
                    item = nxt
                yield item
            if errors:
                raise errors[0]
        finally:
            cancel.set()
            thread.join(timeout=30)
            with self._active_lock:
                self._active.discard(cancel)
                if not thread.is_alive() and thread in self._threads:
                    self._threads.remove(thread)
