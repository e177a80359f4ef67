"""A kubelet-like CRI client for the tests and the bench: runtime.v1 over gRPC on a unix
socket, with the configs kubelet builds (what kuberuntime_sandbox.go and
kuberuntime_container.go put in them for a plain pod) and its call sequence:

  RunPodSandbox -> ImageStatus (PullImage when missing) -> CreateContainer ->
  StartContainer -> ContainerStatus ... -> StopContainer -> RemoveContainer ->
  StopPodSandbox -> RemovePodSandbox
"""

from __future__ import annotations

import os
import time
import uuid

import grpc

from minirun.cri.api import api_pb2 as pb
from minirun.cri.api import api_pb2_grpc as pb_grpc

# kubelet's defaults for a container's /proc (procMount Default)
KUBELET_MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
KUBELET_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"]
NS = {"pod": pb.POD, "container": pb.CONTAINER, "node": pb.NODE, "target": pb.TARGET}


def kubelet_resources() -> dict:
    """What kubelet puts in a BestEffort container's LinuxContainerResources: the
    smallest cpu shares, oom_score_adj 1000, and a 0 limit for each hugepage size the
    host knows."""
    sizes = []
    try:
        names = sorted(os.listdir("/sys/kernel/mm/hugepages"))
    except OSError:
        names = []
    for name in names:  # hugepages-2048kB -> 2MB
        kb = int(name[len("hugepages-"):-len("kB")])
        size = f"{kb // 1024 ** 2}GB" if kb % 1024 ** 2 == 0 else (
            f"{kb // 1024}MB" if kb % 1024 == 0 else f"{kb}KB")
        sizes.append(pb.HugepageLimit(page_size=size, limit=0))
    return {"cpu_shares": 2, "oom_score_adj": 1000, "hugepage_limits": sizes}


class CriClient:
    def __init__(self, socket_path: str, timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        # kubelet's message limits (16 MiB both ways: ExecSync output, long lists)
        self.channel = grpc.insecure_channel(
            f"unix://{socket_path}", options=[("grpc.max_receive_message_length", 16 << 20),
                                              ("grpc.max_send_message_length", 16 << 20)])
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def call(self, rpc: str, request, timeout: float | None = None):
        stub = self.runtime if hasattr(self.runtime, rpc) else self.images
        return getattr(stub, rpc)(request, timeout=timeout or self.timeout)

    # --- configs as kubelet makes them ----------------------------------------------------

    @staticmethod
    def pod_config(name: str, namespace: str = "default", uid: str | None = None,
                   attempt: int = 0, log_directory: str = "", network: str = "pod",
                   pid: str = "container", ipc: str = "pod", hostname: str | None = None,
                   labels: dict | None = None, annotations: dict | None = None,
                   cgroup_parent: str = "", privileged: bool = False,
                   port_mappings: list | None = None, dns: dict | None = None,
                   sysctls: dict | None = None) -> pb.PodSandboxConfig:
        uid = uid or uuid.uuid4().hex
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid,
                                           attempt=attempt),
            hostname=name if hostname is None else hostname,
            log_directory=log_directory, labels={"io.kubernetes.pod.name": name,
                                                 **(labels or {})},
            annotations=annotations or {},
            dns_config=pb.DNSConfig(**(dns or {})),
            port_mappings=port_mappings or [],
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent, sysctls=sysctls or {},
                security_context=pb.LinuxSandboxSecurityContext(
                    privileged=privileged,
                    namespace_options=pb.NamespaceOption(network=NS[network], pid=NS[pid],
                                                         ipc=NS[ipc]))))

    @staticmethod
    def container_config(pod: pb.PodSandboxConfig, name: str, image: str,
                         command: list[str] | None = None, args: list[str] | None = None,
                         attempt: int = 0, env: dict | None = None, pid: str | None = None,
                         security: dict | None = None, resources: dict | None = None,
                         mounts: list | None = None, labels: dict | None = None,
                         annotations: dict | None = None, log_path: str | None = None,
                         tty: bool = False, stdin: bool = False, stdin_once: bool = False,
                         working_dir: str = "",
                         devices: list | None = None) -> pb.ContainerConfig:
        ns = pod.linux.security_context.namespace_options
        sc = {"masked_paths": KUBELET_MASKED_PATHS, "readonly_paths": KUBELET_READONLY_PATHS}
        sc.update(security or {})
        sc["namespace_options"] = pb.NamespaceOption(
            network=ns.network, ipc=ns.ipc,
            pid=NS[pid] if pid else (ns.pid if ns.pid != pb.CONTAINER else pb.CONTAINER))
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=attempt),
            image=pb.ImageSpec(image=image), command=command or [], args=args or [],
            working_dir=working_dir,
            envs=[pb.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
            mounts=mounts or [], devices=devices or [], labels={"io.kubernetes.container.name": name,
                                         **(labels or {})},
            annotations=annotations or {},
            log_path=f"{name}/{attempt}.log" if log_path is None else log_path,
            tty=tty, stdin=stdin, stdin_once=stdin_once,
            linux=pb.LinuxContainerConfig(
                resources=pb.LinuxContainerResources(**{**kubelet_resources(),
                                                        **(resources or {})}),
                security_context=pb.LinuxContainerSecurityContext(**sc)))

    # --- calls ----------------------------------------------------------------------------

    def run_pod(self, config: pb.PodSandboxConfig, handler: str = "") -> str:
        return self.call("RunPodSandbox", pb.RunPodSandboxRequest(
            config=config, runtime_handler=handler)).pod_sandbox_id

    def stop_pod(self, pod_id: str) -> None:
        self.call("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod(self, pod_id: str) -> None:
        self.call("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def pod_status(self, pod_id: str, verbose: bool = False):
        return self.call("PodSandboxStatus", pb.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=verbose))

    def list_pods(self, **filter_) -> list:
        return list(self.call("ListPodSandbox", pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(**filter_))).items)

    def ensure_image(self, image: str) -> None:
        """As kubelet: ImageStatus, and PullImage when the node lacks it."""
        try:
            status = self.images.ImageStatus(pb.ImageStatusRequest(
                image=pb.ImageSpec(image=image)), timeout=self.timeout)
            if status.HasField("image") and status.image.id:
                return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            return  # no ImageService yet: the image was imported by the test
        self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                              timeout=self.timeout)

    def create(self, pod_id: str, pod: pb.PodSandboxConfig,
               config: pb.ContainerConfig) -> str:
        return self.call("CreateContainer", pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id

    def start(self, cid: str) -> None:
        self.call("StartContainer", pb.StartContainerRequest(container_id=cid))

    def stop(self, cid: str, timeout: int = 10) -> None:
        self.call("StopContainer", pb.StopContainerRequest(container_id=cid,
                                                           timeout=timeout))

    def remove(self, cid: str) -> None:
        self.call("RemoveContainer", pb.RemoveContainerRequest(container_id=cid))

    def status(self, cid: str, verbose: bool = False):
        return self.call("ContainerStatus", pb.ContainerStatusRequest(
            container_id=cid, verbose=verbose))

    def list_containers(self, **filter_) -> list:
        return list(self.call("ListContainers", pb.ListContainersRequest(
            filter=pb.ContainerFilter(**filter_))).containers)

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = 0,
                  rpc_timeout: float | None = None):
        return self.call("ExecSync", pb.ExecSyncRequest(container_id=cid, cmd=cmd,
                                                        timeout=timeout),
                         timeout=rpc_timeout)

    def wait_state(self, cid: str, state: int, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(cid).status
            if st.state == state or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    # --- the kubelet's sequence -----------------------------------------------------------

    def start_pod(self, pod: pb.PodSandboxConfig,
                  containers: list[pb.ContainerConfig]) -> tuple[str, list[str]]:
        """RunPodSandbox, then for each container: image, create, start (as kubelet's
        SyncPod). Returns (pod id, container ids)."""
        pod_id = self.run_pod(pod)
        ids = []
        for config in containers:
            self.ensure_image(config.image.image)
            cid = self.create(pod_id, pod, config)
            self.start(cid)
            ids.append(cid)
        return pod_id, ids

    def kill_pod(self, pod_id: str, grace: int = 2) -> None:
        """As kubelet's KillPod then the garbage collector: stop the containers, stop the
        sandbox, remove the containers, remove the sandbox."""
        containers = self.list_containers(pod_sandbox_id=pod_id)
        for c in containers:
            self.stop(c.id, grace)
        self.stop_pod(pod_id)
        for c in containers:
            self.remove(c.id)
        self.remove_pod(pod_id)


def read_cri_log(path: str) -> list[tuple[str, str, str]]:
    """(stream, tag, message) of each line of a CRI log file."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            _time, stream, tag, msg = line.rstrip("\n").split(" ", 3)
            out.append((stream, tag, msg))
    return out
