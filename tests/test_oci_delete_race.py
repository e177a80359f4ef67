"""delete --force racing a create under way: nothing may be left running unlisted.

The two sides are real minirun processes; each waits for the other at one point (create
before it forks its child, delete between its kill and its removal of the state), which
pins down the interleaving that left a created init behind: delete read the state before
the init's pid was in it, killed nothing, and removed the state after create had finished.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from ocitest import base_config, container_cgroup_dirs, needs_root, oci, rootfs  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

WAIT = textwrap.dedent("""
    import os, sys, time
    def wait(path, timeout):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
    def touch(path):
        open(path, "w").close()
""")

CREATE = WAIT + textwrap.dedent("""
    from minirun import runtime
    root, cid, bundle, sync = sys.argv[1:5]
    spawn = runtime._spawn
    def paused(*args, **kw):
        touch(os.path.join(sync, "saved"))  # state.json is there, without a pid
        wait(os.path.join(sync, "killed"), 30)
        return spawn(*args, **kw)
    runtime._spawn = paused
    try:
        c = runtime.create(root, cid, bundle, runtime.CreateOptions())
        print("created", c.pid)
    except Exception as e:
        print("failed", type(e).__name__, e)
    touch(os.path.join(sync, "done"))
""")

DELETE = WAIT + textwrap.dedent("""
    from minirun import container
    from minirun.cgroups.v1 import CgroupV1
    from minirun.cgroups.v2 import CgroupV2
    root, cid, sync = sys.argv[1:4]
    for cls in (CgroupV1, CgroupV2):
        def destroy(self, keep=(), _destroy=cls.destroy):
            touch(os.path.join(sync, "killed"))  # the kill is done: let create go on
            wait(os.path.join(sync, "done"), 3)
            return _destroy(self, keep)
        cls.destroy = destroy
    container.delete(root, cid, force=True)
""")


def _kill_cgroup(dirs: list[str]) -> list[int]:
    """Kill what is in the cgroup directories; returns the pids found."""
    found = set()
    for d in dirs:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            pass
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(found)


def test_delete_during_create_leaves_no_init_behind(oci, rootfs, tmp_path):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["true"]), rootfs)
    sync = tmp_path / "sync"
    sync.mkdir()
    os.makedirs(oci.root, exist_ok=True)
    # files, not pipes: a created init keeps its stdio open
    with open(tmp_path / "create.out", "w") as out_file, \
            open(tmp_path / "create.err", "w") as err_file:
        creator = subprocess.Popen([sys.executable, "-c", CREATE, oci.root, cid, bundle,
                                    str(sync)], stdout=out_file, stderr=err_file)
    try:
        for _ in range(600):
            if (sync / "saved").exists() or creator.poll() is not None:
                break
            time.sleep(0.05)
        assert (sync / "saved").exists(), "create never got to its child"
        deleter = subprocess.run([sys.executable, "-c", DELETE, oci.root, cid, str(sync)],
                                 capture_output=True, text=True, timeout=60, check=False)
        creator.wait(timeout=60)
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
    out = (tmp_path / "create.out").read_text()
    err = (tmp_path / "create.err").read_text()
    listed = oci("list", "-q").stdout.split()
    left = [] if cid in listed else _kill_cgroup(container_cgroup_dirs(f"/minirun/{cid}"))
    assert not left, (f"processes {left} left in the cgroup of {cid}, which nobody lists; "
                      f"create said {out!r} {err[-500:]!r}, delete {deleter.stderr[-500:]!r}")
    # whichever side won, the container is wholly there or wholly gone
    if cid not in listed:
        assert not container_cgroup_dirs(f"/minirun/{cid}")
        assert out.startswith("failed"), out
