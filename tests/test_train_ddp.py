"""Training with two processes (`accelerate launch --num_processes 2`, gloo on the CPU) writes
one adapter folder, from the main process only, in the format a one-process run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import tiny_argv, write_qa_csv
from train import sft

REPO = Path(__file__).resolve().parent.parent

# Loaded by every process of the launch (PYTHONPATH): logs "pid path" for each file put in
# place with os.replace / Path.replace / open(..., "w"), which is how every output is written.
WRITE_LOG = """
import builtins, io, os, pathlib
_log = os.environ["MEDCHAT_TEST_WRITE_LOG"]
_replace, _open = os.replace, builtins.open
def _note(path):
    with _open(_log, "a") as f:
        f.write(f"{os.getpid()} {os.fspath(path)}\\n")
def replace(src, dst, *a, **k):
    _note(dst)
    return _replace(src, dst, *a, **k)
def opened(file, mode="r", *a, **k):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax"):
        _note(file)
    return _open(file, mode, *a, **k)
os.replace = replace
builtins.open = io.open = opened
pathlib.Path.replace = lambda self, target: (replace(self, target), pathlib.Path(target))[1]
"""


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
def test_two_processes_write_one_adapter_folder_from_the_main_one(tiny_llama_dir, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WRITE_LOG)
    log = tmp_path / "writes.log"
    out = tmp_path / "out"
    data = write_qa_csv(tmp_path / "qa.csv")
    steps = ("--max_steps", "2", "--save_steps", "100", "--use_cpu", "true")
    argv = tiny_argv(tiny_llama_dir, data, out, *steps)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]),
        MEDCHAT_TEST_WRITE_LOG=str(log),
        OMP_NUM_THREADS="1",
    )
    # --multi_gpu is accelerate's launcher of one process per rank; with use_cpu the ranks
    # form a CPU (gloo) process group.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    run = subprocess.run(
        [*launch, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "train", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    writers: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        pid, path = line.split(" ", 1)
        if Path(path).resolve().parent == out.resolve():
            writers.setdefault(Path(path).name, set()).add(pid)
    for name in (sft.DONE_FILE, "split.json", "medchat_prompt.json", "loss.png"):
        assert len(writers.get(name, ())) == 1, (name, writers.get(name))
    assert len(set().union(*writers.values())) == 1, writers  # one process wrote the folder
    record = json.loads((out / sft.DONE_FILE).read_text())
    assert record["steps"] == 2
    for name in ("adapter_config.json", "adapter_model.safetensors", "split.json", "loss.png"):
        assert (out / name).is_file(), name
