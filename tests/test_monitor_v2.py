"""The observability code on a pure cgroup v2 host, in the QEMU guest (tests/test_v2_guest.py
runs the tests marked cgroup_v2 there): the daemon's Prometheus series against the v2
files (io.stat on the guest's scratch disk too), an OOM kill under memory.max (the counter, the oom event, OOMKilled), doctor's
cgroup2 leftovers and its host check, and a health check's exec in the container's cgroup.

One private engine and one daemon (`run -d` starts it on demand; daemon.json asks for
metrics on a free loopback port) for the whole module, and few CLI calls: Python in the
guest runs 10 to 50 times slower than here. Witnesses: the kernel's files, found through
/proc/<pid>/cgroup (0::<path>), not through minirun; prometheus_client's parser."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.request

import pytest
from enginetest import engine_serving_metrics
from ocitest import needs_root
from ocitest import wait_for as poll
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [needs_root, pytest.mark.cgroup_v2]

CGROUP_ROOT = os.environ.get("MINIRUN_CGROUP_ROOT", "/sys/fs/cgroup")
MIB = 1 << 20
# generous: the guest is slow
WAIT = 180.0


def cgroup_dir(pid: int) -> str:
    """The v2 cgroup directory of a process, as the kernel says it."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::"), lines  # pure v2
    return CGROUP_ROOT + lines[0][3:]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def keyed(path: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read(path).splitlines())}


def wait_for(predicate, what: str, timeout: float = WAIT):
    got = poll(predicate, timeout, 0.2)
    assert got, f"timed out waiting for {what}"
    return got


def scrape(addr: str) -> list[tuple[str, dict, float]]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=120) as r:
        assert r.status == 200
        text = r.read().decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples]


def value(samples, metric: str, **labels) -> float | None:
    found = [v for n, lb, v in samples
             if n == metric and all(lb.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, f"{metric}{labels}: {len(found)} samples"
    return found[0] if found else None


def inspect(env, name: str) -> dict:
    return json.loads(env("inspect", name, check=True).stdout)[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from engine_serving_metrics(str(tmp_path_factory.mktemp("monv2")))


@pytest.fixture(scope="module")
def boxes(env):
    """Two containers (no network: the guest has none to give):
    mv: 64 MiB limit, 8 MiB of file pages written, two processes;
    moom: 16 MiB limit, `tail /dev/zero` grows until the OOM killer takes it, then the
        init waits, and exits 3 on SIGTERM."""
    t0 = time.time()
    common = ["run", "-d", "--network", "none"]
    env(*common, "--name", "mv", "-m", "64m", "busybox", "sh", "-c",
        "dd if=/dev/zero of=/data bs=1M count=8 2>/dev/null; sleep 600 & exec sleep 600",
        check=True)
    env(*common, "--name", "moom", "-m", "16m", "busybox", "sh", "-c",
        "trap 'exit 3' TERM; tail /dev/zero; while :; do sleep 0.2; done", check=True)
    ps = json.loads(env("inspect", "mv", "moom", check=True).stdout)
    yield t0, {d["Name"].lstrip("/"): d for d in ps}
    env("rm", "-f", "mv", "moom")


def test_metrics_match_the_v2_files_and_count_an_oom_kill(env, boxes):
    _, docs = boxes
    mv, moom = docs["mv"], docs["moom"]
    cg = cgroup_dir(mv["State"]["Pid"])
    ocg = cgroup_dir(moom["State"]["Pid"])
    assert cg == f"{CGROUP_ROOT}/minirun/{mv['Id']}"
    # the OOM kill, as the kernel counts it, before the scrape
    wait_for(lambda: keyed(f"{ocg}/memory.events")["oom_kill"] >= 1, "moom's OOM kill")
    wait_for(lambda: int(read(f"{cg}/pids.current")) == 2, "mv's two processes")

    cpu_before = keyed(f"{cg}/cpu.stat")["usage_usec"]
    samples = scrape(env.addr)
    cpu_after = keyed(f"{cg}/cpu.stat")["usage_usec"]
    current = int(read(f"{cg}/memory.current"))
    stat = keyed(f"{cg}/memory.stat")

    path = cg[len(CGROUP_ROOT):]
    mine = [lb for n, lb, _ in samples if lb.get("name") == "mv"]
    assert mine and all(lb["id"] == path and lb["image"] == "busybox" for lb in mine)
    cpu = value(samples, "container_cpu_usage_seconds_total", id=path, cpu="total")
    assert 0 < cpu_before / 1e6 <= cpu <= cpu_after / 1e6
    assert value(samples, "container_spec_memory_limit_bytes", id=path) == 64 * MIB == \
        int(read(f"{cg}/memory.max"))
    usage = value(samples, "container_memory_usage_bytes", id=path)
    assert abs(usage - current) < MIB
    # the 8 MiB written are page cache, charged to the container
    assert usage > 8 * MIB
    ws = value(samples, "container_memory_working_set_bytes", id=path)
    assert abs(ws - (current - stat["inactive_file"])) < MIB
    assert value(samples, "container_processes", id=path) == 2
    assert value(samples, "container_oom_events_total", id=path) == 0

    opath = ocg[len(CGROUP_ROOT):]
    assert value(samples, "container_spec_memory_limit_bytes", id=opath) == 16 * MIB
    assert value(samples, "container_oom_events_total", id=opath) == \
        keyed(f"{ocg}/memory.events")["oom_kill"] == 1


def scratch_disk() -> str:
    """MAJ:MIN of the guest's 64 MiB scratch disk (tests/v2guest/guest.py), which a test
    may overwrite; refuses anything else: this must never write to a real host's disk."""
    size = read("/sys/block/vda/size").strip() if os.path.exists("/sys/block/vda") else ""
    assert os.uname().nodename == "v2guest" and size == str(64 * MIB // 512), \
        "needs the v2 guest's scratch disk /dev/vda (tests/v2guest/)"
    return read("/sys/block/vda/dev").strip()


def test_block_io_series_match_io_stat(env):
    """container_fs_{reads,writes}_bytes_total from io.stat, labelled /dev/vda."""
    majmin = scratch_disk()
    env("run", "-d", "--network", "none", "--name", "mio", "--device", "/dev/vda",
        "busybox", "sh", "-c", "dd if=/dev/zero of=/dev/vda bs=1M count=4 oflag=direct &&"
        " dd if=/dev/vda of=/dev/null bs=1M count=2 iflag=direct && exec sleep 600",
        check=True)
    try:
        cg = cgroup_dir(inspect(env, "mio")["State"]["Pid"])

        def io() -> dict[str, int]:
            for line in read(f"{cg}/io.stat").splitlines():
                dev, *pairs = line.split()
                if dev == majmin:
                    return {k: int(v) for k, v in (p.split("=") for p in pairs)}
            return {}

        wait_for(lambda: io().get("rbytes", 0) >= 2 * MIB, "mio's reads in io.stat")
        samples = scrape(env.addr)
        path = cg[len(CGROUP_ROOT):]
        counts = io()
        assert counts["wbytes"] >= 4 * MIB
        assert value(samples, "container_fs_writes_bytes_total", id=path,
                     device="/dev/vda") == counts["wbytes"]
        assert value(samples, "container_fs_reads_bytes_total", id=path,
                     device="/dev/vda") == counts["rbytes"]
    finally:
        env("rm", "-f", "mio")


def test_an_oom_killed_container_exits_with_its_oom_event_and_oomkilled(env, boxes):
    t0, docs = boxes
    ocg = cgroup_dir(docs["moom"]["State"]["Pid"])
    wait_for(lambda: keyed(f"{ocg}/memory.events")["oom_kill"] >= 1, "moom's OOM kill")
    env("kill", "-s", "TERM", "moom", check=True)
    assert env("wait", "moom", check=True, timeout=WAIT).stdout.strip() == "3"
    state = inspect(env, "moom")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 3
    assert state["OOMKilled"] is True
    proc = env("events", "--since", f"{t0:.9f}", "--until", f"{time.time():.9f}",
               "--filter", "container=moom", "--format", "json", check=True)
    acts = [json.loads(line)["Action"] for line in proc.stdout.splitlines()]
    assert "oom" in acts and "die" in acts and acts.index("oom") < acts.index("die"), acts
    # the sibling without an OOM kill has no such reason
    assert inspect(env, "mv")["State"]["OOMKilled"] is False


def test_a_health_check_runs_in_the_containers_v2_cgroup(env):
    """Its own container, removed at once: each check is a Python probe process, costly
    in the guest."""
    env("run", "-d", "--network", "none", "--name", "mhc", "--health-cmd",
        "cat /proc/self/cgroup /proc/1/cgroup", "--health-interval", "1s", "busybox",
        "sleep", "600", check=True)
    try:
        wait_for(lambda: inspect(env, "mhc")["State"]["Health"]["Status"] == "healthy",
                 "mhc healthy")
        h = inspect(env, "mhc")["State"]["Health"]
    finally:
        env("rm", "-f", "mhc")
    first = h["Log"][0]
    assert first["ExitCode"] == 0
    own, init = first["Output"].splitlines()
    # one v2 line each, the same cgroup as the container's init (whatever the cgroup
    # namespace makes of its name)
    assert own.startswith("0::") and own == init, first["Output"]


def test_doctor_finds_and_fixes_cgroup2_leftovers(env, boxes):
    """An empty orphan cgroup (with a child) and one holding a process, under /minirun of
    the cgroup2 hierarchy; and no complaint about v2's controllers."""
    top = os.path.join(CGROUP_ROOT, "minirun")
    empty = os.path.join(top, secrets.token_hex(32))
    busy = os.path.join(top, secrets.token_hex(32))
    os.makedirs(os.path.join(empty, "sub"))
    os.mkdir(busy)
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        with open(os.path.join(busy, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        proc = env("doctor", "--json", "--host-wide", "--grace", "0", timeout=WAIT)
        assert proc.returncode == 1, proc.stderr
        doc = json.loads(proc.stdout)
        by_what = {(f["kind"], f["what"]): f for f in doc["findings"]}
        epath, bpath = empty[len(CGROUP_ROOT):], busy[len(CGROUP_ROOT):]
        assert ("cgroup", epath) in by_what, doc["findings"]
        assert f"find {empty} -depth -type d -exec rmdir {{}} +" in \
            by_what[("cgroup", epath)]["fix"]
        assert ("cgroup", epath + "/sub") not in by_what  # its parent's fix removes it
        assert ("cgroup", bpath) in by_what
        assert ("process", f"pid {sleeper.pid} in cgroup {bpath}") in by_what, \
            doc["findings"]
        # the running containers are claimed
        assert not [f for f in doc["findings"] if any(
            d["Id"] in f["what"] for d in boxes[1].values())], doc["findings"]
        assert doc["host"]["cgroup"] == {"mode": "v2", "driver": "v2"}
        host = [f["what"] for f in doc["findings"] if f["kind"] == "host"]
        assert not [w for w in host if w.startswith("cgroup")], host

        proc = env("doctor", "--json", "--host-wide", "--grace", "0", "--no-host-checks",
                   "--fix", timeout=WAIT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert sleeper.wait(timeout=WAIT) == -9
        assert not os.path.exists(empty) and not os.path.exists(busy)
        # the containers' cgroups stay
        assert os.path.isdir(cgroup_dir(boxes[1]["mv"]["State"]["Pid"]))
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        for d in (os.path.join(empty, "sub"), empty, busy):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
