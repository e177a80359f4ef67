"""What the cgroup driver tests share: the helper programs their children run, and the
teardown that thaws, kills and removes a test's cgroups (v1 hierarchies or cgroup2)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

# Children run as `python -c` helpers so the checks happen from inside the cgroup.
MEMHOG = """
import sys
chunks = [bytearray(1 << 20) for _ in range(int(sys.argv[1]))]  # zero-filled: touched
print("allocated", flush=True)
sys.stdin.read()
"""
FORKER = """
import os, sys, time
kids, failed = [], 0
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except BlockingIOError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
print(len(kids), failed, flush=True)
for pid in kids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def wipe(tops: list[str], timeout: float = 10) -> None:
    """Thaw, kill and rmdir everything below each directory of `tops` (cgroup paths with
    their mount point). Only the test's own children can be in there: it made them."""
    dirs = [d for d in tops if os.path.isdir(d)]
    for d in dirs:
        for sub, _, files in os.walk(d):
            for name, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                if name in files:
                    with open(os.path.join(sub, name), "w") as f:
                        f.write(thawed)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set()
        for d in dirs:
            for sub, _, _ in os.walk(d):
                try:
                    pids.update(int(p) for p in read(os.path.join(sub, "cgroup.procs")).split())
                except FileNotFoundError:
                    pass
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    for d in dirs:
        for sub, _, _ in os.walk(d, topdown=False):
            for _ in range(int(timeout * 20)):
                try:
                    os.rmdir(sub)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


@pytest.fixture
def loop_device(tmp_path):
    """A 16 MiB loop device over a file of the test's own, to throttle or to count I/O on
    (this VM does not let even root open /dev/vda, and its I/O is not in the v1 blkio
    counters at all)."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(16 << 20)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
