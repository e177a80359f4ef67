"""Pods as engine objects (minirun/pods.py): real namespaces, Debian's CNI plugins
(/usr/lib/cni) on a conflist in a temporary conf dir whose bridge (mrp<hex>), subnet (a
/24 no host route overlaps) and host-local dataDir belong to this module.

Witnesses are the host's tools: ping and nc from busybox, nsenter into the pinned
namespaces, `ip`, findmnt, iptables-save. Other suites on this host make their own pods,
links and rules meanwhile, so the before/after comparisons look at what this module's
pods and network can have made: links on our bridge, addresses and routes of our subnet,
netns and mounts of our pods, nat rules naming our pods, network or subnet.

The portmap plugin keeps its shared top-level chains (CNI-HOSTPORT-*) once made, and the
bridge plugin its bridge and IPv4 forwarding: that is the plugins' design, as under
containerd; the module deletes its bridge at the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import subprocess
import time

import pytest
from enginetest import engine  # noqa: F401
from ocitest import needs_root

from minirun.errors import AlreadyExists, InvalidArgument, MiniRunError
from minirun.network import cni
from minirun.network.netlink import ipv4_routes

pytestmark = [needs_root, pytest.mark.root]

PLUGIN_DIR = "/usr/lib/cni"
BUSYBOX = "/bin/busybox"


def _missing_prerequisites() -> str | None:
    for plugin in ("bridge", "host-local", "portmap"):
        if not os.access(os.path.join(PLUGIN_DIR, plugin), os.X_OK):
            return f"the CNI plugin {plugin} is not in {PLUGIN_DIR} (containernetworking-plugins)"
    for tool in ("iptables-save", "nsenter", "findmnt", "ipcmk"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            return f"{tool} is not installed"
    if not os.access(BUSYBOX, os.X_OK):
        return f"{BUSYBOX} is missing (busybox-static)"
    return None


_MISSING = _missing_prerequisites()
if _MISSING:
    pytestmark.append(pytest.mark.skip(reason=_MISSING))


def free_subnet() -> str:
    taken = [ipaddress.IPv4Network(d, strict=False) for d, _ in ipv4_routes()
             if not d.endswith("/0")]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(150, 199)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise RuntimeError("no free /24 in 10.150-199")


def sh(*args: str, check: bool = True, **kw) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {proc.returncode}: {proc.stderr}")
    return proc.stdout


class PodNet:
    """This module's CNI network: conf dir, bridge, subnet, host-local's dataDir."""

    def __init__(self, top: str) -> None:
        tag = os.urandom(3).hex()
        self.name = f"mrtest-pods-{tag}"
        self.bridge = f"mrp{tag}"
        self.subnet = free_subnet()
        self.conf_dir = os.path.join(top, "net.d")
        self.data_dir = os.path.join(top, "ipam")
        os.makedirs(self.conf_dir)
        self.conflist = {
            "cniVersion": "1.0.0", "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": self.data_dir,
                          "ranges": [[{"subnet": self.subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ]}
        with open(os.path.join(self.conf_dir, "10-test.conflist"), "w") as f:
            json.dump(self.conflist, f)

    def leases(self) -> list[str]:
        try:
            names = os.listdir(os.path.join(self.data_dir, self.name))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n[0].isdigit())


@pytest.fixture(scope="module")
def net(engine):  # noqa: F811
    pod_net = PodNet(engine.top)
    old = os.environ.get(cni.CONF_DIR_ENV)
    os.environ[cni.CONF_DIR_ENV] = pod_net.conf_dir
    try:
        yield pod_net
    finally:
        if old is None:
            os.environ.pop(cni.CONF_DIR_ENV, None)
        else:
            os.environ[cni.CONF_DIR_ENV] = old
        subprocess.run(["ip", "link", "del", pod_net.bridge], capture_output=True, check=False)


@pytest.fixture(scope="module")
def pods(engine, net):  # noqa: F811
    from minirun.engine import Engine
    from minirun.pods import Pods

    p = Pods(Engine(engine.root, engine.run_root))
    yield p
    left = [r["id"] for r in p.list()]
    for pod_id in left:
        p.remove(pod_id)
    assert not left, f"pods left by the tests: {left}"


@pytest.fixture
def pod_ids(pods):
    """The pods a test makes, removed even when it fails."""
    made: list[str] = []
    yield made
    for pod_id in made:
        pods.remove(pod_id)


def run(pods, pod_ids, **kw) -> str:
    from minirun.pods import PodSpec

    kw.setdefault("name", f"pod-{os.urandom(3).hex()}")
    kw.setdefault("uid", os.urandom(8).hex())
    pod_id = pods.run(PodSpec(**kw))
    pod_ids.append(pod_id)
    return pod_id


# --- what a pod can leave on the host ---------------------------------------------------------

def traces(net: PodNet, pod_ids: list[str], run_root: str) -> dict:
    """Everything on the host that belongs to these pods or this network, the bridge
    itself apart (the plugin keeps it)."""
    marks = [p[:12] for p in pod_ids]
    prefix = net.subnet.rsplit(".", 1)[0] + "."
    links = sh("ip", "-o", "link", "show", "master", net.bridge, check=False).splitlines()
    addrs = [ln for ln in sh("ip", "-o", "addr").splitlines()
             if prefix in ln and f" {net.bridge} " not in ln]
    routes = [ln for ln in sh("ip", "route").splitlines()
              if prefix in ln and f"dev {net.bridge} " not in ln]
    netns = [n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
             if any(m in n for m in marks)]
    mounts = [ln for ln in sh("findmnt", "-rn", "-o", "TARGET").splitlines()
              if any(m in ln for m in marks) or ln.startswith(os.path.join(run_root, "pods"))]
    nat = [ln for ln in sh("iptables-save", "-t", "nat").splitlines()
           if net.name in ln or prefix in ln or any(p in ln for p in pod_ids)]
    return {"links on the bridge": links, "addresses": addrs, "routes": routes,
            "netns": netns, "mounts": mounts, "nat rules": nat, "leases": net.leases()}


def assert_nothing_left(net: PodNet, pod_ids: list[str], pods, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while True:  # the kernel deletes a netns's veth asynchronously
        left = {k: v for k, v in traces(net, pod_ids, pods.engine.run_root).items() if v}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"left on the host: {left}"
    known = {r["id"] for r in pods.list()}
    assert not known & set(pod_ids)
    for pod_id in pod_ids:
        assert not os.path.exists(pods.files_dir(pod_id))
        assert not os.path.exists(os.path.dirname(pods.ns_dir(pod_id)))


def nsenter(ns: dict, *cmd: str, check: bool = True) -> str:
    args = ["nsenter"]
    for kind, opt in (("network", "--net"), ("ipc", "--ipc"), ("uts", "--uts"),
                      ("pid", "--pid")):
        if ns.get(kind) and ns[kind] != "host":
            args.append(f"{opt}={ns[kind]}")
    return sh(*args, "--", *cmd, check=check)


def ns_inode(path: str) -> str:
    return os.readlink(path) if path.startswith("/proc/") else f"{os.stat(path).st_ino}"


# --- running a pod -------------------------------------------------------------------------

def test_pod_gets_an_address_the_host_reaches(pods, pod_ids, net):
    pod_id = run(pods, pod_ids, name="web", namespace="team", uid="u-1", attempt=2,
                 labels={"app": "web"}, annotations={"note": "x"}, hostname="web-0")
    rec = pods.get(pod_id)
    assert len(pod_id) == 64 and set(pod_id) <= set("0123456789abcdef")
    assert (rec["state"], rec["name"], rec["namespace"], rec["uid"], rec["attempt"]) == \
        ("ready", "web", "team", "u-1", 2)
    assert (rec["labels"], rec["annotations"]) == ({"app": "web"}, {"note": "x"})
    assert ipaddress.ip_address(rec["ip"]) in ipaddress.ip_network(net.subnet)
    assert pods.get(pod_id[:10])["id"] == pod_id
    assert pod_id in [r["id"] for r in pods.list()]
    out = sh(BUSYBOX, "ping", "-c", "1", "-W", "3", rec["ip"])
    assert "1 packets received" in out
    # the address is on eth0 inside the pod's netns, lo is up there
    ns = pods.namespaces(pod_id)
    inside = nsenter(ns, "ip", "-o", "addr")
    assert f"eth0    inet {rec['ip']}/" in inside.replace("\\", "") or \
        f"inet {rec['ip']}/24" in inside
    assert "lo    inet 127.0.0.1/8" in inside
    files = pods.files_dir(pod_id)
    with open(os.path.join(files, "hosts")) as f:
        assert f"{rec['ip']}\tweb-0" in f.read().splitlines()
    with open(os.path.join(files, "hostname")) as f:
        assert f.read() == "web-0\n"
    assert net.leases() == [rec["ip"]]


def test_hostname_in_the_pinned_uts_namespace_and_ipc_shared(pods, pod_ids):
    pod_id = run(pods, pod_ids, hostname="pinned-host")
    ns = pods.namespaces(pod_id)
    assert nsenter({"uts": ns["uts"]}, "hostname").strip() == "pinned-host"
    assert socket.gethostname() != "pinned-host"
    # two processes entering the pin are in one IPC namespace, not the host's
    host_ipc = os.readlink("/proc/self/ns/ipc")
    first = nsenter({"ipc": ns["ipc"]}, "readlink", "/proc/self/ns/ipc").strip()
    assert first != host_ipc
    assert first == f"ipc:[{os.stat(ns['ipc']).st_ino}]"
    key = nsenter({"ipc": ns["ipc"]}, "ipcmk", "-Q")
    qid = key.split()[-1]
    assert qid in nsenter({"ipc": ns["ipc"]}, "ipcs", "-q")
    assert qid not in sh("ipcs", "-q").split()


@pytest.mark.parametrize("host_ip", ["127.0.0.1", ""])
def test_port_mapping_answers_on_localhost(pods, pod_ids, host_ip):
    host_port = _free_port()
    pod_id = run(pods, pod_ids, port_mappings=[
        {"protocol": "tcp", "container_port": 8080, "host_port": host_port,
         "host_ip": host_ip}])
    ns = pods.namespaces(pod_id)
    server = subprocess.Popen(
        ["nsenter", f"--net={ns['network']}", "--", BUSYBOX, "sh", "-c",
         f"echo hello-from-pod | {BUSYBOX} nc -l -p 8080"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _fetch("127.0.0.1", host_port) == b"hello-from-pod\n"
    finally:
        server.kill()
        server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(host: str, port: int, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on {host}:{port}")
        time.sleep(0.1)


def test_namespaced_sysctls_are_applied_inside_only(pods, pod_ids):
    host = {p: _read(f"/proc/sys/{p}") for p in (
        "net/ipv4/ip_unprivileged_port_start", "kernel/shmmni", "fs/mqueue/msg_max")}
    pod_id = run(pods, pod_ids, sysctls={"net.ipv4.ip_unprivileged_port_start": "53",
                                         "kernel.shmmni": "1234",
                                         "fs/mqueue/msg_max": "17",
                                         "net.ipv4.conf.eth0.forwarding": "0"})
    ns = pods.namespaces(pod_id)
    assert nsenter(ns, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "53"
    assert nsenter(ns, "cat", "/proc/sys/net/ipv4/conf/eth0/forwarding").strip() == "0"
    assert nsenter(ns, "cat", "/proc/sys/kernel/shmmni").strip() == "1234"
    assert nsenter(ns, "cat", "/proc/sys/fs/mqueue/msg_max").strip() == "17"
    for path, value in host.items():
        assert _read(f"/proc/sys/{path}") == value, f"the host's {path} changed"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.mark.parametrize("kw, error, words", [
    ({"sysctls": {"kernel.pid_max": "4096"}}, InvalidArgument, "not namespaced"),
    ({"sysctls": {"vm.swappiness": "1"}}, InvalidArgument, "not namespaced"),
    ({"sysctls": {"net.ipv4.no_such_knob": "1"}}, InvalidArgument, "no such sysctl"),
    ({"sysctls": {"net.ipv4.ip_unprivileged_port_start": "lots"}}, InvalidArgument,
     "invalid argument"),
    ({"sysctls": {"net.ipv4.ip_unprivileged_port_start": "lots"}, "pid": "pod"},
     InvalidArgument, "invalid argument"),
    ({"sysctls": {"net.core.somaxconn": "1"}, "network": "node"}, InvalidArgument,
     "host's network"),
    ({"sysctls": {"../../etc/passwd": "1"}}, InvalidArgument, "sysctl"),
    ({"hostname": "bad_host"}, InvalidArgument, "hostname"),
    ({"hostname": "x" * 65}, InvalidArgument, "hostname"),
    ({"port_mappings": [{"protocol": "icmp", "container_port": 1, "host_port": 2}]},
     InvalidArgument, "protocol"),
    ({"port_mappings": [{"container_port": 70000, "host_port": 2}]}, InvalidArgument,
     "container_port"),
    ({"dns_servers": ["not-an-ip"]}, InvalidArgument, "dns server"),
    ({"cgroup_parent": "kubepods.slice"}, InvalidArgument, "cgroup parent"),
    ({"runtime_handler": "kata"}, InvalidArgument, "no runtime"),
    ({"pid": "target"}, InvalidArgument, "pid namespace mode"),
    ({"name": ""}, InvalidArgument, "name is required"),
])
def test_bad_pod_is_refused_with_nothing_left(pods, pod_ids, net, monkeypatch, kw, error,
                                             words):
    from minirun.pods import PodSpec

    kw = dict({"name": "bad", "uid": os.urandom(4).hex()}, **kw)
    tried = _record_attempts(pods, monkeypatch)
    before = _all_pod_ids(pods)
    holders = _holder_records(pods)
    with pytest.raises(error) as info:
        pods.run(PodSpec(**kw))
    message = str(info.value)
    assert words in message and "\n" not in message
    assert _all_pod_ids(pods) == before
    assert _holder_records(pods) == holders
    assert_nothing_left(net, tried, pods)


def _record_attempts(pods, monkeypatch) -> list[str]:
    """The ids of the pods run() gets as far as making: their traces are looked for."""
    tried: list[str] = []
    make = type(pods)._make

    def recording(self, rec, *args):
        tried.append(rec["id"])
        return make(self, rec, *args)

    monkeypatch.setattr(type(pods), "_make", recording)
    return tried


def _holder_records(pods) -> list[str]:
    return [r["id"] for r in pods.engine.records() if r["image"] == "minirun/pod-holder"]


def _all_pod_ids(pods) -> list[str]:
    return [r["id"] for r in pods.list()]


def test_a_failing_plugin_undoes_the_pod(pods, pod_ids, net, tmp_path, monkeypatch):
    """The second plugin fails after the bridge plugin took an address: the address, the
    netns, the pins and the record all go; one line names the plugin."""
    conf = json.loads(json.dumps(net.conflist))
    conf["plugins"].append({"type": "tuning", "sysctl": {"net.ipv4.no_such_knob": "1"}})
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-failing.conflist").write_text(json.dumps(conf))
    monkeypatch.setenv(cni.CONF_DIR_ENV, str(conf_dir))
    from minirun.pods import PodSpec

    tried = _record_attempts(pods, monkeypatch)
    before = _all_pod_ids(pods)
    with pytest.raises(MiniRunError) as info:
        pods.run(PodSpec(name="failing", uid="f1"))
    assert "plugin tuning" in str(info.value) and "\n" not in str(info.value)
    assert _all_pod_ids(pods) == before
    assert len(tried) == 1
    assert_nothing_left(net, tried, pods)


@pytest.mark.parametrize("fault", ["no tini", "daemon refuses"])
def test_a_holder_that_fails_undoes_the_pod(pods, net, monkeypatch, fault):
    """The holder is the last step: the address, pins, holder record and bundle go."""
    import minirun.pods
    from minirun.pods import PodSpec

    if fault == "no tini":
        monkeypatch.setattr(minirun.pods, "TINI", "/nonexistent/tini-static")
    else:
        def refuse(self, cid):
            raise MiniRunError("the daemon refused (injected)")
        monkeypatch.setattr(type(pods.engine), "_start_in_daemon", refuse)
    tried = _record_attempts(pods, monkeypatch)
    with pytest.raises(MiniRunError) as info:
        pods.run(PodSpec(name="holderless", uid=fault, pid="pod",
                         port_mappings=[{"container_port": 80, "host_port": _free_port()}]))
    assert ("tini" if fault == "no tini" else "injected") in str(info.value)
    assert not _holder_records(pods)
    containers_dir = os.path.join(pods.engine.root, "containers")
    assert not os.path.isdir(containers_dir) or not [
        d for d in os.listdir(containers_dir)
        if os.path.exists(os.path.join(containers_dir, d, "rootfs", "pause"))]
    assert_nothing_left(net, tried, pods)


def test_same_metadata_twice_is_refused(pods, pod_ids):
    run(pods, pod_ids, name="twice", uid="same", attempt=0)
    with pytest.raises(AlreadyExists):
        run(pods, pod_ids, name="twice", uid="same", attempt=0)
    run(pods, pod_ids, name="twice", uid="same", attempt=1)


# --- stop and remove ----------------------------------------------------------------------------

def test_stop_is_idempotent_and_gives_the_address_back(pods, pod_ids, net):
    host_port = _free_port()
    pod_id = run(pods, pod_ids, port_mappings=[
        {"protocol": "tcp", "container_port": 80, "host_port": host_port}])
    ip = pods.get(pod_id)["ip"]
    assert ip in net.leases()
    assert [ln for ln in sh("iptables-save", "-t", "nat").splitlines() if pod_id in ln]
    assert pods.stop(pod_id) == pod_id
    rec = pods.get(pod_id)
    assert rec["state"] == "notready"
    assert ip not in net.leases()
    assert not [ln for ln in sh("iptables-save", "-t", "nat").splitlines() if pod_id in ln]
    assert not sh("ip", "-o", "link", "show", "master", net.bridge).strip()
    assert pods.stop(pod_id) == pod_id
    assert pods.stop("f" * 64) is None
    assert pods.get(pod_id)["state"] == "notready"


def test_remove_is_idempotent_and_leaves_the_host_as_before(pods, pod_ids, net):
    pod_id = run(pods, pod_ids, hostname="gone", sysctls={"kernel.shmmni": "99"},
                 port_mappings=[{"protocol": "udp", "container_port": 53,
                                 "host_port": _free_port(), "host_ip": "127.0.0.1"}])
    assert any(traces(net, [pod_id], pods.engine.run_root).values())
    assert pods.remove(pod_id) == pod_id
    assert pods.remove(pod_id) is None
    assert pods.remove("0" * 64) is None
    assert_nothing_left(net, [pod_id], pods)
    with pytest.raises(Exception, match="no such pod"):
        pods.get(pod_id)


def test_twenty_pod_cycles_leave_nothing(pods, pod_ids, net):
    made = []
    for i in range(20):
        pod_id = run(pods, pod_ids, name=f"cycle-{i}", sysctls={"net.ipv4.ping_group_range": "0 0"},
                     port_mappings=[{"protocol": "tcp", "container_port": 80,
                                     "host_port": _free_port(), "host_ip": "127.0.0.1"}],
                     pid="pod" if i % 5 == 0 else "container")
        made.append(pod_id)
        if i % 2:
            pods.stop(pod_id)
        pods.remove(pod_id)
    assert_nothing_left(net, made, pods)
    assert not _holder_records(pods)


def test_pods_made_at_once_by_many_threads(pods, net):
    """kubelet runs pods in parallel (the CRI server's thread pool): each thread switches
    only its own namespaces, every pod gets its own address, and all go cleanly."""
    from concurrent.futures import ThreadPoolExecutor

    from minirun.engine import Engine
    from minirun.pods import Pods, PodSpec

    def cycle(i: int) -> tuple[str, str, str]:
        mine = Pods(Engine(pods.engine.root, pods.engine.run_root))  # one per thread
        pod_id = mine.run(PodSpec(name=f"par-{i}", uid=f"par-{i}", hostname=f"par-{i}",
                                  sysctls={"kernel.shmmni": str(100 + i)}))
        ns = mine.namespaces(pod_id)
        seen = nsenter({"uts": ns["uts"], "ipc": ns["ipc"]}, "sh", "-c",
                       "hostname; cat /proc/sys/kernel/shmmni").split()
        ip = mine.get(pod_id)["ip"]
        mine.remove(pod_id)
        back = [os.readlink(f"/proc/thread-self/ns/{k}") for k in ("net", "ipc", "uts")]
        assert back == host_ns, "a worker thread was left in a pod's namespace"
        return pod_id, ip, " ".join(seen)

    host_name, host_shmmni = socket.gethostname(), _read("/proc/sys/kernel/shmmni")
    host_ns = [os.readlink(f"/proc/self/ns/{k}") for k in ("net", "ipc", "uts")]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(cycle, range(16)))
    assert [r[2] for r in results] == [f"par-{i} {100 + i}" for i in range(16)]
    assert len({r[1] for r in results}) == 16
    # this process's threads are back in the host's namespaces
    assert socket.gethostname() == host_name
    assert _read("/proc/sys/kernel/shmmni") == host_shmmni
    assert_nothing_left(net, [r[0] for r in results], pods)


def test_a_pod_whose_pins_are_gone_is_notready(pods, pod_ids, net):
    """After a reboot, or an `ip netns del`, the pins (and the namespaces) are gone; the
    record says notready and remove cleans what is left: the lease and the masquerade
    rules (which the bridge plugin finds by the addresses of the pod's eth0)."""
    pod_id = run(pods, pod_ids, port_mappings=[{"container_port": 80,
                                                "host_port": _free_port()}])
    ns = pods.namespaces(pod_id)
    for path in (ns["network"], ns["ipc"], ns["uts"]):
        subprocess.run(["umount", "-l", path], check=True)
    assert pods.get(pod_id)["state"] == "notready"
    assert pods.remove(pod_id) == pod_id
    assert_nothing_left(net, [pod_id], pods)


# --- host namespaces, shared pid ------------------------------------------------------------

def _shm_mount(path: str) -> list[str]:
    """findmnt's FSTYPE,SIZE,OPTIONS of the mount at path, [] when nothing is mounted."""
    return sh("findmnt", "-rn", "-o", "FSTYPE,SIZE,OPTIONS", "--mountpoint", path,
              check=False).split()


def test_the_pod_owns_its_dev_shm_until_it_stops(pods, pod_ids, net):
    """No pause container: the pod record holds the tmpfs its containers bind at
    /dev/shm, as it holds its namespace pins; stop unmounts it (containerd's
    StopPodSandbox), and a pod that lost it is notready."""
    pod_id = run(pods, pod_ids)
    shm = pods.namespaces(pod_id)["shm"]
    assert shm == pods.shm_dir(pod_id)
    fstype, size, options = _shm_mount(shm)
    assert (fstype, size) == ("tmpfs", "64M")
    assert {"nosuid", "nodev", "noexec"} <= set(options.split(",")), options
    assert f"{os.stat(shm).st_mode & 0o7777:o}" == "1777"
    pods.stop(pod_id)
    assert _shm_mount(shm) == [] and pods.get(pod_id)["state"] == "notready"
    pods.remove(pod_id)
    assert not os.path.exists(shm)

    other = run(pods, pod_ids)
    subprocess.run(["umount", "-l", pods.shm_dir(other)], check=True)
    assert pods.get(other)["state"] == "notready"
    pods.remove(other)
    assert_nothing_left(net, [pod_id, other], pods)


def test_doctor_unmounts_the_dev_shm_of_a_pod_with_no_record(pods, pod_ids):
    from minirun.monitor import doctor

    pod_id = run(pods, pod_ids, network="node")
    shm = pods.shm_dir(pod_id)
    pods.db.execute("DELETE FROM pods WHERE id = ?", (pod_id,))  # a crash, a hand edit
    a = doctor.audit(pods.engine.root, pods.engine.run_root, host_wide=False,
                     check_host=False, grace=0)
    found = [f for f in a.findings if f.kind == "pin"]
    assert [f.what for f in found] == [os.path.dirname(os.path.dirname(pods.ns_dir(pod_id)))
                                       + f"/{pod_id}"]
    assert f"umount -l {shm}" in found[0].fix
    doctor.fix(found)
    assert _shm_mount(shm) == [] and not os.path.exists(os.path.dirname(shm))


def test_a_node_network_pod_uses_the_host_network_and_uts(pods, pod_ids, net):
    pod_id = run(pods, pod_ids, network="node", ipc="node", pid="node",
                 port_mappings=[{"container_port": 80, "host_port": 80}])
    ns = pods.namespaces(pod_id)
    assert ns == {"network": "host", "ipc": "host", "uts": "host", "pid": "host",
                  "shm": "host"}
    rec = pods.get(pod_id)
    assert rec["ip"] == "" and rec["state"] == "ready"
    assert not net.leases()
    with open(os.path.join(pods.files_dir(pod_id), "hostname")) as f:
        assert f.read() == socket.gethostname() + "\n"


def test_dns_config_goes_into_resolv_conf(pods, pod_ids):
    pod_id = run(pods, pod_ids, dns_servers=["10.96.0.10"],
                 dns_searches=["team.svc.cluster.local", "svc.cluster.local"],
                 dns_options=["ndots:5"])
    with open(os.path.join(pods.files_dir(pod_id), "resolv.conf")) as f:
        lines = f.read().splitlines()
    assert "nameserver 10.96.0.10" in lines
    assert [ln for ln in lines if ln.startswith("nameserver")] == ["nameserver 10.96.0.10"]
    assert "search team.svc.cluster.local svc.cluster.local" in lines
    assert "options ndots:5" in lines


def test_shared_pid_pod_has_a_holder_reaped_on_stop(pods, pod_ids, engine):  # noqa: F811
    pod_id = run(pods, pod_ids, pid="pod", cgroup_parent="/minirun/test-pods")
    rec = pods.get(pod_id)
    holder = pods.engine.get(rec["holder"])
    assert holder["status"] == "running"
    ns = pods.namespaces(pod_id)
    assert ns["pid"] == f"/proc/{holder['pid']}/ns/pid"
    # inside the pod's pid namespace: tini (as /pause) is pid 1, busybox's sleep its child
    # (once tini forked), whose name is not "sleep": `pgrep sleep` in the pod finds none
    deadline = time.monotonic() + 5
    while len(procs := _pids_in(os.readlink(ns["pid"]))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    cmdlines = sorted(_cmdline(p) for p in procs)
    assert cmdlines == ["/busybox.hold sleep inf", "/pause -- /busybox.hold sleep inf"]
    comms = []
    for p in procs:
        with open(f"/proc/{p}/comm") as f:
            comms.append(f.read().strip())
    assert sorted(comms) == ["busybox.hold", "pause"]
    # it is in the pod's network, IPC and UTS namespaces
    for kind, name in (("network", "net"), ("ipc", "ipc"), ("uts", "uts")):
        assert os.readlink(f"/proc/{holder['pid']}/ns/{name}").endswith(
            f"[{os.stat(ns[kind]).st_ino}]")
    with open(f"/proc/{holder['pid']}/cgroup") as f:
        cgroups = f.read()
    assert f"/minirun/test-pods/{rec['holder']}\n" in cgroups
    rss, pss = _memory(procs)
    print(f"holder memory: RSS {rss} kB, PSS {pss} kB ({len(procs)} processes)")
    assert pss < 4096
    pods.stop(pod_id)
    assert pods.engine.get(rec["holder"])["status"] == "exited"
    assert not [p for p in procs if os.path.exists(f"/proc/{p}")]
    assert pods.get(pod_id)["state"] == "notready"
    with pytest.raises(MiniRunError, match="not running"):
        pods.namespaces(pod_id)
    pods.remove(pod_id)
    assert not _holder_records(pods)
    assert not os.path.exists(os.path.join(pods.engine.root, "containers", rec["holder"]))


def test_a_pod_stops_and_removes_its_containers(pods, pod_ids, engine):  # noqa: F811
    from minirun.engine import RunOptions

    pod_id = run(pods, pod_ids)
    cid = pods.engine.run_detached("busybox:latest", RunOptions(
        command=["sleep", "300"], detach=True, network="none"))
    # what cri-ctr's CreateContainer records: the pod in the container's options
    pods.engine.db.execute("UPDATE containers SET options = json_set(options, '$.pod', ?) "
                           "WHERE id = ?", (pod_id, cid))
    assert pods.containers(pod_id) == [cid]
    begun = time.monotonic()
    pods.stop(pod_id)  # sleep as pid 1 ignores SIGTERM: killed at once, as by containerd
    assert time.monotonic() - begun < 5
    assert pods.engine.get(cid)["status"] == "exited"
    pods.remove(pod_id)
    assert cid not in [r["id"] for r in pods.engine.records()]


def _pids_in(pid_ns: str) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == pid_ns:
                    out.append(int(name))
            except OSError:
                pass
    return out


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().rstrip(b"\0").replace(b"\0", b" ").decode()


def _memory(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


# --- the default configuration and the network status -----------------------------------------

def test_default_conflist_is_written_only_into_an_empty_dir(tmp_path):
    from minirun.pods import DEFAULT_CONFLIST_FILE, cni_status, write_default_conflist

    conf_dir = str(tmp_path / "net.d")
    ready, reason, message = cni_status([conf_dir])
    assert (ready, reason) == (False, "NetworkPluginNotReady") and conf_dir in message
    path = write_default_conflist(conf_dir)
    assert path == os.path.join(conf_dir, DEFAULT_CONFLIST_FILE)
    with open(path) as f:
        conf = cni.validate_conflist(json.load(f))
    assert conf["name"] == "minirun-pods" and conf["cniVersion"] == "1.0.0"
    bridge, portmap = conf["plugins"]
    assert (bridge["type"], bridge["bridge"], bridge["isGateway"], bridge["ipMasq"]) == \
        ("bridge", "mrpods0", True, True)
    subnet = ipaddress.ip_network(bridge["ipam"]["ranges"][0][0]["subnet"])
    for dest, dev in ipv4_routes():
        if not dest.endswith("/0") and dev != "mrpods0":
            assert not subnet.overlaps(ipaddress.ip_network(dest, strict=False))
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True},
                       "snat": True}
    assert cni_status([conf_dir], [PLUGIN_DIR]) == (True, "", "")
    assert write_default_conflist(conf_dir) is None
    other = tmp_path / "other"
    other.mkdir()
    (other / "05-cluster.conf").write_text("{}")
    assert write_default_conflist(str(other)) is None
    assert os.listdir(other) == ["05-cluster.conf"]


def test_default_subnet_moves_off_a_host_route():
    from minirun.pods import DEFAULT_SUBNET, default_conflist

    def subnet(conf):
        return conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]

    assert subnet(default_conflist([("0.0.0.0/0", "eth0")])) == DEFAULT_SUBNET
    assert subnet(default_conflist([("10.89.4.0/24", "eth1")])) == "10.90.0.0/16"
    assert subnet(default_conflist([("10.88.0.0/15", "x"), ("10.90.0.0/16", "y")])) == \
        "10.91.0.0/16"


def test_network_status_names_what_is_missing(tmp_path):
    from minirun.pods import cni_status, pod_network

    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "50-broken.conflist").write_text("{not json")
    ready, reason, message = cni_status([str(conf_dir)])
    assert not ready and reason == "NetworkPluginNotReady" and "bad json" in message
    (conf_dir / "20-net.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "n1", "plugins": [{"type": "no-such-plugin"}]}))
    ready, reason, message = cni_status([str(conf_dir)], [PLUGIN_DIR])
    assert not ready and "no-such-plugin" in message and "20-net.conflist" in message
    # every extension in name order, as containerd and CRI-O; loopback-only skipped
    (conf_dir / "10-a.conf").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "single", "type": "bridge", "bridge": "mrx0"}))
    (conf_dir / "05-lo.conf").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "lo", "type": "loopback"}))
    conf, path = pod_network([str(conf_dir)])
    assert conf["name"] == "single" and path.endswith("10-a.conf")
    assert cni_status([str(conf_dir)], [PLUGIN_DIR]) == (True, "", "")
