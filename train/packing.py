"""Attention for padding-free (packed) batches without flash-attention: `sdpa_varlen`.

With `packing: true` (or `padding_free: true`), trl puts the examples of a batch end to end in
ONE row with no padding, and passes where each example starts (`cu_seq_lens_q`) and position
ids that restart at every example. Flash-attention's variable-length kernels attend within each
example. PyTorch's SDPA and eager attention cannot: transformers gives them a block-diagonal
mask over the whole row, so a batch of 16 examples of 300 tokens costs the attention of one
4,800-token sequence, 16 times what the examples need; on the CPU recipe that made a packed
step slower than a padded one.

`sdpa_varlen` attends within each example of such a row, and is plain SDPA for everything
else (padded batches, generation), so one model serves both. For a packed row it uses, as
`varlen_kernel()` decides:

- on a CUDA GPU (compute capability 8.0 or more, bf16 or fp16) whose torch has
  `torch.nn.attention.varlen.varlen_attn`: that flash-attention kernel, ONE call per layer for
  the whole row, given the examples' boundaries;
- elsewhere (the CPU, older GPUs or torch, fp32): SDPA once per example (`is_causal`, no mask:
  the cost of each example alone).

A model's sliding window is kept inside each example either way. The recipes name it
(`attn_implementation: sdpa_varlen`); `attention_for()` also picks it for packed training
when no attention implementation is named.

Its mask function (`deferred_sdpa_mask`) hands a single row without cache a `DeferredMask`:
transformers' block-diagonal mask of the packed row (length x length, 64 MB at 8,192 tokens)
is then built only if the SDPA fallback needs it, never for a packed row.
"""

from __future__ import annotations

import inspect
from typing import Any

VARLEN = "sdpa_varlen"
KERNEL = "varlen_attn"  # flash-attention over the whole packed row (CUDA)
PER_EXAMPLE = "sdpa"  # SDPA once per example


def varlen_kernel(
    device_type: str,
    dtype: Any,
    *,
    capability: tuple[int, int] | None = None,
    head_dim: int = 128,
    dropout: float = 0.0,
    torch_module: Any = None,
) -> str:
    """Which attention runs a packed row: KERNEL (torch's variable-length flash attention) or
    PER_EXAMPLE (SDPA once per example).

    The kernel needs a CUDA device of compute capability 8.0 or more (`capability`), bf16 or
    fp16, a head size flash-attention supports, no attention dropout, and a torch that has
    `torch.nn.attention.varlen.varlen_attn` (2.9 and later). `torch_module`: the torch to ask
    (default: the installed one).
    """
    if torch_module is None:
        import torch as torch_module
    if device_type != "cuda" or capability is None or tuple(capability) < (8, 0):
        return PER_EXAMPLE
    if dtype not in (torch_module.bfloat16, torch_module.float16):
        return PER_EXAMPLE
    if dropout or head_dim % 8 or head_dim > 256:
        return PER_EXAMPLE
    return KERNEL if varlen_function(torch_module) is not None else PER_EXAMPLE


def varlen_function(torch_module: Any):
    """torch's `varlen_attn`, or None when this torch has none."""
    try:
        from importlib import import_module

        module = import_module(f"{torch_module.__name__}.nn.attention.varlen")
    except ImportError:
        return None
    return getattr(module, "varlen_attn", None)


def varlen_options(kernel, *, window: int | None, scale: float | None, groups: int) -> dict | None:
    """Keyword arguments asking `kernel` for causal attention (within `window` keys when
    given), the score `scale` and grouped key/value heads, in whichever form its signature
    takes (torch 2.9's has `is_causal`; later ones `window_size`, `scale`, `enable_gqa`);
    None when it cannot express the window. Two keys are for the caller, not the kernel:
    "scale_query" (scale the query instead) and "repeat_kv" (repeat key/value heads)."""
    params = inspect.signature(kernel).parameters
    out: dict = {}
    if "window_size" in params:
        # flash-attention's window: query i sees keys i - left .. i + right.
        out["window_size"] = (window - 1 if window is not None else -1, 0)
    elif "is_causal" in params and window is None:
        out["is_causal"] = True
    else:
        return None
    if scale is not None:
        if "scale" in params:
            out["scale"] = scale
        else:
            out["scale_query"] = scale
    if groups > 1:
        if "enable_gqa" in params:
            out["enable_gqa"] = True
        else:
            out["repeat_kv"] = groups
    return out


class DeferredMask:
    """transformers' SDPA mask for one row without cache, built only when asked for."""

    def __init__(self, **arguments):
        self.arguments = arguments
        self.built = False
        self._mask = None

    def build(self):
        if not self.built:
            from transformers.masking_utils import sdpa_mask

            self._mask, self.built = sdpa_mask(**self.arguments), True
        return self._mask


def deferred_sdpa_mask(**arguments):
    """sdpa_varlen's mask function: transformers' SDPA mask, deferred for a single row without
    cache or padding mask (the shape of a packed row), whose examples' boundaries make it
    unnecessary. transformers passes a mask function every argument by name."""
    q_offset, kv_offset = arguments.get("q_offset", 0), arguments.get("kv_offset", 0)
    single_row = (
        arguments["batch_size"] == 1
        and arguments.get("attention_mask") is None
        and isinstance(q_offset, int)
        and isinstance(kv_offset, int)
        and q_offset == kv_offset == 0
        and arguments["q_length"] == arguments["kv_length"]
    )
    if single_row:
        return DeferredMask(**arguments)
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(**arguments)


def sdpa_varlen_forward(module, query, key, value, attention_mask, **kwargs):
    """Attention over (batch, heads, length, head_dim) tensors; output (batch, length, heads,
    head_dim), as transformers' attention functions return it.

    Without examples' boundaries (`cu_seq_lens_q`) this is transformers' SDPA unchanged. With
    them, each example of the one packed row attends to itself alone. A packed row this cannot
    handle is an error, not a fallback: transformers' mask for it may not know the examples'
    boundaries (with a cache it does not), and a silent fallback would let them see each other.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, DeferredMask):
        mask = attention_mask
        attention_mask = None  # a packed row never needs it; the fallback builds it
    else:
        mask = None
    starts = kwargs.get("cu_seq_lens_q")
    if starts is None:
        if mask is not None:
            attention_mask = mask.build()
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    config = getattr(module, "config", None)
    unsupported = [
        reason
        for reason, present in (
            (f"a batch of {query.shape[0]} rows", query.shape[0] != 1),
            ("keys longer than queries (a cache or a prefix)", key.shape[2] != query.shape[2]),
            ("a position bias", kwargs.get("position_bias") is not None),
            ("a logit soft-cap", kwargs.get("softcap") is not None),
            ("attention sinks", kwargs.get("s_aux") is not None),
            ("non-causal attention", kwargs.get("is_causal", getattr(module, "is_causal", True))
             is False),
            ("chunked attention", getattr(config, "attention_chunk_size", None) is not None),
        )
        if present
    ]  # fmt: skip
    if unsupported:
        raise ValueError(
            f"sdpa_varlen cannot keep the packed examples apart with {', '.join(unsupported)}; "
            "use attn_implementation sdpa or flash_attention_2, or train with packing false."
        )
    groups = getattr(module, "num_key_value_groups", 1)
    dropout = kwargs.get("dropout", 0.0)
    scaling = kwargs.get("scaling")
    # Every layer gets the same boundaries tensor; read it once per forward (on a GPU, .tolist()
    # waits for the device) and keep the list on the tensor, with the tensor's version so an
    # in-place change is never answered from the memo.
    memo = getattr(starts, "_medchat_bounds", None)
    if memo is not None and memo[0] == starts._version:
        bounds = memo[1]
    else:
        bounds = starts.tolist()
        starts._medchat_bounds = (starts._version, bounds)
    if bounds[0] != 0 or bounds[-1] != query.shape[2]:
        raise ValueError(
            f"cu_seq_lens_q runs from {bounds[0]} to {bounds[-1]}, but the packed row has "
            f"{query.shape[2]} tokens"
        )
    window = kwargs.get("sliding_window")
    capability = None
    if query.device.type == "cuda":
        capability = torch.cuda.get_device_capability(query.device)
    path = varlen_kernel(
        query.device.type,
        query.dtype,
        capability=capability,
        head_dim=query.shape[-1],
        dropout=dropout,
    )
    if path == KERNEL:
        longest = kwargs.get("max_length_q") or max(
            end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)
        )
        out = packed_kernel(
            varlen_function(torch), query, key, value, starts, int(longest), window, scaling, groups
        )
        if out is not None:
            return out, None
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        n = end - start
        if n <= 0:
            continue
        mask, causal = None, True
        if window is not None and n > window:
            # Sliding-window attention (Mistral v0.1-style configs): key j is seen from query
            # i when i - window < j <= i, as transformers' own masks have it.
            i = torch.arange(n, device=query.device)
            mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
            causal = False
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                attn_mask=mask,
                dropout_p=dropout,
                scale=scaling,
                is_causal=causal,
                enable_gqa=groups > 1,
            )
        )
    out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return out.transpose(1, 2).contiguous(), None


def packed_kernel(kernel, query, key, value, starts, longest, window, scaling, groups):
    """The packed row (1, heads, length, head_dim) through `kernel` (torch's varlen_attn), one
    call for all its examples; (1, length, heads, head_dim), or None when the kernel cannot
    express `window`."""
    import torch

    options = varlen_options(kernel, window=window, scale=scaling, groups=groups)
    if options is None:
        return None
    # (1, heads, length, head_dim) -> (length, heads, head_dim), the kernel's layout.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    if "scale_query" in options:
        q = q * (options.pop("scale_query") * q.shape[-1] ** 0.5)
    if "repeat_kv" in options:
        n = options.pop("repeat_kv")
        k, v = k.repeat_interleave(n, dim=1), v.repeat_interleave(n, dim=1)
    starts = starts.to(device=q.device, dtype=torch.int32)
    out = kernel(q, k, v, starts, starts, longest, longest, **options)
    return out.unsqueeze(0)  # (1, length, heads, head_dim), as transformers expects


def register() -> str:
    """Make `sdpa_varlen` a known attention implementation (idempotent); its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(VARLEN, sdpa_varlen_forward)
    # sdpa's masks, a packed row's deferred: the fallback needs them, the packed path does not.
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, deferred_sdpa_mask)
    return VARLEN


def attention_for(requested: str | None, *, padding_free: bool) -> str | None:
    """The attention implementation to load the model with for training.

    `sdpa_varlen` when asked for, or when nothing is named and the batches are padding-free;
    anything named (sdpa, eager, flash_attention_2) is kept as it is.
    """
    if requested == VARLEN or (padding_free and not requested):
        return register()
    return requested or None
