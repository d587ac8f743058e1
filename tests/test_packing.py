"""train/packing.py: `sdpa_varlen` attends within each example of a padding-free row.

A tiny random Llama with grouped-query attention (4 query heads, 2 key/value heads) scores
packed rows the way trl's collator builds them; every figure is compared with the same
examples run one at a time, or padded, under plain sdpa.
"""

from __future__ import annotations

import pytest
import torch

from train.packing import VARLEN, attention_for, register, sdpa_varlen_forward

LENGTHS = (7, 12, 5, 9)


@pytest.fixture(scope="module")
def models():
    """(sdpa model, sdpa_varlen model) with the same random weights, in eval mode."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    register()
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,  # large weights: attention is peaked, so leaks show clearly
    )
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    varlen = AutoModelForCausalLM.from_config(config, attn_implementation=VARLEN)
    varlen.load_state_dict(plain.state_dict())
    return plain.eval(), varlen.eval()


def examples(seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, 97, (n,), generator=gen).tolist()
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


def test_a_packed_row_gives_every_example_the_logits_it_gets_alone(models):
    _, varlen = models
    rows = examples()
    batch = packed_batch(rows)
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():
        packed = varlen(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = varlen(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_without_the_per_example_path_examples_would_see_each_other(models):
    """The check above can fail: attention over the whole row (causal, no boundaries) changes
    every example after the first."""
    _, varlen = models
    rows = examples()
    batch = packed_batch(rows)
    with torch.no_grad():
        packed = varlen(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
        leaky = varlen(input_ids=batch["input_ids"])  # no boundaries: one long sequence
    first = len(rows[0]["input_ids"])
    torch.testing.assert_close(packed.logits[0, :first], leaky.logits[0, :first])
    leak = (packed.logits[0, first:] - leaky.logits[0, first:]).abs().max()
    assert leak > 1e-2, f"a leak would change the logits by far more than 1e-5 (got {leak})"


def test_packed_loss_and_gradients_equal_padded_sdpa(models):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    plain, varlen = models
    rows = examples(seed=1)
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    packed = packed_batch(rows)
    grads, losses = [], []
    for model, batch in ((plain, padded), (varlen, packed)):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        losses.append(float(out.loss.detach()))
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    # Padded rows average the loss per row's tokens the same way: one mean over all labels.
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_examples_longer_than_a_sliding_window_keep_the_window():
    """A Mistral-style sliding window of 4 tokens: the examples of 7-12 tokens must get the
    windowed attention they get alone, not full causal attention. (transformers 5.24's own
    sdpa and eager masks get this case wrong for a packed row: examples after the first
    differ from their lone runs by up to 7 in the logits.)"""
    from transformers import AutoModelForCausalLM, MistralConfig

    register()
    config = MistralConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=4, initializer_range=0.3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=VARLEN).eval()
    rows = examples()
    batch = packed_batch(rows)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_generation_with_a_cache_is_plain_sdpa(models):
    plain, varlen = models
    prompts = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    a = plain.generate(input_ids=prompts, attention_mask=mask, **kwargs)
    b = varlen.generate(input_ids=prompts, attention_mask=mask, **kwargs)
    assert torch.equal(a, b)


def test_boundaries_that_do_not_cover_the_row_are_an_error():
    q = torch.zeros(1, 2, 10, 4)
    with pytest.raises(ValueError, match="cu_seq_lens_q ends at 8"):
        sdpa_varlen_forward(torch.nn.Module(), q, q, q, None, cu_seq_lens_q=torch.tensor([0, 5, 8]))


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
