"""The GPU check's environment (`bench/gpu.py`): what each part needs, pip, the device.

    python bench/gpu.py --out $OUT/gpu.json --offline   # the command that uses it

A part whose packages are missing is skipped with one line naming them and how to bring them
(`missing_line`); pip runs only with --install-missing, and offline only from --wheels.
`environment` records the versions and the GPU; `sync`, `memory` and `release` are the
device helpers every part shares.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

from bench.gpu_report import Report, say

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "sentencepiece",
    "httpx",
    "numpy",
    "sentence_transformers",
    "trl",
    "datasets",
)
# What each part imports (beyond the standard library); a part with one missing is skipped.
NEEDS = {
    "setup": ("torch", "transformers", "peft", "accelerate", "sentencepiece", "numpy"),
    "local": ("httpx",),  # the pipeline's imports, beyond setup's
    "4bit": ("bitsandbytes",),
    "train": ("trl", "datasets", "pandas", "pyarrow"),
}
PIP_NAMES = {  # as requirements.txt pins them
    "transformers": "transformers>=5.0,<6",
    "peft": "peft>=0.21,<0.22",
    "accelerate": "accelerate>=1.10",
    "bitsandbytes": "bitsandbytes>=0.46.1",
    "sentencepiece": "sentencepiece>=0.2",
}


def offline_from_environment() -> bool:
    """PIP_NO_INDEX set to a true value: pip may not reach an index, so it is not run."""
    return os.environ.get("PIP_NO_INDEX", "").strip().lower() in ("1", "true", "yes", "on")


def missing_packages(names) -> list[str]:
    import importlib.util

    out = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except (ImportError, ValueError):
            out.append(name)
    return out


def how_to_bring(names: list[str], args) -> str:
    """One sentence: how to make `names` importable on this machine."""
    pip = " ".join(PIP_NAMES.get(n, n) for n in names)
    if args.offline:
        return (
            f"offline: copy wheels of {pip} and their dependencies into a folder and add "
            "--wheels FOLDER --install-missing"
        )
    return f"pip install {pip}, or add --install-missing"


def missing_line(names: list[str], args) -> str:
    return f"missing {', '.join(names)}; {how_to_bring(names, args)}"


def check_packages(report: Report, args) -> dict[str, list[str]]:
    """What each part lacks (NEEDS' keys); pip first only when asked, never offline without
    wheels. Records both in the report."""
    wanted = [*NEEDS["setup"], *NEEDS["local"]]
    if args.device == "cuda" and "4bit" not in args.skip:
        wanted += NEEDS["4bit"]
    if "train" not in args.skip:
        wanted += NEEDS["train"]
    if args.install_missing and missing_packages(wanted):
        if args.offline and args.wheels is None:
            report.data["install_missing"] = {
                "skipped": "offline: pip is not run (add --wheels FOLDER to install from wheels)"
            }
            say("install: skipped, offline (add --wheels FOLDER to install from wheels)")
        else:
            report.data["install_missing"] = install_missing(missing_packages(wanted), args.wheels)
    lacking = {part: missing_packages(names) for part, names in NEEDS.items()}
    report.data["missing_packages"] = {part: names for part, names in lacking.items() if names}
    return lacking


def install_missing(names: list[str], wheels: Path | None = None) -> dict:
    pip = [PIP_NAMES.get(n, n) for n in names if n != "torch"]
    if not pip:
        return {"installed": [], "note": "nothing to install" if not names else "torch missing"}
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if wheels is not None:
        cmd += ["--no-index", "--find-links", str(wheels)]
    cmd += ["--retries", "1", "--timeout", "20", *pip]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"packages": pip, "exit": done.returncode, "last": lines[-1][:300] if lines else ""}


def environment(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info: dict = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "device": device,
        "cpus": os.cpu_count(),
    }
    for name in PACKAGES + ("vllm",):
        try:
            info[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            info[name] = None
    import torch

    info["torch_cuda"] = torch.version.cuda
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=15,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["nvidia_smi"] = None
    return info


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def memory(device: str) -> dict:
    if device == "cuda":
        import torch

        return {
            "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"process_peak_rss_mib": round(rss)}


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
