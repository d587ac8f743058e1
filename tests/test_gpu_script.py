"""The GPU check (`bench/gpu.py`) runs every local part on this CPU with a tiny model.

It drives medchat's own loading, backends, pipeline and training code, so a GPU machine runs the
code users run; here `--tiny --device cpu` proves the script itself works before a GPU is at
hand, including on a machine like the GPU ones: no network (PIP_NO_INDEX=1) and packages
missing (hidden from the interpreter by a sitecustomize that refuses to import them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A module set to None in sys.modules is one Python will not import (ModuleNotFoundError) and
# importlib.util.find_spec reports as absent, as if it were not installed.
HIDE = "import sys\n\nfor name in {hidden!r}:\n    sys.modules[name] = None\n"


def run_check(
    tmp_path: Path, *flags: str, hidden=(), env=None
) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu.json"
    environment = dict(os.environ, **(env or {}))
    if hidden:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(HIDE.format(hidden=tuple(hidden)))
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [environment.get("PYTHONPATH")])]
        )
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--tiny", "--device", "cpu", "--out", str(out), *flags],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    return done, json.loads(out.read_text())


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
def test_offline_without_mistral_common_or_trl_it_skips_what_is_missing(tmp_path):
    """What a GPU machine without network sees: no pip, the tokenizer from the repository, the
    training part skipped in one line that says what is missing and how to bring it."""
    done, data = run_check(
        tmp_path,
        "--install-missing",
        "--install-vllm",
        hidden=("mistral_common", "trl", "vllm"),
        env={"PIP_NO_INDEX": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout
    # No pip: asked to install, it says why not, and no virtualenv for vLLM was started.
    assert data["args"]["offline"] is True
    assert data["install_missing"] == {
        "skipped": "offline: pip is not run (add --wheels FOLDER to install from wheels)"
    }
    assert "--install-vllm: not run, offline" in data["notes"]
    assert "install: skipped, offline" in log
    # The real v1 tokenizer came from the repository, without mistral_common.
    setup = data["parts"]["setup"]
    assert setup["status"] == "ok" and setup["tokenizer"]["glaucoma_ids_match"] is True
    # One line per part that cannot run, naming what is missing and how to bring it.
    assert data["missing_packages"] == {"train": ["trl"]}
    train_line = (
        "train: skipped (missing trl; offline: copy wheels of trl and their dependencies into "
        "a folder and add --wheels FOLDER --install-missing)"
    )
    assert train_line in log
    assert "vllm: skipped (vllm is not importable here and pip is not run offline" in log
    summary = data["summary"]
    assert summary["train"] == "skipped: " + train_line.split("(", 1)[1].rstrip(")")
    assert summary["vllm"].startswith("skipped: vllm is not importable here")
    assert summary["local_4bit"].startswith("skipped: Profile mistral-7b loads the model in 4-bit")
    # What did run gave its figures.
    bf16 = summary["local_bf16"]
    assert bf16["status"] == "ok", bf16
    assert bf16["stream_tokens_per_s"] > 0 and bf16["base_stream_tokens_per_s"] > 0
    assert bf16["pair_ratio"] > 0 and bf16["batch_answers_per_s"] > 0
    assert bf16["cancel_close_idle_s"] < 5 and bf16["cancel_call_idle_s"] < 5
    assert data["parts"]["local_bf16"]["steps"]["batch_16"]["answers"] == 32


def test_without_torch_nothing_runs_and_each_part_says_why(tmp_path):
    done, data = run_check(tmp_path, "--offline", hidden=("torch",))
    assert done.returncode == 1
    assert data["missing_packages"]["setup"] == ["torch"]
    for name in ("setup", "local_bf16", "train", "vllm"):
        assert data["parts"][name]["status"] == "skipped"
        assert data["parts"][name]["reason"].startswith("missing torch; offline: copy wheels")


@pytest.mark.slow  # about 20 s (it trains); `make test-slow` runs it
def test_the_gpu_check_runs_on_cpu_with_a_tiny_model(tmp_path):
    done, data = run_check(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = data["summary"]
    bf16 = summary["local_bf16"]
    assert bf16["status"] == "ok", bf16
    assert bf16["stream_tokens_per_s"] > 0 and bf16["batch_answers_per_s"] > 0
    assert bf16["cancel_close_idle_s"] < 5 and bf16["cancel_call_idle_s"] < 5
    # 4-bit needs CUDA: skipped with medchat's own one-sentence reason, not a crash.
    assert summary["local_4bit"].startswith("skipped: Profile mistral-7b loads the model in 4-bit")
    # Three steps of the QLoRA recipe (LoRA on a CPU), packed, attention per example here.
    train = summary["train"]
    assert train["status"] == "ok", data["parts"]["train"]
    assert train["steps"] == 3 and train["tokens_per_s"] > 0
    assert train["varlen_path"] == "sdpa" and train["varlen_max_abs_diff"] < 1e-4
    run = data["parts"]["train"]["steps"]["steps"]
    assert run["attn_implementation"] == "sdpa_varlen" and run["padding_free"] is True
