"""Every tensor medchat makes follows the model's device, checked without a GPU.

A tensor on the `meta` device has a shape and a dtype but no data, and torch refuses to mix it
with CPU tensors exactly as it refuses to mix CUDA and CPU ones. So a model or input on `meta`
stands in for a GPU here: a tensor created on the CPU by mistake fails these tests the way it
would fail the first decoding step on CUDA or MPS.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from transformers import MaxLengthCriteria, StoppingCriteriaList

from medchat.engine import Engine, GenerationParams, _StopOnEvent
from medchat.errors import MedchatError
from medchat.loading import load_model
from medchat.profiles import MISTRAL_7B_BF16

# Loading LoRA weights into meta parameters copies nothing, and torch says so for each one.
quiet_meta_copy = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")


def meta_ids(rows: int = 2, width: int = 3) -> torch.Tensor:
    return torch.zeros((rows, width), dtype=torch.long, device="meta")


# -- stopping criteria -----------------------------------------------------------------------
@pytest.mark.parametrize("cancelled", [False, True])
def test_stop_criterion_follows_the_input_device(cancelled):
    event = threading.Event()
    if cancelled:
        event.set()
    out = _StopOnEvent(event)(meta_ids(rows=2), None)
    assert out.device.type == "meta"
    assert out.shape == (2,) and out.dtype == torch.bool


def test_stop_criterion_values_on_the_cpu():
    event = threading.Event()
    ids = torch.zeros((3, 4), dtype=torch.long)
    assert _StopOnEvent(event)(ids, None).tolist() == [False] * 3
    event.set()
    assert _StopOnEvent(event)(ids, None).tolist() == [True] * 3


def test_stop_criterion_combines_with_transformers_criteria_off_the_cpu():
    # generate() ORs every criterion's answer into one tensor on input_ids' device; with
    # the max-length criterion it always adds, ours must answer on that device too.
    event = threading.Event()
    criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=16), _StopOnEvent(event)])
    done = criteria(meta_ids(rows=2, width=5), None)
    assert done.device.type == "meta" and done.shape == (2,)
    event.set()
    assert criteria(meta_ids(rows=2, width=5), None).device.type == "meta"


# -- loading and batching on the model's device ----------------------------------------------
@pytest.fixture
def meta_engine(tiny_llama_profile, tiny_llama_adapter, cache_dir) -> Engine:
    """The tiny Llama with its adapter, loaded straight onto the meta device."""
    return Engine(
        load_model(tiny_llama_profile, str(tiny_llama_adapter), cache_dir=cache_dir, device="meta")
    )


@quiet_meta_copy
def test_model_and_adapter_load_onto_the_requested_device(meta_engine):
    assert meta_engine.loaded.device == "meta"
    params = dict(meta_engine.model.named_parameters())
    assert any("lora_" in name for name in params), "the adapter is attached"
    assert {p.device.type for p in params.values()} == {"meta"}
    assert meta_engine.model.device.type == "meta"


@quiet_meta_copy
def test_batch_is_built_on_the_model_device(meta_engine):
    batch = meta_engine._batch([[5, 6, 7], [8]])
    for name in ("input_ids", "attention_mask"):
        assert batch[name].device.type == "meta", name
        assert batch[name].shape == (2, 3), name


def test_batch_on_the_cpu_is_left_padded(llama_engine):
    pad = llama_engine.tokenizer.pad_token_id
    batch = llama_engine._batch([[5, 6, 7], [8]])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [pad, pad, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["input_ids"].device == llama_engine.model.device


# -- the unquantised bf16 profile ------------------------------------------------------------
@pytest.fixture
def bf16_profile(tiny_mistral_dir):
    """The real mistral-7b-bf16 profile, pointed at the tiny random Mistral."""
    return dataclasses.replace(MISTRAL_7B_BF16, model_id=str(tiny_mistral_dir))


@quiet_meta_copy
def test_bf16_profile_loads_onto_another_device_in_bf16(
    bf16_profile, tiny_mistral_adapter, cache_dir
):
    loaded = load_model(bf16_profile, str(tiny_mistral_adapter), cache_dir=cache_dir, device="meta")
    base = loaded.model.get_base_model()
    assert {p.device.type for p in loaded.model.parameters()} == {"meta"}
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16


def test_bf16_profile_answers_on_the_cpu(bf16_profile, tiny_mistral_adapter, cache_dir):
    loaded = load_model(bf16_profile, str(tiny_mistral_adapter), cache_dir=cache_dir, device="cpu")
    assert loaded.model.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16
    engine = Engine(loaded)
    params = GenerationParams(max_new_tokens=4)
    result = engine.generate_batch([engine.messages("What is glaucoma?")], params)
    for side in ("base", "tuned"):
        assert 1 <= result[0][side].n_tokens <= 4, side


# -- the embedder ----------------------------------------------------------------------------
def test_embedder_on_a_missing_gpu_is_one_clear_error():
    from medchat.metrics import Embedder

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(MedchatError, match="no CUDA GPU"):
        Embedder("bundled", device="cuda")
