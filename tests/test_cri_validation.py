"""The CRI validation suite (critest: kubernetes-sigs/cri-tools pkg/validate), its checks
written again in Python and run over real gRPC against `minirun cri` (default) or, with
MINIRUN_CRI_TARGET=containerd, against containerd 1.6 as the reference.

Each test is one of critest's It(...) cases, named after it, making the same requests
(metadata with its uuids and attempt 2, labels, log dirs, commands, images) and the
same checks, through a client with cri-client's semantics (critest_env.CriClient):
an ExecSync that exits non-zero is an error, a missing image's status is None. The
images are the suite's names, served by a local registry that both runtimes reach
through their registry mirror settings (critest_images.py says what each stand-in is).

Deliberate differences from critest, for this host's rules:
- pods' cgroup_parent: "" when RuntimeConfig says cgroupfs (critest's rule), else
  /minirun/critest (critest would send /test.slice);
- the host network test listens on 127.0.0.1, not on every address; the host-network
  web server stand-in listens on 127.0.0.1:12003;
- pulled by digest: the digest of the stand-in, not the one critest pins.
Cases the host cannot run skip with the reason critest gives (no AppArmor, a feature
the runtime does not announce in Status).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid

import grpc
import pytest
from critest_env import CGROUP_TOP, CriClient, make_target, remove_cgroups, unmount_below
from critest_images import (
    BUSYBOX,
    CRI_TOOLS,
    HOSTNET_NGINX,
    HTTPD,
    NGINX,
    NONEWPRIVS,
    LocalRegistry,
)

from minirun.cri.api import api_pb2 as pb

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

ATTEMPT = 2
DEFAULT_LOG = "hello World"
ECHO_HELLO = ["echo", "-n", "hello"]
SLEEP = ["sleep", "4321"]
CHECK_SLEEP = ["sh", "-c", "pgrep sleep || true"]
SHELL = ["/bin/sh"]
PAUSE = ["sh", "-c", "top"]
TOP = ["top"]
LOG_DEFAULT = ["echo", DEFAULT_LOG]
LOOP_LOG = ["sh", "-c", f"while true; do echo {DEFAULT_LOG}; sleep 1; done"]
EXEC_TIMEOUT = 30
STOP_TIMEOUT = 60
WEB_PORT = 80
HOST_PORT_MAPPING = 12000
HOST_PORT_FORWARD = 12001
HOSTNET_PORT_FORWARD = 12002
HOSTNET_WEB_PORT = 12003

RUNNING, EXITED = pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED


def new_uuid() -> str:
    return str(uuid.uuid4())


def eventually(fn, timeout: float = 60, interval: float = 0.5, what: str = ""):
    """Call fn until it returns a true value (returned) or the time is up (AssertionError
    with the last value or exception)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except (AssertionError, grpc.RpcError, OSError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or fn} not true within {timeout}s: {last!r}")
        time.sleep(interval)


# --- the runtime, the registry, the client ------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = LocalRegistry(str(tmp_path_factory.mktemp("critest-registry")))
    try:
        yield reg.start()
    finally:
        reg.stop()


ALL_PODS: set[str] = set()  # every pod id the tests ran


def leftovers(pod_ids) -> list[str]:
    """What removed pods left on the host: their pinned netns (minirun's naming) and
    cgroups named after them anywhere below /minirun."""
    left = [f"/run/netns/minirun-pod-{p[:12]}" for p in pod_ids
            if os.path.exists(f"/run/netns/minirun-pod-{p[:12]}")]
    for hier in ("memory", "pids", "cpu", "unified"):
        base = os.path.join("/sys/fs/cgroup", hier, "minirun")
        if os.path.isdir(base):
            for dirpath, dirs, _ in os.walk(base):
                left += [os.path.join(dirpath, d) for d in dirs
                         if any(d.startswith(p) for p in pod_ids)]
    return left


@pytest.fixture(scope="module")
def target(registry):
    top = tempfile.mkdtemp(prefix="critest-", dir="/tmp")
    tgt = make_target(top, registry.host)
    try:
        tgt.start()
        yield tgt
    finally:
        try:
            tgt.stop()
        finally:
            unmount_below(top)
            remove_cgroups(CGROUP_TOP)
            subprocess.run(["rm", "-rf", "--one-file-system", top], check=False)
    # removing the pods through the CRI must have given everything back
    assert not leftovers(ALL_PODS), leftovers(ALL_PODS)


@pytest.fixture(scope="module")
def client(target):
    c = CriClient(target.sock)
    yield c
    c.close()


class Suite:
    """critest's framework helpers (framework/util.go, the validate package's helpers) on
    one test's pods; every pod it runs is stopped and removed at the end, and that must
    succeed (critest's AfterEach)."""

    def __init__(self, client: CriClient, target) -> None:
        self.c = client
        self.target = target
        self.pods: list[str] = []
        self.cleanups: list = []
        try:
            cfg = client.runtime_config()
            cgroupfs = cfg.HasField("linux") and cfg.linux.cgroup_driver == pb.CGROUPFS
        except grpc.RpcError:
            cgroupfs = False
        self.cgroup_parent = "" if cgroupfs else target.cgroup_parent

    # pods
    def metadata(self, name: str) -> pb.PodSandboxMetadata:
        return pb.PodSandboxMetadata(name=name, uid="cri-test-uid" + new_uuid(),
                                     namespace="cri-test-namespace" + new_uuid(),
                                     attempt=ATTEMPT)

    def linux(self, **kw) -> pb.LinuxPodSandboxConfig:
        return pb.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent, **kw)

    def run_pod(self, config: pb.PodSandboxConfig) -> str:
        pod_id = self.c.run_pod(config)
        self.pods.append(pod_id)
        ALL_PODS.add(pod_id)
        return pod_id

    def run_default_pod(self, prefix: str) -> str:
        return self.run_pod(pb.PodSandboxConfig(metadata=self.metadata(prefix + new_uuid()),
                                                linux=self.linux()))

    def pod_for_container(self) -> tuple[str, pb.PodSandboxConfig]:
        config = pb.PodSandboxConfig(
            metadata=self.metadata("create-PodSandbox-for-container-" + new_uuid()),
            linux=self.linux())
        return self.run_pod(config), config

    def log_dir(self, pod_name: str) -> tuple[str, str]:
        host = tempfile.mkdtemp(prefix="podLogTest", dir="/tmp")
        self.cleanups.append(lambda: subprocess.run(["rm", "-rf", "--one-file-system", host], check=False))
        path = os.path.join(host, pod_name)
        os.makedirs(path, 0o777)
        return host, path

    def pod_with_log_dir(self) -> tuple[str, pb.PodSandboxConfig]:
        name = "PodSandbox-with-log-directory-" + new_uuid()
        _, log_path = self.log_dir(name)
        config = pb.PodSandboxConfig(metadata=self.metadata(name), log_directory=log_path,
                                     linux=self.linux())
        return self.run_pod(config), config

    def privileged_pod(self, privileged: bool) -> tuple[str, pb.PodSandboxConfig]:
        config = pb.PodSandboxConfig(
            metadata=self.metadata("create-Privileged-PodSandbox-for-container-" + new_uuid()),
            linux=self.linux(security_context=pb.LinuxSandboxSecurityContext(
                privileged=privileged)))
        return self.run_pod(config), config

    def namespace_pod(self, ns: pb.NamespaceOption, name: str, log_dir: str = ""
                      ) -> tuple[str, pb.PodSandboxConfig]:
        config = pb.PodSandboxConfig(
            metadata=self.metadata(name), dns_config=pb.DNSConfig(), log_directory=log_dir,
            linux=self.linux(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=ns)))
        return self.run_pod(config), config

    def port_mapping_pod(self, mappings: list[pb.PortMapping], host_net: bool = False
                         ) -> tuple[str, pb.PodSandboxConfig]:
        config = pb.PodSandboxConfig(
            metadata=self.metadata("create-PodSandbox-with-port-mapping" + new_uuid()),
            port_mappings=mappings, linux=self.linux())
        if host_net:
            config.linux.security_context.namespace_options.network = pb.NODE
        return self.run_pod(config), config

    def finish(self) -> None:
        errors = []
        for pod_id in self.pods:
            for what, call in (("stop", self.c.stop_pod), ("remove", self.c.remove_pod)):
                try:
                    call(pod_id)
                except grpc.RpcError as e:
                    errors.append(f"{what} PodSandbox {pod_id}: {e.code()}: {e.details()}")
        for fn in reversed(self.cleanups):
            fn()
        assert not errors, errors

    # images and containers
    def ensure_image(self, image: str, pod_config: pb.PodSandboxConfig | None) -> str:
        name = image if ":" in image else image + ":latest"
        if self.c.image_status(name) is None:
            self.pull(name, pod_config)
        return name

    def pull(self, image: str, pod_config: pb.PodSandboxConfig | None = None) -> str:
        """framework.PullPublicImage: a name without a tag gets :latest."""
        if "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
            image += ":latest"
        return self.c.pull(image, pod_config)

    def create_container_result(self, config: pb.ContainerConfig, pod_id: str,
                                pod_config: pb.PodSandboxConfig) -> str:
        name = self.ensure_image(config.image.image, pod_config)
        if not config.image.user_specified_image:
            config.image.user_specified_image = name
        return self.c.create_container(pod_id, config, pod_config)

    def create_container(self, config: pb.ContainerConfig, pod_id: str,
                         pod_config: pb.PodSandboxConfig) -> str:
        return self.create_container_result(config, pod_id, pod_config)

    def container(self, pod_id: str, pod_config: pb.PodSandboxConfig, prefix: str,
                  command: list[str] | None = None, image: str = BUSYBOX,
                  name: str | None = None, **kw) -> str:
        kw.setdefault("linux", pb.LinuxContainerConfig())
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name or prefix + new_uuid(), attempt=ATTEMPT),
            image=pb.ImageSpec(image=image), command=command or [], **kw)
        return self.create_container(config, pod_id, pod_config)

    def default_container(self, pod_id, pod_config, prefix, **kw) -> str:
        return self.container(pod_id, pod_config, prefix, TOP, **kw)

    def pause_container(self, pod_id, pod_config, prefix, **kw) -> str:
        return self.container(pod_id, pod_config, prefix, PAUSE, **kw)

    def state(self, cid: str) -> int:
        return self.c.container_status(cid).status.state

    def wait_state(self, cid: str, state: int) -> None:
        eventually(lambda: self.state(cid) == state, what=f"container {cid} state {state}")

    def start(self, cid: str) -> None:
        self.c.start_container(cid)

    def start_running(self, cid: str) -> None:
        self.start(cid)
        self.wait_state(cid, RUNNING)

    def stop_exited(self, cid: str) -> None:
        t0 = time.monotonic()
        self.c.stop_container(cid, STOP_TIMEOUT)
        assert time.monotonic() - t0 < STOP_TIMEOUT, "stop container timeout"
        self.wait_state(cid, EXITED)

    def exec_ok(self, cid: str, cmd: list[str]) -> str:
        """execSyncContainer: no error, empty stderr; the stdout."""
        r = self.c.exec_sync(cid, cmd, EXEC_TIMEOUT)
        assert not r.failed, f"execSync {cmd} in {cid}: {r}"
        assert r.stderr == b"", f"execSync {cmd}: stderr should be empty: {r}"
        return r.out

    def container_found(self, cid: str) -> bool:
        return any(c.id == cid for c in self.c.list_containers(pb.ContainerFilter(id=cid)))


@pytest.fixture
def s(client, target):
    suite = Suite(client, target)
    yield suite
    suite.finish()


# --- logs ----------------------------------------------------------------------------------

CRI_LOG = re.compile(r"^(\S+) (stdout|stderr) ([PF])(?: (.*))?$")
RFC3339NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


def parse_log(pod_config: pb.PodSandboxConfig, log_path: str) -> list[tuple[str, str]]:
    """(stream, content + newline) per line, as critest's parseCRILog (which fails on a
    line without 4 space-separated fields or a timestamp that is not RFC 3339)."""
    out = []
    with open(os.path.join(pod_config.log_directory, log_path), errors="replace") as f:
        for line in f.read().splitlines():
            parts = line.split(" ", 3)
            assert len(parts) == 4, f"invalid CRI log line {line!r}"
            assert RFC3339NANO.match(parts[0]), f"timestamp of {line!r} is not RFC 3339"
            out.append((parts[1], parts[3] + "\n"))
    return out


def verify_log(pod_config, log_path: str, log: str, stream: str) -> None:
    msgs = parse_log(pod_config, log_path)
    assert (stream, log) in msgs, f"expected log {log!r} ({stream}) not in {msgs}"


def verify_log_re(pod_config, log_path: str, pattern: str, stream: str) -> None:
    msgs = parse_log(pod_config, log_path)
    assert any(st == stream and re.search(pattern, m) for st, m in msgs), \
        f"expected log pattern {pattern!r} ({stream}) not in {msgs}"


# --- HTTP ----------------------------------------------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check_main_page(c: CriClient, pod_id: str, host_port: int, container_port: int) -> None:
    if host_port:
        url = f"http://127.0.0.1:{host_port}/"
    else:
        status = c.pod_status(pod_id)
        assert status.network.ip, f"pod {pod_id} has no IP: {status.network}"
        url = f"http://{status.network.ip}:{container_port}/"

    def get():
        with _NO_PROXY.open(url, timeout=10) as resp:
            return resp.status

    assert eventually(get, what=f"GET {url}") == 200


# === Runtime info (runtime_info.go) =========================================================


def test_runtime_should_return_version_info(client):
    v = client.version()
    assert v.version and v.runtime_name and v.runtime_version and v.runtime_api_version


def test_runtime_should_return_runtime_conditions(client):
    conds = {c.type: c.status for c in client.status().status.conditions}
    assert conds.get("RuntimeReady") is True and conds.get("NetworkReady") is True, conds


# === PodSandbox (pod.go, pod_linux.go) ======================================================


def test_runtime_should_support_running_podsandbox(s):
    pod_id = s.run_default_pod("PodSandbox-for-create-test-")
    assert s.c.pod_status(pod_id).state == pb.SANDBOX_READY
    assert any(p.id == pod_id for p in s.c.list_pods(pb.PodSandboxFilter(id=pod_id)))


def test_runtime_should_support_stopping_podsandbox(s):
    pod_id = s.run_default_pod("PodSandbox-for-test-stop-")
    s.c.stop_pod(pod_id)
    assert s.c.pod_status(pod_id).state == pb.SANDBOX_NOTREADY


def test_runtime_should_support_removing_podsandbox(s):
    pod_id = s.run_default_pod("PodSandbox-for-test-remove-")
    s.c.stop_pod(pod_id)
    s.c.remove_pod(pod_id)
    s.pods.remove(pod_id)
    assert not any(p.id == pod_id for p in s.c.list_pods(pb.PodSandboxFilter(id=pod_id)))


def test_runtime_should_support_preserving_podsandbox_attributes(s):
    name = "PodSandbox-with-attributes-" + new_uuid()
    metadata = s.metadata(name)
    labels = {"foo": "bar", "io.kubernetes.pod.name": name,
              "io.kubernetes.pod.namespace": metadata.namespace,
              "io.kubernetes.pod.uid": metadata.uid}
    annotations = {"abc": "def"}
    pod_id = s.run_pod(pb.PodSandboxConfig(metadata=metadata, labels=labels,
                                           annotations=annotations, linux=s.linux()))
    status = s.c.pod_status(pod_id)
    pods = s.c.list_pods(pb.PodSandboxFilter(id=pod_id))
    assert len(pods) == 1
    for got in (status, pods[0]):
        assert got.metadata == metadata
        assert labels.items() <= dict(got.labels).items()
        assert annotations.items() <= dict(got.annotations).items()


def test_runtime_should_support_listing_pods_by_state_and_label_selector(s):
    """ListPodSandbox's filters as kubelet uses them (not a critest case of its own)."""
    ready = s.run_pod(pb.PodSandboxConfig(metadata=s.metadata("filter-ready-" + new_uuid()),
                                          labels={"critest": "ready"}, linux=s.linux()))
    stopped = s.run_pod(pb.PodSandboxConfig(metadata=s.metadata("filter-stop-" + new_uuid()),
                                            labels={"critest": "stopped"}, linux=s.linux()))
    s.c.stop_pod(stopped)
    def ids(f):
        return {p.id for p in s.c.list_pods(f)}

    assert ready in ids(pb.PodSandboxFilter(state=pb.PodSandboxStateValue(
        state=pb.SANDBOX_READY)))
    assert stopped not in ids(pb.PodSandboxFilter(state=pb.PodSandboxStateValue(
        state=pb.SANDBOX_READY)))
    assert stopped in ids(pb.PodSandboxFilter(state=pb.PodSandboxStateValue(
        state=pb.SANDBOX_NOTREADY)))
    assert ids(pb.PodSandboxFilter(label_selector={"critest": "ready"})) & {ready, stopped} \
        == {ready}
    assert ids(pb.PodSandboxFilter(label_selector={"critest": "nothing"})) & {ready, stopped} \
        == set()
    # an id prefix, as crictl passes a short id
    assert ids(pb.PodSandboxFilter(id=ready[:12])) == {ready}


def test_runtime_should_support_metrics_descriptors(client):
    try:
        client.rs.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=60)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("CRI Metrics endpoints not supported by this runtime version")
        raise


def sysctl_pod(s: Suite, sysctls: dict) -> tuple[str, pb.PodSandboxConfig]:
    config = pb.PodSandboxConfig(
        metadata=s.metadata("pod-sandbox-with-sysctls-" + new_uuid()),
        linux=s.linux(sysctls=sysctls))
    return s.run_pod(config), config


@pytest.mark.parametrize("key,path,value", [
    ("kernel.shm_rmid_forced", "/proc/sys/kernel/shm_rmid_forced", "1"),
    ("fs.mqueue.msg_max", "/proc/sys/fs/mqueue/msg_max", "100"),
], ids=["safe", "unsafe"])
def test_runtime_should_support_sysctls(s, key, path, value):
    pod_id, pod_config = sysctl_pod(s, {key: value})
    cid = s.default_container(pod_id, pod_config, "container-sysctl-")
    s.start(cid)
    r = s.c.exec_sync(cid, ["cat", path], EXEC_TIMEOUT)
    assert not r.failed, r
    assert r.out.strip() == value


# === Container (container.go) ===============================================================


@pytest.fixture
def pod(s):
    return s.pod_for_container()


def test_runtime_should_support_creating_container(s, pod):
    cid = s.default_container(*pod, "container-for-create-")
    assert s.container_found(cid)


def test_runtime_should_support_starting_container(s, pod):
    cid = s.default_container(*pod, "container-for-start-test-")
    s.start_running(cid)


def test_runtime_should_support_stopping_container(s, pod):
    cid = s.default_container(*pod, "container-for-stop-test-")
    s.start(cid)
    s.stop_exited(cid)


def test_runtime_should_support_removing_created_container(s, pod):
    cid = s.pause_container(*pod, "container-for-remove-created-test-")
    s.c.remove_container(cid)
    assert not s.container_found(cid)


def test_runtime_should_support_removing_running_container(s, pod):
    cid = s.pause_container(*pod, "container-for-remove-running-test-")
    s.start(cid)
    s.c.remove_container(cid)
    assert not s.container_found(cid)


def test_runtime_should_support_removing_stopped_container(s, pod):
    cid = s.pause_container(*pod, "container-for-remove-stopped-test-")
    s.start(cid)
    s.stop_exited(cid)
    s.c.remove_container(cid)
    assert not s.container_found(cid)


def test_runtime_should_support_listing_containers_with_filters(s, pod):
    """ListContainers by id, id prefix, pod, state and label selector, as kubelet and crictl
    filter (not a critest case of its own)."""
    a = s.default_container(*pod, "filter-a-", labels={"critest": "a"})
    b = s.default_container(*pod, "filter-b-", labels={"critest": "b"})
    s.start_running(a)
    def ids(**kw):
        return {c.id for c in s.c.list_containers(pb.ContainerFilter(**kw))}

    assert ids(id=a) == {a}
    assert ids(id=a[:12]) == {a}
    assert ids(pod_sandbox_id=pod[0]) == {a, b}
    assert ids(state=pb.ContainerStateValue(state=RUNNING)) & {a, b} == {a}
    assert ids(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED)) & {a, b} == {b}
    assert ids(label_selector={"critest": "b"}) & {a, b} == {b}
    listed = {c.id: c for c in s.c.list_containers(pb.ContainerFilter(pod_sandbox_id=pod[0]))}
    assert listed[a].pod_sandbox_id == pod[0]
    assert listed[a].metadata.attempt == ATTEMPT
    assert listed[a].image_ref


def test_runtime_should_support_execsync(s, pod):
    cid = s.default_container(*pod, "container-for-execSync-test-")
    s.start(cid)
    assert s.exec_ok(cid, ECHO_HELLO) == "hello"


def test_runtime_should_support_execsync_with_timeout(s, pod):
    cid = s.default_container(*pod, "container-for-execSync-timeout-test-")
    s.start(cid)
    t0 = time.monotonic()
    r = s.c.exec_sync(cid, SLEEP, 1)
    assert r.failed, f"execSync should timeout: {r}"
    assert time.monotonic() - t0 < 20, "the exec's timeout was not kept"
    # the timed out exec process must be gone
    r = s.c.exec_sync(cid, CHECK_SLEEP, EXEC_TIMEOUT)
    assert not r.failed and r.stderr == b"" and r.out.strip() == "", r


def test_execsync_timeout_is_deadline_exceeded(s, pod):
    """The issue's wording of the same rule: the status code (containerd: an error with
    "timeout" in it; kubelet only needs an error)."""
    cid = s.default_container(*pod, "container-for-execSync-timeout-code-")
    s.start(cid)
    r = s.c.exec_sync(cid, SLEEP, 1)
    assert r.rpc_error is not None and r.rpc_error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, r


def stat_found(stats, cid: str) -> bool:
    return any(st.attributes.id == cid for st in stats)


def test_runtime_should_support_listing_container_stats(s, pod):
    cid = s.default_container(*pod, "container-for-stats-")
    s.start(cid)
    stats = s.c.container_stats(cid)
    assert stats.attributes.id == cid
    assert "container-for-stats-" in stats.attributes.metadata.name
    assert stats.cpu.timestamp != 0
    assert stats.memory.timestamp != 0


def test_runtime_should_support_listing_stats_for_started_containers(s, pod):
    cid = s.default_container(*pod, "container-for-stats-")
    s.start(cid)
    assert stat_found(s.c.list_container_stats(pb.ContainerStatsFilter(id=cid)), cid)


def test_runtime_should_support_listing_stats_when_filter_is_nil(s, pod):
    cid = s.default_container(*pod, "container-for-stats-with-nil-filter-")
    s.start(cid)
    assert stat_found(s.c.list_container_stats(None), cid)


def test_runtime_should_support_listing_stats_for_three_created_containers(s, pod):
    cids = [s.default_container(*pod, "container-for-stats-with-nil-filter-")
            for _ in range(3)]
    for cid in cids:
        s.start(cid)
    stats = s.c.list_container_stats(None)
    for cid in cids:
        assert stat_found(stats, cid), cid


def test_runtime_should_support_listing_stats_filtered_by_labels(s, pod):
    labels = {"foo": "bar"}
    cid = s.default_container(*pod, "container-for-stats-with-labels-", labels=labels)
    s.start(cid)
    assert stat_found(s.c.list_container_stats(pb.ContainerStatsFilter(label_selector=labels)),
                      cid)
    assert not stat_found(s.c.list_container_stats(
        pb.ContainerStatsFilter(label_selector={"foo": "baz"})), cid)


def host_path(s: Suite, pod_id: str) -> str:
    path = tempfile.mkdtemp(prefix="test" + pod_id, dir="/tmp")
    open(os.path.join(path, "testVolume.file"), "w").close()
    s.cleanups.append(lambda: subprocess.run(["rm", "-rf", "--one-file-system", path], check=False))
    return path


def volume_container(s: Suite, pod, prefix: str, path: str) -> str:
    return s.container(*pod, prefix, PAUSE, linux=None, mounts=[
        pb.Mount(host_path=path, container_path=path, selinux_relabel=True)])


def test_runtime_should_support_starting_container_with_volume(s, pod):
    path = host_path(s, pod[0])
    cid = volume_container(s, pod, "container-with-volume-test-", path)
    s.start_running(cid)
    assert s.exec_ok(cid, ["ls", "-A", path]) != ""


def test_runtime_should_support_volume_when_host_path_is_a_symlink(s, pod):
    path = host_path(s, pod[0])
    link = path + "-symlink"
    os.symlink(path, link)
    s.cleanups.append(lambda: os.unlink(link))
    cid = volume_container(s, pod, "container-with-symlink-host-path-test-", link)
    s.start_running(cid)
    assert s.exec_ok(cid, ["ls", "-A", link]) != ""


def log_container(s: Suite, pod_id, pod_config, prefix: str, command) -> tuple[str, str]:
    name = prefix + new_uuid()
    path = name + ".log"
    cid = s.container(pod_id, pod_config, prefix, command, name=name, linux=None,
                      log_path=path)
    return path, cid


def test_runtime_should_support_starting_container_with_log(s):
    pod_id, pod_config = s.pod_with_log_dir()
    path, cid = log_container(s, pod_id, pod_config, "container-with-log-test-", LOG_DEFAULT)
    s.start(cid)
    s.wait_state(cid, EXITED)
    verify_log(pod_config, path, DEFAULT_LOG + "\n", "stdout")
    # ContainerStatus.log_path is the file kubelet reads
    assert s.c.container_status(cid).status.log_path == \
        os.path.join(pod_config.log_directory, path)


def test_runtime_should_support_reopening_container_log(s):
    pod_id, pod_config = s.pod_with_log_dir()
    path, cid = log_container(s, pod_id, pod_config, "container-reopen-log-test-", LOOP_LOG)
    s.start(cid)
    eventually(lambda: parse_log(pod_config, path), what="container log")
    full = os.path.join(pod_config.log_directory, path)
    os.rename(full, full + ".new")
    s.c.reopen_log(cid)
    assert os.path.exists(full), "new container log file should be created"
    eventually(lambda: parse_log(pod_config, path), what="new container log")
    old = len(parse_log(pod_config, path + ".new"))
    for _ in range(5):
        time.sleep(1)
        assert len(parse_log(pod_config, path + ".new")) == old, "old log should not change"


def test_container_log_has_stdout_and_stderr_and_tty_as_stdout(s):
    """CRI log format per stream; a tty container's output is stdout (the issue's rule)."""
    pod_id, pod_config = s.pod_with_log_dir()
    path, cid = log_container(s, pod_id, pod_config, "container-log-streams-",
                              ["sh", "-c", "echo out; echo err >&2"])
    s.start(cid)
    s.wait_state(cid, EXITED)
    verify_log(pod_config, path, "out\n", "stdout")
    verify_log(pod_config, path, "err\n", "stderr")
    name = "container-log-tty-" + new_uuid()
    cid = s.container(pod_id, pod_config, "", ["sh", "-c", "echo tty-out; echo tty-err >&2"],
                      name=name, log_path=name + ".log", tty=True)
    s.start(cid)
    s.wait_state(cid, EXITED)
    msgs = parse_log(pod_config, name + ".log")
    assert all(st == "stdout" for st, _ in msgs), msgs
    text = "".join(m for _, m in msgs)
    assert "tty-out" in text and "tty-err" in text, msgs


def test_container_log_tags_partial_and_long_lines(s):
    """The CRI log's tag: F ends a line, P a part of one (output without a final newline,
    or a line longer than the runtime's buffer, 16 KiB for containerd) that kubelet joins
    with the next. Not a critest case: kubectl logs relies on it."""
    pod_id, pod_config = s.pod_with_log_dir()
    name = "container-log-tags-" + new_uuid()
    cid = s.container(pod_id, pod_config, "", [
        "sh", "-c", "echo whole; head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail"],
        name=name, log_path=name + ".log")
    s.start(cid)
    s.wait_state(cid, EXITED)
    path = os.path.join(pod_config.log_directory, name + ".log")
    # (the log complete at EXITED is test_runtime_should_support_starting_container_with_log's)
    def complete():
        with open(path) as f:
            return f.read().rstrip().endswith("tail")

    eventually(complete, timeout=10, what="the last output in the log")
    entries = []
    with open(path) as f:
        for line in f.read().splitlines():
            m = CRI_LOG.match(line)
            assert m, f"not a CRI log line: {line[:100]!r}"
            entries.append((m.group(3), m.group(4) or ""))
    assert entries[0] == ("F", "whole")
    # joined as kubelet does: P parts up to the next F
    lines, part = [], ""
    for tag, text in entries[1:]:
        part += text
        if tag == "F":
            lines.append(part)
            part = ""
    assert lines == ["x" * 40000], [len(x) for x in lines]
    assert part == "tail", entries[-1]
    assert entries[-1][0] == "P", entries[-1]


def test_container_status_fields(s):
    """ContainerStatus as kubelet reads it: exit code, reason Completed / Error, times in ns,
    image and image_ref, labels, annotations (the issue's list)."""
    pod_id, pod_config = s.pod_with_log_dir()
    name = "container-status-" + new_uuid()
    cid = s.container(pod_id, pod_config, "", ["sh", "-c", "exit 3"], name=name,
                      log_path=name + ".log", labels={"l": "1"}, annotations={"a": "2"})
    st = s.c.container_status(cid).status
    assert st.state == pb.CONTAINER_CREATED and st.created_at > 10**18
    s.start(cid)
    s.wait_state(cid, EXITED)
    st = s.c.container_status(cid).status
    assert (st.exit_code, st.reason) == (3, "Error")
    assert st.started_at >= st.created_at and st.finished_at >= st.started_at > 10**18
    assert st.metadata.name == name and st.metadata.attempt == ATTEMPT
    assert st.image.image and st.image_ref
    assert dict(st.labels) == {"l": "1"} and dict(st.annotations) == {"a": "2"}
    ok = s.container(pod_id, pod_config, "container-status-ok-", ["true"])
    s.start(ok)
    s.wait_state(ok, EXITED)
    st = s.c.container_status(ok).status
    assert (st.exit_code, st.reason) == (0, "Completed")


# === Container mount propagation, OOM, readonly mounts (container_linux.go) =================


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def propagation_host_path(s: Suite, pod_id: str, propagation: int):
    top = tempfile.mkdtemp(prefix="test" + pod_id, dir="/tmp")
    src = os.path.join(top, "mnt")
    point = os.path.join(src, "propagationMnt")
    os.makedirs(point, 0o700)
    src_dir = os.path.join(top, "propagationSrcDir")
    os.makedirs(src_dir, 0o700)
    open(os.path.join(src_dir, "flagFile"), "w").close()
    mount("--rbind", src, src)
    mount("--make-rshared" if propagation != pb.PROPAGATION_PRIVATE else "--make-rprivate",
          src)

    def clear():
        unmount_below(top)
        subprocess.run(["rm", "-rf", "--one-file-system", top], check=False)

    s.cleanups.append(clear)
    return src, src_dir, point


@pytest.mark.parametrize("propagation", [pb.PROPAGATION_PRIVATE, pb.PROPAGATION_BIDIRECTIONAL,
                                         pb.PROPAGATION_HOST_TO_CONTAINER],
                         ids=["rprivate", "rshared", "rslave"])
def test_runtime_should_support_mount_propagation(s, propagation):
    pod = s.privileged_pod(True)
    src, src_dir, point = propagation_host_path(s, pod[0], propagation)
    cid = s.container(*pod, "mount-propagation-test-", PAUSE,
                      linux=pb.LinuxContainerConfig(
                          security_context=pb.LinuxContainerSecurityContext(privileged=True)),
                      mounts=[pb.Mount(host_path=src, container_path=src,
                                       propagation=propagation)])
    mounts = s.c.container_status(cid, verbose=True).status.mounts
    assert len(mounts) == 1
    m = mounts[0]
    assert (m.container_path, m.host_path, m.readonly, m.selinux_relabel, m.propagation) == \
        (src, src, False, False, propagation)
    s.start_running(cid)
    mount("--rbind", src_dir, point)
    out = s.exec_ok(cid, ["ls", "-A", point])
    if propagation == pb.PROPAGATION_PRIVATE:
        assert out == "", "a private mount should not see the host's new mount"
    else:
        assert out != "", "the host's new mount should be seen in the container"
    inner = os.path.join(src, "containerMntPoint")
    s.exec_ok(cid, ["sh", "-c", "mkdir -p " + inner])
    s.exec_ok(cid, ["sh", "-c", "mount --bind /etc " + inner])
    seen = os.listdir(inner)
    if propagation == pb.PROPAGATION_BIDIRECTIONAL:
        assert seen, "the container's mount should propagate to the host"
    else:
        assert not seen, "the container's mount should not reach the host"


def test_should_terminate_with_exitcode_137_and_reason_oomkilled(s):
    pod = s.privileged_pod(True)
    cid = s.container(*pod, "OOM-test-", ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=20M"],
                      linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
                          memory_limit_in_bytes=15 * 1024 * 1024,
                          memory_swap_limit_in_bytes=15 * 1024 * 1024)))
    s.c.container_status(cid, verbose=True)
    s.start(cid)
    s.wait_state(cid, EXITED)
    eventually(lambda: s.c.container_status(cid).status.reason == "OOMKilled",
               what="reason OOMKilled")
    assert s.c.container_status(cid).status.exit_code == 137


def runtime_supports_rro(client: CriClient) -> bool:
    for h in client.status().runtime_handlers:
        if h.name == "":
            return h.features.recursive_read_only_mounts
    return False


def rro_host_path(s: Suite, pod_id: str) -> str:
    top = tempfile.mkdtemp(prefix="test" + pod_id, dir="/tmp")
    os.makedirs(os.path.join(top, "tmpfs"), 0o700)
    mount("-t", "tmpfs", "none", os.path.join(top, "tmpfs"))

    def clear():
        unmount_below(top)
        subprocess.run(["rm", "-rf", "--one-file-system", top], check=False)

    s.cleanups.append(clear)
    return top


def mount_container(s: Suite, pod, mounts: list[pb.Mount]):
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="test-mount-" + new_uuid(), attempt=ATTEMPT),
        image=pb.ImageSpec(image=BUSYBOX), command=PAUSE, mounts=mounts)
    return s.create_container_result(config, pod[0], pod[1])


@pytest.mark.parametrize("rro", [False, True], ids=["non-recursive", "recursive"])
def test_runtime_should_support_readonly_mounts(s, client, rro):
    if rro and not runtime_supports_rro(client):
        pytest.skip("runtime does not implement recursive readonly mounts")
    pod = s.privileged_pod(True)
    path = rro_host_path(s, pod[0])
    cid = mount_container(s, pod, [pb.Mount(host_path=path, container_path="/mnt",
                                            readonly=True, recursive_read_only=rro,
                                            selinux_relabel=True)])
    assert len(s.c.container_status(cid, verbose=True).status.mounts) == 1
    s.start_running(cid)
    if rro:
        s.exec_ok(cid, ["sh", "-c",
                        'touch /mnt/tmpfs/foo 2>&1 | grep -q "Read-only file system"'])
    else:
        s.exec_ok(cid, ["touch", "/mnt/tmpfs/file"])


@pytest.mark.parametrize("prop,readonly", [
    (pb.PROPAGATION_HOST_TO_CONTAINER, True), (pb.PROPAGATION_BIDIRECTIONAL, True),
    (pb.PROPAGATION_PRIVATE, False)], ids=["host-to-container", "bidirectional",
                                           "readonly-false"])
def test_runtime_should_reject_a_bad_recursive_readonly_mount(s, client, prop, readonly):
    if not runtime_supports_rro(client):
        pytest.skip("runtime does not implement recursive readonly mounts")
    pod = s.privileged_pod(True)
    path = rro_host_path(s, pod[0])
    with pytest.raises(grpc.RpcError):
        mount_container(s, pod, [pb.Mount(host_path=path, container_path="/mnt",
                                          readonly=readonly, recursive_read_only=True,
                                          selinux_relabel=True, propagation=prop)])


# === Image Manager (image.go, image_id_consistency.go) ======================================

TAGGED = CRI_TOOLS + "test-image-tag:test"
UNTAGGED = CRI_TOOLS + "test-image-latest"
ALL_REFS = CRI_TOOLS + "test-image-tag:all"
DIFFERENT_IMAGES = [CRI_TOOLS + f"test-image-{i}:latest" for i in (1, 2, 3)]
SAME_IMAGE = [CRI_TOOLS + f"test-image-tags:{i}" for i in (1, 2, 3)]


def remove_image(c: CriClient, name: str) -> None:
    """critest's removeImage: by the id ImageStatus gives, if there is one."""
    image = c.image_status(name)
    if image is not None:
        c.remove_image(image.id)


def pull_check_remove(s: Suite, name: str, check) -> None:
    remove_image(s.c, name)
    s.pull(name, pb.PodSandboxConfig())
    status = s.c.image_status(name)
    assert status is not None, "should have one image in list"
    assert status.id and status.size
    check(status)
    remove_image(s.c, name)
    assert s.c.image_status(name) is None, "should have no image left"


def test_public_image_with_tag_should_be_pulled_and_removed(s):
    pull_check_remove(s, TAGGED, lambda st: list(st.repo_tags) == [TAGGED])


def test_public_image_should_timeout_if_requested(s):
    with pytest.raises(grpc.RpcError) as e:
        s.c.pull(TAGGED, timeout=0.001)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_public_image_without_tag_should_be_pulled_and_removed(s):
    pull_check_remove(s, UNTAGGED, lambda st: list(st.repo_tags) == [UNTAGGED + ":latest"])


def test_public_image_with_digest_should_be_pulled_and_removed(s, registry):
    ref = registry.digest_ref()

    def check(st):
        assert list(st.repo_tags) == []
        assert list(st.repo_digests) == [ref]
    pull_check_remove(s, ref, check)


def test_image_status_should_support_all_kinds_of_references(s):
    remove_image(s.c, ALL_REFS)
    s.pull(ALL_REFS)
    status = s.c.image_status(ALL_REFS)
    assert status is not None
    assert s.c.image_status(status.id) == status, f"image status with {status.id}"
    for ref in [*status.repo_tags, *status.repo_digests]:
        assert s.c.image_status(ref) == status, f"image status with {ref}"
    remove_image(s.c, ALL_REFS)
    assert s.c.image_status(ALL_REFS) is None


@pytest.mark.parametrize("image,uid,username", [
    ("test-image-user-uid", 1002, ""), ("test-image-user-username", 0, "www-data"),
    ("test-image-user-uid-group", 1003, ""), ("test-image-user-username-group", 0, "www-data"),
], ids=["uid", "username", "uid-group", "username-group"])
def test_image_status_should_have_uid_or_username(s, image, uid, username):
    name = CRI_TOOLS + image
    s.pull(name)
    try:
        status = s.c.image_status(name + ":latest")
        assert status.uid.value == uid
        assert status.username == username
    finally:
        remove_image(s.c, name + ":latest")


def test_listimage_should_get_exactly_3_images(s):
    for name in DIFFERENT_IMAGES:
        remove_image(s.c, name)
    ids = [s.pull(name) for name in DIFFERENT_IMAGES]
    try:
        assert len(ids) == 3 and len(set(ids)) == 3
        images = {i.id: i for i in s.c.list_images(pb.ImageFilter())}
        for name, image_id in zip(DIFFERENT_IMAGES, ids):
            assert image_id in images, f"{image_id} not listed"
            assert list(images[image_id].repo_tags) == [name]
    finally:
        for name in DIFFERENT_IMAGES:
            remove_image(s.c, name)


def test_listimage_should_get_exactly_3_repotags_in_one_image(s):
    for name in SAME_IMAGE:
        remove_image(s.c, name)
    ids = sorted({s.pull(name) for name in SAME_IMAGE})
    try:
        assert len(ids) == 1, "only 1 image id should be returned"
        images = {i.id: i for i in s.c.list_images(pb.ImageFilter())}
        assert sorted(images[ids[0]].repo_tags) == sorted(SAME_IMAGE)
    finally:
        for name in SAME_IMAGE:
            remove_image(s.c, name)


def test_listimages_filter_by_reference(s):
    """ListImages with a filter lists that image only (the issue's "ListImages with
    filter"; not a critest case)."""
    ids = {s.pull(name) for name in DIFFERENT_IMAGES[:2]}
    try:
        filtered = s.c.list_images(pb.ImageFilter(image=pb.ImageSpec(
            image=DIFFERENT_IMAGES[0])))
        assert [i.id for i in filtered] == [s.c.image_status(DIFFERENT_IMAGES[0]).id], ids
    finally:
        for name in DIFFERENT_IMAGES[:2]:
            remove_image(s.c, name)


def test_should_return_the_same_image_identifier_across_all_apis(s):
    image_ref = s.pull(TAGGED, pb.PodSandboxConfig())
    assert image_ref
    try:
        status = s.c.image_status(TAGGED)
        assert status is not None and status.id == image_ref
        pod_id, pod_config = s.pod_for_container()
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="id-consistency-" + new_uuid(), attempt=ATTEMPT),
            image=pb.ImageSpec(image=image_ref, user_specified_image=TAGGED))
        cid = s.c.create_container(pod_id, config, pod_config)
        s.start(cid)
        cstatus = s.c.container_status(cid).status
        listed = s.c.list_containers(pb.ContainerFilter(id=cid))
        assert len(listed) == 1
        s.c.remove_container(cid)
        s.c.stop_pod(pod_id)
        if not cstatus.image_id:
            pytest.skip("ContainerStatus.image_id is empty")
        assert cstatus.image_id == image_ref
        if not listed[0].image_id:
            pytest.skip("Container.image_id is empty")
        assert listed[0].image_id == image_ref
    finally:
        remove_image(s.c, TAGGED)


def test_should_return_the_same_image_identifier_from_different_registries(s):
    # the same image under both mirrored registries' names
    one = "registry.k8s.io/k8s-staging-cri-tools/test-image-tag:test"
    two = TAGGED
    ref1 = s.pull(one)
    ref2 = s.pull(two)
    try:
        assert ref1 and ref1 == ref2
        assert s.c.image_status(one).id == ref1
        assert s.c.image_status(two).id == ref1
        pod_id, pod_config = s.pod_for_container()
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="id-consistency-multi-registry-" + new_uuid(),
                                          attempt=ATTEMPT),
            image=pb.ImageSpec(image=ref2, user_specified_image=two))
        cid = s.c.create_container(pod_id, config, pod_config)
        s.start(cid)
        image_id = s.c.container_status(cid).status.image_id
        s.c.remove_container(cid)
        if not image_id:
            pytest.skip("ContainerStatus.image_id is empty")
        assert image_id == ref1
    finally:
        remove_image(s.c, one)
        remove_image(s.c, two)


# === Image consistency (image_consistency.go) ==============================================


def listed_by_tag(c: CriClient, name: str) -> bool:
    return any(name in i.repo_tags for i in c.list_images(pb.ImageFilter()))


def test_should_not_list_or_get_image_status_immediately_after_removal(s):
    remove_image(s.c, TAGGED)
    s.pull(TAGGED, pb.PodSandboxConfig())
    remove_image(s.c, TAGGED)
    assert not listed_by_tag(s.c, TAGGED)
    assert s.c.image_status(TAGGED) is None


def test_should_list_and_get_image_status_immediately_after_pulling(s):
    remove_image(s.c, TAGGED)
    s.pull(TAGGED, pb.PodSandboxConfig())
    try:
        assert listed_by_tag(s.c, TAGGED)
        assert s.c.image_status(TAGGED) is not None
    finally:
        remove_image(s.c, TAGGED)


def test_should_not_fail_on_simultaneous_removeimage_calls(s):
    remove_image(s.c, TAGGED)
    s.pull(TAGGED, pb.PodSandboxConfig())
    image_id = s.c.image_status(TAGGED).id
    results: list = []

    def remove():
        try:
            s.c.remove_image(image_id)
            err = None
        except grpc.RpcError as e:
            err = f"{e.code()}: {e.details()}"
        results.append((err, s.c.image_status(image_id) is not None))

    threads = [threading.Thread(target=remove) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 5
    for err, found in results:
        assert err is None, f"concurrent RemoveImage: {err}"
        assert not found, "image should be missing as soon as RemoveImage returns"
    assert s.c.image_status(image_id) is None


# === Image volumes (image_volume.go) ========================================================

IMAGE_VOLUME_PATH = "/mnt/image-volume"


def image_volume_container(s: Suite, pod, image: str, readonly: bool = True,
                           sub_path: str = "") -> tuple[str | None, grpc.RpcError | None]:
    ref = s.pull(image, pb.PodSandboxConfig())
    spec = pb.ImageSpec(image=ref, user_specified_image=image)
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="image-volume-test-" + new_uuid(), attempt=ATTEMPT),
        image=spec, command=PAUSE, mounts=[pb.Mount(
            container_path=IMAGE_VOLUME_PATH, readonly=readonly, image=spec,
            image_sub_path=sub_path)])
    try:
        return s.c.create_container(pod[0], config, pod[1]), None
    except grpc.RpcError as e:
        return None, e


def skip_if_image_volume_unsupported(err, expect_error: bool) -> None:
    if err is None:
        return
    if err.code() == grpc.StatusCode.UNIMPLEMENTED:
        pytest.skip("Image Volumes are not yet supported by the runtime (Unimplemented).")
    if not expect_error:
        raise AssertionError(f"failed to create container: {err.code()}: {err.details()}")


def test_image_volume_should_return_image_digest_in_containerstatus_mounts(s, pod):
    cid, err = image_volume_container(s, pod, TAGGED)
    skip_if_image_volume_unsupported(err, False)
    ref = s.c.image_status(TAGGED).id
    for m in s.c.container_status(cid).status.mounts:
        if m.container_path == IMAGE_VOLUME_PATH:
            if not m.HasField("image") or not m.image.image_ref:
                pytest.skip("Image Volume digest reporting (ImageSpec.image_ref) not supported")
            assert m.image.image_ref == ref
            return
    pytest.skip("Image Volume mount not found in ContainerStatus")


def test_image_volume_should_correctly_mount_image_and_enforce_read_only(s, pod):
    cid, err = image_volume_container(s, pod, TAGGED)
    skip_if_image_volume_unsupported(err, False)
    s.start(cid)
    r = s.c.exec_sync(cid, ["ls", "-A", IMAGE_VOLUME_PATH + "/bin/sh"], EXEC_TIMEOUT)
    assert not r.failed, f"failed to find file in image volume: {r}"
    r = s.c.exec_sync(cid, ["touch", IMAGE_VOLUME_PATH + "/test-write"], EXEC_TIMEOUT)
    assert r.failed, f"writing to image volume should fail: {r}"
    r = s.c.exec_sync(cid, [IMAGE_VOLUME_PATH + "/bin/ls", IMAGE_VOLUME_PATH], EXEC_TIMEOUT)
    assert not r.failed, f"binary from the image volume (noexec?): {r}"


def test_image_volume_should_reject_readonly_false(s, pod):
    _, err = image_volume_container(s, pod, TAGGED, readonly=False)
    skip_if_image_volume_unsupported(err, True)
    if err is None:
        pytest.skip("Runtime accepted Image Volume with Readonly=false")


def test_image_volume_should_succeed_with_a_valid_subpath(s, pod):
    cid, err = image_volume_container(s, pod, CRI_TOOLS + "test-image-predefined-group:latest",
                                      sub_path="etc")
    skip_if_image_volume_unsupported(err, False)
    s.start(cid)
    if s.c.exec_sync(cid, ["ls", IMAGE_VOLUME_PATH], EXEC_TIMEOUT).failed:
        pytest.skip("Image Volumes are not supported by the runtime (no mount point)")
    if not s.c.exec_sync(cid, ["ls", IMAGE_VOLUME_PATH + "/etc/passwd"], EXEC_TIMEOUT).failed:
        pytest.skip("Runtime mounted the full image root, ignoring the subPath field")
    r = s.c.exec_sync(cid, ["ls", IMAGE_VOLUME_PATH + "/passwd"], EXEC_TIMEOUT)
    assert not r.failed, r


def test_image_volume_should_fail_when_subpath_does_not_exist(s, pod):
    _, err = image_volume_container(s, pod, TAGGED, sub_path="not-existing")
    skip_if_image_volume_unsupported(err, True)
    if err is None:
        pytest.skip("Runtime accepted non-existing subPath without error")


# === Idempotence (idempotence.go) ===========================================================


def test_stoppodsandbox_should_not_return_an_error_if_not_found(client):
    client.stop_pod(new_uuid())


def test_stoppodsandbox_should_not_return_an_error_if_already_stopped(s):
    pod_id = s.run_default_pod("idempotence-pod-")
    for _ in range(2):
        s.c.stop_pod(pod_id)
        assert s.c.pod_status(pod_id).state == pb.SANDBOX_NOTREADY


def test_removepodsandbox_should_not_return_an_error_if_not_found(client):
    client.remove_pod(new_uuid())


def test_stopcontainer_should_not_return_an_error_if_not_found(client):
    client.stop_container(new_uuid(), 0)


def test_stopcontainer_should_not_return_an_error_if_already_stopped(s, pod):
    cid = s.pause_container(*pod, "idempotence-container-")
    s.start(cid)
    s.stop_exited(cid)
    s.c.stop_container(cid, STOP_TIMEOUT)
    s.c.remove_container(cid)
    s.c.remove_container(cid)


def test_removecontainer_should_not_return_an_error_if_not_found(client):
    client.remove_container(new_uuid())


def test_removeimage_should_not_return_an_error_if_not_found(client):
    fake = "0" * 64
    client.remove_image(fake)
    client.remove_image(fake)


# === Security Context (security_context_linux.go) ===========================================


def ns_container(s: Suite, pod_id, pod_config, name: str, image: str,
                 ns: pb.NamespaceOption, command=None, log_path: str = "") -> str:
    return s.container(pod_id, pod_config, "", command, image=image, name=name,
                       log_path=log_path, linux=pb.LinuxContainerConfig(
                           security_context=pb.LinuxContainerSecurityContext(
                               namespace_options=ns)))


def test_runtime_should_support_hostpid(s):
    ns = pb.NamespaceOption(pid=pb.NODE, ipc=pb.POD, network=pb.POD)
    pod = s.namespace_pod(ns, "NamespaceOption-PodSandbox-" + new_uuid())
    nginx = ns_container(s, *pod, "nginx-container-hostpid-" + new_uuid(), NGINX, ns)
    s.start_running(nginx)
    wait_pid = "while [ ! -f /var/run/nginx.pid ]; do sleep 1; done && cat /var/run/nginx.pid"
    pid = s.exec_ok(nginx, ["sh", "-c", wait_pid]).strip()
    bb = ns_container(s, *pod, "container-with-HostPID-test-" + new_uuid(), BUSYBOX, ns,
                      ["sh", "-c", "sleep 1000"])
    s.start_running(bb)
    pids = s.exec_ok(bb, ["pidof", "nginx", "||", "true"]).strip()
    assert pids and pid in pids.split(), f"nginx's pid {pid} not seen by hostpid: {pids!r}"


@pytest.fixture
def host_shm():
    out = subprocess.run(["ipcmk", "-M", "1048576"], check=True, capture_output=True,
                         text=True).stdout
    shmid = out.strip().rsplit(" ", 1)[-1]
    yield shmid
    subprocess.run(["ipcrm", "-m", shmid], check=False)


@pytest.mark.parametrize("mode", [pb.NODE, pb.POD], ids=["true", "false"])
def test_runtime_should_support_hostipc(s, host_shm, mode):
    ns = pb.NamespaceOption(pid=pb.POD, ipc=mode, network=pb.POD)
    pod = s.namespace_pod(ns, "NamespaceOption-PodSandbox-" + new_uuid())
    cid = ns_container(s, *pod, "namespace-container-" + new_uuid(), BUSYBOX, ns, PAUSE)
    s.start_running(cid)
    out = s.exec_ok(cid, ["ipcs", "-m"])
    if mode == pb.NODE:
        assert host_shm in out.split(), out
    else:
        assert host_shm not in out.split(), out


def test_runtime_should_support_podpid(s):
    ns = pb.NamespaceOption(pid=pb.POD)
    pod = s.namespace_pod(ns, "NamespaceOption-PodSandbox-" + new_uuid())
    cid = ns_container(s, *pod, "nginx-container-process-namespace-" + new_uuid(), NGINX, ns)
    s.start_running(cid)
    time.sleep(1)
    assert "master process" not in s.exec_ok(cid, ["cat", "/proc/1/cmdline"])


def test_runtime_should_support_containerpid(s):
    ns = pb.NamespaceOption(pid=pb.CONTAINER)
    pod = s.namespace_pod(ns, "NamespaceOption-PodSandbox-" + new_uuid())
    cid = ns_container(s, *pod, "nginx-container-pid-" + new_uuid(), NGINX, ns)
    s.start_running(cid)
    s.exec_ok(cid, ["sh", "-c",
                    'while ! cat /proc/1/cmdline | grep "master process"; do sleep 1; done'])


@pytest.mark.parametrize("host_network", [True, False], ids=["true", "false"])
def test_runtime_should_support_hostnetwork(s, host_network):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        ns = pb.NamespaceOption(pid=pb.POD, ipc=pb.POD,
                                network=pb.NODE if host_network else pb.POD)
        name = "NamespaceOption-PodSandbox-" + new_uuid()
        _, log_dir = s.log_dir(name)
        pod_id, pod_config = s.namespace_pod(ns, name, log_dir)
        cname = "container-with-HostNetwork-test-" + new_uuid()
        cid = ns_container(s, pod_id, pod_config, cname, BUSYBOX, ns,
                           ["sh", "-c", "netstat -ln"], cname + ".log")
        s.start(cid)

        def listed():
            msgs = parse_log(pod_config, cname + ".log")
            return msgs and any(f":{port}" in m for _, m in msgs)

        if host_network:
            eventually(listed, what=f"host port {port} in the container's netstat")
        else:
            s.wait_state(cid, EXITED)
            assert parse_log(pod_config, cname + ".log")
            assert not listed(), f"host port {port} should not be in the container's list"
    finally:
        srv.close()


def sc_container(s: Suite, pod, prefix: str, command, sc: pb.LinuxContainerSecurityContext,
                 **kw) -> str:
    return s.container(*pod, prefix, command,
                       linux=pb.LinuxContainerConfig(security_context=sc), **kw)


def test_runtime_should_support_supplementalgroups(s, pod):
    cid = sc_container(s, pod, "container-with-SupplementalGroups-test-", PAUSE,
                       pb.LinuxContainerSecurityContext(supplemental_groups=[1234, 5678]))
    s.start_running(cid)
    groups = s.exec_ok(cid, ["id", "-G"]).strip().split(" ")
    assert "1234" in groups and "5678" in groups, groups


def test_runtime_should_support_runasuser(s, pod):
    cid = sc_container(s, pod, "container-with-RunAsUser-test-", PAUSE,
                       pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1001)))
    s.start_running(cid)
    assert s.exec_ok(cid, ["id", "-u"]) == "1001\n"


def test_runtime_should_support_runasusername(s, pod):
    cid = sc_container(s, pod, "container-with-RunAsUserName-test-", PAUSE,
                       pb.LinuxContainerSecurityContext(run_as_username="nobody"))
    s.start_running(cid)
    assert s.exec_ok(cid, ["id", "-nu"]) == "nobody\n"


def test_runtime_should_support_runasgroup(s):
    pod = s.pod_with_log_dir()
    name = "container-with-RunAsGroup-test-" + new_uuid()
    cid = sc_container(s, pod, "", ["sh", "-c", "echo $(id -u):$(id -g)"],
                       pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1001),
                                                        run_as_group=pb.Int64Value(value=1002)),
                       name=name, log_path=name + ".log")
    s.start(cid)
    s.wait_state(cid, EXITED)
    verify_log(pod[1], name + ".log", "1001:1002\n", "stdout")


def test_runtime_should_return_error_if_runasgroup_is_set_without_runasuser(s, pod):
    with pytest.raises(grpc.RpcError):
        sc_container(s, pod, "container-with-RunAsGroup-without-RunAsUser-test-",
                     ["sh", "-c", "echo $(id -u):$(id -g)"],
                     pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=1002)))


@pytest.mark.parametrize("readonly", [False, True], ids=["false", "true"])
def test_runtime_should_support_readonlyrootfs(s, readonly):
    pod = s.pod_with_log_dir()
    name = f"container-with-ReadOnlyRootfs-{str(readonly).lower()}-test-" + new_uuid()
    cid = sc_container(s, pod, "", ["sh", "-c", "touch test.go && [ -f test.go ] && echo 'Found'"],
                       pb.LinuxContainerSecurityContext(readonly_rootfs=readonly),
                       name=name, log_path=name + ".log")
    s.start(cid)
    s.wait_state(cid, EXITED)
    if readonly:
        verify_log(pod[1], name + ".log", "touch: test.go: Read-only file system\n", "stderr")
    else:
        verify_log(pod[1], name + ".log", "Found\n", "stdout")


def check_network_management(s: Suite, cid: str, manageable: bool) -> None:
    r = s.c.exec_sync(cid, ["brctl", "addbr", "foobar"], EXEC_TIMEOUT)
    assert r.failed != manageable, r


@pytest.mark.parametrize("privileged", [True, False], ids=["true", "false"])
def test_runtime_should_support_privileged(s, privileged):
    pod = s.privileged_pod(privileged)
    cid = sc_container(s, pod, "container-with-isPrivileged-test-", PAUSE,
                       pb.LinuxContainerSecurityContext(privileged=privileged))
    s.start_running(cid)
    check_network_management(s, cid, privileged)


def cap_container(s: Suite, pod, prefix: str, add=None, drop=None) -> str:
    return sc_container(s, pod, prefix, PAUSE, pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(add_capabilities=add or [], drop_capabilities=drop or [])))


def test_runtime_should_support_adding_capability(s, pod):
    cid = cap_container(s, pod, "container-with-added-capability-test-", add=["NET_ADMIN"])
    s.start_running(cid)
    check_network_management(s, cid, True)
    cid = s.default_container(*pod, "container-with-notCapability-test-")
    s.start_running(cid)
    check_network_management(s, cid, False)


def test_runtime_should_support_dropping_capability(s, pod):
    cid = cap_container(s, pod, "container-with-dropped-capability-test-", drop=["NET_RAW"])
    s.start_running(cid)
    r = s.c.exec_sync(cid, ["ping", "127.0.0.1"], EXEC_TIMEOUT)
    assert r.failed and r.stdout != b"" and "permission denied" in r.err, r


@pytest.mark.parametrize("add", [True, False], ids=["adding", "dropping"])
def test_runtime_should_support_all_capabilities(s, pod, add):
    cid = cap_container(s, pod, f"container-with-{'added' if add else 'dropped'}-all-test-",
                        add=["ALL"] if add else None, drop=None if add else ["ALL"])
    s.start_running(cid)
    r = s.c.exec_sync(cid, ["cat", "/proc/self/status"], EXEC_TIMEOUT)
    assert not r.failed and r.stderr == b"", r
    zero = re.search(r"CapBnd:\s0000000000000000", r.out) is not None
    assert zero != add, re.findall(r"Cap\w+:.*", r.out)


def test_runtime_should_support_maskedpaths(s, pod):
    cid = sc_container(s, pod, "container-with-maskedpaths", PAUSE,
                       pb.LinuxContainerSecurityContext(masked_paths=["/bin/ls"]))
    s.start_running(cid)
    # critest runs `sh -c ls` and expects "/bin/sh: ls: Permission denied": busybox 1.29's
    # sh execs /bin/ls; Debian's (the stand-in) runs its applets in place whatever the
    # path holds, so the path is named here to have sh exec it
    r = s.c.exec_sync(cid, ["/bin/sh", "-c", "/bin/ls"], EXEC_TIMEOUT)
    assert r.failed and r.err == "/bin/sh: /bin/ls: Permission denied\n", r


def test_runtime_should_support_readonlypaths(s, pod):
    cid = sc_container(s, pod, "container-with-readonlypaths", PAUSE,
                       pb.LinuxContainerSecurityContext(readonly_paths=["/tmp"]))
    s.start_running(cid)
    r = s.c.exec_sync(cid, ["touch", "/tmp/test"], EXEC_TIMEOUT)
    assert r.failed and r.err == "touch: /tmp/test: Read-only file system\n", r


@pytest.mark.parametrize("policy", [pb.Merge, pb.Strict], ids=["merge", "strict"])
def test_supplementalgroupspolicy(s, client, policy):
    features = client.status().features
    if not features.supplemental_groups_policy:
        pytest.skip("The runtime does not support SupplementalGroupsPolicy feature")
    pod = s.pod_with_log_dir()
    name = "container-with-SupplementalGroupsPolicy-" + new_uuid()
    cid = s.container(*pod, "", ["sh", "-c", "id -G; sleep infinity"],
                      image=CRI_TOOLS + "test-image-predefined-group", name=name,
                      log_path=name + ".log", linux=pb.LinuxContainerConfig(
                          security_context=pb.LinuxContainerSecurityContext(
                              run_as_user=pb.Int64Value(value=1000), supplemental_groups=[1234],
                              supplemental_groups_policy=policy)))
    s.start(cid)
    groups = [1000, 1234, 50000] if policy == pb.Merge else [1000, 1234]

    def user_ok():
        st = s.c.container_status(cid).status
        assert st.state == RUNNING
        lu = st.user.linux
        assert (lu.uid, lu.gid, sorted(lu.supplemental_groups)) == (1000, 1000, groups)
        return parse_log(pod[1], name + ".log")

    eventually(user_ok, what="container user")
    expected = " ".join(map(str, groups)) + "\n"
    verify_log(pod[1], name + ".log", expected, "stdout")
    assert s.exec_ok(cid, ["id", "-G"]) == expected


BLOCK_HOSTNAME = '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [' \
                 '{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}'
BLOCK_CHMOD = '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [' \
              '{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}'


@pytest.fixture
def profiles(tmp_path):
    paths = {}
    for name, text in (("block-host-name.json", BLOCK_HOSTNAME),
                       ("block-chmod.json", BLOCK_CHMOD)):
        path = tmp_path / name
        path.write_text(text)
        paths[name] = str(path)
    return paths


def seccomp_test_container(s: Suite, profile: pb.SecurityProfile | None) -> str:
    config = pb.PodSandboxConfig(
        metadata=s.metadata("seccomp-sandbox-" + new_uuid()),
        linux=s.linux(security_context=pb.LinuxSandboxSecurityContext(seccomp=profile)))
    pod = (s.run_pod(config), config)
    cid = sc_container(s, pod, "seccomp-container-", PAUSE,
                       pb.LinuxContainerSecurityContext(seccomp=profile))
    s.start_running(cid)
    return cid


def seccomp_status(s: Suite, cid: str) -> str:
    r = s.c.exec_sync(cid, ["grep", "Seccomp:", "/proc/self/status"], EXEC_TIMEOUT)
    assert not r.failed, r
    return r.out


def test_should_support_seccomp_unconfined_on_the_container(s):
    cid = seccomp_test_container(s, pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined))
    assert "0" in seccomp_status(s, cid)


def test_should_support_seccomp_localhost_profile_on_the_container(s, profiles):
    cid = seccomp_test_container(s, pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=profiles["block-chmod.json"]))
    r = s.c.exec_sync(cid, ["chmod", "400", "/"], EXEC_TIMEOUT)
    assert r.failed and "Operation not permitted" in r.err, r


def test_should_support_seccomp_default_on_the_container(s):
    cid = seccomp_test_container(s, pb.SecurityProfile())
    assert "2" in seccomp_status(s, cid)


def test_should_support_nil_profile_which_is_unconfined(s):
    cid = seccomp_test_container(s, None)
    assert "0" in seccomp_status(s, cid)


@pytest.mark.parametrize("path,want", [("runtime/default", "2"), ("docker/default", "2"),
                                       ("unconfined", "0"), ("localhost", "chmod")],
                         ids=["runtime-default", "docker-default", "unconfined", "localhost"])
def test_deprecated_seccomp_profile_path(s, pod, profiles, path, want):
    """The deprecated seccomp_profile_path field, as older critest versions and kubelets
    (v1alpha2) send it: runtime/default, docker/default, unconfined, localhost/<path>."""
    if path == "localhost":
        path = "localhost/" + profiles["block-chmod.json"]
    cid = sc_container(s, pod, "seccomp-profile-path-", PAUSE,
                       pb.LinuxContainerSecurityContext(seccomp_profile_path=path))
    s.start_running(cid)
    if want == "chmod":
        r = s.c.exec_sync(cid, ["chmod", "400", "/"], EXEC_TIMEOUT)
        assert r.failed and "Operation not permitted" in r.err, r
    else:
        assert "Seccomp:\t" + want in seccomp_status(s, cid)


def seccomp_container(s: Suite, pod, profile, caps, privileged: bool) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="container-with-block-hostname-seccomp-profile-test-"
                                      + new_uuid(), attempt=ATTEMPT),
        image=pb.ImageSpec(image=BUSYBOX, user_specified_image=BUSYBOX),
        command=["sleep", "60"],
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            privileged=privileged, capabilities=pb.Capability(add_capabilities=caps or []),
            seccomp=profile)))
    cid = s.create_container(config, *pod)
    s.start_running(cid)
    return cid


def check_set_hostname(s: Suite, cid: str, settable: bool) -> None:
    r = s.c.exec_sync(cid, ["hostname", "ANewHostName"], EXEC_TIMEOUT)
    assert r.failed != settable, r


def test_runtime_should_not_block_sethostname_with_unconfined_seccomp_and_sys_admin(s, pod):
    cid = seccomp_container(s, pod, pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined),
                            ["SYS_ADMIN"], False)
    check_set_hostname(s, cid, True)


def test_runtime_should_support_a_seccomp_profile_that_blocks_sethostname(s, pod, profiles):
    cid = seccomp_container(s, pod, pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost,
        localhost_ref=profiles["block-host-name.json"]), ["SYS_ADMIN"], False)
    check_set_hostname(s, cid, False)


def test_runtime_should_ignore_a_seccomp_profile_when_privileged(s, profiles):
    pod = s.privileged_pod(True)
    cid = seccomp_container(s, pod, pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost,
        localhost_ref=profiles["block-host-name.json"]), None, True)
    check_set_hostname(s, cid, True)


@pytest.mark.parametrize("nnp,euid", [(True, 1000), (False, 0)], ids=["true", "false"])
def test_nonewprivs(s, nnp, euid):
    pod = s.pod_with_log_dir()
    name = f"alpine-nnp-{str(nnp).lower()}-" + new_uuid()
    cid = s.container(*pod, "", None, image=NONEWPRIVS, name=name, log_path=name + ".log",
                      linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                          no_new_privs=nnp, run_as_user=pb.Int64Value(value=1000))))
    s.start(cid)
    s.wait_state(cid, EXITED)
    verify_log(pod[1], name + ".log", f"Effective uid: {euid}\n", "stdout")


def test_user_namespaces(client):
    handlers = client.status(verbose=True).runtime_handlers
    if not any(h.name == "" and h.features.user_namespaces for h in handlers):
        pytest.skip("no runtime handler found which supports user namespaces")
    pytest.fail("user namespace cases are not ported: the runtime announces support")


def test_apparmor():
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            enabled = f.read().startswith("Y")
    except OSError:
        enabled = False
    if not enabled:
        pytest.skip("AppArmor is disabled on this host")
    pytest.fail("AppArmor cases are not ported: this host has AppArmor")


def test_apparmor_profile_is_refused_where_the_host_has_none(s, pod):
    """The issue: "apparmor: a clear refusal where the host has none" (containerd 1.6 with
    disable_apparmor ignores the field)."""
    if os.path.exists("/sys/module/apparmor/parameters/enabled"):
        pytest.skip("this host has AppArmor")
    with pytest.raises(grpc.RpcError) as e:
        sc_container(s, pod, "apparmor-test-", ["touch", "/tmp/foo"],
                     pb.LinuxContainerSecurityContext(apparmor=pb.SecurityProfile(
                         profile_type=pb.SecurityProfile.Localhost,
                         localhost_ref="localhost/cri-validate-apparmor-test-deny-write")))
    assert "apparmor" in e.value.details().lower()


# === Networking (networking.go) ==============================================================


def test_runtime_should_support_dns_config(s):
    config = pb.PodSandboxConfig(
        metadata=s.metadata("create-PodSandbox-with-DNS-config" + new_uuid()),
        dns_config=pb.DNSConfig(servers=["10.10.10.10"], searches=["google.com"],
                                options=["ndots:8"]), linux=s.linux())
    pod_id = s.run_pod(config)
    cid = s.default_container(pod_id, config, "container-for-DNS-config-test-")
    s.start(cid)
    out = s.exec_ok(cid, ["cat", "/etc/resolv.conf"])
    for line in ("nameserver 10.10.10.10", "search google.com", "options ndots:8"):
        assert line in out, out


def test_runtime_should_support_set_hostname(s):
    config = pb.PodSandboxConfig(
        metadata=s.metadata("create-PodSandbox-with-hostname" + new_uuid()),
        hostname="test-hostname", linux=s.linux())
    pod_id = s.run_pod(config)
    cid = s.default_container(pod_id, config, "container-for-hostname-test-")
    s.start(cid)
    assert s.exec_ok(cid, ["hostname"]).strip().lower() == "test-hostname"


def web_server(s: Suite, pod, prefix: str, image: str = NGINX) -> str:
    cid = s.container(*pod, prefix, None, image=image)
    s.start(cid)
    return cid


def test_runtime_should_support_port_mapping_with_only_container_port(s):
    pod = s.port_mapping_pod([pb.PortMapping(container_port=WEB_PORT)])
    web_server(s, pod, "container-for-container-port")
    check_main_page(s.c, pod[0], 0, WEB_PORT)


def test_runtime_should_support_port_mapping_with_host_port_and_container_port(s):
    pod = s.port_mapping_pod([pb.PortMapping(container_port=WEB_PORT,
                                             host_port=HOST_PORT_MAPPING)])
    web_server(s, pod, "container-for-host-port")
    check_main_page(s.c, "", HOST_PORT_MAPPING, 0)


# === Multiple containers (multi_container_linux.go) ==========================================


@pytest.fixture
def multi(s):
    name = "PodSandbox-for-multi-container-test-" + new_uuid()
    _, log_dir = s.log_dir(name)
    config = pb.PodSandboxConfig(metadata=s.metadata(name), log_directory=log_dir,
                                 port_mappings=[pb.PortMapping(container_port=80)],
                                 linux=s.linux())
    pod = (s.run_pod(config), config)
    hname = "httpd" + new_uuid()
    httpd = s.container(*pod, "", None, image=HTTPD, name=hname, log_path=hname + ".log")
    s.start_running(httpd)
    bname = "busybox" + new_uuid()
    busybox = s.container(*pod, "", ["sh", "-c", f"echo {DEFAULT_LOG}; sleep 1000"],
                          name=bname, log_path=bname + ".log", linux=None)
    s.start_running(busybox)
    return pod, httpd, busybox


def test_multiple_containers_should_support_network(s, multi):
    check_main_page(s.c, multi[0][0], 0, 80)


def test_multiple_containers_should_support_container_log(s, multi):
    for cid, text in ((multi[1], "httpd"), (multi[2], DEFAULT_LOG)):
        path = s.c.container_status(cid).status.log_path

        def has(path=path, text=text):
            with open(path, errors="replace") as f:
                return text in f.read()
        eventually(has, what=f"{text!r} in {path}")


def test_multiple_containers_should_support_container_exec(s, multi):
    assert s.exec_ok(multi[1], ["echo", "httpd"]) == "httpd\n"
    assert s.exec_ok(multi[2], ["echo", "busybox"]) == "busybox\n"


# === Streaming (streaming.go, streaming_linux.go) ============================================


@pytest.fixture
def spdy():
    return pytest.importorskip("spdy_client", reason="the SPDY test client (cri-stream) is "
                               "not in this tree")


def exec_url(s: Suite, cid: str, **kw) -> str:
    url = s.c.rs.Exec(pb.ExecRequest(container_id=cid, cmd=ECHO_HELLO, **kw), timeout=60).url
    assert url.startswith("http"), url
    return url


def test_runtime_should_support_exec_with_tty_false_and_stdin_false(s, pod, spdy):
    cid = s.default_container(*pod, "container-for-exec-test")
    s.start(cid)
    out, err, status = spdy.exec_v4(exec_url(s, cid, stdout=True, stderr=True))
    assert out == b"hello" and err == b"", (out, err, status)


def test_runtime_should_support_exec_with_tty_true_and_stdin_true(s, pod, spdy):
    cid = s.default_container(*pod, "container-for-exec-test")
    s.start(cid)
    # as client-go with critest's stdin pipe: stdin stays open until the session ended
    conn = spdy.SpdyConnection(exec_url(s, cid, stdout=True, tty=True, stdin=True))
    try:
        error = conn.open_stream({"streamtype": "error"})
        stdin = conn.open_stream({"streamtype": "stdin"})
        stdout = conn.open_stream({"streamtype": "stdout"})
        conn.open_stream({"streamtype": "resize"})
        status = error.read_all(60)
        stdout.fin.wait(10)
        out = bytes(stdout.data)
        with contextlib.suppress(OSError):  # the server may have closed the session
            stdin.close()
    finally:
        conn.close()
    assert b"hello" in out, (out, status)


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
def test_runtime_should_support_exec_over_websocket(s, pod, protocol):
    """critest -websocket-exec (client-go's WebSocket executor, kubectl's since 1.30)."""
    ws = pytest.importorskip("ws_client", reason="the WebSocket test client is not here")
    cid = s.default_container(*pod, "container-for-exec-test")
    s.start(cid)
    url = exec_url(s, cid, stdout=True, stderr=True)
    out, err, status, client = ws.exec_ws(url, protocols=(protocol,))
    assert client.protocol == protocol
    assert out == b"hello" and err == b"", (out, err, status)


def test_runtime_should_support_attach(s, pod, spdy):
    cid = s.container(*pod, "container-for-attach-test", SHELL, stdin=True, stdin_once=True)
    s.start(cid)
    url = s.c.rs.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True,
                                         stderr=True), timeout=60).url
    conn = spdy.SpdyConnection(url)
    try:
        error = conn.open_stream({"streamtype": "error"})
        stdin = conn.open_stream({"streamtype": "stdin"})
        stdout = conn.open_stream({"streamtype": "stdout"})
        stderr = conn.open_stream({"streamtype": "stderr"})
        time.sleep(1)
        header = bytes(stdout.data)
        stdin.write((" ".join(ECHO_HELLO) + "\n").encode())
        eventually(lambda: bytes(stdout.data)[len(header):] == b"hello", what="attach output")
        time.sleep(3)
        assert bytes(stdout.data)[len(header):] == b"hello"
        stdin.close()
        error.read_all(60)
        assert bytes(stderr.data) == b""
    finally:
        conn.close()


def port_forward_get(spdy, url: str, port: int) -> bytes:
    conn = spdy.SpdyConnection(url, protocols=("portforward.k8s.io",))
    try:
        error = conn.open_stream({"streamtype": "error", "port": str(port), "requestid": "0"})
        data = conn.open_stream({"streamtype": "data", "port": str(port), "requestid": "0"})
        data.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        out = data.read_all(60)
        assert bytes(error.data) == b"", bytes(error.data)
        return out
    finally:
        conn.close()


def test_runtime_should_support_portforward(s, spdy):
    pod = s.port_mapping_pod([pb.PortMapping(container_port=WEB_PORT)])
    web_server(s, pod, "container-for-portforward-test")
    check_main_page(s.c, pod[0], 0, WEB_PORT)
    url = s.c.rs.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod[0]), timeout=60).url
    out = port_forward_get(spdy, url, WEB_PORT)
    assert out.startswith(b"HTTP/1.") and b" 200 " in out.split(b"\r\n", 1)[0], out[:200]


def test_runtime_should_support_portforward_in_host_network(s, spdy):
    pod = s.port_mapping_pod([pb.PortMapping(container_port=HOSTNET_WEB_PORT)], host_net=True)
    web_server(s, pod, "container-for-host-net-portforward-test", HOSTNET_NGINX)
    check_main_page(s.c, "", HOSTNET_WEB_PORT, 0)
    url = s.c.rs.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod[0]), timeout=60).url
    out = port_forward_get(spdy, url, HOSTNET_WEB_PORT)
    assert out.startswith(b"HTTP/1.") and b" 200 " in out.split(b"\r\n", 1)[0], out[:200]


# === back to back pods, as critest's specs follow one another =============================


def test_pod_cycles_exec_then_stop(s):
    """critest's specs one after the other: a pod with a running and a created container
    removed, then a pod whose container runs an exec right before StopPodSandbox (every
    spec's AfterEach), twenty times. Each step must succeed."""
    for i in range(20):
        pod = s.pod_for_container()
        a = s.default_container(*pod, f"cycle-a{i}-", labels={"critest": "a"})
        s.default_container(*pod, f"cycle-b{i}-", labels={"critest": "b"})
        s.start_running(a)
        s.c.stop_pod(pod[0])
        s.c.remove_pod(pod[0])
        s.pods.remove(pod[0])
        pod = s.pod_for_container()
        cid = s.default_container(*pod, f"cycle-exec{i}-")
        s.start(cid)
        assert s.exec_ok(cid, ECHO_HELLO) == "hello"
        s.c.stop_pod(pod[0])
        s.c.remove_pod(pod[0])
        s.pods.remove(pod[0])


# === runtime.v1alpha2 (kubelets up to 1.25, critest up to 1.25) ============================


def v1alpha2(c: CriClient, service: str, method: str, request, response_class):
    call = c.channel.unary_unary(f"/runtime.v1alpha2.{service}/{method}",
                                 request_serializer=type(request).SerializeToString,
                                 response_deserializer=response_class.FromString)
    return call(request, timeout=120)


def test_pod_lifecycle_through_v1alpha2(s):
    """The kubelet's sequence under the runtime.v1alpha2 names (its messages are a
    wire-compatible subset of v1's)."""
    rs, ims = "RuntimeService", "ImageService"
    config = pb.PodSandboxConfig(metadata=s.metadata("v1alpha2-" + new_uuid()),
                                 linux=s.linux())
    pod_id = v1alpha2(s.c, rs, "RunPodSandbox", pb.RunPodSandboxRequest(config=config),
                      pb.RunPodSandboxResponse).pod_sandbox_id
    s.pods.append(pod_id)
    ALL_PODS.add(pod_id)
    ref = v1alpha2(s.c, ims, "PullImage", pb.PullImageRequest(
        image=pb.ImageSpec(image=BUSYBOX), sandbox_config=config), pb.PullImageResponse)
    assert ref.image_ref
    cid = v1alpha2(s.c, rs, "CreateContainer", pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config, config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="v1alpha2-c", attempt=ATTEMPT),
            image=pb.ImageSpec(image=BUSYBOX), command=PAUSE)),
        pb.CreateContainerResponse).container_id
    v1alpha2(s.c, rs, "StartContainer", pb.StartContainerRequest(container_id=cid),
             pb.StartContainerResponse)
    r = v1alpha2(s.c, rs, "ExecSync", pb.ExecSyncRequest(container_id=cid, cmd=ECHO_HELLO,
                                                         timeout=30), pb.ExecSyncResponse)
    assert (r.exit_code, r.stdout) == (0, b"hello")
    st = v1alpha2(s.c, rs, "ContainerStatus", pb.ContainerStatusRequest(container_id=cid),
                  pb.ContainerStatusResponse).status
    assert st.state == RUNNING
    listed = v1alpha2(s.c, rs, "ListContainers", pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id=pod_id)), pb.ListContainersResponse)
    assert [c.id for c in listed.containers] == [cid]
    v1alpha2(s.c, rs, "StopContainer", pb.StopContainerRequest(container_id=cid, timeout=10),
             pb.StopContainerResponse)
    v1alpha2(s.c, rs, "RemoveContainer", pb.RemoveContainerRequest(container_id=cid),
             pb.RemoveContainerResponse)
    v1alpha2(s.c, rs, "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
             pb.StopPodSandboxResponse)
    assert v1alpha2(s.c, rs, "PodSandboxStatus", pb.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id), pb.PodSandboxStatusResponse).status.state == \
        pb.SANDBOX_NOTREADY


# === critest -parallel N: several specs at once ============================================


def test_parallel_pod_lifecycles(s):
    """critest runs its specs in parallel with -parallel N: eight pods at once, each the
    kubelet's sequence (run, create, start, exec, stop, remove)."""
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            config = pb.PodSandboxConfig(metadata=s.metadata(f"parallel-{i}-" + new_uuid()),
                                         linux=s.linux())
            pod_id = s.c.run_pod(config)
            ALL_PODS.add(pod_id)
            cid = s.container(pod_id, config, f"parallel-{i}-", PAUSE)
            s.start(cid)
            r = s.c.exec_sync(cid, ["echo", str(i)], EXEC_TIMEOUT)
            assert not r.failed and r.out == f"{i}\n", r
            s.c.stop_pod(pod_id)
            s.c.remove_pod(pod_id)
            assert not any(p.id == pod_id for p in s.c.list_pods(pb.PodSandboxFilter(
                id=pod_id)))
        except (AssertionError, grpc.RpcError) as e:
            errors.append(f"pod {i}: {e!r}"[:500])

    s.ensure_image(BUSYBOX, None)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors


# === Malformed requests (the issue: INVALID_ARGUMENT or NOT_FOUND, one clear message) ========


@contextlib.contextmanager
def refused(*codes):
    with pytest.raises(grpc.RpcError) as e:
        yield e
    assert e.value.code() in codes, f"{e.value.code()}: {e.value.details()}"
    assert e.value.details() and "\n" not in e.value.details().strip()


def test_malformed_requests_are_refused_with_one_clear_line(s, pod):
    bad = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    with refused(*bad):
        s.c.container_status(new_uuid())
    with refused(*bad):
        s.c.pod_status(new_uuid())
    with refused(*bad):
        s.c.start_container(new_uuid())
    with refused(*bad):
        s.c.rs.RunPodSandbox(pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()),
                             timeout=60)
    with refused(*bad):
        s.c.create_container(pod[0], pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="no-such-image"),
            image=pb.ImageSpec(image=CRI_TOOLS + "no-such-image:1")), pod[1])
    with refused(*bad):
        s.c.create_container(new_uuid(), pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="no-such-pod"),
            image=pb.ImageSpec(image=BUSYBOX)), pod[1])
    assert s.c.list_containers(pb.ContainerFilter(pod_sandbox_id=pod[0])) == []

