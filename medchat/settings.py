"""Settings: one frozen dataclass, read from MEDCHAT_* environment variables, then flags.

    settings = Settings.from_env(profile="smollm2-135m")   # keyword overrides win over env

Every field has a MEDCHAT_<FIELD> variable (see ENV_VARS and the README). Bad values raise a
MedchatError that names the variable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from medchat.errors import MedchatError

REPO_ROOT = Path(__file__).resolve().parent.parent
# Evaluation runs that ship with the repository (the shipped adapter's held-out scores).
SHIPPED_RUNS_DIR = REPO_ROOT / "assets" / "eval"
# A Hugging Face Space's persistent storage, mounted here when the Space has it.
SPACE_STORAGE = Path("/data")
LOST_ON_RESTART = (
    " ⚠️ **This Space has no persistent storage:** votes and ratings are lost when it restarts. "
    "Its owner can add persistent storage in the Space's settings (it is mounted at /data)."
)
SHIPPED_ADAPTERS = {"smollm2-135m": REPO_ROOT / "assets" / "adapters" / "smollm2-135m-medquad"}


@dataclass(frozen=True)
class Settings:
    profile: str = "auto"
    # "" = the profile's shipped adapter when there is one; "none" = the base model alone.
    adapter: str = ""
    cache_dir: Path = Path("~/.cache/medchat").expanduser()
    data_dir: Path = Path("~/.local/share/medchat").expanduser()
    runs_dir: Path = REPO_ROOT / "runs" / "eval"
    eval_data: str = ""
    device: str = "auto"
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_input_chars: int = 4000
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 0  # requests the app serves at once; 0 = 1 local, 16 on a server
    # Where answers come from: "local" (this process) or "openai" (an OpenAI-compatible
    # server such as vLLM; see medchat.backends).
    backend: str = "local"
    server_url: str = ""
    server_api_key: str = field(default="", repr=False)  # a secret: never logged or shown
    server_base_model: str = ""  # "" = the one base model the server lists
    server_tuned_model: str = ""  # "" = the one LoRA module on that base; "none" = no adapter
    server_max_in_flight: int = 16  # concurrent requests of one evaluation batch
    # Answers from NIH sources (medchat.retrieval): "auto" = on when the index can be built
    # (the shipped MedQuAD and bm25s are there), "on", or "off". An adapter trained with
    # sources brings its own method and k (its prompt style); these apply otherwise.
    retrieval: str = "auto"
    retrieval_method: str = "topic"
    retrieval_k: int = 3
    # The embedder that scores answers against references (Compare, Review, Evaluate): "" =
    # the default (the seed's paraphrase-MiniLM-L6-v2 when it is at hand, else the bundled
    # all-MiniLM-L6-v2), "bundled", a sentence-transformers folder, or a hub id.
    embedder: str = ""
    # Sign-in (medchat.access). "" = off, unless the Space has Hugging Face OAuth. Otherwise
    # users and passwords, "alice:pw1,bob:pw2", or the path of a file with one user:password a
    # line. A secret: never logged or shown.
    auth: str = field(default="", repr=False)
    # Who may see the study summary and export: usernames, comma-separated. "" = the Space's
    # owner on a Space, the first MEDCHAT_AUTH user locally, everyone when sign-in is off.
    organisers: str = ""
    review_n: int = 2  # ratings wanted per answer (by different reviewers) in the Review queue

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", "a whole number of at least 1"),
            (0.0 <= self.temperature <= 2.0, "temperature", "between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p", "above 0 and at most 1"),
            (1.0 <= self.repetition_penalty <= 2.0, "repetition_penalty", "between 1 and 2"),
            (self.max_input_chars >= 100, "max_input_chars", "at least 100"),
            (1 <= self.port <= 65535, "port", "a port number between 1 and 65535"),
            (self.concurrency >= 0, "concurrency", "0 (automatic) or more"),
            (self.device in ("auto", "cpu", "cuda", "mps"), "device", "auto, cpu, cuda or mps"),
            (self.backend in ("local", "openai"), "backend", "local or openai"),
            (
                self.backend != "openai" or bool(self.server_url.strip()),
                "server_url",
                "the server's URL, e.g. http://127.0.0.1:8000/v1 (the openai backend needs it)",
            ),
            (self.server_max_in_flight >= 1, "server_max_in_flight", "at least 1"),
            (self.retrieval in ("auto", "on", "off"), "retrieval", "auto, on or off"),
            (
                self.retrieval_method in ("bm25", "dense", "hybrid", "topic"),
                "retrieval_method",
                "bm25, dense, hybrid or topic",
            ),
            (1 <= self.retrieval_k <= 8, "retrieval_k", "a whole number from 1 to 8"),
            (1 <= self.review_n <= 20, "review_n", "a whole number from 1 to 20"),
        ]
        for ok, name, want in checks:
            if not ok:
                raise MedchatError(
                    f"Setting {name} (MEDCHAT_{name.upper()}) is {getattr(self, name)!r}; "
                    f"set it to {want}."
                )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> Settings:
        """Defaults, then MEDCHAT_* variables, then non-None keyword overrides (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"MEDCHAT_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" not in values and env.get("SPACE_ID") and SPACE_STORAGE.is_dir():
            values["data_dir"] = SPACE_STORAGE / "medchat"  # survives restarts of the Space
        for key in ("cache_dir", "data_dir", "runs_dir"):
            if key in values:
                values[key] = Path(str(values[key])).expanduser()
        return cls(**values)

    @property
    def hf_token(self) -> str | None:
        """The hub token for gated models, from HF_TOKEN; never printed or logged."""
        return os.environ.get("HF_TOKEN") or None

    @property
    def run_dirs(self) -> tuple[Path, ...]:
        """Where evaluation runs are listed from: runs_dir first, then the shipped runs."""
        return (self.runs_dir, SHIPPED_RUNS_DIR)

    @property
    def queue_concurrency(self) -> int:
        """How many requests the app runs at once: the in-process model serves one at a time
        (more would only queue on its lock); a server batches many."""
        if self.concurrency:
            return self.concurrency
        return self.server_max_in_flight if self.backend == "openai" else 1

    @property
    def storage_warning(self) -> str:
        """A sentence for the Compare and Review tabs when on a Space votes would be lost at the
        next restart (the data dir is not on persistent storage); "" otherwise."""
        if not os.environ.get("SPACE_ID"):
            return ""
        data_dir = Path(self.data_dir).expanduser().resolve()
        storage = SPACE_STORAGE.resolve()
        on_storage = SPACE_STORAGE.is_dir() and (data_dir == storage or storage in data_dir.parents)
        return "" if on_storage else LOST_ON_RESTART

    @property
    def reviews_db(self) -> Path:
        return self.data_dir / "reviews.sqlite"

    def adapter_for(self, profile_name: str) -> str | None:
        """The adapter to load: the explicit one, the profile's shipped one, or None."""
        if self.adapter.lower() == "none":
            return None
        if self.adapter:
            return self.adapter
        shipped = SHIPPED_ADAPTERS.get(profile_name)
        if shipped and (shipped / "adapter_config.json").is_file():
            return str(shipped)
        return None


ENV_VARS = tuple(f"MEDCHAT_{f.name.upper()}" for f in dataclasses.fields(Settings))


def _parse(name: str, type_name: str, raw: str):
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise MedchatError(
            f"MEDCHAT_{name.upper()}={raw!r} is not a valid {kind}; set it to a number."
        ) from None
    return raw
