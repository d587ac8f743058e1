"""Tiny random models and Mistral's v1 tokenizer, for the tests and the GPU check.

    from medchat.testing import mistral_config, tiny_config, write_mistral_tokenizer
    MistralForCausalLM(mistral_config(TINY_MISTRAL)).save_pretrained(folder)
    write_mistral_tokenizer(folder)
    LlamaForCausalLM(tiny_config("Llama", vocab_size=97))   # the tests' 2-layer, 64-wide shape

`tests/conftest.py`, the tests and `bench/gpu.py` build their tiny models from these, so a test
and a GPU run exercise the same shapes. The tokenizer is the file in
assets/tokenizers/mistral-v1 (Apache-2.0, from mistral-common): no network, no mistral-common.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MISTRAL_V1_DIR = ROOT / "assets" / "tokenizers" / "mistral-v1"
MISTRAL_V1_TOKENIZER = MISTRAL_V1_DIR / "tokenizer.model"
# Sixteen different consumer health questions, for checks that ask several at once (the
# benchmarks and the server tests take the first eight, the GPU check all sixteen).
MEDICAL_QUESTIONS = (
    "What are the symptoms of glaucoma?",
    "What causes gout?",
    "How is asthma treated?",
    "What is psoriasis?",
    "Who is at risk for osteoporosis?",
    "What are the treatments for migraine?",
    "How do I know if I have anemia?",
    "What is the outlook for people with celiac disease?",
    "How is type 2 diabetes diagnosed?",
    "What are the side effects of statins?",
    "What causes kidney stones?",
    "How can I lower my blood pressure?",
    "What is the difference between a cold and the flu?",
    "How is Lyme disease spread?",
    "What are the early signs of Parkinson's disease?",
    "What is shingles and who should get the vaccine?",
)
# "What is glaucoma?" without BOS, as Mistral's own tokenizer encodes it.
GLAUCOMA_IDS = [1824, 349, 1272, 581, 675, 28708, 28804]

# Mistral-7B-Instruct-v0.2's config (rope theta 1e6, no sliding window).
MISTRAL_7B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=32000,
    max_position_embeddings=32768,
    sliding_window=None,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
ROPE_THETA = 1e6


def tiny_shape(width: int = 64, positions: int = 4096, **overrides) -> dict:
    """The tests' tiny model: 2 layers `width` wide (the MLP twice that), 4 query heads sharing
    2 key/value heads, `positions` positions; `overrides` on top."""
    shape = dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
    )
    return shape | overrides


# Mistral-7B, 2 layers: head size 64 (which vLLM's CPU attention serves), 2048 positions.
TINY_MISTRAL = MISTRAL_7B | tiny_shape(width=256, positions=2048)


def write_mistral_tokenizer(folder: Path, source: Path | None = None) -> Path:
    """Copy the v1 tokenizer (or `source`, a tokenizer.model file) and its config into
    `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source or MISTRAL_V1_TOKENIZER, folder / "tokenizer.model")
    shutil.copy(MISTRAL_V1_DIR / "tokenizer_config.json", folder / "tokenizer_config.json")
    return folder


def mistral_config(shape: dict, **overrides):
    """A transformers MistralConfig of `shape` (MISTRAL_7B, TINY_MISTRAL) and rope theta 1e6,
    under transformers 5's `rope_parameters` or an older `rope_theta`."""
    from transformers import MistralConfig

    kwargs = dict(shape, **overrides)
    try:
        config = MistralConfig(
            **kwargs, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}
        )
    except TypeError:
        config = MistralConfig(**kwargs, rope_theta=ROPE_THETA)
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if (theta or getattr(config, "rope_theta", None)) != ROPE_THETA:
        raise RuntimeError("rope theta did not reach the config")
    return config


def tiny_config(family: str = "Mistral", **shape):
    """A transformers config of `family` ("Mistral", "Llama") in `tiny_shape(**shape)`, with
    transformers' defaults for the rest (rope theta among them)."""
    import transformers

    return getattr(transformers, f"{family}Config")(**tiny_shape(**shape))


def tokenizer_config() -> dict:
    return json.loads((MISTRAL_V1_DIR / "tokenizer_config.json").read_text())
