"""ZeroGPU support: borrow a GPU for the length of one generation on a ZeroGPU Space.

    @gpu(lambda message, history, temperature, top_p, max_new_tokens, use_tuned:
         token_seconds(max_new_tokens))
    def chat(message, history, temperature, top_p, max_new_tokens, use_tuned): ...

On a ZeroGPU Space (the `spaces` package imports and SPACES_ZERO_GPU is set) the function is
wrapped with `spaces.GPU(duration=...)`, which attaches a GPU for the call and lets it go
afterwards; the duration is asked for per call, from the call's own arguments. Everywhere else
`gpu(...)` returns the function unchanged, so a CPU machine or a dedicated GPU never imports
`spaces` (and `spaces.GPU` itself returns the function as is off ZeroGPU). Import this module
before torch: `spaces` must patch CUDA set-up first.

Model placement follows `spaces`: at start-up, outside any decorated function, the model is
loaded on the CPU and moved with `.to("cuda")` (medchat.loading gives no device_map there), and
only the decorated calls run on the GPU. On ZeroGPU the "auto" profile is `mistral-7b-bf16`
(medchat.profiles), and the embedder that scores answers stays on the CPU (medchat.metrics):
scoring runs outside the decorated calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

BASE_SECONDS = 20.0  # model hand-over and prompt processing
SECONDS_PER_TOKEN = 0.1  # generous for a 7B model in bf16 on a shared GPU slice
MAX_SECONDS = 120  # ZeroGPU's usual ceiling per call; longer requests queue for longer


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space: SPACES_ZERO_GPU is set to true and `spaces` imports."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").strip().lower()
    if flag not in ("1", "t", "true"):
        return False
    try:
        import spaces  # noqa: F401  (on ZeroGPU it must be imported early anyway)
    except ImportError:
        return False
    return True


def prepare() -> bool:
    """On ZeroGPU, import `spaces` now (it must set CUDA up before torch is imported)."""
    return on_zero_gpu()


def token_seconds(max_new_tokens, *, per_token: float = SECONDS_PER_TOKEN) -> int:
    """GPU seconds to ask for: a fixed start-up share plus a share per token, capped."""
    try:
        tokens = max(0, int(max_new_tokens))
    except (TypeError, ValueError):
        tokens = 0
    return int(min(MAX_SECONDS, BASE_SECONDS + per_token * tokens))


def gpu(duration_fn: Callable[..., int]) -> Callable[[F], F]:
    """Decorator: `spaces.GPU(duration=duration_fn)` on ZeroGPU, the function itself elsewhere.

    `duration_fn` takes the decorated function's arguments and returns seconds.
    """

    def decorate(fn: F) -> F:
        if not on_zero_gpu():
            return fn
        import spaces

        return spaces.GPU(duration=duration_fn)(fn)

    return decorate
