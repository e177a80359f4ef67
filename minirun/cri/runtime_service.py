"""runtime.v1 RuntimeService: pods and containers, as engine operations.

  RunPodSandbox / StopPodSandbox / RemovePodSandbox  -> minirun.pods.Pods run / stop / remove
  PodSandboxStatus / ListPodSandbox                  <- the pods' records
  CreateContainer                                    -> Engine.prepare (record, snapshot,
                                                        config.json; state created)
  StartContainer / StopContainer / RemoveContainer   -> Engine.start / stop / remove (the
                                                        daemon runs and supervises them)
  ContainerStatus / ListContainers                   <- the engine's records (options.pod)
  UpdateContainerResources / ReopenContainerLog      -> Engine.update_resources / reopen_log
  ExecSync                                           -> `minirun-oci exec` in a child, pipes
  GetContainerEvents                                 <- Engine.events_after, polled

Translation of configs is convert.py's; Version/Status/RuntimeConfig are InfoMixin's,
Exec/Attach/PortForward StreamingMixin's, the stats StatsMixin's.

The API's idempotency: stopping or removing a pod or a container that is stopped or gone
succeeds; the status RPCs of an unknown id answer NOT_FOUND; a malformed request is
INVALID_ARGUMENT before anything is made, and anything half-made is undone by the engine
and pods code that made it.

grpc serves calls from a pool of threads and an SQLite connection belongs to the thread
that opened it, so each thread has its own Engine (and Pods) on the same roots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from ..errors import ContainerStateError, InvalidArgument, MiniRunError, NotFound
from . import convert
from .api import api_pb2 as pb
from .info import InfoMixin

try:
    from .streaming import StreamingMixin
except ImportError:
    class StreamingMixin:  # type: ignore[no-redef]
        pass
try:
    from .stats import StatsMixin
except ImportError:
    class StatsMixin:  # type: ignore[no-redef]
        pass

# the API's cap on each of ExecSync's outputs (CVE-2022-1708): the rest is read and
# dropped; the response must also fit kubelet's 16 MiB message limit, so when both
# together are larger stdout gives way (the framing needs a few bytes)
MAX_EXEC_SYNC_OUTPUT = 16 * 1024 * 1024
MAX_EXEC_SYNC_RESPONSE = 16 * 1024 * 1024 - 4096
# after the exec'd process exits, how long its output pipes may stay open (a child it left
# in the background holds them) before we stop reading
EXEC_DRAIN_SECONDS = 1.0
EVENTS_POLL_SECONDS = 0.1
# how long a timed-out ExecSync waits for minirun-oci to name the process to kill
EXEC_PID_WAIT_SECONDS = 10.0
START_ERROR_EXIT_CODE, START_ERROR_REASON = 128, "StartError"  # containerd's
CONTAINER_STATES = {"created": pb.CONTAINER_CREATED, "running": pb.CONTAINER_RUNNING,
                    "exited": pb.CONTAINER_EXITED}
EVENT_TYPES = {"created": pb.CONTAINER_CREATED_EVENT, "started": pb.CONTAINER_STARTED_EVENT,
               "stopped": pb.CONTAINER_STOPPED_EVENT, "deleted": pb.CONTAINER_DELETED_EVENT}
POD_STATES = {"ready": pb.SANDBOX_READY, "notready": pb.SANDBOX_NOTREADY}
NS_MODES = {"pod": pb.POD, "container": pb.CONTAINER, "node": pb.NODE}
PROPAGATION_OF = {"rprivate": pb.PROPAGATION_PRIVATE, "private": pb.PROPAGATION_PRIVATE,
                  "rslave": pb.PROPAGATION_HOST_TO_CONTAINER,
                  "slave": pb.PROPAGATION_HOST_TO_CONTAINER,
                  "rshared": pb.PROPAGATION_BIDIRECTIONAL, "shared": pb.PROPAGATION_BIDIRECTIONAL}


def _ns(seconds) -> int:
    return int(seconds * 1e9) if seconds else 0


def _require(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is required")
    return value


class RuntimeService(InfoMixin, StreamingMixin, StatsMixin):
    """The RuntimeService impl (grpc servicer signatures; errors are minirun.errors)."""

    def __init__(self, engine, config=None, pods=None, streaming=None) -> None:
        self.config = config
        self._streaming = streaming
        self._streaming_lock = threading.Lock()
        self._start_errors: dict[str, str] = {}  # why a start failed, for the status
        self._roots = (engine.root, engine.run_root)
        self._local = threading.local()
        self._local.engine = engine
        if pods is not None:
            self._local.pods = pods

    # --- per-thread engine objects --------------------------------------------------------

    @property
    def engine(self):
        engine = getattr(self._local, "engine", None)
        if engine is None:
            from ..engine import Engine

            engine = self._local.engine = Engine(*self._roots)
        return engine

    @property
    def pods(self):
        pods = getattr(self._local, "pods", None)
        if pods is None:
            from ..pods import Pods

            pods = self._local.pods = Pods(self.engine)
        return pods

    @property
    def streaming(self):
        """The streaming server of Exec/Attach/PortForward URLs: the one given, else one
        started on the first call that needs it, at the config's --stream-address."""
        with self._streaming_lock:
            if self._streaming is None:
                from .streaming import start_streaming

                address = getattr(self.config, "stream_address", None) or "127.0.0.1:0"
                self._streaming = start_streaming(self.engine, address)
            return self._streaming

    @streaming.setter
    def streaming(self, server) -> None:
        self._streaming = server

    def close(self) -> None:
        """The server calls it once it stopped serving: the streaming server ends."""
        with self._streaming_lock:
            server, self._streaming = self._streaming, None
        if server is not None:
            server.stop()

    def _images(self):
        store = getattr(self._local, "images", None)
        if store is None:
            from ..image.store import ImageStore

            store = self._local.images = ImageStore(self.engine.root)
        return store

    # --- pods -----------------------------------------------------------------------------

    # A pod's own events carry its id as the container's, as containerd sends them for
    # sandboxes, so that kubelet's evented PLEG sees pods start and stop too.

    def RunPodSandbox(self, request, context):
        spec = convert.pod_spec(request.config, request.runtime_handler)
        pod_id = self.pods.run(spec)
        self._pod_event(pod_id, "created")
        self._pod_event(pod_id, "started")
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    def StopPodSandbox(self, request, context):
        pod_id = _require(request.pod_sandbox_id, "pod_sandbox_id")
        try:
            ready = self.pods.get(pod_id)["state"] == "ready"
        except NotFound:
            return pb.StopPodSandboxResponse()
        # the API: containers still running are forcibly terminated (containerd kills
        # them at once too; kubelet has stopped them with their grace period before)
        stopped = self.pods.stop(pod_id, timeout=0)
        if ready and stopped:
            self._pod_event(stopped, "stopped")
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(self, request, context):
        removed = self.pods.remove(_require(request.pod_sandbox_id, "pod_sandbox_id"))
        if removed:
            self._pod_event(removed, "deleted")
        return pb.RemovePodSandboxResponse()

    def _pod_event(self, pod_id: str, kind: str) -> None:
        self.engine.record_event(kind, pod_id, pod_id, sandbox=True)

    def PodSandboxStatus(self, request, context):
        rec = self.pods.get(_require(request.pod_sandbox_id, "pod_sandbox_id"))
        info = {}
        if request.verbose:
            info["info"] = json.dumps(self._pod_info(rec))
        containers = [self._container_status(r) for r in self._pod_containers(rec["id"])]
        return pb.PodSandboxStatusResponse(status=self._pod_status(rec), info=info,
                                           containers_statuses=containers,
                                           timestamp=time.time_ns())

    def ListPodSandbox(self, request, context):
        f = request.filter
        items = []
        for rec in self.pods.list():
            if f.id and not rec["id"].startswith(f.id):
                continue
            if f.HasField("state") and POD_STATES.get(rec["state"]) != f.state.state:
                continue
            if not convert.labels_match(rec["labels"], f.label_selector):
                continue
            items.append(pb.PodSandbox(
                id=rec["id"], metadata=self._pod_metadata(rec),
                state=POD_STATES.get(rec["state"], pb.SANDBOX_NOTREADY),
                created_at=rec["created_ns"], labels=rec["labels"],
                annotations=rec["annotations"],
                runtime_handler=rec["spec"].get("runtime_handler") or ""))
        return pb.ListPodSandboxResponse(items=items)

    @staticmethod
    def _pod_metadata(rec: dict):
        return pb.PodSandboxMetadata(name=rec["name"], uid=rec["uid"],
                                     namespace=rec["namespace"], attempt=rec["attempt"])

    def _pod_status(self, rec: dict):
        spec = rec["spec"]
        network = None
        if spec.get("network") == "pod" and rec.get("ip"):
            network = pb.PodSandboxNetworkStatus(
                ip=rec["ip"], additional_ips=[pb.PodIP(ip=ip) for ip in
                                              rec.get("additional_ips") or []])
        options = pb.NamespaceOption(network=NS_MODES[spec.get("network", "pod")],
                                     pid=NS_MODES[spec.get("pid", "container")],
                                     ipc=NS_MODES[spec.get("ipc", "pod")])
        return pb.PodSandboxStatus(
            id=rec["id"], metadata=self._pod_metadata(rec),
            state=POD_STATES.get(rec["state"], pb.SANDBOX_NOTREADY),
            created_at=rec["created_ns"], network=network,
            linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=options)),
            labels=rec["labels"], annotations=rec["annotations"],
            runtime_handler=spec.get("runtime_handler") or "")

    def _pod_info(self, rec: dict) -> dict:
        """As containerd's verbose sandbox info, where minirun has the same things."""
        try:
            namespaces = self.pods.namespaces(rec["id"]) if rec["state"] == "ready" else {}
        except MiniRunError:
            namespaces = {}
        return {"pid": _holder_pid(self.engine, rec), "netNamespacePath": rec.get("netns"),
                "namespaces": namespaces, "hostname": rec.get("hostname"),
                "cgroupParent": rec.get("cgroup_parent"), "holder": rec.get("holder"),
                "cniNetwork": rec.get("cni_network"), "config": rec["spec"],
                "runtimeHandler": rec["spec"].get("runtime_handler") or ""}

    def _pod_containers(self, pod_id: str) -> list[dict]:
        return [r for r in self.engine.records() if _pod_of(r) == pod_id]

    # --- containers -----------------------------------------------------------------------

    def CreateContainer(self, request, context):
        pod_id = _require(request.pod_sandbox_id, "pod_sandbox_id")
        config = request.config
        if not config.HasField("metadata") or not config.metadata.name:
            raise InvalidArgument("container config has no metadata name")
        if not config.HasField("image") or not config.image.image:
            raise InvalidArgument("container config has no image")
        pod = self.pods.get(pod_id)
        if pod["state"] != "ready":
            raise ContainerStateError(f"pod {pod['id'][:12]} is not ready")
        # kubelet sends the pod's config again, but the pod's record is the truth (a client
        # may send a partial one, as crictl create can, or another pod's)
        spec = pod["spec"]
        sandbox = pb.PodSandboxConfig()
        sandbox.CopyFrom(request.sandbox_config)
        sandbox.metadata.CopyFrom(self._pod_metadata(pod))
        sandbox.log_directory = spec.get("log_directory") or ""
        sandbox.linux.cgroup_parent = spec.get("cgroup_parent") or ""
        sandbox.linux.ClearField("sysctls")
        sandbox.linux.sysctls.update(spec.get("sysctls") or {})
        sandbox.linux.security_context.privileged = bool(spec.get("privileged"))
        image = self._images().get(config.image.image)  # NotFound: the image is not there
        ns_opts = config.linux.security_context.namespace_options
        target = None
        if ns_opts.pid == pb.TARGET:
            target = self._target_pid_ns(pod["id"], ns_opts.target_id)
        ctx = convert.PodContext(pod["id"], self.pods.namespaces(pod["id"]),
                                 self.pods.files_dir(pod["id"]), target)
        opts = convert.run_options(config, sandbox, image.config.get("config") or {}, ctx)
        cid = self.engine.prepare(image.id, opts)
        return pb.CreateContainerResponse(container_id=cid)

    def _target_pid_ns(self, pod_id: str, target_id: str) -> str:
        if not target_id:
            raise InvalidArgument("pid namespace TARGET needs target_id")
        rec = self._container(target_id)
        if _pod_of(rec) != pod_id:
            raise InvalidArgument(f"target container {target_id} is not in pod {pod_id[:12]}")
        if rec["status"] != "running" or not rec["pid"]:
            raise ContainerStateError(f"target container {target_id} is not running")
        return f"/proc/{rec['pid']}/ns/pid"

    def _container(self, cid: str) -> dict:
        """A CRI container's record by id or unique id prefix (NotFound otherwise)."""
        _require(cid, "container_id")
        try:
            rec = self.engine.get(cid)
        except NotFound:
            raise NotFound(f"no such container: {cid}") from None
        if not _pod_of(rec) or not rec["id"].startswith(cid):
            raise NotFound(f"no such container: {cid}")
        return rec

    def StartContainer(self, request, context):
        rec = self._container(request.container_id)
        if rec["status"] != "created":
            raise ContainerStateError(f"container {rec['id'][:12]} is {rec['status']}, not "
                                      "created: it cannot be started")
        pod = self.pods.get(_pod_of(rec))
        if pod["state"] != "ready":
            raise ContainerStateError(f"pod {pod['id'][:12]} is not ready")
        try:
            self.engine.start(rec["id"])
        except MiniRunError as e:
            self._start_failed(rec, e)
            raise
        return pb.StartContainerResponse()

    def _start_failed(self, rec: dict, error: Exception) -> None:
        """As containerd: a container that could not start has exited (128, StartError),
        so kubelet sees it fail and applies the pod's restart policy."""
        engine = self.engine
        if engine.get_status_only(rec["id"]) != "created":
            return
        # the memory limit can kill the init while it sets the container up, before the
        # program runs: that is the limit's doing (OOMKilled, 137), not a start error
        reason = engine.oom_reason(rec["id"]) or START_ERROR_REASON
        code = 137 if reason == "OOMKilled" else START_ERROR_EXIT_CODE
        with engine.db:
            engine.db.execute("BEGIN")
            engine._update(rec["id"], status="exited", exit_code=code, finished=time.time(),
                           reason=reason)
            engine.record_event("stopped", rec["id"], _pod_of(rec), exit_code=code,
                                reason=reason)
        self._start_errors[rec["id"]] = str(error)

    def StopContainer(self, request, context):
        try:
            rec = self._container(request.container_id)
        except NotFound:
            return pb.StopContainerResponse()  # gone: stopped as well as it can be
        if request.timeout < 0:
            raise InvalidArgument(f"timeout {request.timeout}: must not be negative")
        try:
            self.engine.stop(rec["id"], float(request.timeout))
        except MiniRunError:
            # a stop racing another (the pod's, the daemon's removal): what counts is
            # that it is not running any more
            if self.engine.get_status_only(rec["id"]) == "running":
                raise
        return pb.StopContainerResponse()

    def RemoveContainer(self, request, context):
        try:
            rec = self._container(request.container_id)
        except NotFound:
            return pb.RemoveContainerResponse()
        try:
            self.engine.remove(rec["id"], force=True)
        except MiniRunError:
            if self.engine.get_status_only(rec["id"]) is not None:
                raise  # still there: the removal really failed
        return pb.RemoveContainerResponse()

    def ListContainers(self, request, context):
        f = request.filter
        out = []
        for rec in self.engine.records():
            pod_id = _pod_of(rec)
            if not pod_id or convert.parse_container_name(rec["name"]) is None:
                continue
            if f.id and not rec["id"].startswith(f.id):
                continue
            if f.pod_sandbox_id and not pod_id.startswith(f.pod_sandbox_id):
                continue
            state = CONTAINER_STATES.get(rec["status"], pb.CONTAINER_UNKNOWN)
            if f.HasField("state") and state != f.state.state:
                continue
            opts = json.loads(rec["options"])
            if not convert.labels_match(opts.get("labels") or {}, f.label_selector):
                continue
            image, image_ref = self._image_of(rec)
            out.append(pb.Container(
                id=rec["id"], pod_sandbox_id=pod_id, metadata=_metadata(rec), image=image,
                image_ref=image_ref, image_id=rec["image_id"], state=state,
                created_at=_ns(rec["created"]), labels=opts.get("labels") or {},
                annotations=opts.get("annotations") or {}))
        return pb.ListContainersResponse(containers=out)

    def ContainerStatus(self, request, context):
        rec = self._container(request.container_id)
        info = {}
        if request.verbose:
            info["info"] = json.dumps(self._container_info(rec))
        return pb.ContainerStatusResponse(status=self._container_status(rec), info=info)

    def _container_status(self, rec: dict):
        opts = json.loads(rec["options"])
        state = CONTAINER_STATES.get(rec["status"], pb.CONTAINER_UNKNOWN)
        reason = message = ""
        if state == pb.CONTAINER_EXITED:
            reason = rec.get("reason") or ("Completed" if rec["exit_code"] == 0 else "Error")
            if reason == "OOMKilled":
                message = "the container's cgroup ran out of memory"
            elif reason == START_ERROR_REASON:
                message = self._start_errors.get(rec["id"], "the container could not start")
        image, image_ref = self._image_of(rec)
        return pb.ContainerStatus(
            id=rec["id"], metadata=_metadata(rec), state=state,
            created_at=_ns(rec["created"]),
            started_at=_ns(rec["started"]) if state != pb.CONTAINER_CREATED else 0,
            finished_at=_ns(rec["finished"]) if state == pb.CONTAINER_EXITED else 0,
            exit_code=rec["exit_code"] or 0 if state == pb.CONTAINER_EXITED else 0,
            image=image, image_ref=image_ref, image_id=rec["image_id"], reason=reason,
            message=message, labels=opts.get("labels") or {},
            annotations=opts.get("annotations") or {}, mounts=_mounts(opts),
            log_path=opts.get("log_path") or "",
            resources=pb.ContainerResources(linux=_resources(opts)),
            user=self._user_of(rec))

    def _user_of(self, rec: dict):
        """The identity the container's process started with (its config.json's)."""
        user = (self._oci_spec(rec["id"]) or {}).get("process", {}).get("user") or {}
        return pb.ContainerUser(linux=pb.LinuxContainerUser(
            uid=user.get("uid", 0), gid=user.get("gid", 0),
            supplemental_groups=user.get("additionalGids") or []))

    def _oci_spec(self, cid: str) -> dict | None:
        try:
            with open(os.path.join(self.engine.root, "containers", cid, "config.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _image_of(self, rec: dict):
        """(ImageSpec, image_ref) as containerd answers them: the image's first tag (the
        name the container was made with when the image has none), and its first repo
        digest, else its id."""
        name, ref = rec["image"], rec["image_id"]
        try:
            image = self._images().get(rec["image_id"])
        except MiniRunError:
            image = None
        if image is not None:
            from ..image.reference import parse_reference

            tags, digests = [], set()
            for ref_name in image.names:  # as ImageStatus lists them
                parsed = parse_reference(ref_name)
                if parsed.digest:
                    digests.add(f"{parsed.name}@{parsed.digest}")
                else:
                    tags.append(str(parsed))
                if image.manifest_digest:
                    digests.add(f"{parsed.name}@{image.manifest_digest}")
            name = tags[0] if tags else name
            ref = min(digests) if digests else image.id  # ImageStatus: sorted
        return pb.ImageSpec(image=name), ref

    def _container_info(self, rec: dict) -> dict:
        """As containerd's verbose container info: pid, sandbox, the OCI spec."""
        spec = self._oci_spec(rec["id"])
        opts = json.loads(rec["options"])
        return {"sandboxID": _pod_of(rec), "pid": rec["pid"] or 0,
                "removing": False, "snapshotKey": rec["id"], "snapshotter": "overlayfs",
                "runtimeType": "minirun", "privileged": bool(opts.get("privileged")),
                "name": rec["name"], "image": rec["image"], "imageId": rec["image_id"],
                "logPath": opts.get("log_path") or "", "runtimeSpec": spec}

    def UpdateContainerResources(self, request, context):
        rec = self._container(request.container_id)
        res = convert.resources(request.linux)
        res.pop("oom_score_adj", None)  # a process's, not the cgroup's: it stays
        if res:
            self.engine.update_resources(rec["id"], res)
        return pb.UpdateContainerResourcesResponse()

    def ReopenContainerLog(self, request, context):
        rec = self._container(request.container_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['id'][:12]} is not running")
        self.engine.reopen_log(rec["id"])
        return pb.ReopenContainerLogResponse()

    # --- exec -----------------------------------------------------------------------------

    def ExecSync(self, request, context):
        rec = self._container(request.container_id)
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['id'][:12]} is not running")
        timeout = float(request.timeout) if request.timeout > 0 else None
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and (timeout is None or remaining < timeout):
            timeout = max(remaining, 0.0)
        result = exec_sync(self.engine, rec["id"], list(request.cmd), timeout)
        if result is None:
            import grpc

            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          f"command {list(request.cmd)} timed out after {request.timeout}s")
        stdout, stderr, code = result
        stderr = stderr[:MAX_EXEC_SYNC_RESPONSE]
        stdout = stdout[:MAX_EXEC_SYNC_RESPONSE - len(stderr)]
        return pb.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=code)

    # --- events ---------------------------------------------------------------------------

    def GetContainerEvents(self, request, context):
        """Every created/started/stopped/deleted event of a CRI container from now on,
        until the client goes (the engine records them; we poll its table)."""
        engine = self.engine
        seq = _last_event_seq(engine)
        while context.is_active():
            events = engine.events_after(seq)
            for ev in events:
                seq = ev["seq"]
                kind = EVENT_TYPES.get(ev["type"])
                if kind is None or not ev.get("pod"):
                    continue
                yield self._event(ev, kind)
            if not events:
                time.sleep(EVENTS_POLL_SECONDS)

    def _event(self, ev: dict, kind: int):
        pod_status = None
        statuses = []
        try:
            pod = self.pods.get(ev["pod"])
        except (NotFound, InvalidArgument):
            pod = None
        if pod is not None:
            pod_status = self._pod_status(pod)
            statuses = [self._container_status(r) for r in self._pod_containers(pod["id"])]
        return pb.ContainerEventResponse(container_id=ev["container"],
                                         container_event_type=kind,
                                         created_at=ev["time_ns"],
                                         pod_sandbox_status=pod_status,
                                         containers_statuses=statuses)


# --- helpers -------------------------------------------------------------------------------

def _pod_of(rec: dict) -> str:
    try:
        return json.loads(rec["options"]).get("pod") or ""
    except (TypeError, ValueError):
        return ""


def _metadata(rec: dict):
    parsed = convert.parse_container_name(rec["name"]) or (rec["name"], 0)
    return pb.ContainerMetadata(name=parsed[0], attempt=parsed[1])


def _mounts(opts: dict) -> list:
    out = []
    for m in opts.get("mounts") or []:
        if convert.is_pod_shm(m, opts.get("pod")):
            continue  # not one of the config's (containerd's status leaves it out too)
        options = m.get("options") or []
        propagation = next((PROPAGATION_OF[o] for o in options if o in PROPAGATION_OF),
                           pb.PROPAGATION_PRIVATE)
        out.append(pb.Mount(container_path=m.get("destination", ""),
                            host_path=m.get("source", ""), readonly="ro" in options,
                            propagation=propagation))
    return out


def _resources(opts: dict):
    res = pb.LinuxContainerResources(
        cpu_period=opts.get("cpu_period") or 0, cpu_quota=opts.get("cpu_quota") or 0,
        cpu_shares=opts.get("cpu_shares") or 0,
        memory_limit_in_bytes=opts.get("memory_bytes") or 0,
        memory_swap_limit_in_bytes=opts.get("memory_swap") or 0,
        oom_score_adj=opts.get("oom_score_adj") or 0,
        cpuset_cpus=opts.get("cpuset_cpus") or "", cpuset_mems=opts.get("cpuset_mems") or "",
        unified=opts.get("unified") or {})
    for size, limit in (opts.get("hugepage_limits") or {}).items():
        res.hugepage_limits.append(pb.HugepageLimit(page_size=size, limit=limit))
    return res


def _holder_pid(engine, rec: dict) -> int:
    if not rec.get("holder"):
        return 0
    try:
        return engine.get(rec["holder"])["pid"] or 0
    except NotFound:
        return 0


def _last_event_seq(engine) -> int:
    row = engine.db.execute("SELECT MAX(seq) FROM events").fetchone()
    return row[0] or 0


def exec_sync(engine, cid: str, cmd: list[str], timeout: float | None):
    """Run cmd in the running container through `minirun-oci exec` (the container's own
    process settings, as runc exec) with its stdout and stderr on pipes, each kept up to
    MAX_EXEC_SYNC_OUTPUT bytes: (stdout, stderr, exit status), or None when it did not
    finish in `timeout` seconds (it is killed then)."""
    import selectors

    with tempfile.TemporaryDirectory(prefix="execsync-", dir=_exec_dir(engine)) as tmp:
        pid_file = os.path.join(tmp, "pid")
        argv = [sys.executable, "-m", "minirun.oci_cli", "--root", engine.oci_root, "exec",
                "--pid-file", pid_file, cid, *cmd]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True)
        outputs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        order = list(outputs)
        deadline = None if timeout is None else time.monotonic() + timeout
        drained_by = None
        with selectors.DefaultSelector() as sel:
            for fd in outputs:
                sel.register(fd, selectors.EVENT_READ)
            try:
                while sel.get_map():
                    now = time.monotonic()
                    if drained_by is None and proc.poll() is not None:
                        # a child it left in the background may hold the pipes open
                        drained_by = now + EXEC_DRAIN_SECONDS
                    if drained_by is not None and now >= drained_by:
                        break
                    if deadline is not None and now >= deadline and proc.poll() is None:
                        _kill_exec(pid_file, proc)
                        return None
                    for key, _ in sel.select(EVENTS_POLL_SECONDS):
                        data = os.read(key.fd, 65536)
                        if not data:
                            sel.unregister(key.fd)
                            continue
                        buf = outputs[key.fd]
                        room = MAX_EXEC_SYNC_OUTPUT - len(buf)
                        if room > 0:
                            buf += data[:room]
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    proc.wait(left)
                except subprocess.TimeoutExpired:
                    _kill_exec(pid_file, proc)
                    return None
            finally:
                proc.stdout.close()
                proc.stderr.close()
        stdout, stderr = bytes(outputs[order[0]]), bytes(outputs[order[1]])
        if proc.returncode != 0 and not os.path.exists(pid_file):
            # no pid written: the command never ran (missing, not executable); an
            # error, as containerd answers a failed exec start, not an exit status
            why = stderr.decode(errors="replace").strip().splitlines()
            raise MiniRunError(f"exec {cmd[0]} in container {cid[:12]}: "
                               f"{why[-1] if why else 'it did not start'}")
        return stdout, stderr, proc.returncode


def _exec_dir(engine) -> str:
    path = os.path.join(engine.run_root, "cri", "exec")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _kill_exec(pid_file: str, proc: subprocess.Popen) -> None:
    """The exec'd process killed, by the pid minirun-oci writes once it runs (its
    parent's death alone would leave it running in the container), then minirun-oci.
    A deadline that falls while minirun-oci is still setting the process up (a loaded
    host) waits for that pid: killed before writing it, minirun-oci would leave the
    process running, unknown (seen as a `sleep` outliving a 1 s ExecSync timeout)."""
    import signal

    until = time.monotonic() + EXEC_PID_WAIT_SECONDS
    while True:
        try:
            with open(pid_file) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
            break
        except (OSError, ValueError):
            pass  # not written yet (or written in part)
        if proc.poll() is not None or time.monotonic() > until:
            break  # it could not start, or never will: nothing of it runs
        time.sleep(0.01)
    try:
        # minirun-oci, its parent, reaps it and exits: killed first, it would leave a
        # zombie for the container's pid 1 to reap, still seen by a `pgrep` right after
        proc.wait(EXEC_PID_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
