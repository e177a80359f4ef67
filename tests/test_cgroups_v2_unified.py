"""The cgroup v2 driver on this host's own cgroup2 mount, /sys/fs/cgroup/unified.

That hierarchy has no memory, cpu, pids or io controller (they are all bound to v1
here), but it has everything that does not need one: placement, cgroup.freeze,
cgroup.events, cgroup.kill. The controllers are tested in the QEMU guest
(test_cgroups_v2_controllers.py).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time

import pytest

from cgrouptest import read, wipe

from minirun.cgroups import detect_mode
from minirun.cgroups.v2 import CgroupV2
from minirun.errors import KernelFeatureMissing

UNIFIED = "/sys/fs/cgroup/unified"


def _is_hybrid() -> bool:
    try:
        return detect_mode() == "hybrid"
    except KernelFeatureMissing:
        return False


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
    pytest.mark.skipif(not _is_hybrid(), reason=f"needs a cgroup2 mount at {UNIFIED}"),
]


def _events(directory: str) -> dict[str, str]:
    return dict(line.split() for line in read(os.path.join(directory, "cgroup.events"))
                .splitlines())


@pytest.fixture
def top():
    return f"/minirun-test-{secrets.token_hex(4)}"


@pytest.fixture
def cg(top):
    cgroup = CgroupV2(top + "/ctr", root=UNIFIED)
    root_subtree = read(os.path.join(UNIFIED, "cgroup.subtree_control"))
    try:
        cgroup.create()
        yield cgroup
    finally:
        wipe([UNIFIED + top])
        assert not os.path.exists(UNIFIED + top), "test cgroup left behind"
        # the driver must never have touched the host's root
        assert read(os.path.join(UNIFIED, "cgroup.subtree_control")) == root_subtree


@pytest.fixture
def spawn(cg):
    """Start a child that joins `cg` before exec; killed and reaped at teardown."""
    children: list[subprocess.Popen] = []

    def start(argv: list[str], join=None, **kwargs) -> subprocess.Popen:
        target = join or cg
        # the child joins before exec, as the runtime\'s first child does; pytest runs
        # no threads that a fork could catch holding a lock
        proc = subprocess.Popen(argv, preexec_fn=lambda: target.add_pid(0), **kwargs)  # noqa: PLW1509
        children.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_placement_and_pids(cg, spawn, top):
    assert cg.exists()
    proc = spawn(["sleep", "300"])
    assert f"0::{top}/ctr" in read(f"/proc/{proc.pid}/cgroup").splitlines()
    assert _events(cg.dir)["populated"] == "1"
    # pids() includes cgroups nested below this one
    nested = CgroupV2(top + "/ctr/nested", root=UNIFIED)
    nested.create()
    inner = spawn(["sleep", "300"], join=nested)
    assert sorted(cg.pids()) == sorted([proc.pid, inner.pid])
    assert cg.mounts_for_container() == [(UNIFIED + top + "/ctr", "")]


def test_freeze_and_thaw(cg, spawn):
    proc = spawn(["sleep", "300"])
    cg.freeze()
    assert _events(cg.dir)["frozen"] == "1"
    assert cg.is_frozen()
    cg.thaw()
    assert _events(cg.dir)["frozen"] == "0"
    assert not cg.is_frozen()
    # thawed, the process answers a signal again
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM


def test_a_frozen_process_does_not_run(cg, spawn):
    # a shell appending a line per tick: nothing may be appended while frozen
    log = f"/tmp/minirun-test-freeze-{secrets.token_hex(4)}"
    try:
        spawn(["sh", "-c", f"while :; do echo x >> {log}; sleep 0.01; done"])
        assert wait_for(lambda: os.path.exists(log) and os.path.getsize(log) > 0)
        cg.freeze()
        size = os.path.getsize(log)
        time.sleep(0.3)
        assert os.path.getsize(log) == size
        cg.thaw()
        assert wait_for(lambda: os.path.getsize(log) > size)
    finally:
        cg.kill_all(signal.SIGKILL)
        if os.path.exists(log):
            os.unlink(log)


def test_kill_all_uses_cgroup_kill_and_reaches_grandchildren(cg, spawn, top):
    assert os.path.exists(os.path.join(cg.dir, "cgroup.kill"))
    sh = spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    assert wait_for(lambda: len(cg.pids()) == 3)
    cg.kill_all(signal.SIGKILL)
    assert cg.pids() == []
    assert sh.wait(timeout=10) == -signal.SIGKILL
    assert _events(cg.dir)["populated"] == "0"


def test_kill_all_works_on_a_frozen_cgroup(cg, spawn):
    proc = spawn(["sleep", "300"])
    cg.freeze()
    cg.kill_all(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert cg.pids() == []


def test_kill_all_with_sigterm(cg, spawn):
    sleepers = [spawn(["sleep", "300"]) for _ in range(3)]
    cg.kill_all(signal.SIGTERM)
    assert [p.wait(timeout=10) for p in sleepers] == [-signal.SIGTERM] * 3


def test_destroy_removes_the_cgroup_and_nested_ones_but_not_the_parent(cg, spawn, top):
    proc = spawn(["sleep", "300"])
    os.mkdir(os.path.join(cg.dir, "nested"))
    cg.kill_all(signal.SIGKILL)
    proc.wait(timeout=10)
    cg.destroy()
    assert not cg.exists()
    assert os.path.isdir(UNIFIED + top)
    cg.destroy()  # missing is fine


def test_no_controllers_here_means_kernel_feature_missing(cg):
    with pytest.raises(KernelFeatureMissing, match="memory controller is not available"):
        cg.apply({"memory": {"limit": 64 * 1024 * 1024}})
    with pytest.raises(KernelFeatureMissing, match="pids controller is not available"):
        cg.apply({"pids": {"limit": 10}})


def test_devices_only_warn_once(cg, capfd):
    cg.apply({"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    ]})
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("minirun: warning: device rules")
    assert "not enforced on cgroup v2" in lines[0]


def test_stats_report_cpu_usage(cg, spawn):
    busy = spawn(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
    assert busy.wait(timeout=60) == 0
    stats = cg.stats()
    assert stats["cpu"]["usage"]["total"] > 0
    assert "memory" not in stats  # no memory controller in this hierarchy
