"""Attention for padding-free (packed) batches without flash-attention: `sdpa_varlen`.

With `packing: true` (or `padding_free: true`), trl puts the examples of a batch end to end in
ONE row with no padding, and passes where each example starts (`cu_seq_lens_q`) and position
ids that restart at every example. Flash-attention's variable-length kernels attend within each
example. PyTorch's SDPA and eager attention cannot: transformers gives them a block-diagonal
mask over the whole row, so a batch of 16 examples of 300 tokens costs the attention of one
4,800-token sequence, 16 times what the examples need; on the CPU recipe that made a packed
step slower than a padded one.

`sdpa_varlen` runs SDPA once per example of such a row (`is_causal`, no mask: the cost of
each example alone; a model's sliding window is kept inside each example) and is plain SDPA
for everything else (padded batches, generation), so one model serves both. The recipes name
it (`attn_implementation: sdpa_varlen`); `attention_for()` also picks it for packed training
when no attention implementation is named.
"""

from __future__ import annotations

VARLEN = "sdpa_varlen"


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

    starts = kwargs.get("cu_seq_lens_q")
    if starts is None:
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


def register() -> str:
    """Make `sdpa_varlen` a known attention implementation (idempotent); its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(VARLEN, sdpa_varlen_forward)
    # The same masks as sdpa: the fallback path needs them, the per-example path ignores them.
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, sdpa_mask)
    return VARLEN


def attention_for(requested: str | None, *, padding_free: bool) -> str | None:
    """The attention implementation to load the model with for training.

    `sdpa_varlen` when asked for, or when nothing is named and the batches are padding-free;
    anything named (sdpa, eager, flash_attention_2) is kept as it is.
    """
    if requested == VARLEN or (padding_free and not requested):
        return register()
    return requested or None
