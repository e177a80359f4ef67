"""Whole containers on cgroup v2.

Two settings, both real:
- on a hybrid host (this VM) the host's own empty cgroup2 mount, for placement, freeze
  and kill: the v2 driver is forced with MINIRUN_CGROUP_DRIVER=v2 and
  MINIRUN_CGROUP_ROOT=/sys/fs/cgroup/unified;
- tests marked cgroup_v2 run inside the QEMU guest (pure v2, memory/cpu/pids/io enabled),
  see tests/v2guest/, where the limits are checked from inside the container.
"""

import os
import signal

import pytest

from ocitest import base_config, needs_root, oci, rootfs, wait_for  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

UNIFIED = "/sys/fs/cgroup/unified"


def _is_cgroup2(path: str) -> bool:
    from minirun.cgroups import _fstype
    return _fstype(path) == "cgroup2"


@pytest.fixture
def v2_env(monkeypatch):
    """Point the runtime at a real cgroup2 hierarchy: the guest's /sys/fs/cgroup, or this
    host's empty unified mount."""
    if os.environ.get("MINIRUN_IN_V2_GUEST") == "1":
        root = "/sys/fs/cgroup"
    elif _is_cgroup2(UNIFIED):
        root = UNIFIED
    else:
        pytest.skip(f"no cgroup2 mount at {UNIFIED}")
    monkeypatch.setenv("MINIRUN_CGROUP_DRIVER", "v2")
    monkeypatch.setenv("MINIRUN_CGROUP_ROOT", root)
    return root


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line.strip()[3:]
    raise AssertionError("no cgroup2 line")


def _no_resources(cfg):
    # the host's unified mount has no controllers: ask for no limits there
    cfg["linux"]["resources"] = {}
    return cfg


def _lifecycle(oci, rootfs, root):
    cid = oci.new_id()
    cfg = base_config(["sh", "-c", "sleep 100 & sleep 100 & wait"])
    if root == UNIFIED:
        _no_resources(cfg)
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    pid = oci.state(cid)["pid"]
    assert _cgroup_of(pid) == f"/minirun/{cid}"
    cgdir = os.path.join(root, "minirun", cid)
    procs = open(os.path.join(cgdir, "cgroup.procs")).read().split()
    assert str(pid) in procs and len(procs) == 3
    oci("pause", cid, check=True)
    assert oci.state(cid)["status"] == "paused"
    assert "frozen 1" in open(os.path.join(cgdir, "cgroup.events")).read()
    oci("resume", cid, check=True)
    assert oci.state(cid)["status"] == "running"
    oci("kill", "--all", cid, "KILL", check=True)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    oci("delete", cid, check=True)
    assert not os.path.exists(cgdir)


def test_v2_placement_freeze_kill_on_host_unified_mount(oci, rootfs, v2_env):
    if v2_env != UNIFIED:
        pytest.skip("host-only variant")
    _lifecycle(oci, rootfs, v2_env)


@pytest.mark.cgroup_v2
def test_v2_lifecycle_in_guest(oci, rootfs, v2_env):
    _lifecycle(oci, rootfs, v2_env)


@pytest.mark.cgroup_v2
def test_v2_limits_seen_from_inside(oci, rootfs, v2_env):
    cfg = base_config(["sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max "
                                   "/sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu.weight"])
    cfg["linux"]["resources"].update({"memory": {"limit": 64 * 1024 * 1024},
                                      "pids": {"limit": 20},
                                      "cpu": {"quota": 20000, "period": 100000,
                                              "shares": 1024}})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(64 * 1024 * 1024), "20", "20000", "100000",
                                   str(1 + ((1024 - 2) * 9999) // 262142)]


@pytest.mark.cgroup_v2
def test_v2_memory_limit_oom_kills(oci, rootfs, v2_env):
    cfg = base_config(["sh", "-c", "head -c 200000000 /dev/zero | tail -c 100000000 >/dev/null;"
                                   " echo status=$?"])
    cfg["linux"]["resources"]["memory"] = {"limit": 32 * 1024 * 1024, "swap": 32 * 1024 * 1024}
    proc = oci.run(cfg, rootfs)
    # tail killed (the shell reports it) or, now and then, the shell itself
    assert proc.stdout.strip() == f"status={128 + signal.SIGKILL}" or \
        (proc.returncode == 128 + signal.SIGKILL and proc.stdout == ""), \
        (proc.returncode, proc.stdout + proc.stderr)


@pytest.mark.cgroup_v2
def test_v2_pids_limit_stops_fork(oci, rootfs, v2_env):
    cfg = base_config(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done 2>&1; "
                                   "echo done"])
    cfg["linux"]["resources"]["pids"] = {"limit": 5}
    proc = oci.run(cfg, rootfs)
    assert "can't fork" in proc.stdout or "Resource temporarily unavailable" in proc.stdout, \
        proc.stdout + proc.stderr


@pytest.mark.cgroup_v2
def test_v2_cgroup_namespace_mount(oci, rootfs, v2_env):
    cfg = base_config(["sh", "-c", "cat /proc/self/cgroup; ls /sys/fs/cgroup/cgroup.procs"])
    cfg["linux"]["namespaces"].append({"type": "cgroup"})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "0::/"
