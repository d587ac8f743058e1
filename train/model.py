"""The base model and tokenizer as training loads them, and the attention packed rows use.

    python -m train --config train/recipes/mistral-7b-qlora.yaml   # 4-bit on a CUDA GPU

`load_for_training` loads the profile's base model (or --model_name_or_path) in the recipe's
dtype, 4/8-bit when the recipe asks (CUDA only), with the attention `train.packing` picks when
trl batches without padding (`padding_free`), and a pad token distinct from EOS so every
answer keeps its end-of-turn token in the labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from medchat.errors import MedchatError

if TYPE_CHECKING:
    from train.sft import ScriptArguments


def load_for_training(script_args: ScriptArguments, sft_config, model_config, profile):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    from medchat.loading import base_source, load_tokenizer
    from train.packing import attention_for

    if (model_config.load_in_4bit or model_config.load_in_8bit) and not torch.cuda.is_available():
        raise MedchatError(
            "The recipe loads the model in 4/8-bit, which needs a CUDA GPU; use the "
            "smollm2-135m-lora recipe or pass --load_in_4bit false."
        )
    source = model_config.model_name_or_path or base_source(
        profile, Path(script_args.cache_dir).expanduser()
    )
    if model_config.model_name_or_path == profile.model_id and profile.embedded:
        source = base_source(profile, Path(script_args.cache_dir).expanduser())
    # trl's ModelConfig.dtype defaults to "float32": treat that as unset and use the profile's.
    unset = (None, "auto", "float32")
    dtype = model_config.dtype if model_config.dtype not in unset else profile.dtype
    # No hub kernels (transformers 5.25 enables them by default): train on the model's own layers.
    kwargs = {"dtype": getattr(torch, dtype), "use_kernels": False}
    quant = get_quantization_config(model_config)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    attention = attention_for(
        model_config.attn_implementation, padding_free=padding_free(sft_config)
    )
    chosen_here = bool(attention) and not model_config.attn_implementation
    if attention:
        kwargs["attn_implementation"] = attention
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (ValueError, ImportError) as err:
            about_attention = any(w in str(err).lower() for w in ("sdpa", "attn", "attention"))
            if not (chosen_here and about_attention):
                raise
            # A model without SDPA support: packed batches then use the attention transformers
            # picks for it (its masks keep the examples apart; only slower).
            del kwargs["attn_implementation"]
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            print(
                f"note: {source} cannot use {attention}; packed batches use its "
                f"{model.config._attn_implementation} attention"
            )
        tokenizer = load_tokenizer(profile, source)
    except OSError as err:
        raise MedchatError(
            f"Could not load base model {source!r}: {str(err).splitlines()[0]}"
        ) from None
    except (ValueError, ImportError) as err:
        if "attn_implementation" not in str(err) and "FlashAttention" not in str(err):
            raise
        raise MedchatError(
            f"attn_implementation {attention!r} cannot be used here; use sdpa_varlen, sdpa, "
            "eager, or flash_attention_2 with the flash-attn package installed."
        ) from None
    tokenizer.padding_side = "right"
    # A pad distinct from EOS keeps EOS in the labels at the end of every answer.
    if tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    return model, tokenizer, source


def padding_free(sft_config) -> bool:
    """Whether trl will batch without padding (one flattened row): as SFTTrainer decides it."""
    bfd = sft_config.packing and sft_config.packing_strategy in ("bfd", "bfd_split")
    return bool(sft_config.padding_free or bfd)
