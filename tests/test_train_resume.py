"""A training run killed with SIGKILL resumes from its last checkpoint and finishes.

`python -m train` runs the tiny random Llama of conftest.py with a checkpoint every 2 steps;
the test kills it once a checkpoint is complete, checks that the folder does not pass for a
finished adapter, then reruns the same command with `--resume_from_checkpoint true`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medchat.errors import MedchatError
from train import sft
from train.record import resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
CPU_RECIPE = REPO / "train" / "recipes" / "smollm2-135m-lora.yaml"
MAX_STEPS = 12
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint by transformers
DEADLINE_S = 180.0


def write_qa_csv(path: Path) -> Path:
    names = ("glaucoma", "asthma", "anemia", "gout", "psoriasis", "migraine", "scabies", "rickets")
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["question", "answer"])
        for name in names:
            out.writerow([f"What is {name}?", f"{name.capitalize()} is a common condition."])
            out.writerow([f"How is {name} treated?", f"A doctor treats {name} case by case."])
    return path


def train_command(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "train",
        "--config", str(CPU_RECIPE),
        "--model_name_or_path", str(model_dir),
        "--data_file", str(data),
        "--output_dir", str(out),
        "--max_steps", str(MAX_STEPS),
        "--save_steps", "2",
        "--save_total_limit", "10",
        "--logging_steps", "1",
        "--max_length", "192",
        "--per_device_train_batch_size", "2",
        "--max_eval_samples", "0",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


def child_env() -> dict[str, str]:
    # One thread: a tiny model's step is much faster without thread hand-offs on a busy machine.
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def complete_checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_llama_dir: Path, tmp_path: Path):
    data = write_qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "adapter"
    command = train_command(tiny_llama_dir, data, out)

    # 1. Start training and kill it as soon as a checkpoint is complete.
    with (tmp_path / "first.log").open("w") as log:
        child = subprocess.Popen(
            command, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + DEADLINE_S
        try:
            while not (out.is_dir() and complete_checkpoints(out)):
                if child.poll() is not None:
                    log_text = (tmp_path / "first.log").read_text()[-3000:]
                    pytest.fail(f"training ended (rc {child.returncode}) before a checkpoint:\n"
                                f"{log_text}")  # fmt: skip
                if time.monotonic() > deadline:
                    pytest.fail("no checkpoint appeared before the deadline")
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # 2. The killed run's folder does not pass for a finished adapter.
    assert not (out / sft.DONE_FILE).exists()
    assert not (out / "adapter_model.safetensors").exists()
    last = complete_checkpoints(out)[-1]
    step = int(last.name.rsplit("-", 1)[1])
    assert 2 <= step < MAX_STEPS
    # Mark the checkpoint's log, to tell a resumed run from one that starts over.
    state = json.loads((last / TRAINER_STATE).read_text())
    state["log_history"][0]["resume_probe"] = True
    (last / TRAINER_STATE).write_text(json.dumps(state))

    # 3. The same command with --resume_from_checkpoint true finishes the run.
    done = subprocess.run(
        [*command, "--resume_from_checkpoint", "true"],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    record = json.loads((out / sft.DONE_FILE).read_text())
    assert record["steps"] == MAX_STEPS
    assert record["resumed_from"] == str(last)
    history = record["log_history"]
    assert history[0].get("resume_probe") is True, "the resumed run did not continue the log"
    assert [h["step"] for h in history if "loss" in h] == list(range(1, MAX_STEPS + 1))
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "split.json").is_file()


def test_resume_true_picks_the_highest_numbered_checkpoint(tmp_path: Path):
    for n in (2, 9, 10):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / TRAINER_STATE).write_text("{}")
    assert resume_checkpoint("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert resume_checkpoint(str(tmp_path / "checkpoint-9"), tmp_path) == str(
        tmp_path / "checkpoint-9"
    )
    assert resume_checkpoint(None, tmp_path) is None


def test_resume_without_checkpoints_is_one_clear_error(tmp_path: Path):
    with pytest.raises(MedchatError, match="No checkpoint"):
        resume_checkpoint("true", tmp_path)
    with pytest.raises(MedchatError, match="does not exist"):
        resume_checkpoint(str(tmp_path / "checkpoint-7"), tmp_path)


def test_resume_true_skips_a_checkpoint_cut_short_by_a_kill(tmp_path: Path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / TRAINER_STATE).write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()  # killed while saving: weights, no trainer state
    (tmp_path / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"")
    assert resume_checkpoint("true", tmp_path) == str(tmp_path / "checkpoint-2")
