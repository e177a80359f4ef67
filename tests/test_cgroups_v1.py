"""The cgroup v1 driver on this host's real v1 hierarchies.

Each test gets /minirun-test-<random>/ctr in every hierarchy, and its children join it
from preexec_fn (before exec, the way the runtime's first child joins). Teardown thaws,
kills and removes everything below /minirun-test-<random>, even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from cgrouptest import FORKER, MEMHOG, loop_device, read, wipe  # noqa: F401

from minirun.cgroups.v1 import CgroupV1, find_hierarchies
from minirun.errors import KernelFeatureMissing

MiB = 1024 * 1024


def _v1_controllers() -> set[str]:
    try:
        return {c for h in find_hierarchies() for c in h.controllers}
    except KernelFeatureMissing:
        return set()


NEEDED = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"}
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
    pytest.mark.skipif(
        not NEEDED <= _v1_controllers(),
        reason=f"needs cgroup v1 hierarchies for {', '.join(sorted(NEEDED))}",
    ),
]

# Children run as `python -c` helpers (MEMHOG, FORKER: cgrouptest) so the checks happen
# from inside the cgroup.
BUSY = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""
OPEN_DEVICES = """
import errno, os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDONLY))
        print(path, "ok")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
"""
DIRECT_READ = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT needs
start = time.monotonic()
for i in range(int(sys.argv[2])):
    os.preadv(fd, [buf], i << 20)
print(time.monotonic() - start)
"""


@pytest.fixture
def top():
    return f"/minirun-test-{secrets.token_hex(4)}"


@pytest.fixture
def cg(top):
    cgroup = CgroupV1(top + "/ctr")
    try:
        cgroup.create()
        yield cgroup
    finally:
        wipe([h.mountpoint + top for h in cgroup.hierarchies])
        leftovers = [h.mountpoint + top for h in cgroup.hierarchies
                     if os.path.exists(h.mountpoint + top)]
        assert not leftovers, f"test cgroups left behind: {leftovers}"


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
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    stream.close()


def py(script: str, *args: object) -> list[str]:
    return [sys.executable, "-c", script, *map(str, args)]


def cgfile(cg: CgroupV1, controller: str, name: str) -> str:
    return read(os.path.join(cg.controller_dir(controller), name)).strip()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_create_places_a_process_in_every_hierarchy(cg, spawn, top):
    for h in cg.hierarchies:
        assert os.path.isdir(h.mountpoint + top + "/ctr")
    # cpuset copied down, or no task could join
    cpuset_root = next(h.mountpoint for h in cg.hierarchies if "cpuset" in h.controllers)
    assert cgfile(cg, "cpuset", "cpuset.cpus") == read(f"{cpuset_root}/cpuset.cpus").strip()
    assert cgfile(cg, "cpuset", "cpuset.mems") != ""

    proc = spawn(["sleep", "300"])
    lines = read(f"/proc/{proc.pid}/cgroup").splitlines()
    placed = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        placed[controllers] = path
    for h in cg.hierarchies:
        if h.name == "unified":  # a hybrid host's cgroup2 mount: the "0::" line
            key = ""
        else:
            key = ",".join(h.controllers) if h.controllers else f"name={h.name}"
        assert placed[key] == top + "/ctr", key
    assert cg.pids() == [proc.pid]
    names = {name for _, name in cg.mounts_for_container()}
    assert {"cpu", "cpuacct", "memory", "systemd"} <= names


def test_memory_limits_raise_and_lower_in_the_right_order(cg):
    memsw = os.path.exists(os.path.join(cg.controller_dir("memory"), "memory.memsw.limit_in_bytes"))
    swap = {"swap": 256 * MiB} if memsw else {}
    cg.apply({"memory": {"limit": 128 * MiB, "reservation": 64 * MiB, "swappiness": 10, **swap}})
    assert cgfile(cg, "memory", "memory.limit_in_bytes") == str(128 * MiB)
    assert cgfile(cg, "memory", "memory.soft_limit_in_bytes") == str(64 * MiB)
    assert cgfile(cg, "memory", "memory.swappiness") == "10"
    if not memsw:
        return
    assert cgfile(cg, "memory", "memory.memsw.limit_in_bytes") == str(256 * MiB)
    # both below the old memory limit: memory must go first
    cg.apply({"memory": {"limit": 32 * MiB, "swap": 48 * MiB}})
    assert cgfile(cg, "memory", "memory.limit_in_bytes") == str(32 * MiB)
    assert cgfile(cg, "memory", "memory.memsw.limit_in_bytes") == str(48 * MiB)
    # both above the old memsw limit: memsw must go first
    cg.apply({"memory": {"limit": 512 * MiB, "swap": 1024 * MiB}})
    assert cgfile(cg, "memory", "memory.limit_in_bytes") == str(512 * MiB)
    assert cgfile(cg, "memory", "memory.memsw.limit_in_bytes") == str(1024 * MiB)


def test_memory_limit_oom_kills_a_memhog(cg, spawn):
    cg.apply({"memory": {"limit": 48 * MiB, "swap": 48 * MiB}})
    assert cg.oom_kill_count() == 0
    hog = spawn(py(MEMHOG, 256), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = hog.communicate(timeout=60)
    assert hog.returncode == -signal.SIGKILL
    assert b"allocated" not in out
    assert cg.oom_kill_count() >= 1
    assert cg.stats()["memory"]["usage"]["max"] >= 40 * MiB


def test_stats_report_a_childs_memory_and_cpu(cg, spawn):
    hog = spawn(py(MEMHOG, 32), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert hog.stdout.readline() == b"allocated\n"
    stats = cg.stats()
    memory = stats["memory"]
    assert memory["usage"]["usage"] >= 32 * MiB
    assert 30 * MiB <= memory["working_set"] <= memory["usage"]["usage"]
    assert memory["stats"]["total_rss"] >= 32 * MiB
    assert stats["pids"]["current"] == 1
    assert stats["cpu"]["usage"]["total"] > 0
    assert len(stats["cpu"]["usage"]["percpu"]) == os.cpu_count()


def test_cpu_quota_throttles_a_busy_loop(cg, spawn):
    cg.apply({"cpu": {"shares": 512, "quota": 20000, "period": 100000}})
    assert cgfile(cg, "cpu", "cpu.shares") == "512"
    assert cgfile(cg, "cpu", "cpu.cfs_quota_us") == "20000"
    assert cgfile(cg, "cpu", "cpu.cfs_period_us") == "100000"
    busy = spawn(py(BUSY, 1.0))
    assert busy.wait(timeout=30) == 0
    stats = cg.stats()["cpu"]
    # 1 s of wall time at 20% of one cpu: about 0.2 s of cpu, never close to 1 s
    assert 0 < stats["usage"]["total"] < 0.5e9
    assert stats["throttling"]["throttled_periods"] > 0


def test_cpuset_pins_the_process(cg, spawn):
    cg.apply({"cpu": {"cpus": "0", "mems": "0"}})
    assert cgfile(cg, "cpuset", "cpuset.cpus") == "0"
    proc = spawn(["sleep", "300"])
    status = dict(line.split(":\t", 1) for line in read(f"/proc/{proc.pid}/status").splitlines()
                  if ":\t" in line)
    assert status["Cpus_allowed_list"].strip() == "0"


def test_pids_limit_makes_fork_fail(cg, spawn):
    cg.apply({"pids": {"limit": 5}})
    assert cgfile(cg, "pids", "pids.max") == "5"
    forker = spawn(py(FORKER, 10), stdout=subprocess.PIPE)
    out, _ = forker.communicate(timeout=60)
    started, failed = map(int, out.split())
    assert started == 4  # the forker itself is the fifth task
    assert failed == 6
    cg.apply({"pids": {"limit": 0}})  # 0 means no limit, as runc maps it
    assert cgfile(cg, "pids", "pids.max") == "max"


def test_blkio_weight_or_its_documented_refusal(cg):
    """blkio.weight (CFQ) and blkio.bfq.weight (BFQ) exist only while some device uses one
    of those schedulers: probe, and where neither does, check the one-line refusal."""
    weight_file = next((name for name in ("blkio.weight", "blkio.bfq.weight")
                        if os.path.exists(os.path.join(cg.controller_dir("blkio"), name))),
                       None)
    if weight_file is None:
        with pytest.raises(KernelFeatureMissing) as refused:
            cg.apply({"blockIO": {"weight": 500}})
        assert "linux.resources.blockIO.weight" in str(refused.value)
        assert "BFQ" in str(refused.value)
        assert "\n" not in str(refused.value)
    else:
        cg.apply({"blockIO": {"weight": 500}})
        assert cgfile(cg, "blkio", weight_file) == "500"


def test_blkio_read_throttle(cg, spawn, loop_device):  # noqa: F811
    number = read(f"/sys/block/{os.path.basename(loop_device)}/dev").strip()
    major, minor = map(int, number.split(":"))
    cg.apply({"blockIO": {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": MiB}],
    }})
    assert cgfile(cg, "blkio", "blkio.throttle.read_bps_device") == f"{number} {MiB}"
    reader = spawn(py(DIRECT_READ, loop_device, 3), stdout=subprocess.PIPE)
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    assert float(out) > 1.5  # 3 MiB at 1 MiB/s, whatever the first slice allows
    serviced = cg.stats()["blkio"]["ioServiceBytesRecursive"]
    read_bytes = sum(e["value"] for e in serviced if e["op"] == "Read"
                     and (e["major"], e["minor"]) == (major, minor))
    assert read_bytes >= 3 * MiB


def test_default_deny_leaves_runc_default_devices(cg, spawn):
    cg.apply({"devices": [{"allow": False, "access": "rwm"}]})
    listed = cgfile(cg, "devices", "devices.list").splitlines()
    assert "a *:* rwm" not in listed
    assert {"c 1:3 rwm", "c 136:* rwm", "c *:* m", "b *:* m"} <= set(listed)
    probe = spawn(py(OPEN_DEVICES, "/dev/null", "/dev/zero", "/dev/loop0"),
                  stdout=subprocess.PIPE)
    out, _ = probe.communicate(timeout=30)
    assert out.decode().splitlines() == ["/dev/null ok", "/dev/zero ok", "/dev/loop0 EPERM"]


def test_device_rules_apply_in_order(cg, spawn):
    cg.apply({"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"},
    ]})
    probe = spawn(py(OPEN_DEVICES, "/dev/loop0", "/dev/loop1"), stdout=subprocess.PIPE)
    out, _ = probe.communicate(timeout=30)
    assert out.decode().splitlines() == ["/dev/loop0 ok", "/dev/loop1 EPERM"]


def test_freeze_and_thaw(cg, spawn):
    proc = spawn(["sleep", "300"])
    cg.freeze()
    assert cgfile(cg, "freezer", "freezer.state") == "FROZEN"
    assert cg.is_frozen()
    # a frozen task shows as D in /proc
    assert read(f"/proc/{proc.pid}/stat").rsplit(")", 1)[1].split()[0] == "D"
    cg.thaw()
    assert cgfile(cg, "freezer", "freezer.state") == "THAWED"
    assert not cg.is_frozen()
    assert wait_for(lambda: read(f"/proc/{proc.pid}/stat").rsplit(")", 1)[1].split()[0] == "S")


def test_kill_all_kills_children_too_and_destroy_removes_everything(cg, spawn, top):
    sh = spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    assert wait_for(lambda: len(cg.pids()) == 3)
    cg.freeze()  # killing a paused container must work as well
    cg.kill_all(signal.SIGKILL)
    assert cg.pids() == []
    assert sh.wait(timeout=10) == -signal.SIGKILL
    cg.destroy()
    assert not cg.exists()
    for h in cg.hierarchies:
        assert not os.path.exists(h.mountpoint + top + "/ctr")
        assert os.path.isdir(h.mountpoint + top)  # the shared parent stays
    cg.destroy()  # missing is fine


def test_kill_all_with_sigterm_signals_every_process(cg, spawn):
    sleepers = [spawn(["sleep", "300"]) for _ in range(3)]
    cg.kill_all(signal.SIGTERM)
    assert [p.wait(timeout=10) for p in sleepers] == [-signal.SIGTERM] * 3


def test_destroy_removes_nested_cgroups(cg, top):
    os.mkdir(os.path.join(cg.controller_dir("memory"), "nested"))
    cg.destroy()
    assert not cg.exists()


def test_unified_is_refused_on_v1(cg):
    with pytest.raises(KernelFeatureMissing, match="linux.resources.unified"):
        cg.apply({"unified": {"memory.high": "64M"}})
