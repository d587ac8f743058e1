"""The local backend: the model loaded in this process (transformers + PEFT), via the Engine.

    backend = LocalBackend.from_settings(Settings.from_env())

One generation at a time (a lock serialises the shared model); a base+tuned pair is one
two-row mixed-adapter batch. On a ZeroGPU Space each call borrows a GPU for its length
(`medchat.gpu`); elsewhere the calls run as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import Any

from medchat.engine import Engine
from medchat.generation import Generation, GenerationParams
from medchat.gpu import gpu, token_seconds
from medchat.prompts import Message, PromptStyle, adapter_style


def _tokens(params: GenerationParams | None) -> int:
    return params.max_new_tokens if params is not None else GenerationParams().max_new_tokens


class LocalBackend:
    name = "local"

    def __init__(self, engine: Engine):
        self.engine = engine

        # Closing one of these generators closes the engine's stream, which sets its cancel
        # event: generation ends within one decoding step (also under spaces.GPU).
        @gpu(lambda messages, params=None, tuned=True: token_seconds(_tokens(params)))
        def stream(messages, params=None, tuned=True) -> Iterator[str]:
            with closing(engine.stream(messages, params, tuned=tuned)) as texts:
                yield from texts

        @gpu(lambda messages, params=None: token_seconds(_tokens(params), per_token=0.15))
        def stream_pair(messages, params=None) -> Iterator[tuple[str, str]]:
            with closing(engine.stream_pair(messages, params)) as pairs:
                yield from pairs

        @gpu(
            lambda conversations, params=None, sides=("base", "tuned"): token_seconds(
                _tokens(params), per_token=0.3
            )
        )
        def generate_batch(conversations, params=None, sides=("base", "tuned")):
            return engine.generate_batch(conversations, params, sides=sides)

        self._stream, self._stream_pair, self._generate_batch = stream, stream_pair, generate_batch

    @classmethod
    def from_settings(cls, settings) -> LocalBackend:
        return cls(Engine.from_settings(settings))

    @property
    def profile(self):
        return self.engine.profile

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def has_adapter(self) -> bool:
        return self.engine.has_adapter

    @property
    def adapter(self) -> str | None:
        return self.engine.loaded.adapter

    def adapter_style(self) -> tuple[PromptStyle, bool]:
        """The loaded adapter's saved style: its folder's, or its hub repository's."""
        return adapter_style(self.adapter if self.has_adapter else None)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, **self.engine.info()}

    def messages(self, question: str, history=None, **prompt) -> list[Message]:
        return self.engine.messages(question, history, **prompt)

    def stream(
        self, messages: Sequence[Message], params: GenerationParams | None = None, *, tuned=True
    ) -> Iterator[str]:
        return self._stream(messages, params, tuned)

    def stream_pair(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> Iterator[tuple[str, str]]:
        return self._stream_pair(messages, params)

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: GenerationParams | None = None,
        *,
        sides: Sequence[str] = ("base", "tuned"),
    ) -> list[dict[str, Generation]]:
        return self._generate_batch(conversations, params, tuple(sides))

    def cancel(self) -> None:
        self.engine.cancel()

    def close(self) -> None:
        self.engine.stop()
