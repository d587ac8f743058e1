"""The story judge: a long message read whole by a fine-tuned encoder, for its triage level.

    judge = StoryJudge.load()              # MedchatError when it is missing
    if is_story(message):
        p_emergency, p_urgent, p_self_care = judge.probabilities([message])[0]

A linear head over frozen sentence embeddings cannot tell a reassured or past story from an
emergency that uses the same words ("chest pain when I press on the rib, fine on the stairs"
against "chest pain spreading to the jaw, sweating"). The judge is the bundled
all-MiniLM-L6-v2 with LoRA on its linear layers and a three-way head (emergency, urgent,
self-care), trained on the long descriptions of redflags_train.jsonl and
redflags_long_more.jsonl by `python -m medchat.story_judge_train`, which also chooses its two
thresholds by grouped cross-validation. A story the part-by-part method is sure of
(`parts_threshold`) is an emergency all the same: the judge's few hundred stories barely hold
some conditions the phrase tables know (a newborn's fever). `medchat.safety.triage` asks it
about messages of at least STORY_SENTENCES sentences and STORY_WORDS words (what it was
trained on; a short message keeps the part-by-part method).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medchat.errors import MedchatError
from medchat.safety.rules import DATA_DIR
from medchat.safety.story import sentences

JUDGE_DIR = DATA_DIR / "story_judge"
LEVELS = ("emergency", "urgent", "self-care")
STORY_SENTENCES = 2  # a message is a story from two sentences ...
STORY_WORDS = 15  # ... and fifteen words (152 of the 162 long training lines, 1 short one)
MAX_TOKENS = 256  # a longer message is read from its end, where "now he can't ..." usually is
LORA = {"r": 16, "lora_alpha": 32, "target_modules": ["query", "key", "value", "dense"]}
_WORD = re.compile(r"\w+")


def is_story(text: str) -> bool:
    """Whether the judge reads `text`: at least STORY_SENTENCES sentences, STORY_WORDS words."""
    return len(_WORD.findall(text or "")) >= STORY_WORDS and len(sentences(text)) >= STORY_SENTENCES


def base_model_dir() -> Path:
    """The transformer of the bundled all-MiniLM-L6-v2 (the sentence-transformers folder)."""
    from medchat.metrics import bundled_model_dir

    return Path(bundled_model_dir())


def mean_pool(hidden, mask):
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@dataclass
class StoryJudge:
    """The encoder (LoRA merged), its head, its tokenizer and its thresholds."""

    encoder: object
    head: object
    tokenizer: object
    threshold: float  # P(emergency) at which a story gets the emergency notice
    urgent_threshold: float  # P(emergency) + P(urgent) at which it gets the urgent notice
    parts_threshold: float = 2.0  # the parts' score from which it no longer lowers their level
    # P(emergency) from which a story the parts give no emergency notice becomes one: above
    # every story in its cross-validation that was not an emergency (2.0: never).
    raise_at: float = 2.0
    provenance: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path = JUDGE_DIR) -> StoryJudge:
        """The shipped judge; MedchatError (one sentence) when it or the base model is missing."""
        meta_path = Path(folder) / "judge.json"
        if not meta_path.is_file():
            raise MedchatError(
                f"The story judge is missing from {folder}; run python -m "
                "medchat.story_judge_train to make it."
            )
        import torch
        from transformers import AutoTokenizer

        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        encoder = merged_encoder(Path(folder))
        state = np.load(Path(folder) / "head.npz")
        head = torch.nn.Linear(*state["weight"].T.shape, device="meta")  # no random init
        head.load_state_dict(
            {"weight": torch.from_numpy(state["weight"]), "bias": torch.from_numpy(state["bias"])},
            assign=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(base_model_dir())
        tokenizer.truncation_side = "left"
        return cls(
            encoder,
            head.eval(),
            tokenizer,
            float(meta["threshold"]),
            float(meta["urgent_threshold"]),
            float(meta.get("parts_threshold", 2.0)),
            float(meta.get("raise_at", 2.0)),
            str(meta.get("provenance", "")),
        )

    def probabilities(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """(len(texts), 3): P(emergency), P(urgent), P(self-care) of each text."""
        return predict(self.encoder, self.head, self.tokenizer, texts, batch_size, self._lock)


def merged_encoder(folder: Path):
    """The base encoder with the LoRA update of `folder` added to its weights (W += B A alpha
    / r), without peft and without drawing on torch's global random numbers: a load in the
    background must not move a seeded generation running beside it."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    scale = float(config["lora_alpha"]) / float(config["r"])
    encoder = AutoModel.from_pretrained(base_model_dir()).eval()
    weights = load_file(str(folder / "adapter_model.safetensors"))
    modules = dict(encoder.named_modules())
    with torch.no_grad():
        for key, a in weights.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            modules[name].weight += scale * (b @ a)
    return encoder


def predict(encoder, head, tokenizer, texts, batch_size=16, lock=None) -> np.ndarray:
    """Class probabilities of `texts` (shared by the judge and its training)."""
    import torch

    out = []
    with lock or threading.Lock(), torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = encoder(**batch).last_hidden_state
            logits = head(mean_pool(hidden, batch["attention_mask"]))
            out.append(torch.softmax(logits, -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(LEVELS)), np.float32)


_LOAD_LOCK = threading.Lock()


@functools.cache
def _shipped() -> StoryJudge | None:
    import logging

    try:
        return StoryJudge.load()
    except Exception as err:  # noqa: BLE001 - any failure means the same: the part method
        logging.getLogger(__name__).warning(
            "The story judge is unavailable (%s: %s); long messages are judged part by part.",
            type(err).__name__,
            err,
        )
        return None


def shipped() -> StoryJudge | None:
    """The shipped judge, loaded once (thread-safe), or None when it cannot be loaded."""
    with _LOAD_LOCK:
        return _shipped()
