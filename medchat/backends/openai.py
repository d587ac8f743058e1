"""The openai backend: answers from an OpenAI-compatible server (vLLM multi-LoRA first).

    backend = OpenAIBackend.from_settings(Settings.from_env(backend="openai",
                                          server_url="http://127.0.0.1:8000/v1"))

Base and tuned are two model names on one server: vLLM lists a LoRA module in /v1/models with
the base model as its `parent`. Unless named (MEDCHAT_SERVER_BASE_MODEL,
MEDCHAT_SERVER_TUNED_MODEL), the base is the one root model the server lists and the tuned
model the one LoRA module under it. The adapter's prompt style comes from the server too: the
LoRA module's `root` is the folder it was loaded from, and the style saved there is read when
this machine can read it (`adapter_style`); the local settings' adapter plays no part.

The server sees exactly the prompt training used: medchat renders the prompt itself with the
profile's tokenizer and one prompt builder (medchat.prompts), and sends the text to
/v1/completions with `add_special_tokens: false`, so the server tokenises it to `render_ids`
(tests check this with the server's /tokenize). A pair is two concurrent streaming requests
merged into (base, tuned) updates; the server batches them. A batch for evaluation is
concurrent requests, at most `max_in_flight` at a time. Closing a stream closes its HTTP
response, and vLLM aborts a request whose client went away.

The API key (MEDCHAT_SERVER_API_KEY) goes in the Authorization header only; it is never
logged, shown in info() or put in an error message. The HTTP side (the connection pool, the
retry of a stale connection, server-sent events, transport errors, the model list) is
medchat/backends/connection.py; this module asks the server and reads what it answers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from medchat.backends.connection import Connection, list_models, normalize_url
from medchat.errors import MedchatError
from medchat.generation import Generation, GenerationParams, check_sides, fitted_messages
from medchat.prompts import (
    LEGACY_STYLE,
    Message,
    PromptStyle,
    folder_style,
    is_hub_id,
    read_style,
    render_text,
)

log = logging.getLogger(__name__)

_END = object()


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        url: str,
        *,
        profile,
        tokenizer,
        base_model: str,
        tuned_model: str | None,
        adapter: str | None = None,
        api_key: str = "",
        max_in_flight: int = 16,
    ):
        self.connection = Connection(url, api_key=api_key, max_in_flight=max_in_flight)
        self.url = self.connection.url
        self.profile = profile
        self.tokenizer = tokenizer
        self.base_model = base_model
        self.tuned_model = tuned_model
        self.adapter = adapter  # the tuned model's `root` in /v1/models: the served folder
        self.max_in_flight = max_in_flight

    # -- connecting ---------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings) -> OpenAIBackend:
        """Connect: list the server's models, pick base and tuned, load the tokenizer.

        A wrong URL, a server that is down or a wrong model name is one MedchatError sentence.
        """
        url = normalize_url(settings.server_url)
        models = list_models(url, settings.server_api_key)
        base, tuned = pick_models(
            models, settings.server_base_model, settings.server_tuned_model, url
        )
        profile = _profile_for(settings.profile, models[base].get("root") or base)
        from medchat.loading import base_source, load_tokenizer

        tokenizer = load_tokenizer(
            profile, base_source(profile, settings.cache_dir), token=settings.hf_token
        )
        adapter = (models[tuned].get("root") or tuned) if tuned else None
        return cls(
            url,
            profile=profile,
            tokenizer=tokenizer,
            base_model=base,
            tuned_model=tuned,
            adapter=adapter,
            api_key=settings.server_api_key,
            max_in_flight=settings.server_max_in_flight,
        )

    # -- what the UI shows --------------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        return self.tuned_model is not None

    def adapter_style(self) -> tuple[PromptStyle, bool]:
        """The prompt style of the adapter the server serves, learnt from the server.

        vLLM lists a LoRA module with the path it was loaded from as its `root` (`medchat
        serve` gives the adapter folder's absolute path). When this machine can read that
        folder (the server runs here, or shares the disk), the style saved in it
        (medchat_prompt.json) is the adapter's; a hub id's style is read from its repository.
        Otherwise nothing says how the adapter was trained: it is served LEGACY_STYLE, the
        prompt of adapters saved before styles were, and a warning says so.
        """
        if not self.has_adapter:
            return PromptStyle(), False
        found = folder_style(self.adapter)
        if found is not None:
            return found
        if is_hub_id(self.adapter):
            return read_style(str(self.adapter)), True
        log.warning(
            "The server serves adapter %r from %r, a folder this machine cannot read, so its "
            "prompt style is unknown; it is served the legacy prompt. Run the app where the "
            "adapter folder is readable at that path for the prompt it was trained with.",
            self.tuned_model,
            self.adapter,
        )
        return LEGACY_STYLE, True

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "profile": self.profile.name,
            "base_model": self.profile.model_id,
            "base_source": f"{self.base_model} on {self.url}",
            "adapter": self.adapter or "none",
            "device": f"server {self.url}",
            "dtype": "set by the server",
            "server_url": self.url,
            "served_models": {"base": self.base_model, "tuned": self.tuned_model},
            "load_seconds": 0.0,
        }

    # -- prompts ------------------------------------------------------------------------------
    def messages(self, question: str, history=None, **prompt) -> list[Message]:
        """medchat.generation.fitted_messages with the profile's tokenizer."""
        return fitted_messages(self.profile, self.tokenizer, question, history, **prompt)

    def prompt(self, messages: Sequence[Message]) -> str:
        """The prompt text, generation prompt included: what training formatted."""
        return render_text(self.tokenizer, messages)

    def request_body(
        self, messages: Sequence[Message], params: GenerationParams | None, *, tuned: bool
    ) -> dict[str, Any]:
        params = params or GenerationParams()
        model = self.tuned_model if tuned and self.has_adapter else self.base_model
        body: dict[str, Any] = {
            "model": model,
            "prompt": self.prompt(messages),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            # vLLM's extras: penalty as transformers applies it, and no second BOS.
            "repetition_penalty": params.repetition_penalty,
            "add_special_tokens": False,
            "skip_special_tokens": True,
        }
        if not params.greedy:
            body["top_p"] = params.top_p
            if params.seed is not None:
                body["seed"] = params.seed  # vLLM samples this request from its own seed
        return body

    # -- generation ---------------------------------------------------------------------------
    def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
        *,
        tuned=True,
        responses: list | None = None,
    ) -> Iterator[str]:
        """Yield the answer as it grows; closing the generator closes the request.

        `responses`, when given, receives the open HTTP response (so another thread can close
        it).
        """
        body = self.request_body(messages, params, tuned=tuned) | {"stream": True}
        text, last = "", None
        for chunk in self.connection.stream_chunks(body, responses):
            choices = chunk.get("choices") or []
            if not choices:
                continue
            text += choices[0].get("text") or ""
            shown = text.rstrip("\ufffd").strip()
            if shown != last:
                last = shown
                yield shown

    def stream_pair(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> Iterator[tuple[str, str]]:
        """Yield (base, tuned) as both grow, from two concurrent streaming requests."""
        if not self.has_adapter:
            raise MedchatError("Compare needs a fine-tuned adapter; the server serves none.")
        updates: queue.Queue = queue.Queue()
        stop = threading.Event()
        responses: list[httpx.Response] = []
        streams = [
            self.stream(messages, params, tuned=False, responses=responses),
            self.stream(messages, params, responses=responses),
        ]

        def pump(side: int, texts: Iterator[str]) -> None:
            try:
                for text in texts:
                    if stop.is_set():
                        break
                    updates.put((side, text))
            except BaseException as err:  # handed to the consumer, which re-raises it
                if not stop.is_set():
                    updates.put((side, err))
            finally:
                texts.close()
                updates.put((side, _END))

        threads = [
            threading.Thread(target=pump, args=(i, s), daemon=True, name="medchat-pair")
            for i, s in enumerate(streams)
        ]
        for t in threads:
            t.start()
        texts, running, last = ["", ""], 2, None
        try:
            while running:
                side, item = updates.get()
                if item is _END:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                texts[side] = item
                # Take every update already waiting before yielding once.
                while True:
                    try:
                        side, item = updates.get_nowait()
                    except queue.Empty:
                        break
                    if item is _END:
                        running -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        texts[side] = item
                pair = (texts[0], texts[1])
                if pair != last:
                    last = pair
                    yield pair
        finally:
            # Each pump sees `stop` at its next chunk and closes its own request there.
            # A pump waiting on a silent server is woken by closing its response.
            stop.set()
            for t in threads:
                t.join(timeout=0.5)
            if any(t.is_alive() for t in threads):
                self.connection.close_responses(list(responses))
            for t in threads:
                t.join(timeout=30)

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: GenerationParams | None = None,
        *,
        sides: Sequence[str] = ("base", "tuned"),
    ) -> list[dict[str, Generation]]:
        """Every (conversation, side) as its own request, at most max_in_flight at once."""
        params = params or GenerationParams()
        check_sides(sides, self.has_adapter)
        jobs = [(i, side) for i in range(len(conversations)) for side in sides]
        out: list[dict[str, Generation]] = [{} for _ in conversations]

        def one(job: tuple[int, str]) -> Generation:
            i, side = job
            body = self.request_body(conversations[i], params, tuned=side == "tuned")
            data = self.connection.post("/completions", body)
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            n_tokens = int(usage.get("completion_tokens") or 0)
            hit = choice.get("finish_reason") == "length"
            return Generation((choice.get("text") or "").strip(), n_tokens, hit)

        with ThreadPoolExecutor(max_workers=max(1, self.max_in_flight)) as pool:
            for (i, side), gen in zip(jobs, pool.map(one, jobs), strict=True):
                out[i][side] = gen
        return [{side: item[side] for side in sides} for item in out]

    def cancel(self) -> None:
        """Close every open stream: the server aborts those requests."""
        self.connection.cancel()

    def close(self) -> None:
        self.connection.close()

    # -- server utilities (tests and `serve` use these too) -----------------------------------
    def tokenize(self, text: str, *, model: str | None = None) -> list[int]:
        """The server's token ids for `text`, without added special tokens (vLLM /tokenize)."""
        body = {"model": model or self.base_model, "prompt": text, "add_special_tokens": False}
        return list(self.connection.post("/tokenize", body, root=True)["tokens"])

    def metrics(self) -> str:
        """The server's Prometheus metrics text (vLLM /metrics)."""
        return self.connection.get("/metrics", root=True).text


def pick_models(models: dict[str, dict], base: str, tuned: str, url: str) -> tuple[str, str | None]:
    """(base model name, tuned model name or None) from the server's list and the settings."""
    names = ", ".join(sorted(models)) or "none"
    roots = [m for m, e in models.items() if not e.get("parent")]
    if base:
        if base not in models:
            raise MedchatError(
                f"The server at {url} has no model named {base!r}; it serves: {names}. "
                "Fix --server-base-model."
            )
    elif len(roots) == 1:
        base = roots[0]
    else:
        raise MedchatError(
            f"The server at {url} serves several base models ({', '.join(roots)}); name one "
            "with --server-base-model."
        )
    if tuned.lower() == "none":
        return base, None
    if tuned:
        if tuned not in models:
            raise MedchatError(
                f"The server at {url} has no model named {tuned!r}; it serves: {names}. "
                "Fix --server-tuned-model, or start the server with the adapter."
            )
        return base, tuned
    children = [m for m, e in models.items() if e.get("parent") == base]
    if len(children) > 1:
        raise MedchatError(
            f"The server at {url} serves several adapters on {base} ({', '.join(children)}); "
            "name one with --server-tuned-model."
        )
    return base, (children[0] if children else None)


def _profile_for(requested: str, served: str):
    """The profile whose tokenizer renders prompts: the one asked for, or the one served."""
    from medchat.profiles import PROFILES, resolve_profile

    if requested and requested != "auto":
        return resolve_profile(requested)
    for profile in PROFILES.values():
        if profile.accepts_base(served):
            return profile
    raise MedchatError(
        f"The server's base model {served!r} matches no profile; pass --profile to say "
        "which tokenizer and chat template it uses."
    )
