"""The CRI RuntimeService end to end: `minirun cri` on a temporary socket with temporary
roots and a temporary CNI network (bridge mr*, host-local leases in the tmp dir), driven
by tests/cri_client.py as kubelet drives a runtime. What a container sees is checked
from inside it (its own output in the CRI log file, ExecSync)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from enginetest import EngineEnv
from ocitest import REPO

grpc = pytest.importorskip("grpc")
pb = pytest.importorskip("minirun.cri.api.api_pb2")
from cri_client import CriClient, read_cri_log

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
IMAGE = "busybox:latest"
CGROUP_ROOT = "/sys/fs/cgroup"


def _free_subnet() -> str:
    """A /24 in 10.23x.0.0 that no host route covers."""
    import ipaddress

    routes = []
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            dst = ipaddress.IPv4Address(bytes.fromhex(fields[1])[::-1])
            mask = int.from_bytes(bytes.fromhex(fields[7])[::-1], "big").bit_count()
            if mask:
                routes.append(ipaddress.ip_network(f"{dst}/{mask}", strict=False))
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{230 + os.urandom(1)[0] % 10}.{os.urandom(1)[0]}.0/24")
        if not any(net.overlaps(r) for r in routes):
            return str(net)
    raise RuntimeError("no free /24 for the test network")


class CriEnv(EngineEnv):
    """EngineEnv (busybox imported; daemon and keeper stopped by pid at the end) plus a
    `minirun cri` process on a temporary socket and a CNI conf dir of its own."""

    def __init__(self, top: str) -> None:
        super().__init__(top)
        self.socket = os.path.join(top, "cri.sock")
        self.cni_dir = os.path.join(top, "cni")
        self.log_dir = os.path.join(top, "podlogs")
        self.bridge = "mr" + os.urandom(4).hex()
        self.network = "mrtest-" + self.bridge[2:]
        self.ipam_dir = os.path.join(top, "ipam")
        os.makedirs(self.cni_dir)
        os.makedirs(self.log_dir)
        with open(os.path.join(self.cni_dir, "10-test.conflist"), "w") as f:
            json.dump({"cniVersion": "0.4.0", "name": self.network, "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True,
                 "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": _free_subnet()}]],
                          "dataDir": self.ipam_dir}}]}, f)
        self.env["MINIRUN_CNI_CONF_DIR"] = self.cni_dir
        self.proc: subprocess.Popen | None = None
        self.client: CriClient | None = None
        self.pods_made: list[str] = []

    def start_cri(self) -> CriClient:
        with open(os.path.join(self.top, "cri.log"), "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "minirun.cli", "cri", "--root", self.root,
                 "--run-root", self.run_root, "--cri-socket", self.socket, "--no-default-cni"],
                env=self.env, stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"minirun cri did not start:\n{self.cri_log()}")
            time.sleep(0.05)
        if self.client is not None:
            self.client.close()
        self.client = CriClient(self.socket)
        self.client.wait_ready()
        return self.client

    def kill_cri(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cri_log(self) -> str:
        try:
            with open(os.path.join(self.top, "cri.log")) as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def run_pod(self, name: str, **kw) -> tuple[str, pb.PodSandboxConfig]:
        kw.setdefault("log_directory", os.path.join(self.log_dir, name))
        config = self.client.pod_config(name, **kw)
        pod_id = self.client.run_pod(config)
        self.pods_made.append(pod_id)
        return pod_id, config

    def container(self, pod_id: str, pod, name: str, command: list[str], start: bool = True,
                  **kw) -> str:
        cid = self.client.create(pod_id, pod, self.client.container_config(
            pod, name, IMAGE, command=command, **kw))
        if start:
            self.client.start(cid)
        return cid

    def log_of(self, pod, name: str, attempt: int = 0) -> str:
        return os.path.join(pod.log_directory, name, f"{attempt}.log")

    def teardown(self) -> list[str]:
        """Pods removed through the CRI, then the engine's teardown; whatever that could
        not do (a daemon that stopped answering) is swept by hand: the containers'
        processes killed through their cgroups, mounts, netns pins and the bridge."""
        if self.client is not None and self.proc is not None:
            try:
                for p in self.client.list_pods():
                    self.client.call("RemovePodSandbox", pb.RemovePodSandboxRequest(
                        pod_sandbox_id=p.id), timeout=60)
            except grpc.RpcError:
                pass
        self.kill_cri()
        if self.client is not None:
            self.client.close()
        ids = self.container_ids()
        try:
            left = super().teardown()
        except Exception as e:  # noqa: BLE001 - the sweep below must run all the same
            left = [f"engine teardown failed: {e}"]
            self.stop_process("keeper")
            self.stop_process("daemon")
        left += self.sweep(ids)
        subprocess.run(["ip", "link", "del", self.bridge], check=False,
                       stderr=subprocess.DEVNULL)
        return left

    def container_ids(self) -> list[str]:
        try:
            return _engine_records(self)
        except Exception:  # noqa: BLE001 - no database: no container
            return []

    def sweep(self, ids: list[str]) -> list[str]:
        left = []
        for cid in ids:
            for cg in glob.glob(f"{CGROUP_ROOT}/*/minirun/**/{cid}", recursive=True):
                try:
                    with open(os.path.join(cg, "cgroup.procs")) as f:
                        pids = [int(x) for x in f.read().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    left.append(f"process {pid} of {cid[:12]}")
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                for _ in range(50):
                    try:
                        os.rmdir(cg)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)
        for pod_id in self.pods_made:  # a pod whose removal failed: its netns pin
            path = f"/run/netns/minirun-pod-{pod_id[:12]}"
            if os.path.exists(path):
                subprocess.run(["umount", "-l", path], check=False)
                os.unlink(path)
                left.append(path)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if self.top in line]
        for point in reversed(points):
            subprocess.run(["umount", "-l", point], check=False)
            left.append(point)
        if os.path.isdir(self.top):
            subprocess.run(["rm", "-rf", "--one-file-system", self.top], check=False)
        return left


@pytest.fixture(scope="module")
def cri(tmp_path_factory):
    top = str(tmp_path_factory.mktemp("cri"))
    env = CriEnv(top)
    try:
        tar = os.path.join(top, "busybox.tar")
        subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", tar], check=True,
                       stdout=subprocess.DEVNULL)
        from minirun.image.archive import import_rootfs
        from minirun.image.store import ImageStore

        store = ImageStore(env.root)
        import_rootfs(store, tar, IMAGE)
        store.close()
        env.start_cri()
        yield env
    finally:
        left = env.teardown()
        assert not left, f"left behind: {left}"


def _code(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


def _engine_records(env: CriEnv) -> list[str]:
    """Every container record, the pid holders' too, read from the engine's database."""
    import sqlite3

    db = sqlite3.connect(os.path.join(env.root, "engine.db"), timeout=30)
    try:
        return sorted(r[0] for r in db.execute("SELECT id FROM containers"))
    finally:
        db.close()


def _wait_log(path: str, want: str, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        lines = read_cri_log(path)
        if any(want in msg for _, _, msg in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# --- the kubelet's sequence -----------------------------------------------------------------

def test_pod_of_two_containers(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("two", labels={"tier": "web"}, annotations={"note": "x"})
    status = c.pod_status(pod_id, verbose=True)
    assert status.status.state == pb.SANDBOX_READY
    assert status.status.metadata.name == "two" and status.status.created_at > 0
    assert status.status.labels["tier"] == "web"
    assert dict(status.status.annotations) == {"note": "x"}
    assert status.status.network.ip, "a pod on the CNI network has an address"
    assert json.loads(status.info["info"])["netNamespacePath"]
    c.ensure_image(IMAGE)
    talker = cri.container(pod_id, pod, "talker",
                           ["sh", "-c", "echo hello; echo oops >&2; exec sleep 1000"],
                           labels={"role": "talk"}, annotations={"a": "1"})
    sleeper = cri.container(pod_id, pod, "sleeper", ["sleep", "1000"])
    for cid in (talker, sleeper):
        st = c.wait_state(cid, pb.CONTAINER_RUNNING)
        assert st.state == pb.CONTAINER_RUNNING
        assert st.started_at >= st.created_at > 0 and st.finished_at == 0
    st = c.status(talker, verbose=True)
    assert st.status.metadata.name == "talker" and st.status.metadata.attempt == 0
    assert st.status.labels["role"] == "talk" and dict(st.status.annotations) == {"a": "1"}
    assert st.status.image.image and st.status.image_ref
    try:  # the same image as the ImageService names it
        image = c.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=IMAGE)),
                                     timeout=30).image
        assert st.status.image_id == image.id
        assert st.status.image.image in image.repo_tags
        assert st.status.image_ref in list(image.repo_digests) + [image.id]
    except grpc.RpcError as e:  # no ImageService in this tree yet
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED
        assert st.status.image_id.startswith("sha256:")
    assert st.status.log_path == cri.log_of(pod, "talker")
    info = json.loads(st.info["info"])
    assert info["pid"] > 0 and info["sandboxID"] == pod_id
    assert info["runtimeSpec"]["process"]["args"][:2] == ["sh", "-c"]
    ids = {x.id for x in c.list_containers(pod_sandbox_id=pod_id)}
    assert ids == {talker, sleeper}
    assert [x.id for x in c.list_containers(label_selector={"role": "talk"})] == [talker]
    assert [x.id for x in c.list_containers(id=talker[:12])] == [talker]
    assert [p.id for p in c.list_pods(label_selector={"tier": "web"})] == [pod_id]

    r = c.exec_sync(sleeper, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
    # the two containers share the pod's network and UTS namespaces
    r1 = c.exec_sync(talker, ["hostname"])
    r2 = c.exec_sync(sleeper, ["hostname"])
    assert r1.stdout == r2.stdout == b"two\n"
    links = c.exec_sync(talker, ["ls", "/sys/class/net"]).stdout
    assert b"eth0" in links.split()
    assert links == c.exec_sync(sleeper, ["ls", "/sys/class/net"]).stdout
    addr = status.status.network.ip
    assert addr.encode() in c.exec_sync(sleeper, ["ip", "-o", "-4", "addr"]).stdout

    lines = _wait_log(cri.log_of(pod, "talker"), "oops")
    assert ("stdout", "F", "hello") in lines and ("stderr", "F", "oops") in lines

    c.stop(sleeper, 1)  # sleep as pid 1 ignores SIGTERM: killed after the timeout
    st = c.status(sleeper).status
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 137
    assert st.reason == "Error" and st.finished_at >= st.started_at
    assert [x.id for x in c.list_containers(state=pb.ContainerStateValue(
        state=pb.CONTAINER_EXITED), pod_sandbox_id=pod_id)] == [sleeper]
    c.kill_pod(pod_id)
    assert not c.list_containers(pod_sandbox_id=pod_id)
    assert pod_id not in [p.id for p in c.list_pods()]


def test_completed_container_and_exit_code(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("done")
    ok = cri.container(pod_id, pod, "ok", ["true"])
    bad = cri.container(pod_id, pod, "bad", ["sh", "-c", "exit 7"])
    assert c.wait_state(ok, pb.CONTAINER_EXITED).reason == "Completed"
    st = c.wait_state(bad, pb.CONTAINER_EXITED)
    assert (st.exit_code, st.reason) == (7, "Error")
    c.kill_pod(pod_id)


# --- idempotency and bad input --------------------------------------------------------------

def test_stop_and_remove_are_idempotent(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("idem")
    cid = cri.container(pod_id, pod, "s", ["sleep", "1000"])
    c.stop(cid, 0)
    c.stop(cid, 0)
    c.remove(cid)
    c.remove(cid)
    c.stop(cid, 0)  # gone: still fine
    with pytest.raises(grpc.RpcError) as e:
        c.status(cid)
    assert _code(e) == grpc.StatusCode.NOT_FOUND
    c.stop_pod(pod_id)
    c.stop_pod(pod_id)
    assert c.pod_status(pod_id).status.state == pb.SANDBOX_NOTREADY
    c.remove_pod(pod_id)
    c.remove_pod(pod_id)
    c.stop_pod(pod_id)
    with pytest.raises(grpc.RpcError) as e:
        c.pod_status(pod_id)
    assert _code(e) == grpc.StatusCode.NOT_FOUND
    c.stop("0" * 64)
    c.remove("0" * 64)
    c.stop_pod("0" * 64)
    c.remove_pod("0" * 64)


def _host_traces(env: CriEnv) -> dict:
    """What a request could leave behind: engine records, mounts under the roots, our
    cgroups, pinned pod netns, address leases."""
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f if env.top in line)
    cgroups = sorted(glob.glob(f"{CGROUP_ROOT}/*/minirun/*"))
    leases = sorted(glob.glob(os.path.join(env.ipam_dir, "*", "1*")))
    pods = [p.id for p in env.client.list_pods()]
    netns = sorted(n for n in os.listdir("/run/netns") if any(
        n == f"minirun-pod-{p[:12]}" for p in env.pods_made)) \
        if os.path.isdir("/run/netns") else []
    return {"records": _engine_records(env), "mounts": mounts, "pods": pods,
            "cgroups": [c for c in cgroups if any(r[:12] in c for r in _engine_records(env))
                        or any(p[:12] in c for p in env.pods_made)],
            "netns": netns, "leases": leases}


def test_bad_requests_answer_and_leave_nothing(cri, tmp_path):
    c = cri.client
    pod_id, pod = cri.run_pod("bad")
    before = _host_traces(cri)

    def refused(code, fn, *args):
        with pytest.raises(grpc.RpcError) as e:
            fn(*args)
        assert _code(e) == code, e.value.details()
        assert e.value.details() and "\n" not in e.value.details()
        assert _host_traces(cri) == before
        return e.value.details()

    cfg = c.container_config(pod, "x", IMAGE, command=["true"])
    refused(grpc.StatusCode.NOT_FOUND, c.create, "f" * 64, pod, cfg)
    no_meta = c.container_config(pod, "x", IMAGE, command=["true"])
    no_meta.ClearField("metadata")
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, pod, no_meta)
    msg = refused(grpc.StatusCode.NOT_FOUND, c.create, pod_id, pod,
                  c.container_config(pod, "x", "no/such-image:1", command=["true"]))
    assert "image" in msg
    bad_mount = c.container_config(pod, "x", IMAGE, command=["true"], mounts=[
        pb.Mount(container_path="/data", host_path=str(tmp_path / "missing"))])
    assert "missing" in refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, pod,
                                bad_mount)
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, pod, c.container_config(
        pod, "x", IMAGE, command=["true"],
        security={"run_as_group": pb.Int64Value(value=5)}))
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, pod, c.container_config(
        pod, "x", IMAGE, command=["true"], security={"seccomp_profile_path": "bogus"}))
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, pod, c.container_config(
        pod, "x", IMAGE, command=["true"], security={"apparmor": pb.SecurityProfile(
            profile_type=pb.SecurityProfile.Localhost, localhost_ref="p")}))
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, pod, c.container_config(
        pod, "x", IMAGE, command=["true"], security={"privileged": True}))
    # the pod's record decides, not what the request claims of the pod
    claims = pb.PodSandboxConfig()
    claims.CopyFrom(pod)
    claims.linux.security_context.privileged = True
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, claims, c.container_config(
        pod, "x", IMAGE, command=["true"], security={"privileged": True}))
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.create, pod_id, pod, c.container_config(
        pod, "x", IMAGE, command=["true"], security={"capabilities": pb.Capability(
            add_capabilities=["NOT_A_CAP"])}))
    refused(grpc.StatusCode.NOT_FOUND, c.status, "f" * 64)
    refused(grpc.StatusCode.NOT_FOUND, c.pod_status, "f" * 64)
    refused(grpc.StatusCode.NOT_FOUND, c.start, "f" * 64)
    refused(grpc.StatusCode.NOT_FOUND, c.exec_sync, "f" * 64, ["true"])
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.status, "")
    no_meta_pod = c.pod_config("y")
    no_meta_pod.ClearField("metadata")
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.run_pod, no_meta_pod)
    refused(grpc.StatusCode.INVALID_ARGUMENT, c.run_pod, c.pod_config("y"), "no-such-handler")
    # a request without the pod's config (crictl create can send a partial one)
    cid = c.create(pod_id, pb.PodSandboxConfig(), c.container_config(
        pod, "partial", IMAGE, command=["true"]))
    st = c.status(cid).status
    assert st.log_path == cri.log_of(pod, "partial") and st.metadata.name == "partial"
    c.remove(cid)
    # the same metadata twice: refused, the first one stays
    cid = cri.container(pod_id, pod, "dup", ["sleep", "1000"])
    with pytest.raises(grpc.RpcError) as e:
        cri.container(pod_id, pod, "dup", ["sleep", "1000"])
    assert _code(e) == grpc.StatusCode.ALREADY_EXISTS
    assert [x.id for x in c.list_containers(pod_sandbox_id=pod_id)] == [cid]
    c.kill_pod(pod_id)


def test_exec_sync_timeout_and_output_cap(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("execs")
    cid = cri.container(pod_id, pod, "s", ["sleep", "1000"])
    t = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        c.exec_sync(cid, ["sleep", "30"], timeout=1)
    assert _code(e) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t < 10
    ps = c.exec_sync(cid, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 30" not in ps, "the timed-out command was killed"
    # killed and reaped at once: no zombie left for a pgrep right after (critest's check)
    with pytest.raises(grpc.RpcError) as e:
        c.exec_sync(cid, ["top", "-b"], timeout=1)
    assert _code(e) == grpc.StatusCode.DEADLINE_EXCEEDED
    r = c.exec_sync(cid, ["sh", "-c", "pgrep top || true"])
    assert r.stdout == b"", r.stdout
    # 20 MiB written: what fits in kubelet's 16 MiB message is kept, the command still
    # succeeds
    r = c.exec_sync(cid, ["sh", "-c", "head -c 20971520 /dev/zero; echo done >&2"])
    assert r.stderr == b"done\n" and r.exit_code == 0
    assert 15 * 1024 * 1024 < len(r.stdout) < 16 * 1024 * 1024
    assert r.stdout.count(b"\0") == len(r.stdout)
    # a child left in the background holds the output pipes: the call still returns
    t = time.monotonic()
    r = c.exec_sync(cid, ["sh", "-c", "sleep 60 & echo started"], timeout=30)
    assert (r.stdout, r.exit_code) == (b"started\n", 0) and time.monotonic() - t < 10
    with pytest.raises(grpc.RpcError) as e:
        c.exec_sync(cid, ["/no/such/cmd"])
    assert _code(e) == grpc.StatusCode.UNKNOWN and "/no/such/cmd" in e.value.details()
    assert "\n" not in e.value.details()
    assert c.exec_sync(cid, ["sh", "-c", "exit 255"]).exit_code == 255
    t = time.monotonic()
    for _ in range(5):
        c.exec_sync(cid, ["true"])
    print(f"ExecSync of true: {(time.monotonic() - t) / 5 * 1000:.0f} ms")
    c.stop(cid, 0)
    with pytest.raises(grpc.RpcError) as e:
        c.exec_sync(cid, ["true"])
    assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION
    c.kill_pod(pod_id)


# --- security context, checked from inside -------------------------------------------------

# a file of kubelet's masked /proc paths that this kernel has (kcore needs PROC_KCORE)
MASKED = next((p for p in ("/proc/kcore", "/proc/timer_list", "/proc/keys")
               if os.path.isfile(p)), None)
PROBE = ("id; grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
         f"touch /probe 2>&1 || true; stat -c 'masked %F' {MASKED or '/proc/keys'}; "
         "exec sleep 1000")


def _probe_lines(cri, pod, name) -> list[str]:
    lines = _wait_log(cri.log_of(pod, name), "masked")
    return [msg for _, _, msg in lines]


def test_security_context_from_inside(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("sec")
    locked = cri.container(pod_id, pod, "locked", ["sh", "-c", PROBE], security={
        "run_as_user": pb.Int64Value(value=1000), "run_as_group": pb.Int64Value(value=1001),
        "supplemental_groups": [2000], "readonly_rootfs": True, "no_new_privs": True,
        "seccomp": pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)})
    out = _probe_lines(cri, pod, "locked")
    ident = out[0]
    assert "uid=1000" in ident and "gid=1001" in ident and "2000" in ident.split("groups=")[1]
    assert "NoNewPrivs:\t1" in out
    assert "Seccomp:\t2" in out, out  # the runtime's default profile (the host has one)
    assert any("Read-only file system" in line for line in out)
    if MASKED:  # kubelet's masked paths: /dev/null over them
        assert "masked character special file" in out, out
    assert "CapEff:\t0000000000000000" in out  # a non-root user keeps no effective caps
    user = c.status(locked).status.user.linux
    assert (user.uid, user.gid) == (1000, 1001) and 2000 in user.supplemental_groups

    caps = cri.container(pod_id, pod, "caps", ["sh", "-c", PROBE], security={
        "capabilities": pb.Capability(drop_capabilities=["ALL"],
                                      add_capabilities=["NET_BIND_SERVICE", "CHOWN"]),
        "masked_paths": [], "readonly_paths": []})
    out = _probe_lines(cri, pod, "caps")
    assert out[0].startswith("uid=0(root)")
    # CAP_CHOWN is bit 0, CAP_NET_BIND_SERVICE bit 10
    assert "CapBnd:\t0000000000000401" in out and "CapEff:\t0000000000000401" in out
    assert "Seccomp:\t0" in out  # no profile given: unconfined, as the API says
    if MASKED:  # procMount Unmasked: nothing masked
        assert any(line.startswith("masked regular") for line in out), out
    assert "NoNewPrivs:\t0" in out
    for cid in (locked, caps):
        assert c.status(cid).status.state == pb.CONTAINER_RUNNING
    c.kill_pod(pod_id)


def test_env_workdir_args_and_host_mounts(cri, tmp_path):
    c = cri.client
    pod_id, pod = cri.run_pod("envs")
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from the host\n")
    link = tmp_path / "link"
    link.symlink_to(data)
    script = ('echo "$GREETING at $(pwd)"; cat /mnt/f; test -c /dev/xnull && echo device; '
              'touch /mnt/g 2>&1; exec sleep 1000')
    cid = cri.container(pod_id, pod, "e", ["sh", "-c"],
                        args=[script],
                        env={"GREETING": "hi there"}, working_dir="/tmp",
                        mounts=[pb.Mount(container_path="/mnt", host_path=str(link),
                                         readonly=True)],
                        devices=[pb.Device(container_path="/dev/xnull", host_path="/dev/null",
                                           permissions="rw")])
    lines = [m for _, _, m in _wait_log(cri.log_of(pod, "e"), "Read-only")]
    assert "hi there at /tmp" in lines and "from the host" in lines and "device" in lines
    assert any("Read-only file system" in line for line in lines)
    st = c.status(cid).status
    assert [(m.container_path, m.host_path, m.readonly) for m in st.mounts] == \
        [("/mnt", str(data), True)]
    c.kill_pod(pod_id)


def test_streaming_urls(cri):
    """Exec, Attach and PortForward answer single-use URLs of the streaming server that
    `minirun cri` starts on the first such call (the protocols are test_cri_streaming's)."""
    import urllib.request

    c = cri.client
    pod_id, pod = cri.run_pod("stream")
    cid = cri.container(pod_id, pod, "s", ["sleep", "1000"])
    urls = [c.call("Exec", pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url,
            c.call("Attach", pb.AttachRequest(container_id=cid, stdout=True)).url,
            c.call("PortForward", pb.PortForwardRequest(pod_sandbox_id=pod_id,
                                                        port=[80])).url]
    assert all(u.startswith("http://127.0.0.1:") for u in urls), urls
    assert len(set(urls)) == 3
    with pytest.raises(grpc.RpcError) as e:
        c.call("Exec", pb.ExecRequest(container_id="f" * 64, cmd=["true"], stdout=True))
    assert _code(e) == grpc.StatusCode.NOT_FOUND
    # a plain GET is no upgrade: refused, but by the streaming server that holds the URL
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(urls[0], timeout=5)
    c.kill_pod(pod_id, grace=0)


def _attach_stdin(c, cid: str):
    from spdy_client import SpdyConnection

    url = c.call("Attach", pb.AttachRequest(container_id=cid, stdin=True, stdout=True)).url
    conn = SpdyConnection(url)
    return conn, {t: conn.open_stream({"streamtype": t}) for t in ("error", "stdin", "stdout")}


def test_attach_stdin_once_and_stdin_kept(cri):
    """kubectl run -i --rm: stdin and stdin_once. The end of the first attach (here its
    connection dropped, no EOF sent, as a killed kubectl) closes the container's stdin:
    it reads EOF. Without stdin_once the stdin outlives an attach's EOF (containerd's):
    the next attach writes to the same stream."""
    c = cri.client
    pod_id, pod = cri.run_pod("stdinonce")
    script = "while read line; do echo got $line; done; echo eof; exec sleep 1000"
    once = cri.container(pod_id, pod, "once", ["sh", "-c", script], stdin=True,
                         stdin_once=True)
    kept = cri.container(pod_id, pod, "kept", ["sh", "-c", script], stdin=True)
    conn, s = _attach_stdin(c, once)
    try:
        s["stdin"].write(b"one\n")
        s["stdout"].wait_for(b"got one\n")
    finally:
        conn.close()
    lines = [m for _, _, m in _wait_log(cri.log_of(pod, "once"), "eof", timeout=30)]
    assert lines == ["got one", "eof"]

    for word in ("a", "b"):
        conn, s = _attach_stdin(c, kept)
        try:
            s["stdin"].write(f"{word}\n".encode())
            s["stdout"].wait_for(f"got {word}\n".encode())
            s["stdin"].close()  # this attach's EOF, not the container's
        finally:
            conn.close()
    lines = [m for _, _, m in _wait_log(cri.log_of(pod, "kept"), "got b", timeout=30)]
    assert lines == ["got a", "got b"]
    assert c.status(kept).status.state == pb.CONTAINER_RUNNING
    c.kill_pod(pod_id, grace=0)


# --- namespaces -------------------------------------------------------------------------------

def test_shared_pid_pod(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("sharedpid", pid="pod")
    a = cri.container(pod_id, pod, "a", ["sleep", "1001"])
    b = cri.container(pod_id, pod, "b", ["sleep", "1002"])
    seen = c.exec_sync(a, ["ps", "-o", "pid,args"]).stdout.decode()
    assert "sleep 1001" in seen and "sleep 1002" in seen
    pid1 = [line.split(None, 1)[1] for line in seen.splitlines()[1:]
            if line.split()[0] == "1"]
    # the pod's own pid 1 holds the namespace, none of its containers
    assert pid1 and "sleep 100" not in pid1[0], seen
    assert c.exec_sync(b, ["ps", "-o", "args"]).stdout.decode().count("sleep 100") == 2
    names = {x.metadata.name for x in c.list_containers(pod_sandbox_id=pod_id)}
    assert names == {"a", "b"}, "the pid holder is not one of the pod's containers"
    assert c.pod_status(pod_id).status.linux.namespaces.options.pid == pb.POD
    c.kill_pod(pod_id)


def test_target_pid_namespace(cri):
    """An ephemeral (debug) container as kubelet makes it: pid TARGET of another
    container of the pod, whose processes it then sees."""
    c = cri.client
    pod_id, pod = cri.run_pod("target")
    a = cri.container(pod_id, pod, "a", ["sleep", "1001"])
    dbg = c.container_config(pod, "debug", IMAGE, command=["sleep", "1002"], pid="target")
    dbg.linux.security_context.namespace_options.target_id = a
    b = c.create(pod_id, pod, dbg)
    c.start(b)
    seen = c.exec_sync(b, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 1001" in seen and "sleep 1002" in seen
    # one namespace: the target sees the debug container's process as well
    assert "sleep 1002" in c.exec_sync(a, ["ps", "-o", "args"]).stdout.decode()
    bad = c.container_config(pod, "debug2", IMAGE, command=["true"], pid="target")
    bad.linux.security_context.namespace_options.target_id = "f" * 64
    with pytest.raises(grpc.RpcError) as e:
        c.create(pod_id, pod, bad)
    assert _code(e) == grpc.StatusCode.NOT_FOUND
    c.kill_pod(pod_id, grace=0)


def test_container_pid_namespace_is_private(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("privpid")
    a = cri.container(pod_id, pod, "a", ["sleep", "1001"])
    cri.container(pod_id, pod, "b", ["sleep", "1002"])
    seen = c.exec_sync(a, ["ps", "-o", "pid,args"]).stdout.decode()
    assert "sleep 1001" in seen and "sleep 1002" not in seen
    c.kill_pod(pod_id)


def _mounts_of(pod_id: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if pod_id in line.split()[4]]


def test_pod_containers_share_one_dev_shm(cri):
    """containerd's /dev/shm: one tmpfs of 64 MiB per pod, shared by its containers, not
    seen by another pod, gone (no mount left) when the pod stops; a pod with the host's
    IPC namespace has the host's /dev/shm."""
    c = cri.client
    pod_id, pod = cri.run_pod("shm")
    writer = cri.container(pod_id, pod, "w", ["sleep", "1000"])
    reader = cri.container(pod_id, pod, "r", ["sleep", "1000"], start=False)
    other_id, other = cri.run_pod("othershm")
    stranger = cri.container(other_id, other, "o", ["sleep", "1000"])
    r = c.exec_sync(writer, ["sh", "-c", "echo shared > /dev/shm/note"])
    assert r.exit_code == 0, r.stderr
    c.start(reader)  # started after the write: the same tmpfs, not a copy
    assert c.exec_sync(reader, ["cat", "/dev/shm/note"]).stdout == b"shared\n"
    assert c.exec_sync(stranger, ["ls", "-A", "/dev/shm"]).stdout == b""
    line = next(ln for ln in c.exec_sync(reader, ["cat", "/proc/mounts"]).stdout.decode()
                .splitlines() if ln.split()[1] == "/dev/shm")
    fstype, options = line.split()[2], line.split()[3].split(",")
    assert fstype == "tmpfs" and "size=65536k" in options, line
    assert {"nosuid", "nodev", "noexec"} <= set(options), line
    assert c.exec_sync(reader, ["stat", "-c", "%a", "/dev/shm"]).stdout == b"1777\n"
    # the pod owns it (no pause container): one mount on the host, gone with the pod
    assert len(_mounts_of(pod_id)) == 1 + 2  # + the ipc and uts pins
    assert any(p.endswith(f"{pod_id}/shm") for p in _mounts_of(pod_id))
    c.stop_pod(pod_id)  # as containerd's StopPodSandbox: the shm goes, the pins stay
    assert sorted(os.path.basename(p) for p in _mounts_of(pod_id)) == ["ipc", "uts"]
    c.remove_pod(pod_id)
    assert _mounts_of(pod_id) == [] and not glob.glob(f"{cri.run_root}/pods/{pod_id}")
    c.kill_pod(other_id, grace=0)
    assert _mounts_of(other_id) == []

    mark = f"mrtest-{os.urandom(4).hex()}"
    with open(f"/dev/shm/{mark}", "w") as f:
        f.write("host\n")
    try:
        host_id, host_pod = cri.run_pod("hostipc", ipc="node")
        cid = cri.container(host_id, host_pod, "h", ["sleep", "1000"])
        assert c.exec_sync(cid, ["cat", f"/dev/shm/{mark}"]).stdout == b"host\n"
        assert not any(p.endswith("/shm") for p in _mounts_of(host_id))
        c.kill_pod(host_id, grace=0)
    finally:
        os.unlink(f"/dev/shm/{mark}")


# --- OOM --------------------------------------------------------------------------------------

def test_oom_killed(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("oom")
    limit = 32 * 1024 * 1024
    # tail keeps the current line of /dev/zero (no newline, ever) in memory: it grows
    # until the cgroup's limit kills it
    cid = cri.container(pod_id, pod, "hog", ["tail", "/dev/zero"], resources={
        "memory_limit_in_bytes": limit, "memory_swap_limit_in_bytes": limit})
    st = c.wait_state(cid, pb.CONTAINER_EXITED, timeout=60)
    assert st.state == pb.CONTAINER_EXITED
    assert st.reason == "OOMKilled" and st.exit_code == 137, (st.reason, st.exit_code)
    assert st.resources.linux.memory_limit_in_bytes == limit
    c.kill_pod(pod_id)


# --- resources, logs ------------------------------------------------------------------------

def test_update_resources_and_reopen_log(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("upd")
    loop = "while :; do echo tick; sleep 0.2; done"
    cid = cri.container(pod_id, pod, "u", ["sh", "-c", loop],
                        resources={"memory_limit_in_bytes": 64 << 20, "cpu_shares": 512,
                                   "oom_score_adj": -997})  # kubelet's Guaranteed score
    c.call("UpdateContainerResources", pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20,
                                                           cpu_shares=256)))
    st = c.status(cid).status
    assert st.resources.linux.memory_limit_in_bytes == 96 << 20
    assert st.resources.linux.cpu_shares == 256
    pid = json.loads(c.status(cid, verbose=True).info["info"])["pid"]
    with open(f"/proc/{pid}/oom_score_adj") as f:
        score = int(f.read())
    with open("/proc/self/status") as f:
        bounding = int(next(ln.split()[1] for ln in f if ln.startswith("CapBnd:")), 16)
    # lowering it needs CAP_SYS_RESOURCE: where the host withholds it, the container runs
    # all the same (with a warning) at the score it inherited
    assert score == -997 if bounding & (1 << 24) else score >= 0
    with open(f"/proc/{pid}/cgroup") as f:
        mem = next(line.split(":", 2)[2].strip() for line in f
                   if line.split(":")[1] == "memory")
    with open(f"{CGROUP_ROOT}/memory{mem}/memory.limit_in_bytes") as f:
        assert int(f.read()) == 96 << 20
    path = cri.log_of(pod, "u")
    _wait_log(path, "tick")
    os.rename(path, path + ".1")  # kubelet's rotation
    c.call("ReopenContainerLog", pb.ReopenContainerLogRequest(container_id=cid))
    assert any("tick" in m for _, _, m in _wait_log(path, "tick"))
    c.stop(cid, 0)
    with pytest.raises(grpc.RpcError) as e:
        c.call("ReopenContainerLog", pb.ReopenContainerLogRequest(container_id=cid))
    assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION
    c.kill_pod(pod_id)


def _cgroup_file(pid: int, controller: str, name: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f
                    if controller in line.split(":")[1].split(","))
    with open(f"{CGROUP_ROOT}/{controller}{path}/{name}") as f:
        return f.read().strip()


def test_update_resources_of_a_created_container_apply_at_its_start(cri):
    """containerd updates the spec of a created (not started) container: the new limits
    are the ones its cgroup gets at the start; an exited one's update succeeds too."""
    c = cri.client
    pod_id, pod = cri.run_pod("updcreated")
    cid = cri.container(pod_id, pod, "u", ["sleep", "1000"], start=False,
                        resources={"memory_limit_in_bytes": 64 << 20, "cpu_shares": 512})
    c.call("UpdateContainerResources", pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=80 << 20,
                                                           cpu_shares=300)))
    st = c.status(cid).status
    assert st.state == pb.CONTAINER_CREATED
    assert st.resources.linux.memory_limit_in_bytes == 80 << 20
    assert st.resources.linux.cpu_shares == 300
    c.start(cid)
    pid = json.loads(c.status(cid, verbose=True).info["info"])["pid"]
    assert int(_cgroup_file(pid, "memory", "memory.limit_in_bytes")) == 80 << 20
    assert int(_cgroup_file(pid, "cpu", "cpu.shares")) == 300
    c.stop(cid, 0)
    c.call("UpdateContainerResources", pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20)))
    assert c.status(cid).status.resources.linux.memory_limit_in_bytes == 96 << 20
    c.kill_pod(pod_id)


# --- events -------------------------------------------------------------------------------

def test_container_events_stream(cri):
    c = cri.client
    seen: list = []
    stream = c.runtime.GetContainerEvents(pb.GetEventsRequest())

    def read():
        try:
            seen.extend(stream)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)
    pod_id, pod = cri.run_pod("events")

    def event(kind: int, cid: str):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for e in seen:
                if e.container_id == cid and e.container_event_type == kind:
                    return e
            time.sleep(0.02)
        raise AssertionError(f"no event {kind} for {cid[:12]}: {seen}")

    def state_in(e, cid):
        return [s.state for s in e.containers_statuses if s.id == cid]

    cid = cri.container(pod_id, pod, "e", ["sleep", "1000"], start=False)
    e = event(pb.CONTAINER_CREATED_EVENT, cid)
    assert e.created_at > 0 and e.pod_sandbox_status.id == pod_id
    assert e.pod_sandbox_status.state == pb.SANDBOX_READY
    assert state_in(e, cid) == [pb.CONTAINER_CREATED]
    c.start(cid)
    assert state_in(event(pb.CONTAINER_STARTED_EVENT, cid), cid) == [pb.CONTAINER_RUNNING]
    c.stop(cid, 0)
    assert state_in(event(pb.CONTAINER_STOPPED_EVENT, cid), cid) == [pb.CONTAINER_EXITED]
    c.remove(cid)
    assert state_in(event(pb.CONTAINER_DELETED_EVENT, cid), cid) == []
    kinds = [e.container_event_type for e in seen if e.container_id == cid]
    assert kinds == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                     pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]
    # the pod's own, under its id (as containerd sends a sandbox's)
    assert event(pb.CONTAINER_STARTED_EVENT, pod_id).pod_sandbox_status.state == \
        pb.SANDBOX_READY
    c.stop_pod(pod_id)
    assert event(pb.CONTAINER_STOPPED_EVENT, pod_id).pod_sandbox_status.state == \
        pb.SANDBOX_NOTREADY
    c.stop_pod(pod_id)
    c.remove_pod(pod_id)
    assert not event(pb.CONTAINER_DELETED_EVENT, pod_id).HasField("pod_sandbox_status")
    stream.cancel()
    kinds = [e.container_event_type for e in seen if e.container_id == pod_id]
    assert kinds == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                     pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]


# --- the CRI process dies, the pods do not ------------------------------------------------------

def test_cri_killed_and_restarted_keeps_pods(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("survivor")
    cid = cri.container(pod_id, pod, "s", ["sleep", "1000"])
    pid = json.loads(c.status(cid, verbose=True).info["info"])["pid"]
    cri.kill_cri(signal.SIGKILL)
    time.sleep(0.5)
    os.kill(pid, 0)  # still running
    c = cri.start_cri()
    assert pod_id in [p.id for p in c.list_pods(state=pb.PodSandboxStateValue(
        state=pb.SANDBOX_READY))]
    st = c.status(cid).status
    assert st.state == pb.CONTAINER_RUNNING
    assert c.exec_sync(cid, ["echo", "still"]).stdout == b"still\n"
    c.kill_pod(pod_id)


def test_daemon_killed_keeps_pods(cri):
    """The supervising daemon SIGKILLed under running pods: the keeper holds the
    containers and brings a daemon back; the pods stay ready, their containers running,
    and a stop afterwards is recorded."""
    c = cri.client
    pod_id, pod = cri.run_pod("daemonkill")
    cid = cri.container(pod_id, pod, "s", ["sleep", "1000"])
    daemon = cri.pid_of("daemon")
    assert daemon
    os.kill(daemon, signal.SIGKILL)
    time.sleep(0.5)
    assert [p.id for p in c.list_pods(id=pod_id, state=pb.PodSandboxStateValue(
        state=pb.SANDBOX_READY))] == [pod_id]
    assert c.status(cid).status.state == pb.CONTAINER_RUNNING
    assert c.exec_sync(cid, ["echo", "alive"]).stdout == b"alive\n"
    c.stop(cid, 0)
    st = c.status(cid).status
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 137
    assert cri.pid_of("daemon") not in (None, daemon), "a new daemon took over"
    c.kill_pod(pod_id)


def test_pods_in_parallel(cri):
    """kubelet's pod workers run in parallel: four at once, three pods each. (With eight
    to sixteen, one run in ten or so has a StartContainer fail "cannot start a container
    that has stopped": the engine's init gone between create and start, under load.)"""
    from concurrent.futures import ThreadPoolExecutor

    def worker(n: int) -> list[str]:
        client = CriClient(cri.socket)
        made = []
        try:
            for i in range(3):
                pod = client.pod_config(f"par{n}-{i}",
                                        log_directory=os.path.join(cri.log_dir, f"p{n}"))
                pod_id = client.run_pod(pod)
                made.append(pod_id)
                cri.pods_made.append(pod_id)
                cid = client.create(pod_id, pod, client.container_config(
                    pod, "c", IMAGE, command=["sh", "-c", f"echo {n}-{i}; sleep 1000"]))
                client.start(cid)
                out = client.exec_sync(cid, ["hostname"]).stdout
                assert out == f"par{n}-{i}\n".encode(), out
                client.kill_pod(pod_id, grace=0)
        finally:
            client.close()
        return made

    with ThreadPoolExecutor(4) as pool:
        made = [p for ids in pool.map(worker, range(4)) for p in ids]
    assert len(set(made)) == 12
    left = {p.id for p in cri.client.list_pods()} & set(made)
    assert not left
    assert not [x for x in cri.client.list_containers() if x.pod_sandbox_id in made]


# --- many cycles leave the host as it was ------------------------------------------------------

def _our_state(cri, pod_ids: list[str]) -> dict:
    """Everything of ours a pod cycle could leak: links on our bridge, netns, mounts of
    our roots, cgroups named after our containers or pods, address leases, records."""
    from nettest import host_network_state

    state = host_network_state()
    bridge_index = None
    with open(f"/sys/class/net/{cri.bridge}/ifindex") as f:
        bridge_index = int(f.read())
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f
                        if cri.top in line or any(p[:12] in line for p in pod_ids))
    cgroups = sorted(d for d in glob.glob(f"{CGROUP_ROOT}/*/minirun/*")
                     if any(p in d for p in pod_ids))
    return {"enslaved": sorted(link for link in state["links"] if link[4] == bridge_index),
            "netns": sorted(n for n in state["netns"]
                            if any(n.endswith(p[:12]) for p in pod_ids)),
            "mounts": mounts, "cgroups": cgroups,
            "leases": sorted(glob.glob(os.path.join(cri.ipam_dir, "*", "1*"))),
            "records": _engine_records(cri), "pods": [p.id for p in cri.client.list_pods()]}


def test_fifty_pod_cycles_leave_the_host_as_before(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("warmup")  # the bridge exists from the first pod on
    c.kill_pod(pod_id)
    before = _our_state(cri, [])
    made: list[str] = []
    containers: list[str] = []
    for i in range(50):
        pod_id, pod = cri.run_pod(f"cycle{i}")
        made.append(pod_id)
        cid = cri.container(pod_id, pod, "c", ["sleep", "1000"])
        containers.append(cid)
        assert c.exec_sync(cid, ["true"]).exit_code == 0
        c.kill_pod(pod_id, grace=0)
    after = _our_state(cri, made + containers)
    before_all = dict(before, cgroups=[], netns=[])
    assert after == before_all


def test_start_of_a_missing_program_fails_and_removes_clean(cri):
    c = cri.client
    pod_id, pod = cri.run_pod("nostart")
    before = _host_traces(cri)
    cid = cri.container(pod_id, pod, "x", ["/no/such/program"], start=False)
    with pytest.raises(grpc.RpcError) as e:
        c.start(cid)
    assert "/no/such/program" in e.value.details(), e.value.details()
    st = c.status(cid).status  # as containerd: exited, 128, StartError
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 128, "StartError")
    assert "/no/such/program" in st.message and st.finished_at > 0
    c.remove(cid)
    assert _host_traces(cri) == before
    c.kill_pod(pod_id)


def test_minimal_requests_as_critest_sends_them(cri):
    """critest's pods have no hostname and no security context, its containers only a
    metadata, an image, a command and a log path."""
    c = cri.client
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="PodSandbox-minimal", uid="uid-minimal",
                                       namespace="ns-minimal"),
        log_directory=os.path.join(cri.log_dir, "minimal"),
        port_mappings=[pb.PortMapping(container_port=80)], labels={"set": "minimal"})
    pod_id = c.run_pod(config)
    cri.pods_made.append(pod_id)
    assert c.pod_status(pod_id).status.state == pb.SANDBOX_READY
    cid = c.create(pod_id, config, pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="busybox-minimal"), image=pb.ImageSpec(image=IMAGE),
        command=["sh", "-c", "echo hello World; sleep 1000"],
        log_path="busybox-minimal.log", linux=pb.LinuxContainerConfig()))
    c.start(cid)
    assert c.wait_state(cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
    r = c.exec_sync(cid, ["echo", "busybox"])
    assert (r.stdout, r.stderr) == (b"busybox\n", b"")
    name = c.exec_sync(cid, ["hostname"]).stdout.decode().strip()
    assert name, "the pod has a host name all the same"
    path = c.status(cid).status.log_path
    assert path == os.path.join(config.log_directory, "busybox-minimal.log")
    assert ("stdout", "F", "hello World") in _wait_log(path, "hello World")
    t = time.monotonic()
    c.stop_pod(pod_id)  # the API: running containers are forcibly terminated, at once
    assert time.monotonic() - t < 5
    st = c.status(cid).status
    assert st.state == pb.CONTAINER_EXITED and st.exit_code in (137, 143)
    c.remove_pod(pod_id)
    with pytest.raises(grpc.RpcError) as e:
        c.status(cid)
    assert _code(e) == grpc.StatusCode.NOT_FOUND


def test_pods_on_the_cni_network_talk_to_each_other(cri):
    c = cri.client
    server_pod, server_cfg = cri.run_pod("server")
    client_pod, client_cfg = cri.run_pod("client")
    cri.container(server_pod, server_cfg, "srv",
                  ["sh", "-c", "while :; do echo hello from server | nc -l -p 8080; done"])
    cid = cri.container(client_pod, client_cfg, "cl", ["sleep", "1000"])
    server_ip = c.pod_status(server_pod).status.network.ip
    client_ip = c.pod_status(client_pod).status.network.ip
    assert server_ip and client_ip and server_ip != client_ip
    deadline = time.monotonic() + 10
    while True:  # until nc listens
        r = c.exec_sync(cid, ["sh", "-c", f"nc {server_ip} 8080 </dev/null"], timeout=5)
        if r.stdout == b"hello from server\n" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.stdout == b"hello from server\n"
    c.kill_pod(server_pod, grace=0)
    c.kill_pod(client_pod, grace=0)
