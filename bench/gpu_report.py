"""The GPU check's report (`bench/gpu.py`): parts and steps, each guarded, and the JSON.

    report = Report(Path("gpu.json"), budget_s=450)
    report.part("setup", lambda section: section.update(x=1), estimate_s=0)

A part or step that raises is recorded (status, one-line error, traceback tail) and the run
goes on; `Skipped` records why one could not run; a part or step whose estimate exceeds the
time left of the budget is skipped with a note; the JSON is rewritten after every step, so a
run that is stopped keeps what it measured. `Report.start_watchdog` ends the process at
budget + grace whatever happens (exit status 3), after one last write.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

START = time.perf_counter()


def say(message: str) -> None:
    print(f"[gpu {time.perf_counter() - START:6.1f}s] {message}", flush=True)


def one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".strip()[:300]


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


class Skipped(Exception):
    """A part or step that cannot run here; its message says why."""


class Report:
    """The JSON being built; rewritten after every step, so a stopped run keeps its figures."""

    def __init__(self, path: Path, budget_s: float):
        self.path, self.budget_s = path, budget_s
        self.data: dict = {"command": [sys.executable, *sys.argv], "summary": None, "notes": []}
        self.data.update(args=None, environment=None, parts={})
        self.lock = threading.Lock()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - START)

    def over_budget(self, estimate_s: float) -> str:
        return f"time budget: {max(0, self.left()):.0f} s left, about {estimate_s:.0f} s needed"

    def part(self, name: str, fn: Callable[[dict], None], *, estimate_s: float, skip=None):
        """Run fn(section): it fills the section; a raise records why it stopped."""
        section: dict = {"status": "running"}
        self.data["parts"][name] = section
        if skip is None and estimate_s > self.left():
            skip = self.over_budget(estimate_s)
        if skip:
            say(f"{name}: skipped ({skip})")
            section.update(status="skipped", reason=skip)
            self.write()
            return section
        say(f"{name}: start")
        t0 = time.perf_counter()
        try:
            fn(section)
        except Skipped as why:
            section.update(status="skipped", reason=str(why))
            say(f"{name}: skipped ({why})")
        except Exception as err:  # one part failing must not lose the others
            section.update(status="failed", error=one_line(err), traceback=tail_of(err))
            say(f"{name}: FAILED {one_line(err)}")
        else:
            steps = section.get("steps", {})
            failed = [k for k, v in steps.items() if v.get("status") == "failed"]
            skipped = [k for k, v in steps.items() if v.get("status") == "skipped"]
            section["status"] = (
                "partly failed: " + ", ".join(failed)
                if failed
                else "ok, skipped: " + ", ".join(skipped)
                if skipped
                else "ok"
            )
            say(f"{name}: {section['status']}")
        section["seconds"] = round(time.perf_counter() - t0, 1)
        self.write()
        return section

    def step(self, section: dict, name: str, fn: Callable[[], dict], *, estimate_s: float = 0):
        """One guarded step inside a part: its figures, or why it was skipped or failed."""
        steps = section.setdefault("steps", {})
        if estimate_s > self.left():
            steps[name] = {
                "status": "skipped",
                "reason": self.over_budget(estimate_s),
            }
            say(f"  {name}: skipped (time budget)")
            self.write()
            return None
        t0 = time.perf_counter()
        try:
            result = fn() or {}
        except Skipped as why:
            steps[name] = {"status": "skipped", "reason": str(why)}
            say(f"  {name}: skipped ({why})")
            self.write()
            return None
        except Exception as err:
            steps[name] = {"status": "failed", "error": one_line(err), "traceback": tail_of(err)}
            say(f"  {name}: FAILED {one_line(err)}")
            self.write()
            return None
        result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
        steps[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 2), **result}
        say(f"  {name}: {brief(result)}")
        self.write()
        return result

    def start_watchdog(
        self, grace_s: float, summarize: Callable[[dict], dict], cleanup: Callable[[], None]
    ) -> threading.Timer:
        """A timer that, at budget + grace_s, marks running parts as stopped, writes the JSON
        with its summary, runs cleanup and ends the process with status 3; cancel it at the
        end of a run."""

        def stop() -> None:
            self.data["notes"].append(
                f"watchdog: stopped at {time.perf_counter() - START:.0f} s "
                f"(budget {self.budget_s:.0f} s + grace {grace_s:.0f} s)"
            )
            for part in self.data["parts"].values():
                if part.get("status") == "running":
                    part["status"] = "stopped by the watchdog"
            say("watchdog: out of time, stopping")
            try:
                for _ in range(3):  # the main thread may be changing the data right now
                    try:
                        self.data["summary"] = summarize(self.data)
                        self.write()
                        break
                    except RuntimeError:
                        time.sleep(0.2)
                cleanup()
            finally:
                os._exit(3)

        timer = threading.Timer(self.budget_s + grace_s, stop)
        timer.daemon = True
        timer.start()
        return timer

    def write(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(time.perf_counter() - START, 1)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
            tmp.replace(self.path)


def tail_of(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))[-1500:]


def brief(result: dict) -> str:
    keys = ("tokens_per_s", "ttft_s", "pair_ratio", "answers_per_s", "ratio", "idle_s", "gib")
    shown = {k: v for k, v in result.items() if any(k.endswith(x) for x in keys)}
    return json.dumps(shown or {k: result[k] for k in list(result)[:3]}, default=str)[:200]
