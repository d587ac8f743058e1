"""A review whose id was returned survives kill -9 of the process that wrote it.

A child process writes votes and ratings as fast as it can, printing each committed id; the
parent kills it mid-stream with SIGKILL, reopens the file and finds every printed id.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medchat.reviews import ReviewStore

REPO_ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys
from medchat.reviews import ReviewStore

store = ReviewStore(sys.argv[1])
i = 0
while True:
    vid = store.add_vote(
        question=f"q{i}", answer_a="a" * 500, answer_b="b" * 500, a_is="tuned", vote="A",
        params={"i": i}, model="m", adapter="x",
    )
    print("vote", vid, i, flush=True)
    rid = store.add_rating(
        source="kill", item_id=str(i), side="base", question=f"q{i}", answer="c" * 500,
        rating=i % 4 + 1, cosine=0.5,
    )
    print("rating", rid, i, flush=True)
    i += 1
"""

WANT_EACH = 20
DEADLINE_S = 30.0


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_committed_rows_survive_sigkill(tmp_path):
    path = tmp_path / "reviews.sqlite"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    # 1. Read committed ids until we have enough of each kind, then kill mid-stream.
    seen: dict[str, dict[int, int]] = {"vote": {}, "rating": {}}
    deadline = time.monotonic() + DEADLINE_S
    try:
        while min(len(seen["vote"]), len(seen["rating"])) < WANT_EACH:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("the writer printed too few ids before the deadline")
            if line is None:
                pytest.fail(f"the writer exited early: {child.stderr.read()}")
            kind, row_id, i = line.split()
            seen[kind][int(row_id)] = int(i)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    # 2. Lines the child printed before it died were committed too: collect them all.
    reader.join(timeout=10)
    while (line := lines.get_nowait()) is not None:
        parts = line.split()
        if len(parts) == 3:  # a line cut short by the kill is not a complete report
            seen[parts[0]][int(parts[1])] = int(parts[2])
    child.stderr.close()

    # 3. Reopen: every printed id is there with the content it was written with.
    with ReviewStore(path) as store:
        assert store.integrity_ok() is True
        votes = {v["id"]: v for v in store.votes()}
        ratings = {r["id"]: r for r in store.ratings()}
    assert seen["vote"].keys() <= votes.keys()
    assert seen["rating"].keys() <= ratings.keys()
    for row_id, i in seen["vote"].items():
        assert votes[row_id]["question"] == f"q{i}"
        assert votes[row_id]["params"] == {"i": i}
    for row_id, i in seen["rating"].items():
        assert ratings[row_id]["item_id"] == str(i)
        assert ratings[row_id]["rating"] == i % 4 + 1
