"""The CRI runtimes the validation port (test_cri_validation.py) runs against, and the
client it speaks to them with.

Target (env MINIRUN_CRI_TARGET): "minirun" (default) or "containerd".
- minirun: `minirun cri` on a socket in a temporary dir, with temporary --root/--run-root,
  MINIRUN_CNI_CONF_DIR holding minirun's default conflist with its own bridge (mrcvmr0),
  subnet (10.94.2.0/24) and host-local dataDir in the temp dir, and
  MINIRUN_REGISTRIES_CONF mapping registry.k8s.io and gcr.io to the local registry.
- containerd: Debian's containerd 1.6 with its CRI plugin and runc, everything (root,
  state, sockets, the same conflist on bridge mrcvcd0, 10.94.1.0/24) in a temporary dir,
  the same registry mirrors; the sandbox image is the local pause stand-in.
Both are stopped by pid; containerd's shims (found by their -address, our socket) too.
Pods are removed through the CRI before that, then cgroups under CGROUP_TOP, the bridge
and the temporary dir (after unmounting what is below it).

Client: CriClient, with the semantics of k8s.io/cri-client that critest calls through:
ExecSync with a non-zero exit code is an error, ImageStatus of a missing image is None.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
from ocitest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import cri_bench  # containerd's temp-root config, as the bench writes it

from minirun.cri.api import api_pb2 as pb
from minirun.cri.api import api_pb2_grpc as pb_grpc

CONTAINERD = "/usr/bin/containerd"
CGROUP_TOP = "/minirun/critest"
NETS = {"containerd": ("mrcvcd0", "10.94.1.0/24"), "minirun": ("mrcvmr0", "10.94.2.0/24")}
CALL_TIMEOUT = 120.0


def write_conflist(conf_dir: str, runtime: str, data_dir: str) -> None:
    """minirun's default pod network (minirun.pods.DEFAULT_CONFLIST: bridge with
    masquerade and hairpin, host-local, portmap with snat) with its own bridge, subnet and
    IPAM dataDir, so that the suite runs the plugin chain a fresh host gets."""
    from minirun.pods import DEFAULT_CONFLIST

    bridge, subnet = NETS[runtime]
    os.makedirs(conf_dir, exist_ok=True)
    conf = json.loads(json.dumps(DEFAULT_CONFLIST))
    conf["name"] = f"minirun-critest-{runtime}"
    first = conf["plugins"][0]
    first["bridge"] = bridge
    first["ipam"]["ranges"] = [[{"subnet": subnet}]]
    first["ipam"]["dataDir"] = data_dir
    with open(os.path.join(conf_dir, "10-critest.conflist"), "w") as f:
        json.dump(conf, f)


def tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


def wait_serving(sock: str, proc: subprocess.Popen, log: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"runtime exited {proc.returncode}: {tail(log)}")
        if os.path.exists(sock):
            try:
                with grpc.insecure_channel(f"unix:{sock}") as ch:
                    pb_grpc.RuntimeServiceStub(ch).Version(pb.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"runtime not serving on {sock}: {tail(log)}")
        time.sleep(0.1)


def stop_pid(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def unmount_below(top: str) -> list[str]:
    left = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == top or point.startswith(top + "/"):
                left.append(point)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL, check=False)
    return left


def remove_cgroups(top: str) -> None:
    """rmdir CGROUP_TOP depth first in every hierarchy (empty cgroups only)."""
    for hier in os.listdir("/sys/fs/cgroup"):
        base = os.path.join("/sys/fs/cgroup", hier, top.lstrip("/"))
        if not os.path.isdir(base) or os.path.islink(os.path.join("/sys/fs/cgroup", hier)):
            continue
        for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


class Target:
    name = ""
    sock = ""
    # cgroup_parent for pods when the runtime does not say it uses cgroupfs (critest sends
    # "/test.slice" then; never a path outside /minirun here)
    cgroup_parent = CGROUP_TOP

    def __init__(self, top: str, registry_host: str) -> None:
        self.top = top
        self.registry_host = registry_host
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(top, f"{self.name}.log")

    def remove_pods(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with grpc.insecure_channel(f"unix:{self.sock}") as ch:
            rs = pb_grpc.RuntimeServiceStub(ch)
            try:
                pods = rs.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items
            except grpc.RpcError:
                return
            for pod in pods:
                for call, req in ((rs.StopPodSandbox, pb.StopPodSandboxRequest),
                                  (rs.RemovePodSandbox, pb.RemovePodSandboxRequest)):
                    try:
                        call(req(pod_sandbox_id=pod.id), timeout=120)
                    except grpc.RpcError as e:
                        print(f"cleanup: {call._method}: {pod.id}: {e.details()}",
                              file=sys.stderr)

    def remove_link(self) -> None:
        subprocess.run(["ip", "link", "del", NETS[self.name][0]], stderr=subprocess.DEVNULL,
                       check=False)


class MinirunTarget(Target):
    name = "minirun"

    def __init__(self, top: str, registry_host: str) -> None:
        super().__init__(top, registry_host)
        self.sock = os.path.join(top, "cri.sock")
        self.root = os.path.join(top, "lib")
        self.run_root = os.path.join(top, "run")
        self.conf_dir = os.path.join(top, "net.d")
        write_conflist(self.conf_dir, self.name, os.path.join(top, "ipam"))
        regconf = os.path.join(top, "registries.json")
        with open(regconf, "w") as f:
            json.dump({"insecure": [registry_host],
                       "mirrors": {"registry.k8s.io": [registry_host],
                                   "gcr.io": [registry_host]}}, f)
        self.env = dict(os.environ, MINIRUN_ROOT=self.root, MINIRUN_RUN_ROOT=self.run_root,
                        MINIRUN_CNI_CONF_DIR=self.conf_dir, MINIRUN_REGISTRIES_CONF=regconf)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # no preexec_fn: the test process has grpc threads
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "minirun.cli", "cri", "--root", self.root,
                 "--run-root", self.run_root, "--cri-socket", self.sock],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        wait_serving(self.sock, self.proc, self.log)

    def _pid(self, name: str) -> int | None:
        try:
            with open(os.path.join(self.run_root, f"{name}.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        self.remove_pods()
        stop_pid(self.proc)
        cli = [sys.executable, "-m", "minirun.cli"]
        ps = subprocess.run([*cli, "ps", "-a", "-q"], env=self.env, cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
        for cid in ps.stdout.split():
            subprocess.run([*cli, "rm", "-f", cid], env=self.env, cwd=REPO,
                           capture_output=True, timeout=120, check=False)
        # the keeper first: it would start another daemon; the daemon exits with it
        for name in ("keeper", "daemon"):
            pid = self._pid(name)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
        self.remove_link()


class ContainerdTarget(Target):
    name = "containerd"

    def __init__(self, top: str, registry_host: str) -> None:
        super().__init__(top, registry_host)
        self.dir = os.path.join(top, "containerd")
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.conf_dir = os.path.join(self.dir, "net.d")
        os.makedirs(self.dir, exist_ok=True)
        write_conflist(self.conf_dir, self.name, os.path.join(self.dir, "ipam"))

    def config(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        mirrors = "".join(
            f'      [{cri}.registry.mirrors."{host}"]\n'
            f'        endpoint = ["http://{self.registry_host}"]\n'
            for host in ("registry.k8s.io", "gcr.io"))
        return cri_bench.containerd_config(
            self.dir, self.sock, self.conf_dir, "registry.k8s.io/pause:3.6",
            extra_cri=f"    [{cri}.registry]\n      [{cri}.registry.mirrors]\n{mirrors}")

    def start(self) -> None:
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(self.config())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([CONTAINERD, "--config", cfg], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        wait_serving(self.sock, self.proc, self.log)

    def shims(self) -> list[int]:
        return cri_bench.shim_pids(self.sock)

    def stop(self) -> None:
        self.remove_pods()
        stop_pid(self.proc)
        for pid in self.shims():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        self.remove_link()


def make_target(top: str, registry_host: str) -> Target:
    name = os.environ.get("MINIRUN_CRI_TARGET", "minirun")
    if name == "containerd":
        return ContainerdTarget(top, registry_host)
    if name == "minirun":
        return MinirunTarget(top, registry_host)
    raise RuntimeError(f"MINIRUN_CRI_TARGET={name!r}: minirun or containerd")


# --- the client ----------------------------------------------------------------------------


class ExecResult:
    def __init__(self, stdout: bytes, stderr: bytes, exit_code: int,
                 error: grpc.RpcError | None = None) -> None:
        self.stdout, self.stderr, self.exit_code, self.rpc_error = \
            stdout, stderr, exit_code, error

    @property
    def failed(self) -> bool:
        """cri-client's ExecSync error: the RPC failed or the command exited non-zero."""
        return self.rpc_error is not None or self.exit_code != 0

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def __repr__(self) -> str:
        rpc = f", rpc error {self.rpc_error.code()}: {self.rpc_error.details()}" \
            if self.rpc_error else ""
        return f"exit {self.exit_code}, stdout {self.stdout!r}, stderr {self.stderr!r}{rpc}"


class CriClient:
    """The RuntimeService and ImageService calls critest makes, as cri-client makes them."""

    def __init__(self, sock: str) -> None:
        self.channel = grpc.insecure_channel(f"unix:{sock}")
        self.rs = pb_grpc.RuntimeServiceStub(self.channel)
        self.ims = pb_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    # runtime
    def version(self) -> pb.VersionResponse:
        return self.rs.Version(pb.VersionRequest(version="0.1.0"), timeout=CALL_TIMEOUT)

    def status(self, verbose: bool = False) -> pb.StatusResponse:
        return self.rs.Status(pb.StatusRequest(verbose=verbose), timeout=CALL_TIMEOUT)

    def run_pod(self, config: pb.PodSandboxConfig, handler: str = "") -> str:
        return self.rs.RunPodSandbox(pb.RunPodSandboxRequest(
            config=config, runtime_handler=handler), timeout=CALL_TIMEOUT).pod_sandbox_id

    def stop_pod(self, pod_id: str) -> None:
        self.rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                               timeout=CALL_TIMEOUT)

    def remove_pod(self, pod_id: str) -> None:
        self.rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                 timeout=CALL_TIMEOUT)

    def pod_status(self, pod_id: str) -> pb.PodSandboxStatus:
        return self.rs.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                        timeout=CALL_TIMEOUT).status

    def list_pods(self, filter: pb.PodSandboxFilter | None = None) -> list[pb.PodSandbox]:
        return list(self.rs.ListPodSandbox(pb.ListPodSandboxRequest(filter=filter),
                                           timeout=CALL_TIMEOUT).items)

    def create_container(self, pod_id: str, config: pb.ContainerConfig,
                         pod_config: pb.PodSandboxConfig) -> str:
        return self.rs.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config),
            timeout=CALL_TIMEOUT).container_id

    def start_container(self, cid: str) -> None:
        self.rs.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)

    def stop_container(self, cid: str, timeout: int) -> None:
        self.rs.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout),
                              timeout=CALL_TIMEOUT + timeout)

    def remove_container(self, cid: str) -> None:
        self.rs.RemoveContainer(pb.RemoveContainerRequest(container_id=cid),
                                timeout=CALL_TIMEOUT)

    def container_status(self, cid: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        return self.rs.ContainerStatus(pb.ContainerStatusRequest(
            container_id=cid, verbose=verbose), timeout=CALL_TIMEOUT)

    def list_containers(self, filter: pb.ContainerFilter | None = None) -> list[pb.Container]:
        return list(self.rs.ListContainers(pb.ListContainersRequest(filter=filter),
                                           timeout=CALL_TIMEOUT).containers)

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = 30) -> ExecResult:
        # cri-client: the call's deadline is its own request timeout plus the exec's
        try:
            resp = self.rs.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=cmd,
                                                       timeout=timeout),
                                    timeout=CALL_TIMEOUT + timeout)
        except grpc.RpcError as e:
            return ExecResult(b"", b"", -1, e)
        return ExecResult(resp.stdout, resp.stderr, resp.exit_code)

    def reopen_log(self, cid: str) -> None:
        self.rs.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid),
                                   timeout=CALL_TIMEOUT)

    def container_stats(self, cid: str) -> pb.ContainerStats:
        return self.rs.ContainerStats(pb.ContainerStatsRequest(container_id=cid),
                                      timeout=CALL_TIMEOUT).stats

    def list_container_stats(self, filter: pb.ContainerStatsFilter | None = None
                             ) -> list[pb.ContainerStats]:
        return list(self.rs.ListContainerStats(pb.ListContainerStatsRequest(filter=filter),
                                               timeout=CALL_TIMEOUT).stats)

    def runtime_config(self) -> pb.RuntimeConfigResponse:
        return self.rs.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=CALL_TIMEOUT)

    # images
    def pull(self, image: str, pod_config: pb.PodSandboxConfig | None = None,
             timeout: float = CALL_TIMEOUT) -> str:
        return self.ims.PullImage(pb.PullImageRequest(
            image=pb.ImageSpec(image=image), sandbox_config=pod_config),
            timeout=timeout).image_ref

    def image_status(self, image: str) -> pb.Image | None:
        resp = self.ims.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)),
                                    timeout=CALL_TIMEOUT)
        return resp.image if resp.HasField("image") else None

    def list_images(self, filter: pb.ImageFilter | None = None) -> list[pb.Image]:
        return list(self.ims.ListImages(pb.ListImagesRequest(filter=filter),
                                        timeout=CALL_TIMEOUT).images)

    def remove_image(self, image: str) -> None:
        self.ims.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)),
                             timeout=CALL_TIMEOUT)
