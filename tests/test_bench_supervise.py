"""bench/supervise_bench.py finds minirun's supervisors by their pid files, trusted only
while that pid holds the matching lock: a stale pid file must never name a process (the
bench measures it and, at cleanup, signals it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import supervise_bench

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "/keeper.lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
with open(sys.argv[1] + "/keeper.pid", "w") as f:
    f.write(str(os.getpid()))
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_pid_file_trusted_while_its_process_holds_the_lock(tmp_path, holder):
    assert supervise_bench.supervisor_pid(str(tmp_path), "keeper") == holder.pid
    assert supervise_bench.minirun_supervisors(str(tmp_path)) == {"keeper": holder.pid}


def test_stale_pid_file_names_no_process(tmp_path, holder):
    # a live process that does not hold the lock (this one): not a supervisor
    (tmp_path / "keeper.pid").write_text(str(os.getpid()))
    assert supervise_bench.supervisor_pid(str(tmp_path), "keeper") is None
    # the holder gone, its own pid file is stale too
    (tmp_path / "keeper.pid").write_text(str(holder.pid))
    holder.kill()
    holder.wait()
    assert supervise_bench.supervisor_pid(str(tmp_path), "keeper") is None
    assert supervise_bench.supervisor_pid(str(tmp_path), "daemon") is None  # no files
