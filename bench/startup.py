"""Process start to first token: `python -m medchat chat ... --max-new-tokens 1` in a child.

    python -m bench --only startup

Warm: the embedded model's converted copy is already in the cache. Cold: MEDCHAT_CACHE_DIR
points at an empty folder, so the child converts the GGUF first (the first run on a machine).
The clock starts before the child is spawned and stops at its first byte on stdout, which
the CLI writes as soon as the first token is decoded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import log, median

REPO = Path(__file__).resolve().parent.parent


def first_output(argv: list[str], env: dict[str, str], timeout: float = 300.0) -> dict:
    """Seconds from spawn to the first stdout byte and to exit, and the exit code."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err)
        first = None
        try:
            if os.read(proc.stdout.fileno(), 1):
                first = time.perf_counter() - start
            proc.stdout.read()
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        finally:
            proc.stdout.close()
        total = time.perf_counter() - start
        if rc != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{' '.join(argv[1:4])} exited with {rc}: {' | '.join(tail)}")
    return {"first_output_s": first, "exit_s": total, "rc": rc}


def measure_startup(question: str, *, profile: str = "smollm2-135m", warm_runs: int = 2) -> dict:
    """warm_start_s (median) and cold_start_s, in the order warm, cold, warm, ..."""
    argv = [sys.executable, "-m", "medchat", "chat", question, "--max-new-tokens", "1"]
    argv += ["--profile", profile, "--device", "cpu"]
    base_env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    warm, cold = [], None
    for k in range(warm_runs + 1):
        if k == 1:
            tmp = tempfile.mkdtemp(prefix="medchat-bench-cold-")
            try:
                log("startup: cold (empty cache: converts the embedded model first)")
                cold = first_output(argv, dict(base_env, MEDCHAT_CACHE_DIR=tmp))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            log("startup: warm (converted copy in the cache)")
            warm.append(first_output(argv, base_env))
    return {
        "warm_start_s": median([w["first_output_s"] for w in warm]),
        "cold_start_s": cold["first_output_s"],
        "warm_runs": warm,
        "cold_run": cold,
        "import_s": import_seconds(),
    }


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what the CLI imports before loading."""
    code = (
        "import time; t = time.perf_counter(); "
        "import torch, transformers, peft; "
        "from transformers import AutoModelForCausalLM; "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    try:
        return round(float(out.stdout.strip().splitlines()[-1]), 2)
    except (ValueError, IndexError):
        return float("nan")
