"""Cgroup.fork(): the runtime's first child starts in the container's cgroup2 directory
(clone3 with CLONE_INTO_CGROUP) instead of being moved there through cgroup.procs, which
waits out an RCU grace period. Checked on this host's cgroup2 mount (/sys/fs/cgroup/unified
of a hybrid host) with both drivers, from inside the child, and through minirun-oci; and
each way it falls back to os.fork() still ends with the child placed.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import subprocess
import threading

import pytest
from cgrouptest import read, wipe
from ocitest import OCI_CMD, base_config, needs_root, oci, rootfs  # noqa: F401 - fixtures

from minirun import sys as _sys
from minirun.cgroups import detect_mode
from minirun.cgroups.v1 import CgroupV1
from minirun.cgroups.v2 import CgroupV2
from minirun.errors import KernelFeatureMissing

UNIFIED = "/sys/fs/cgroup/unified"
MiB = 1024 * 1024


def _cgroup2_root() -> str | None:
    """The cgroup2 mount: the whole of /sys/fs/cgroup (pure v2, as in the QEMU guest) or
    a hybrid host's unified mount."""
    try:
        mode = detect_mode()
    except KernelFeatureMissing:
        return None
    return {"v2": "/sys/fs/cgroup", "hybrid": UNIFIED}.get(mode)


def _clone_into_cgroup_works() -> bool:
    """Probe the kernel (clone3 is linux 5.3, CLONE_INTO_CGROUP 5.7) with a child born
    into the cgroup2 root, where the caller may always go."""
    root = _cgroup2_root()
    if root is None or os.geteuid() != 0:
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pid = _sys.fork_into_cgroup(fd)
    except _sys.SysError as e:
        assert e.errno in (errno.ENOSYS, errno.E2BIG, errno.EINVAL), e
        return False
    finally:
        os.close(fd)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return True


pytestmark = [
    needs_root,
    pytest.mark.skipif(_cgroup2_root() is None, reason="needs a cgroup2 mount"),
    pytest.mark.skipif(not _clone_into_cgroup_works(),
                       reason="the kernel has no clone3 CLONE_INTO_CGROUP (linux 5.7)"),
]
# This host's tests use the unified mount of a hybrid host; the QEMU guest's (cgroup_v2)
# the pure v2 hierarchy with its controllers enabled.
hybrid = pytest.mark.skipif(_cgroup2_root() != UNIFIED, reason=f"needs a cgroup2 mount at {UNIFIED}")
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


def _cgroup_lines() -> dict[str, str]:
    """/proc/self/cgroup as {controllers: path}; "" is the cgroup2 line."""
    out = {}
    for line in read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        out[controllers] = path
    return out


@pytest.fixture
def top():
    return f"/minirun-test-{secrets.token_hex(4)}"


@pytest.fixture(params=["v1", "v2"])
def cg(request, top):
    """The v1 driver (every hierarchy, the unified mount last) or the v2 driver on the
    unified mount, bound to <top>/ctr and created."""
    if request.param == "v1":
        cgroup = CgroupV1(top + "/ctr")
        tops = [h.mountpoint + top for h in cgroup.hierarchies]
    else:
        cgroup = CgroupV2(top + "/ctr", root=UNIFIED)
        tops = [UNIFIED + top]
    try:
        cgroup.create()
        yield cgroup
    finally:
        wipe(tops)
        leftovers = [d for d in tops if os.path.exists(d)]
        assert not leftovers, f"test cgroups left behind: {leftovers}"


def _fork_and_report(cg) -> dict:
    """cg.fork(); the child reports where it started, then where add_pid(0) took it or
    why it failed."""
    r, w = os.pipe()
    pid = cg.fork()
    if pid == 0:
        try:
            os.close(r)
            report = {"born": cg.born_in_cgroup2, "before": _cgroup_lines(), "error": ""}
            try:
                cg.add_pid(0)
            except Exception as e:  # noqa: BLE001 - reported to the parent
                report["error"] = str(e)
            report["after"] = _cgroup_lines()
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    assert data, "the child died before reporting"
    return json.loads(data)


def _assert_placed(cg, lines: dict[str, str], path: str) -> None:
    if cg.version == 1:  # every v1 hierarchy and the cgroup2 mount
        assert set(lines.values()) == {path}, lines
    else:
        assert lines[""] == path, lines


@hybrid
def test_child_starts_in_the_cgroup2_directory(cg, top):
    mine = _cgroup_lines()
    report = _fork_and_report(cg)
    assert report["born"] is True
    assert report["error"] == ""
    # in the container's cgroup before anything was written to cgroup.procs...
    assert report["before"][""] == top + "/ctr"
    # ...and in every hierarchy of the driver once add_pid(0) has run (which skipped
    # cgroup2)
    _assert_placed(cg, report["after"], top + "/ctr")
    if cg.version == 1:
        assert report["before"]["pids"] == mine["pids"]  # v1: only the cgroup2 line moved
    assert _cgroup_lines() == mine, "the parent must stay where it was"
    assert cg.pids() == []  # the child has exited


@hybrid
def test_a_threaded_caller_gets_os_fork(cg, top):
    # with another thread alive, bypassing glibc's fork could copy a lock it holds
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        report = _fork_and_report(cg)
    finally:
        stop.set()
        thread.join()
    assert report["born"] is False
    assert report["before"][""] == _cgroup_lines()[""]
    assert report["error"] == ""
    _assert_placed(cg, report["after"], top + "/ctr")


@hybrid
def test_no_proc_to_count_threads_gets_os_fork(cg, top, monkeypatch):
    real_listdir = os.listdir

    def listdir(path="."):
        if path == "/proc/self/task":
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    report = _fork_and_report(cg)
    assert report["born"] is False
    assert report["error"] == ""
    _assert_placed(cg, report["after"], top + "/ctr")


@hybrid
def test_a_missing_cgroup2_directory_gets_os_fork(cg, top):
    os.rmdir(cg.cgroup2_dir())
    report = _fork_and_report(cg)
    assert report["born"] is False
    assert report["before"][""] == _cgroup_lines()[""]
    assert "cannot move pid 0 into cgroup" in report["error"]


def _minirun_oci_under_strace(runner, tmp_path, args: list[str], env=None) -> list[str]:
    """Run minirun-oci ARGS under strace; check it succeeded and that the process it
    started reports the container's cgroup2 line. Returns the clone3 calls."""
    log = tmp_path / "strace.log"
    cmd = ["strace", "-f", "-qq", "-e", "trace=clone3", "-o", str(log)] + OCI_CMD + [
        "--root", runner.root, *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    cid = args[-1] if args[0] == "run" else args[1]
    assert f"0::/minirun/{cid}" in proc.stdout.splitlines()
    return [line for line in log.read_text().splitlines() if "clone3(" in line]


@hybrid
@needs_strace
@pytest.mark.parametrize("driver", ["v1", "v2"])
def test_minirun_oci_run_clones_into_the_cgroup(oci, rootfs, tmp_path, driver):
    env = dict(os.environ)
    if driver == "v2":
        env.update(MINIRUN_CGROUP_DRIVER="v2", MINIRUN_CGROUP_ROOT=UNIFIED)
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["cat", "/proc/self/cgroup"]), rootfs)
    clones = _minirun_oci_under_strace(oci, tmp_path, ["run", "--bundle", bundle, cid], env)
    assert any("CLONE_INTO_CGROUP" in line for line in clones), clones


@hybrid
@needs_strace
def test_minirun_oci_exec_clones_into_the_cgroup(oci, rootfs, tmp_path):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sleep", "600"]), rootfs)
    oci("run", "--detach", "--bundle", bundle, cid, check=True)
    clones = _minirun_oci_under_strace(oci, tmp_path, ["exec", cid, "cat", "/proc/self/cgroup"])
    assert any("CLONE_INTO_CGROUP" in line for line in clones), clones


@pytest.mark.cgroup_v2
def test_pure_v2_child_starts_in_a_cgroup_with_limits(top):
    # controllers enabled down to the parent (apply does that): the cgroup takes the
    # clone as it takes a move through cgroup.procs
    cgroup = CgroupV2(top + "/ctr", root="/sys/fs/cgroup")
    try:
        cgroup.create()
        cgroup.apply({"memory": {"limit": 64 * MiB}, "pids": {"limit": 64}})
        report = _fork_and_report(cgroup)
        assert report["born"] is True
        assert report["error"] == ""
        assert report["before"][""] == top + "/ctr"
        assert read(os.path.join(cgroup.dir, "memory.max")).strip() == str(64 * MiB)
    finally:
        wipe(["/sys/fs/cgroup" + top])
    assert not os.path.exists("/sys/fs/cgroup" + top), "test cgroup left behind"


@pytest.mark.cgroup_v2
@needs_strace
def test_pure_v2_minirun_oci_run_clones_into_the_cgroup(oci, rootfs, tmp_path):
    cid = oci.new_id()
    cfg = base_config(["cat", "/proc/self/cgroup"])
    cfg["linux"]["resources"] = {"pids": {"limit": 64}}
    bundle = oci.bundle(cfg, rootfs)
    clones = _minirun_oci_under_strace(oci, tmp_path, ["run", "--bundle", bundle, cid])
    assert any("CLONE_INTO_CGROUP" in line for line in clones), clones
