"""Backends: where answers are generated. One interface, two implementations.

    backend = make_backend(settings)          # settings.backend: "local" or "openai"
    msgs = backend.messages("What is glaucoma?", max_new_tokens=256)  # fitted_messages
    for text in backend.stream(msgs, params): ...            # the answer so far
    for base, tuned in backend.stream_pair(msgs, params): ...
    answers = backend.generate_batch([msgs, ...], params)    # [{"base": Generation, ...}]
    backend.cancel(); backend.info()

- `local` (`LocalBackend`): the model in this process (transformers + PEFT). The embedded
  default, ZeroGPU Spaces and one-user set-ups; one generation at a time.
- `openai` (`OpenAIBackend`): any OpenAI-compatible server, vLLM first. Base and tuned are two
  model names on one server (vLLM multi-LoRA); concurrent requests are batched by the server.
  `python -m medchat serve` starts vLLM with the right flags.

What a backend offers is `Backend`, the protocol medchat.pipeline calls and nothing beyond
it; both backends satisfy it (tests check every member on both classes). The UI and CLI never
call a backend directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from medchat.generation import Generation, GenerationParams
    from medchat.profiles import Profile
    from medchat.prompts import Message, PromptStyle
    from medchat.settings import Settings

BACKENDS = ("local", "openai")


@runtime_checkable
class Backend(Protocol):
    """Where answers are generated: exactly what medchat.pipeline calls on a backend."""

    name: str  # "local" or "openai" (info() reports it)
    profile: Profile  # the base model's profile: its tokenizer renders every prompt
    tokenizer: Any  # the profile's tokenizer (a cut-off answer is counted in its tokens)
    adapter: str | None  # the served adapter's path or id; None without one

    @property
    def has_adapter(self) -> bool:
        """A fine-tuned side exists: `tuned=True` and pairs use it."""
        ...

    def adapter_style(self) -> tuple[PromptStyle, bool]:
        """(the served adapter's prompt style, whether it is known to be the one the adapter
        was trained with); (PromptStyle(), False) without an adapter."""
        ...

    def messages(self, question: str, history: Any = None, **prompt: Any) -> list[Message]:
        """Chat messages for `question`, the oldest history dropped until they fit: only
        medchat.generation.fitted_messages with this backend's profile and tokenizer
        (`prompt`: its max_new_tokens, system, passages and sources_instruction)."""
        ...

    def stream(
        self, messages: Sequence[Message], params: GenerationParams | None = None, *, tuned=True
    ) -> Iterator[str]:
        """The raw answer as it grows; closing the generator stops the generation."""
        ...

    def stream_pair(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> Iterator[tuple[str, str]]:
        """(base, tuned) raw answers as both grow; closing stops both."""
        ...

    def generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        params: GenerationParams | None = None,
        *,
        sides: Sequence[str] = ("base", "tuned"),
    ) -> list[dict[str, Generation]]:
        """Finished answers, one {side: Generation} per conversation."""
        ...

    def cancel(self) -> None:
        """Stop every generation running now."""
        ...

    def close(self) -> None:
        """Stop every generation and wait for it to end; the backend is not used again."""
        ...

    def info(self) -> dict[str, Any]:
        """What `medchat info` and the app's About show: backend, profile, adapter, device."""
        ...


def make_backend(settings: Settings):
    """The backend the settings name, loaded or connected (a MedchatError when it cannot be)."""
    if settings.backend == "openai":
        from medchat.backends.openai import OpenAIBackend

        return OpenAIBackend.from_settings(settings)
    from medchat.backends.local import LocalBackend

    return LocalBackend.from_settings(settings)


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """--backend and the server flags (shared by this CLI, app.py and eval)."""
    group = parser.add_argument_group("where answers come from")
    sup = argparse.SUPPRESS
    group.add_argument(
        "--backend",
        choices=("local", "openai"),
        default=sup,
        help="local: load the model in this process (default; one request at a time); openai: "
        "an OpenAI-compatible server such as vLLM (`python -m medchat serve`), for several users",
    )
    group.add_argument(
        "--server-url",
        metavar="URL",
        default=sup,
        help="the server's API root, e.g. http://127.0.0.1:8000/v1 (MEDCHAT_SERVER_URL)",
    )
    group.add_argument(
        "--server-base-model",
        metavar="NAME",
        default=sup,
        help="the base model's name on the server (default: the one base model it lists)",
    )
    group.add_argument(
        "--server-tuned-model",
        metavar="NAME",
        default=sup,
        help="the adapter's name on the server (default: the one LoRA module on that base; "
        "'none' for the base alone). The API key comes from MEDCHAT_SERVER_API_KEY only.",
    )

    sources = parser.add_argument_group("NIH sources (retrieval)")
    sources.add_argument(
        "--retrieval",
        choices=("auto", "on", "off"),
        default=sup,
        help="ground answers in retrieved MedQuAD passages and show their NIH pages: auto (on "
        "when the index can be built; the default), on, or off (MEDCHAT_RETRIEVAL)",
    )
    sources.add_argument(
        "--retrieval-method",
        choices=("bm25", "dense", "hybrid"),
        default=sup,
        help="hybrid (default): bm25 and MiniLM vectors fused by rank, relevance by cosine; "
        "bm25: lexical only; dense: vectors only (vectors: shipped, or encoded once and cached)",
    )
    sources.add_argument(
        "--retrieval-k",
        type=int,
        metavar="K",
        default=sup,
        help="passages put into the prompt (1-8, default 3); an adapter trained with sources "
        "uses its own",
    )


BACKEND_FLAGS = (
    "backend",
    "server_url",
    "server_base_model",
    "server_tuned_model",
    "retrieval",
    "retrieval_method",
    "retrieval_k",
)


def backend_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    """The backend flags given on the command line, as Settings keyword overrides."""
    return {name: getattr(args, name, None) for name in BACKEND_FLAGS}
