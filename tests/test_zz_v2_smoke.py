"""Checks that the host is a proper cgroup v2 host: the premise of every cgroup_v2 test.

Runs inside the QEMU guest (see tests/v2guest/); deselected elsewhere.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cgroup_v2

ROOT = os.environ.get("MINIRUN_CGROUP_ROOT", "/sys/fs/cgroup")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_only_cgroup2_is_mounted_at_root():
    fstypes = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        fstypes[fields[4]] = fields[fields.index("-") + 1]
    assert fstypes.get(ROOT) == "cgroup2"
    assert "cgroup" not in fstypes.values(), "a cgroup v1 hierarchy is mounted"


def test_root_delegates_the_controllers():
    enabled = _read(os.path.join(ROOT, "cgroup.subtree_control")).split()
    assert {"memory", "cpu", "pids", "io"} <= set(enabled)


@pytest.fixture
def child_cgroup():
    path = os.path.join(ROOT, f"minirun-test-{secrets.token_hex(4)}")
    os.mkdir(path)
    try:
        yield path
    finally:
        # Processes must be gone before rmdir; the test waits for its child.
        os.rmdir(path)


def test_memory_max_kills_a_process_over_the_limit(child_cgroup):
    with open(os.path.join(child_cgroup, "memory.max"), "w") as f:
        f.write("16M")
    assert _read(os.path.join(child_cgroup, "memory.max")).strip() == str(16 * 1024 * 1024)
    hog = (
        "import os, sys\n"
        f"open({os.path.join(child_cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
        "chunks = [bytearray(1 << 20) for _ in range(64)]\n"
    )
    proc = subprocess.run([sys.executable, "-c", hog], check=False, timeout=120)
    assert proc.returncode == -9
    events = dict(
        line.split() for line in _read(os.path.join(child_cgroup, "memory.events")).splitlines()
    )
    assert int(events["oom_kill"]) >= 1
