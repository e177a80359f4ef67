"""ContainerStats and PodSandboxStats (minirun/cri/stats.py) on engine containers, checked
against their cgroup's own files (found from /proc/<pid>/cgroup of the container's
process, not from minirun's records), du/find of the upper dir, and the container's own
/sys/class/net counters read from inside it. The pod here is a plain record handed to the
mixin (the shape minirun.pods gives); the gRPC path is covered once pods land.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from enginetest import engine  # noqa: F401 - the fixture

from minirun.cri.api import api_pb2 as pb
from minirun.cri.stats import StatsMixin, network_usage
from minirun.engine import Engine

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"),
]

FILE_MB = 8
WORK = (f"dd if=/dev/zero of=/tmp/f bs=1M count={FILE_MB} 2>/dev/null; "
        "sleep 1000 & sleep 1000 & wait")


class FakePods:
    def __init__(self, pods: dict[str, dict], members: dict[str, list[str]]) -> None:
        self.pods, self.members = pods, members

    def get(self, pod_id: str) -> dict:
        return self.pods[pod_id]

    def list(self) -> list[dict]:
        return list(self.pods.values())

    def containers(self, pod_id: str) -> list[str]:
        return self.members[pod_id]


class Stats(StatsMixin):
    def __init__(self, engine_env, pods=None) -> None:
        self.engine = Engine(engine_env.root, engine_env.run_root)
        self.pods = pods


def pod_record(pod_id: str, network: str = "pod") -> dict:
    return {"id": pod_id, "name": "statpod", "uid": "uid-1", "namespace": "default",
            "attempt": 1, "labels": {"app": "stats"}, "annotations": {"a": "b"},
            "state": "ready", "spec": {"network": network}, "cgroup_parent": "",
            "holder": "", "netns": ""}


def cgroup_dir(pid: int, controller: str) -> str:
    """The container's cgroup directory for a v1 controller (or the v2 one), from
    /proc/<pid>/cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(",") and controllers:
                return f"/sys/fs/cgroup/{controller}{path}"
        f.seek(0)
        for line in f:
            hier, controllers, path = line.rstrip("\n").split(":", 2)
            if hier == "0":
                return f"/sys/fs/cgroup{path}"
    raise AssertionError(f"no {controller} cgroup for {pid}")


def is_v2(pid: int) -> bool:
    return os.path.exists(os.path.join(cgroup_dir(pid, "memory"), "memory.current"))


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def keyed(path: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read(path).splitlines())}


def cpu_ns(pid: int) -> int:
    if is_v2(pid):
        return keyed(os.path.join(cgroup_dir(pid, "cpu"), "cpu.stat"))["usage_usec"] * 1000
    return int(read(os.path.join(cgroup_dir(pid, "cpuacct"), "cpuacct.usage")))


def memory_usage(pid: int) -> int:
    d = cgroup_dir(pid, "memory")
    return int(read(os.path.join(d, "memory.current" if is_v2(pid) else
                                 "memory.usage_in_bytes")))


@pytest.fixture(scope="module")
def running(engine):  # noqa: F811 - the enginetest fixture
    """A bridged container that wrote FILE_MB MiB into its upper dir and runs two sleeps
    under sh, with a 64 MiB memory limit; and a CPU burner."""
    ids = []
    try:
        for args in (["--memory", "64m", "busybox", "sh", "-c", WORK],
                     ["--network", "none", "busybox", "sh", "-c", "while :; do :; done"]):
            ids.append(engine("run", "-d", *args, check=True).stdout.strip())
        worker = ids[0]
        deadline = time.monotonic() + 30
        sleeps = "ps -o comm | grep -c '^sleep$'"
        while engine("exec", worker, "sh", "-c", sleeps).stdout.strip() != "2":
            assert time.monotonic() < deadline, "the sleeps did not start"
            time.sleep(0.2)
        yield ids
    finally:
        for cid in ids:
            engine("rm", "-f", cid)


def pid_of(env, cid: str) -> int:
    return json.loads(env("inspect", cid, check=True).stdout)[0]["State"]["Pid"]


def container_stats(svc: Stats, cid: str) -> pb.ContainerStats:
    return svc.ContainerStats(pb.ContainerStatsRequest(container_id=cid), None).stats


def test_container_stats_match_its_cgroup(engine, running):  # noqa: F811
    cid = running[0]
    pid = pid_of(engine, cid)
    svc = Stats(engine)
    before_cpu, before_mem = cpu_ns(pid), memory_usage(pid)
    s = container_stats(svc, cid)
    after_cpu, after_mem = cpu_ns(pid), memory_usage(pid)
    assert s.attributes.id == cid
    assert before_cpu <= s.cpu.usage_core_nano_seconds.value <= after_cpu
    mem = s.memory
    assert min(before_mem, after_mem) - (1 << 20) <= mem.usage_bytes.value \
        <= max(before_mem, after_mem) + (1 << 20)
    assert 0 < mem.working_set_bytes.value <= mem.usage_bytes.value
    stat = keyed(os.path.join(cgroup_dir(pid, "memory"), "memory.stat"))
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    assert abs(mem.working_set_bytes.value - (mem.usage_bytes.value - inactive)) <= 1 << 20
    faults = stat.get("total_pgfault", stat.get("pgfault"))
    assert 0 < mem.page_faults.value <= faults
    assert mem.major_page_faults.value <= mem.page_faults.value
    assert 0 < mem.rss_bytes.value <= mem.usage_bytes.value
    # --memory 64m: available = limit - working set
    assert mem.available_bytes.value == (64 << 20) - mem.working_set_bytes.value
    now = time.time_ns()
    for ts in (s.cpu.timestamp, mem.timestamp, s.writable_layer.timestamp):
        assert 0 < now - ts < 10 * 10**9


def test_writable_layer_is_the_upper_dir(engine, running):  # noqa: F811
    cid = running[0]
    s = container_stats(Stats(engine), cid)
    upper = os.path.join(engine.root, "containers", cid, "upper")
    du = int(subprocess.run(["du", "-s", "-B1", "-x", upper], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    assert s.writable_layer.used_bytes.value >= FILE_MB << 20
    # du also counts the upper dir itself
    assert abs(du - s.writable_layer.used_bytes.value) <= 64 * 1024
    inodes = subprocess.run(["find", upper, "-xdev", "-mindepth", "1", "-printf", "%i\n"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert s.writable_layer.inodes_used.value == len(set(inodes)) >= 2
    assert s.writable_layer.fs_id.mountpoint == os.path.abspath(engine.root)


def test_nano_cores_from_two_samples(engine, running):  # noqa: F811
    burner = running[1]
    svc = Stats(engine)
    first = container_stats(svc, burner)
    assert not first.cpu.HasField("usage_nano_cores")  # nothing to compare with yet
    time.sleep(1.5)
    second = container_stats(svc, burner)
    cores = second.cpu.usage_nano_cores.value
    # one busy shell: about one core, never more than one
    expected = ((second.cpu.usage_core_nano_seconds.value
                 - first.cpu.usage_core_nano_seconds.value) * 10**9
                // (second.cpu.timestamp - first.cpu.timestamp))
    assert cores == expected
    assert 0.2e9 < cores < 1.1e9, cores
    # a new service instance has no previous sample of its own
    assert not container_stats(Stats(engine), burner).cpu.HasField("usage_nano_cores")


def test_pod_stats_sum_its_containers_and_count_processes(engine, running):  # noqa: F811
    pod_id = "c0ffee" + "0" * 58
    worker, burner = running
    pod = pod_record(pod_id)
    pod["netns"] = f"/proc/{pid_of(engine, worker)}/ns/net"
    pods = FakePods({pod_id: pod}, {pod_id: [worker, burner]})
    svc = Stats(engine, pods)
    home = os.readlink("/proc/thread-self/ns/net")
    s = svc.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), None).stats
    assert os.readlink("/proc/thread-self/ns/net") == home  # the reader came back
    assert s.attributes.id == pod_id
    assert s.attributes.metadata.name == "statpod" and s.attributes.labels["app"] == "stats"
    linux = s.linux
    assert sorted(c.attributes.id for c in linux.containers) == sorted(running)
    by_id = {c.attributes.id: c for c in linux.containers}
    # the pod's numbers are the sum of its containers' (sampled a moment apart)
    cpu_sum = sum(c.cpu.usage_core_nano_seconds.value for c in linux.containers)
    assert cpu_sum * 0.9 <= linux.cpu.usage_core_nano_seconds.value <= cpu_sum * 1.1 + 10**8
    mem_sum = sum(c.memory.usage_bytes.value for c in linux.containers)
    assert abs(linux.memory.usage_bytes.value - mem_sum) <= 2 << 20
    assert linux.memory.working_set_bytes.value <= linux.memory.usage_bytes.value
    # sh + two sleeps, and the burner's shell
    procs = [int(p) for cid in running
             for p in read(os.path.join(cgroup_dir(pid_of(engine, cid), "pids"),
                                        "cgroup.procs")).split()]
    assert linux.process.process_count.value == len(procs) == 4
    # the worker is on the bridge: eth0's counters as the container sees them
    assert linux.network.default_interface.name == "eth0"
    assert [i.name for i in linux.network.interfaces] == []
    # between two reads from inside the container
    def inside() -> list[int]:
        return [int(engine("exec", worker, "cat", f"/sys/class/net/eth0/statistics/{what}",
                           check=True).stdout) for what in ("rx_bytes", "tx_bytes")]
    before = inside()
    net = network_usage(pod["netns"]).default_interface
    after = inside()
    assert before[0] <= net.rx_bytes.value <= after[0]
    assert before[1] <= net.tx_bytes.value <= after[1]
    assert by_id[worker].memory.available_bytes.value > 0
    listed = svc.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), None).stats
    assert [p.attributes.id for p in listed] == [pod_id]
    selected = pb.ListPodSandboxStatsRequest()
    selected.filter.label_selector["app"] = "other"
    assert list(svc.ListPodSandboxStats(selected, None).stats) == []


def test_a_pod_on_the_host_network_has_no_network_stats(engine, running):  # noqa: F811
    pod_id = "beef" + "0" * 60
    pods = FakePods({pod_id: pod_record(pod_id, network="node")}, {pod_id: [running[1]]})
    s = Stats(engine, pods).PodSandboxStats(
        pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), None).stats
    assert not s.linux.HasField("network")
    assert s.linux.process.process_count.value == 1


def test_unknown_container_is_not_found(engine):  # noqa: F811
    from minirun.errors import InvalidArgument, NotFound

    svc = Stats(engine)
    with pytest.raises(NotFound):
        container_stats(svc, "f" * 64)
    with pytest.raises(InvalidArgument):
        container_stats(svc, "")


# --- a real pod (minirun.pods) with its own cgroup parent ------------------------------------


@pytest.fixture(scope="module")
def real_pod(engine):  # noqa: F811
    """A pod on a CNI network (a bridge of this test) whose cgroup_parent is its own, with
    two labelled containers in it; removed, with its cgroup parent, at the end."""
    from test_pods import PodNet

    from minirun.engine import RunOptions
    from minirun.network import cni
    from minirun.pods import Pods, PodSpec

    net = PodNet(engine.top)
    old = os.environ.get(cni.CONF_DIR_ENV)
    os.environ[cni.CONF_DIR_ENV] = net.conf_dir
    pods = Pods(Engine(engine.root, engine.run_root))
    parent = f"/minirun/cri-stats-test/pod-{os.urandom(3).hex()}"
    uid = os.urandom(8).hex()
    pod_id = None
    try:
        pod_id = pods.run(PodSpec(name="statpod", uid=uid, labels={"app": "real"},
                                  cgroup_parent=parent))
        netns = pods.namespaces(pod_id)["network"]
        cids = []
        for name, cmd in (("web", ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]),
                          ("side", ["sleep", "1000"])):
            cids.append(pods.engine.run_detached("busybox:latest", RunOptions(
                command=cmd, detach=True, network=f"ns:{netns}", pod=pod_id,
                cgroup_parent=parent, labels={"role": name},
                name=f"k8s_{name}_statpod_default_{uid}_2")))
        yield pods, pod_id, cids, parent
    finally:
        if pod_id is not None:
            pods.remove(pod_id)
        if old is None:
            os.environ.pop(cni.CONF_DIR_ENV, None)
        else:
            os.environ[cni.CONF_DIR_ENV] = old
        subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, check=False)
        for top in ("/sys/fs/cgroup", *(f"/sys/fs/cgroup/{c}" for c in os.listdir(
                "/sys/fs/cgroup"))):
            for d in (parent, os.path.dirname(parent)):
                try:
                    os.rmdir(top + d)
                except OSError:
                    pass


def test_pod_stats_of_a_real_pod_read_its_cgroup_parent(engine, real_pod):  # noqa: F811
    pods, pod_id, cids, parent = real_pod
    svc = Stats(engine, pods)
    s = svc.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), None).stats
    meta = s.attributes.metadata
    assert (meta.name, meta.namespace, s.attributes.labels["app"]) == \
        ("statpod", "default", "real")
    linux = s.linux
    # the pod's cgroup: both containers, 3 + 1 processes
    pids_dir = next(d for d in (f"/sys/fs/cgroup/pids{parent}", f"/sys/fs/cgroup{parent}")
                    if os.path.exists(os.path.join(d, "pids.current")))
    assert linux.process.process_count.value == int(read(os.path.join(
        pids_dir, "pids.current"))) == 4
    assert sorted(c.attributes.id for c in linux.containers) == sorted(cids)
    names = {c.attributes.metadata.name: c.attributes.metadata.attempt
             for c in linux.containers}
    assert names == {"web": 2, "side": 2}
    assert linux.memory.usage_bytes.value >= sum(c.memory.usage_bytes.value
                                                 for c in linux.containers) - (1 << 20)
    # CNI gave the pod's netns an eth0
    assert linux.network.default_interface.name == "eth0"


def test_list_container_stats_filters(engine, real_pod):  # noqa: F811
    pods, pod_id, cids, _ = real_pod
    svc = Stats(engine, pods)

    def ids(**f) -> list[str]:
        req = pb.ListContainerStatsRequest()
        for k, v in f.items():
            if k == "label_selector":
                req.filter.label_selector.update(v)
            else:
                setattr(req.filter, k, v)
        return sorted(s.attributes.id for s in svc.ListContainerStats(req, None).stats)

    # the CLI's containers of this engine (the module's others) are not CRI containers
    assert ids() == sorted(cids)
    assert ids(pod_sandbox_id=pod_id[:12]) == sorted(cids)
    assert ids(pod_sandbox_id="0" * 12) == []
    assert ids(id=cids[1][:10]) == [cids[1]]
    assert ids(label_selector={"role": "web"}) == [cids[0]]
    assert ids(label_selector={"role": "web"}, id=cids[1]) == []
    listed = svc.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), None).stats
    assert [p.attributes.id for p in listed] == [pod_id]
