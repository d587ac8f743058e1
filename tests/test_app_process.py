"""`python app.py` as its own process: where it listens, what survives kill -9, how it fails.

    .venv/bin/python -m pytest tests/test_app_process.py -q

The server runs the embedded SmolLM2 with the shipped adapter; its review database, runs and
reference data live in a tmp folder. Start-up failures run with an empty model cache, so a
failure that came after the base model load would show as a converted model in that cache.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_until_up

from medchat.reviews import ReviewStore
from medchat.safety import sanitize_markdown
from medchat.settings import REPO_ROOT
from medchat.ui.chat_messages import cut_off_mark

pytestmark = [
    pytest.mark.embedded,  # the real SmolLM2: slow while its cache is cold
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL"),
]

ADAPTER = REPO_ROOT / "assets" / "adapters" / "smollm2-135m-medquad"
TOKENS = 16
START_S = 180.0  # the whole start-up: imports, model load, first page
FAIL_FAST_S = 20.0  # a refused start-up: the imports, then one check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of an app process whose files all live under `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCHAT_")}
    env.pop("SPACE_ID", None)  # a Space would listen on every interface
    env.update(
        MEDCHAT_PROFILE="smollm2-135m",
        MEDCHAT_DATA_DIR=str(root / "data"),
        MEDCHAT_RUNS_DIR=str(root / "runs"),
        MEDCHAT_MAX_NEW_TOKENS=str(TOKENS),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        # One torch thread: on a shared 2-core machine two threads competing with another busy
        # process slow generation down 15-fold; durability, not speed, is under test here.
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def non_loopback_ipv4() -> str | None:
    """This machine's address on its outgoing interface, when it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # UDP: picks an interface, sends nothing
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# -- a running app -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_process(tmp_path_factory, cache_dir):
    """(process, url, root, stdout file) of `python app.py --port P`, up and answering."""
    if not ADAPTER.is_dir():
        pytest.skip("the shipped adapter assets/adapters/smollm2-135m-medquad is missing")
    root = tmp_path_factory.mktemp("app-process")
    data = root / "eval.csv"
    data.write_text("question,answer\nWhat is a bunion?,A bony bump at the base of the toe.\n")
    port = free_port()
    env = app_env(root, MEDCHAT_CACHE_DIR=str(cache_dir), MEDCHAT_EVAL_DATA=str(data))
    out, err = root / "stdout.txt", root / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(process, url, err, START_S)
        yield process, url, root, out
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_listens_on_loopback_only_by_default(app_process):
    process, url, _, stdout = app_process
    port = int(url.rsplit(":", 1)[1].strip("/"))
    assert f"Running on local URL:  http://127.0.0.1:{port}" in stdout.read_text()
    address = non_loopback_ipv4()
    if address is None:
        return  # no other interface to try
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=3).close()


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
def test_votes_and_ratings_survive_kill_9_mid_stream(app_process):
    from gradio_client import Client

    process, url, root, _ = app_process

    # 1. Compare and vote a few times; every id the app returns is committed.
    votes: dict[int, dict] = {}
    voter = Client(url, verbose=False)
    for question, choice in [
        ("What is gout?", "A"),
        ("What causes asthma?", "B"),
        ("How is eczema treated?", "tie"),
        ("What is a bunion?", "both_bad"),
    ]:
        answer_a, answer_b, *_ = voter.submit(
            question, 0.0, 0.9, TOKENS, True, api_name="/compare"
        ).result(timeout=120)
        reveal = voter.predict(choice, "voter one", api_name="/vote")
        vote_id = int(re.search(r"#(\d+)\)", reveal).group(1))
        # The vote stores each answer without the cut-off mark the page shows after it.
        a, b = (x.removesuffix(f"\n\n{cut_off_mark(TOKENS)}") for x in (answer_a, answer_b))
        votes[vote_id] = {"question": question, "vote": choice, "a": a, "b": b}

    # 2. Rate two of those answers.
    ratings: dict[int, dict] = {}
    rater = Client(url, verbose=False)
    shown = rater.predict("rater one", "compare", api_name="/review_next")
    for value, note in [(4, "clear"), (2, "off topic <b>really</b>")]:
        question, answer = shown[1].removeprefix("**Question:** "), shown[3]
        *shown, status = rater.predict(value, note, "rater one", "compare", api_name="/rate")
        rating_id = int(re.search(r"rating #(\d+):", status).group(1))
        ratings[rating_id] = {"question": question, "answer": answer, "rating": value, "note": note}

    # 3. Kill the process while another comparison is streaming.
    job = Client(url, verbose=False).submit(
        "Tell me everything about diabetes.", 0.0, 0.9, 600, True, api_name="/compare"
    )
    deadline = time.monotonic() + 60
    while len([o for o in job.outputs() if o[0]]) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [o for o in job.outputs() if o[0]], "the comparison never started streaming"
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL

    # 4. Everything committed is there, exactly, in a sound file.
    with ReviewStore(root / "data" / "reviews.sqlite") as store:
        assert store.integrity_ok()
        stored_votes = {v["id"]: v for v in store.votes()}
        stored_ratings = {r["id"]: r for r in store.ratings()}
    assert stored_votes.keys() == votes.keys()
    for vote_id, want in votes.items():
        got = stored_votes[vote_id]
        assert (got["question"], got["vote"], got["reviewer"]) == (
            want["question"],
            want["vote"],
            "voter one",
        )
        assert (sanitize_markdown(got["answer_a"]), sanitize_markdown(got["answer_b"])) == (
            want["a"],
            want["b"],
        )
    assert stored_ratings.keys() == ratings.keys()
    for rating_id, want in ratings.items():
        got = stored_ratings[rating_id]
        assert got["source"] == "compare" and got["reviewer"] == "rater one"
        assert (got["rating"], got["note"]) == (want["rating"], want["note"])
        assert got["question"] == want["question"]
        assert sanitize_markdown(got["answer"]) == want["answer"]


# -- start-up failures -------------------------------------------------------------------------
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


FAILURES = [
    # (id, app.py arguments, environment, how the error line starts)
    ("adapter-path-missing", ["--adapter", "/nope"], {}, "Adapter '/nope' does not exist"),
    (
        "adapter-for-another-base",
        ["--profile", "smollm2-135m", "--adapter", "{root}/mistral-lora"],
        {},
        "Adapter '{root}/mistral-lora' was trained on 'mistralai/Mistral-7B-Instruct-v0.2'",
    ),
    ("4-bit-without-cuda", ["--profile", "mistral-7b"], {}, "Profile mistral-7b loads the model"),
    (
        "eval-data-garbage-csv",
        [],
        {"MEDCHAT_EVAL_DATA": "{root}/garbage.csv"},
        "MEDCHAT_EVAL_DATA: Could not read data file",
    ),
    (
        "eval-data-garbage-parquet",
        [],
        {"MEDCHAT_EVAL_DATA": "{root}/garbage.parquet"},
        "MEDCHAT_EVAL_DATA: Could not read data file",
    ),
    (
        "eval-data-missing",
        [],
        {"MEDCHAT_EVAL_DATA": "{root}/none.csv"},
        "MEDCHAT_EVAL_DATA: Data file",
    ),
    (
        "data-dir-is-a-file",
        [],
        {"MEDCHAT_DATA_DIR": "{root}/garbage.csv"},
        "Cannot create the folder for the review database",
    ),
    ("port-not-a-number", [], {"MEDCHAT_PORT": "http"}, "MEDCHAT_PORT='http' is not a valid"),
]


@pytest.mark.parametrize(
    ("args", "env", "says"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_a_bad_start_fails_fast_in_one_line(args, env, says, tmp_path):
    if "mistral-7b" in args and cuda_available():
        pytest.skip("this machine has CUDA, so 4-bit loading is possible")
    (tmp_path / "garbage.csv").write_bytes(b"\x00\xff\xfe garbage \x89PNG\r\n\x1a\n")
    (tmp_path / "garbage.parquet").write_bytes(bytes(range(256)) * 4)
    lora = tmp_path / "mistral-lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(
        '{"base_model_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", '
        '"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}'
    )
    cache = tmp_path / "empty-cache"
    fill = {"root": str(tmp_path)}
    environment = app_env(tmp_path, MEDCHAT_CACHE_DIR=str(cache))
    environment.update({k: v.format(**fill) for k, v in env.items()})

    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "app.py", *(a.format(**fill) for a in args)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - began

    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines and lines[-1].startswith("error: " + says.format(**fill)), lines[-1:]
    assert lines[-1].endswith("."), lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in done.stderr and "Running on" not in done.stdout
    assert not cache.exists(), "the base model was loaded before the check failed"
    assert took < FAIL_FAST_S, f"took {took:.1f} s to refuse"
