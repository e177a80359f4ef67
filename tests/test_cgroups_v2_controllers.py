"""The cgroup v2 driver's controllers on a pure cgroup v2 hierarchy.

Runs inside the QEMU guest (tests/v2guest/, driven by test_v2_guest.py), where
/sys/fs/cgroup is cgroup2 with memory, cpu, pids and io enabled at the root and /dev/vda
is a scratch disk; deselected elsewhere by tests/conftest.py. Work in the guest runs 10
to 50 times slower than on the host: timings are measured inside the children, and
timeouts are generous.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys

import pytest

from cgrouptest import FORKER, MEMHOG, read, wipe

from minirun.cgroups.v2 import CgroupV2
from minirun.errors import KernelFeatureMissing

pytestmark = pytest.mark.cgroup_v2

ROOT = os.environ.get("MINIRUN_CGROUP_ROOT", "/sys/fs/cgroup")
MiB = 1024 * 1024
SLOW = 300  # seconds: a child's whole run under TCG emulation

# cpu time over wall time of a busy loop, measured after the interpreter has started
BUSY_SHARE = """
import sys, time
wall0, cpu0 = time.monotonic(), time.process_time()
while time.monotonic() - wall0 < float(sys.argv[1]):
    pass
print((time.process_time() - cpu0) / (time.monotonic() - wall0), flush=True)
"""
DIRECT_READ = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT needs
start = time.monotonic()
for i in range(int(sys.argv[2])):
    os.preadv(fd, [buf], i << 20)
print(time.monotonic() - start, flush=True)
"""


@pytest.fixture(scope="module", autouse=True)
def pure_v2_root():
    """The premise of every test here; a failure, not a skip, when it does not hold."""
    controllers = set(read(os.path.join(ROOT, "cgroup.subtree_control")).split())
    assert {"memory", "cpu", "pids", "io"} <= controllers, (
        f"{ROOT} does not delegate memory, cpu, pids and io (not the v2 guest?)"
    )


@pytest.fixture
def top():
    return f"/minirun-test-{secrets.token_hex(4)}"


@pytest.fixture
def cg(top):
    cgroup = CgroupV2(top + "/ctr", root=ROOT)
    try:
        cgroup.create()
        yield cgroup
    finally:
        wipe([ROOT + top], timeout=60)
        assert not os.path.exists(ROOT + top), "test cgroup left behind"


@pytest.fixture
def spawn(cg):
    """Start a child that joins `cg` before exec; killed and reaped at teardown."""
    children: list[subprocess.Popen] = []

    def start(argv: list[str], **kwargs) -> subprocess.Popen:
        # the child joins before exec, as the runtime\'s first child does; pytest runs
        # no threads that a fork could catch holding a lock
        proc = subprocess.Popen(argv, preexec_fn=lambda: cg.add_pid(0), **kwargs)  # noqa: PLW1509
        children.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=SLOW)
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    stream.close()


def py(script: str, *args: object) -> list[str]:
    return [sys.executable, "-c", script, *map(str, args)]


def cgfile(cg: CgroupV2, name: str) -> str:
    return read(os.path.join(cg.dir, name)).strip()


def test_create_passes_down_what_the_root_delegates(cg, top):
    enabled = set(read(f"{ROOT}{top}/cgroup.subtree_control").split())
    assert {"memory", "cpu", "pids", "io"} <= enabled
    # so a container without limits still has stats
    stats = cg.stats()
    assert stats["memory"]["usage"]["usage"] == 0
    assert stats["pids"] == {"current": 0, "limit": 0}
    assert "throttling" in stats["cpu"]


def test_apply_enables_a_controller_the_root_does_not_delegate_yet(cg, spawn, top):
    # cpuset is not among what the guest's init enables: apply must enable it at the
    # root (a pure v2 hierarchy) and on the way down
    cg.apply({"cpu": {"cpus": "0", "mems": "0"}, "pids": {"limit": 100}})
    assert "cpuset" in read(f"{ROOT}/cgroup.subtree_control").split()
    assert "cpuset" in read(f"{ROOT}{top}/cgroup.subtree_control").split()
    assert cgfile(cg, "cpuset.cpus") == "0"
    assert cgfile(cg, "pids.max") == "100"
    proc = spawn(["sleep", "600"])
    status = read(f"/proc/{proc.pid}/status")
    assert "\nCpus_allowed_list:\t0\n" in status


def test_memory_max_oom_kills_a_memhog(cg, spawn):
    cg.apply({"memory": {"limit": 48 * MiB, "swap": 48 * MiB}})
    assert cgfile(cg, "memory.max") == str(48 * MiB)
    assert cgfile(cg, "memory.swap.max") == "0"  # swap == limit: no swap at all
    assert cg.oom_kill_count() == 0
    hog = spawn(py(MEMHOG, 256), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = hog.communicate(timeout=SLOW)
    assert hog.returncode == -signal.SIGKILL
    assert b"allocated" not in out
    assert cg.oom_kill_count() >= 1
    assert cg.stats()["memory"]["usage"]["failcnt"] >= 1  # memory.events "max"


def test_swap_and_reservation_conversion(cg):
    cg.apply({"memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": 32 * MiB}})
    assert cgfile(cg, "memory.max") == str(64 * MiB)
    assert cgfile(cg, "memory.swap.max") == str(32 * MiB)  # swap alone: 96 - 64
    assert cgfile(cg, "memory.low") == str(32 * MiB)
    cg.apply({"memory": {"limit": 64 * MiB, "swap": -1}})
    assert cgfile(cg, "memory.swap.max") == "max"
    cg.apply({"memory": {"limit": -1}})
    assert cgfile(cg, "memory.max") == "max"


def test_cpu_weight_from_shares(cg):
    for shares, weight in ((1024, "39"), (2, "1"), (262144, "10000"), (512, "20")):
        cg.apply({"cpu": {"shares": shares}})
        assert cgfile(cg, "cpu.weight") == weight, shares


def test_cpu_max_from_quota_and_period_throttles_a_busy_loop(cg, spawn):
    cg.apply({"cpu": {"quota": 20000, "period": 100000}})
    assert cgfile(cg, "cpu.max") == "20000 100000"
    busy = spawn(py(BUSY_SHARE, 2.0), stdout=subprocess.PIPE)
    out, _ = busy.communicate(timeout=SLOW)
    assert busy.returncode == 0
    assert float(out) < 0.4  # 20% of one cpu, with room for accounting slack
    assert cg.stats()["cpu"]["throttling"]["throttled_periods"] > 0
    cg.apply({"cpu": {"quota": -1, "period": 100000}})
    assert cgfile(cg, "cpu.max") == "max 100000"


def test_pids_max_makes_fork_fail(cg, spawn):
    cg.apply({"pids": {"limit": 5}})
    assert cgfile(cg, "pids.max") == "5"
    forker = spawn(py(FORKER, 10), stdout=subprocess.PIPE)
    out, _ = forker.communicate(timeout=SLOW)
    started, failed = map(int, out.split())
    assert started == 4  # the forker itself is the fifth task
    assert failed == 6
    assert int(read(os.path.join(cg.dir, "pids.events")).split()[1]) >= 6
    cg.apply({"pids": {"limit": -1}})
    assert cgfile(cg, "pids.max") == "max"


def test_io_weight_from_blkio_weight(cg):
    try:
        cg.apply({"blockIO": {"weight": 500}})
    except KernelFeatureMissing as e:
        # neither BFQ nor iocost in this kernel: the driver must say so, naming the field
        assert "blockIO.weight" in str(e)
        assert not os.path.exists(os.path.join(cg.dir, "io.weight"))
        assert not os.path.exists(os.path.join(cg.dir, "io.bfq.weight"))
        return
    if os.path.exists(os.path.join(cg.dir, "io.bfq.weight")):
        assert cgfile(cg, "io.bfq.weight").split()[-1] == "500"  # BFQ keeps blkio's scale
    else:
        assert cgfile(cg, "io.weight") == "default 4950"  # 1 + (500-10)*9999/990


def test_io_max_throttles_reads(cg, spawn):
    number = read("/sys/block/vda/dev").strip()
    major, minor = map(int, number.split(":"))
    free = spawn(py(DIRECT_READ, "/dev/vda", 3), stdout=subprocess.PIPE)
    unthrottled = float(free.communicate(timeout=SLOW)[0])
    cg.apply({"blockIO": {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": MiB}],
    }})
    assert cgfile(cg, "io.max").startswith(f"{number} rbps={MiB} wbps=max")
    slow = spawn(py(DIRECT_READ, "/dev/vda", 3), stdout=subprocess.PIPE)
    throttled = float(slow.communicate(timeout=SLOW)[0])
    assert throttled > 1.5  # 3 MiB at 1 MiB/s, whatever the first slice allows
    assert throttled > unthrottled + 1.0
    serviced = cg.stats()["blkio"]["ioServiceBytesRecursive"]
    read_bytes = sum(e["value"] for e in serviced
                     if e["op"] == "Read" and (e["major"], e["minor"]) == (major, minor))
    assert read_bytes >= 6 * MiB


def test_stats_working_set(cg, spawn):
    cg.apply({"memory": {"limit": 256 * MiB}, "pids": {"limit": 100}})
    hog = spawn(py(MEMHOG, 32), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert hog.stdout.readline() == b"allocated\n"
    stats = cg.stats()
    memory = stats["memory"]
    assert memory["usage"]["usage"] >= 32 * MiB
    assert memory["usage"]["limit"] == 256 * MiB
    assert memory["stats"]["anon"] >= 32 * MiB
    assert 30 * MiB <= memory["working_set"] <= memory["usage"]["usage"]
    assert stats["pids"] == {"current": 1, "limit": 100}
    assert stats["cpu"]["usage"]["total"] > 0


def test_unified_writes_files_verbatim(cg):
    cg.apply({"unified": {"memory.high": "100M", "pids.max": "7"}})
    assert cgfile(cg, "memory.high") == str(100 * MiB)
    assert cgfile(cg, "pids.max") == "7"
