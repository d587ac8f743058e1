"""The GPU check (`bench/gpu.py`) runs every local part on this CPU with a tiny model.

It drives medchat's own loading, backends and pipeline, so a GPU machine runs the code users
run; here `--tiny --device cpu` proves the script itself works before a GPU is at hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 30 s; `make test-slow` runs it
def test_the_gpu_check_runs_on_cpu_with_a_tiny_model(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--tiny", "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    bf16 = summary["local_bf16"]
    assert bf16["status"] == "ok", bf16
    assert bf16["stream_tokens_per_s"] > 0 and bf16["batch_answers_per_s"] > 0
    assert bf16["cancel_close_idle_s"] < 5 and bf16["cancel_call_idle_s"] < 5
    # 4-bit needs CUDA: skipped with medchat's own one-sentence reason, not a crash.
    assert summary["local_4bit"].startswith("skipped: Profile mistral-7b loads the model in 4-bit")
