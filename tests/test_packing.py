"""train/packing.py: `sdpa_varlen` attends within each example of a padding-free row.

A tiny random Llama with grouped-query attention (4 query heads, 2 key/value heads) scores
packed rows the way trl's collator builds them, with `use_cache=False` as trl's loss calls the
model; every figure is compared with the same examples run one at a time, or padded, and the
per-example path is shown to be the one that ran.
"""

from __future__ import annotations

import pytest
import torch

from medchat import testing
from train.packing import (
    KERNEL,
    PER_EXAMPLE,
    VARLEN,
    attention_for,
    packed_kernel,
    register,
    sdpa_varlen_forward,
    varlen_function,
    varlen_kernel,
)

LENGTHS = (7, 12, 5, 9)
LAYERS = testing.tiny_shape()["num_hidden_layers"]
VOCAB = 97


def tiny_config(family: str = "Llama", **extra):
    return testing.tiny_config(
        family,
        width=32,
        positions=128,
        vocab_size=VOCAB,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,  # large weights: attention is peaked, so leaks show clearly
        **extra,
    )


@pytest.fixture(scope="module")
def models():
    """(sdpa model, sdpa_varlen model) with the same random weights, in eval mode."""
    from transformers import AutoModelForCausalLM

    register()
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(tiny_config(), attn_implementation="sdpa")
    varlen = AutoModelForCausalLM.from_config(tiny_config(), attn_implementation=VARLEN)
    varlen.load_state_dict(plain.state_dict())
    return plain.eval(), varlen.eval()


def examples(seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, VOCAB, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return out


def packed_batch(rows: list[dict]) -> dict:
    """trl's padding-free batch of two packs holding `rows`, as SFTTrainer collates it."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    half = len(rows) // 2
    packs = []
    for part in (rows[:half], rows[half:]):
        packs.append(
            {
                "input_ids": [t for r in part for t in r["input_ids"]],
                "labels": [t for r in part for t in r["labels"]],
                "seq_lengths": [len(r["input_ids"]) for r in part],
            }
        )
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(packs)


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}


def assert_each_example_as_alone(model, rows, packed_logits):
    start = 0
    for row in rows:
        n = len(row["input_ids"])
        alone = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0]
        torch.testing.assert_close(packed_logits[start : start + n], alone, atol=1e-5, rtol=1e-5)
        start += n


def test_a_packed_row_gives_every_example_the_logits_it_gets_alone(models, sdpa_calls):
    _, varlen = models
    rows = examples()
    batch = packed_batch(rows)
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():
        packed = varlen(**model_inputs(batch)).logits[0]
        # The per-example path ran: one SDPA call per example and layer, no fallback.
        assert sdpa_calls == {"kernel": len(rows) * LAYERS, "fallback": 0}
        assert_each_example_as_alone(varlen, rows, packed)


def test_without_boundaries_the_examples_of_a_row_would_see_each_other(models):
    """The comparison above can fail: the same row and positions with a full attention mask
    (nothing tells the model where examples end) changes every example after the first."""
    _, varlen = models
    rows = examples()
    batch = packed_batch(rows)
    with torch.no_grad():
        packed = varlen(**model_inputs(batch)).logits[0]
        leaky = varlen(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=torch.ones_like(batch["input_ids"]),
            use_cache=False,
        ).logits[0]
    first = len(rows[0]["input_ids"])
    torch.testing.assert_close(packed[:first], leaky[:first], atol=1e-5, rtol=1e-5)
    leak = (packed[first:] - leaky[first:]).abs().max()
    assert leak > 1e-2, f"a leak would change the logits by far more than 1e-5 (got {leak})"


def test_packed_loss_and_gradients_equal_padded_sdpa(models):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    plain, varlen = models
    rows = examples(seed=1)
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    packed = packed_batch(rows)
    grads, losses = [], []
    for model, batch in ((plain, padded), (varlen, packed)):
        model.train()
        model.zero_grad()
        out = model(**batch, use_cache=False)
        out.loss.backward()
        losses.append(float(out.loss.detach()))
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        model.eval()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_a_sliding_window_holds_inside_each_example(sdpa_calls):
    """A Mistral-style sliding window of 8 tokens: examples of 5 and 7 tokens fit in it, those
    of 9 and 12 must get the windowed attention they get alone, not full causal attention."""
    from transformers import AutoModelForCausalLM

    register()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("Mistral", sliding_window=8), attn_implementation=VARLEN
    ).eval()
    rows = examples()
    with torch.no_grad():
        packed = model(**model_inputs(packed_batch(rows))).logits[0]
        assert sdpa_calls["fallback"] == 0
        assert_each_example_as_alone(model, rows, packed)


def test_generation_is_plain_sdpa(models, sdpa_calls):
    plain, varlen = models
    prompts = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    a = plain.generate(input_ids=prompts, attention_mask=mask, **kwargs)
    fallbacks_before = sdpa_calls["fallback"]
    b = varlen.generate(input_ids=prompts, attention_mask=mask, **kwargs)
    assert torch.equal(a, b)
    assert sdpa_calls["fallback"] - fallbacks_before == 8 * LAYERS  # every step, every layer


def test_boundaries_that_do_not_cover_the_row_are_an_error():
    q = torch.zeros(1, 2, 10, 4)
    with pytest.raises(ValueError, match="runs from 0 to 8"):
        sdpa_varlen_forward(torch.nn.Module(), q, q, q, None, cu_seq_lens_q=torch.tensor([0, 5, 8]))


@pytest.mark.parametrize(
    ("shape", "extra", "named"),
    [
        ((2, 2, 10, 4), {}, "a batch of 2 rows"),
        ((1, 2, 10, 4), {"softcap": 30.0}, "soft-cap"),
        ((1, 2, 10, 4), {"is_causal": False}, "non-causal"),
    ],
)
def test_a_packed_row_it_cannot_keep_apart_is_an_error_not_a_fallback(shape, extra, named):
    q = torch.zeros(*shape)
    with pytest.raises(ValueError, match=named):
        sdpa_varlen_forward(
            torch.nn.Module(), q, q, q, None, cu_seq_lens_q=torch.tensor([0, 5, 10]), **extra
        )


def test_the_boundaries_are_read_once_per_forward_and_never_stale():
    q = torch.randn(1, 2, 10, 4)
    starts = torch.tensor([0, 5, 10])
    module = torch.nn.Module()
    sdpa_varlen_forward(module, q, q, q, None, cu_seq_lens_q=starts)
    assert starts._medchat_bounds[1] == [0, 5, 10]
    starts[1] = 3  # changed in place: the memo must not answer
    out, _ = sdpa_varlen_forward(module, q, q, q, None, cu_seq_lens_q=starts)
    alone, _ = sdpa_varlen_forward(module, q[:, :, :3], q[:, :, :3], q[:, :, :3], None)
    torch.testing.assert_close(out[:, :3], alone)


@pytest.mark.parametrize(
    ("requested", "padding_free", "expected"),
    [
        (None, True, VARLEN),
        ("", True, VARLEN),
        (VARLEN, False, VARLEN),
        (VARLEN, True, VARLEN),
        (None, False, None),
        ("sdpa", True, "sdpa"),
        ("eager", True, "eager"),
        ("flash_attention_2", True, "flash_attention_2"),
    ],
)
def test_attention_for(requested, padding_free, expected):
    assert attention_for(requested, padding_free=padding_free) == expected


# -- which attention runs a packed row ---------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "dtype", "capability", "head_dim", "dropout", "path"),
    [
        ("cuda", torch.bfloat16, (9, 0), 128, 0.0, KERNEL),  # an H100 or H200
        ("cuda", torch.float16, (8, 0), 64, 0.0, KERNEL),  # an A100
        ("cpu", torch.bfloat16, None, 128, 0.0, PER_EXAMPLE),
        ("cpu", torch.float32, None, 128, 0.0, PER_EXAMPLE),
        ("cuda", torch.bfloat16, (7, 5), 128, 0.0, PER_EXAMPLE),  # a T4: no flash attention
        ("cuda", torch.float32, (9, 0), 128, 0.0, PER_EXAMPLE),
        ("cuda", torch.bfloat16, (9, 0), 512, 0.0, PER_EXAMPLE),
        ("cuda", torch.bfloat16, (9, 0), 100, 0.0, PER_EXAMPLE),
        ("cuda", torch.bfloat16, (9, 0), 128, 0.1, PER_EXAMPLE),  # the kernel has no dropout
        ("mps", torch.bfloat16, None, 128, 0.0, PER_EXAMPLE),
    ],
)
def test_varlen_kernel(device, dtype, capability, head_dim, dropout, path):
    assert varlen_function(torch) is not None  # this torch has the kernel (CUDA only)
    kernel = varlen_kernel(
        device, dtype, capability=capability, head_dim=head_dim, dropout=dropout, torch_module=torch
    )
    assert kernel == path


def test_a_torch_without_varlen_attn_gets_sdpa_per_example():
    import types

    old = types.ModuleType("old_torch")  # a torch before 2.9: no torch.nn.attention.varlen
    old.bfloat16, old.float16 = torch.bfloat16, torch.float16
    assert varlen_function(old) is None
    assert varlen_kernel("cuda", torch.bfloat16, capability=(9, 0), torch_module=old) == PER_EXAMPLE


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                     enable_gqa=False):  # fmt: skip
    """What torch's CUDA-only varlen_attn computes, on the CPU: (T, H, D) tensors, each
    sequence alone; query i sees keys i - left .. i + right (-1: no limit)."""
    assert cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k)
    bounds = cu_q.tolist()
    assert max(b - a for a, b in zip(bounds, bounds[1:], strict=False)) == max_q == max_k
    if k.shape[1] != q.shape[1]:
        assert enable_gqa, "grouped heads need enable_gqa"
    left, right = window_size
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        i = torch.arange(b - a)
        see = torch.ones(b - a, b - a, dtype=torch.bool)
        if left >= 0:
            see &= i[None, :] >= i[:, None] - left
        if right >= 0:
            see &= i[None, :] <= i[:, None] + right
        out.append(
            torch.nn.functional.scaled_dot_product_attention(
                *(t[a:b].transpose(0, 1) for t in (q, k, v)),
                attn_mask=see,
                scale=scale,
                enable_gqa=enable_gqa,
            ).transpose(0, 1)
        )
    return torch.cat(out)


def torch_2_9_varlen(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.9's varlen_attn: causal by flag, no scale, no sliding window, no enable_gqa."""
    if k.shape[1] != q.shape[1]:
        raise RuntimeError("torch 2.9's call is given as many key/value heads as query heads")
    return reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k,
                            window_size=(-1, 0) if is_causal else (-1, -1))  # fmt: skip


@pytest.mark.parametrize("kernel", [reference_varlen, torch_2_9_varlen])
@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_the_kernel_call_equals_sdpa_per_example(kernel, window, scaling):
    """The layout, boundaries, window, scale and grouped heads handed to the kernel give what
    SDPA per example gives (torch 2.9's signature cannot express a window: no kernel then)."""
    gen = torch.Generator().manual_seed(0)
    n = sum(LENGTHS)
    q = torch.randn(1, 4, n, 8, generator=gen)
    k, v = torch.randn(2, 1, 2, n, 8, generator=gen)
    starts = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    kwargs = {"scaling": scaling, "sliding_window": window}
    expected, _ = sdpa_varlen_forward(module, q, k, v, None, cu_seq_lens_q=starts, **kwargs)
    out = packed_kernel(kernel, q, k, v, starts, max(LENGTHS), window, scaling, 2)
    if kernel is torch_2_9_varlen and window is not None:
        assert out is None
        return
    assert out.shape == expected.shape == (1, n, 4, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture
def masks_built(monkeypatch):
    """Calls of transformers' SDPA mask builder while the test runs."""
    import transformers.masking_utils as masking

    calls = []
    real = masking.sdpa_mask

    def counted(*args, **kwargs):
        calls.append(kwargs.get("q_length"))
        return real(*args, **kwargs)

    monkeypatch.setattr(masking, "sdpa_mask", counted)
    return calls


def test_a_packed_row_builds_no_mask(models, masks_built):
    plain, varlen = models
    rows = examples()
    with torch.no_grad():
        varlen(**model_inputs(packed_batch(rows)))
        assert masks_built == []  # the row's 33 x 33 block-diagonal mask was never built
        prompts = torch.tensor([[0, 5, 6], [8, 9, 10]])
        padded = varlen(input_ids=prompts, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
        assert masks_built == [3]  # a padded batch still gets sdpa's mask
        expected = plain(input_ids=prompts, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
        torch.testing.assert_close(padded.logits, expected.logits)


def test_a_packed_row_without_boundaries_gets_the_mask_it_needs(models, sdpa_calls):
    """Position ids that restart, but no cu_seq_lens (not trl's collator): the fallback builds
    transformers' block-diagonal mask after all, and the examples stay apart."""
    _, varlen = models
    rows = examples()
    batch = packed_batch(rows)
    with torch.no_grad():
        packed = varlen(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        assert sdpa_calls["fallback"] == LAYERS
        assert_each_example_as_alone(varlen, rows, packed)
