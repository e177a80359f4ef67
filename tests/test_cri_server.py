"""The CRI server: `minirun cri` on a unix socket, spoken to over real gRPC.

Two layers: `minirun cri` as a subprocess on temporary roots, socket and CNI conf dir
(Version under v1 and v1alpha2, Status, RuntimeConfig, the socket's mode, a second
server refused, stop and restart), and CriServer in this process with small impls (the
error -> status mapping, UNIMPLEMENTED, the log line of an unexpected exception).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from typing import ClassVar

import grpc
import pytest
from enginetest import EngineEnv
from ocitest import REPO

from minirun.cri.api import api_pb2 as pb
from minirun.cri.api import api_pb2_grpc as pb_grpc
from minirun.cri.server import CriServer
from minirun.errors import (
    AlreadyExists,
    ContainerStateError,
    InvalidArgument,
    MiniRunError,
    NotFound,
)

CONFLIST = {"cniVersion": "1.0.0", "name": "crit", "plugins": [
    {"type": "bridge", "bridge": "mrcrit0", "ipam": {"type": "host-local"}}]}


def channel(path: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{path}")


def wait_serving(path: str, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"minirun cri exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with channel(path) as ch:
                pb_grpc.RuntimeServiceStub(ch).Version(pb.VersionRequest(), timeout=2)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class CriEnv(EngineEnv):
    """A private engine plus `minirun cri` processes on a socket in its top dir."""

    def __init__(self, top: str) -> None:
        super().__init__(top)
        self.socket = os.path.join(top, "cri.sock")
        self.cni_dir = os.path.join(top, "cni")
        os.makedirs(self.cni_dir)
        self.env["MINIRUN_CNI_CONF_DIR"] = self.cni_dir
        # Status may check that the conflist's plugins exist (minirun.pods.cni_status):
        # stand-ins, whatever this host has installed; Status never runs them
        self.plugin_dir = os.path.join(top, "cni-bin")
        os.makedirs(self.plugin_dir)
        for name in ("bridge", "host-local"):
            with open(os.path.join(self.plugin_dir, name), "w") as f:
                f.write("#!/bin/sh\nexit 1\n")
            os.chmod(os.path.join(self.plugin_dir, name), 0o755)
        self.env["MINIRUN_CNI_PLUGIN_DIR"] = self.plugin_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, *extra: str, umask: int = 0o022, env: dict | None = None,
              wait: bool = True) -> subprocess.Popen:
        args = [sys.executable, "-m", "minirun.cli", "cri", "--root", self.root,
                "--run-root", self.run_root, "--no-default-cni", *extra]
        if "--cri-socket" not in extra and not (env or {}).get("MINIRUN_CRI_SOCKET"):
            args += ["--cri-socket", self.socket]
        proc = subprocess.Popen(args, env=dict(self.env, **(env or {})), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                umask=umask)  # no preexec_fn: this process has grpc threads
        self.procs.append(proc)
        if wait:
            wait_serving(self.socket, proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("minirun cri did not stop within 20 s of the signal")

    def teardown(self) -> list[str]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
        return super().teardown()


@pytest.fixture(scope="module")
def cri(tmp_path_factory):
    env = CriEnv(str(tmp_path_factory.mktemp("cri")))
    try:
        env.server = env.start()
        yield env
    finally:
        left = env.teardown()
        assert not left, f"mounts left under the roots: {left}"


@pytest.fixture
def runtime(cri):
    with channel(cri.socket) as ch:
        yield pb_grpc.RuntimeServiceStub(ch)


def raw_call(path: str, method: str, request, response_class):
    """A call by its full method name, as a v1alpha2 kubelet makes it."""
    with channel(path) as ch:
        call = ch.unary_unary(method, request_serializer=type(request).SerializeToString,
                              response_deserializer=response_class.FromString)
        return call(request, timeout=10)


def test_version_v1_and_v1alpha2(cri, runtime):
    import minirun

    v1 = runtime.Version(pb.VersionRequest(version="v1"), timeout=10)
    assert (v1.runtime_name, v1.runtime_version, v1.runtime_api_version) == (
        "minirun", minirun.__version__, "v1")
    assert v1.version == "0.1.0"
    old = raw_call(cri.socket, "/runtime.v1alpha2.RuntimeService/Version",
                   pb.VersionRequest(version="v1alpha2"), pb.VersionResponse)
    assert (old.runtime_name, old.runtime_api_version) == ("minirun", "v1alpha2")


def conditions(status: pb.StatusResponse) -> dict:
    return {c.type: c for c in status.status.conditions}


def test_status_network_ready_follows_the_cni_config(cri, runtime):
    cond = conditions(runtime.Status(pb.StatusRequest(), timeout=10))
    assert cond["RuntimeReady"].status is True
    net = cond["NetworkReady"]
    assert net.status is False
    assert net.reason == "NetworkPluginNotReady"
    assert cri.cni_dir in net.message
    # a conflist that appears later (a cluster's CNI installing itself) is seen at once
    path = os.path.join(cri.cni_dir, "10-crit.conflist")
    with open(path, "w") as f:
        json.dump(CONFLIST, f)
    try:
        cond = conditions(runtime.Status(pb.StatusRequest(), timeout=10))
        assert cond["NetworkReady"].status is True
        assert cond["NetworkReady"].reason == ""
        # also through the v1alpha2 name
        old = raw_call(cri.socket, "/runtime.v1alpha2.RuntimeService/Status",
                       pb.StatusRequest(), pb.StatusResponse)
        assert conditions(old)["NetworkReady"].status is True
    finally:
        os.unlink(path)
    # a file that is not a network config does not count
    with open(os.path.join(cri.cni_dir, "README.conf"), "w") as f:
        f.write("not json")
    try:
        assert not conditions(runtime.Status(pb.StatusRequest(), timeout=10))[
            "NetworkReady"].status
    finally:
        os.unlink(os.path.join(cri.cni_dir, "README.conf"))


def test_status_verbose_has_a_json_config(cri, runtime):
    assert dict(runtime.Status(pb.StatusRequest(), timeout=10).info) == {}
    info = runtime.Status(pb.StatusRequest(verbose=True), timeout=10).info
    config = json.loads(info["config"])
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["root"] == cri.root


def test_runtime_config_is_cgroupfs_and_pod_cidr_is_recorded(cri, runtime):
    resp = runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=10)
    assert resp.linux.cgroup_driver == pb.CGROUPFS
    runtime.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(
        network_config=pb.NetworkConfig(pod_cidr="10.244.1.0/24"))), timeout=10)
    config = json.loads(runtime.Status(pb.StatusRequest(verbose=True), timeout=10)
                        .info["config"])
    assert config["podCIDR"] == "10.244.1.0/24"


def test_an_rpc_minirun_lacks_is_unimplemented(cri, runtime):
    # CheckpointContainer is not implemented (CRIU): a clear UNIMPLEMENTED, never success
    with pytest.raises(grpc.RpcError) as e:
        runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id="x"),
                                    timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert e.value.details() == "minirun does not implement RPC CheckpointContainer"
    # a method no service has is grpc's own UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as e:
        raw_call(cri.socket, "/runtime.v1.RuntimeService/NoSuchRpc", pb.VersionRequest(),
                 pb.VersionResponse)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_socket_is_0600_even_under_umask_0(cri):
    assert stat.S_IMODE(os.stat(cri.socket).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(cri.socket).st_mode)
    # a server started with umask 0 still makes it 0600
    path = os.path.join(cri.top, "umask0.sock")
    proc = cri.start("--cri-socket", path, umask=0, wait=False)
    wait_serving(path, proc)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        assert cri.stop(proc) == 0
    assert not os.path.exists(path)


def test_a_second_server_on_the_socket_refuses(cri, runtime):
    proc = cri.start(wait=False)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [f"minirun: error: another minirun cri serves {cri.socket}"]
    # the first one still serves
    assert runtime.Version(pb.VersionRequest(), timeout=10).runtime_name == "minirun"


def test_a_path_that_is_not_a_socket_is_refused_and_left(cri):
    path = os.path.join(cri.top, "plain-file")
    with open(path, "w") as f:
        f.write("keep me")
    proc = cri.start("--cri-socket", path, wait=False)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [f"minirun: error: {path} exists and is not a socket"]
    with open(path) as f:
        assert f.read() == "keep me"


def test_stop_and_restart_keeps_serving(cri):
    path = os.path.join(cri.top, "restart.sock")
    proc = cri.start(env={"MINIRUN_CRI_SOCKET": f"unix://{path}"}, wait=False)
    wait_serving(path, proc)
    assert cri.stop(proc) == 0  # SIGTERM: a clean stop, the socket removed
    assert not os.path.exists(path)
    proc = cri.start("--cri-socket", path, wait=False)
    wait_serving(path, proc)
    # a killed server leaves its socket file: the next one removes it and serves
    assert cri.stop(proc, signal.SIGKILL) == -signal.SIGKILL
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    proc = cri.start("--cri-socket", path, wait=False)
    wait_serving(path, proc)
    with channel(path) as ch:
        assert pb_grpc.RuntimeServiceStub(ch).Version(
            pb.VersionRequest(), timeout=10).runtime_api_version == "v1"
    assert cri.stop(proc, signal.SIGINT) == 0
    assert not os.path.exists(path)


@pytest.mark.parametrize("argv", [["minirun.cli", "run", "--help"],
                                  ["minirun.client", "run", "--help"],
                                  ["minirun.oci_cli", "--help"]])
def test_the_run_path_does_not_import_grpc(argv):
    """Nor OpenTelemetry (run --trace's exporter), even with an endpoint configured: it
    is imported only when tracing is on (tests/test_trace.py); nor prometheus_client,
    even with metrics asked for (only the daemon serving them imports it)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
                                   MINIRUN_METRICS="127.0.0.1:9"))
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "click" in imported or "minirun" in imported  # the witness works
    assert not [m for m in imported if m.split(".")[0] in
                ("grpc", "google", "opentelemetry", "prometheus_client")]


# --- CriServer in this process: the wrapper ------------------------------------------------


class Failing:
    """An impl whose rpcs raise what the request's container_id names."""

    ERRORS: ClassVar[dict[str, Exception]] = {"notfound": NotFound("container x not found"),
              "invalid": InvalidArgument("bad id"),
              "exists": AlreadyExists("name taken"),
              "state": ContainerStateError("container is not running"),
              "other": MiniRunError("something minirun knows"),
              "bug": ZeroDivisionError("division by zero")}

    def StartContainer(self, request, context):
        raise self.ERRORS[request.container_id]

    def ExecSync(self, request, context):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "timed out")

    def GetContainerEvents(self, request, context):
        yield pb.ContainerEventResponse(container_id="a")
        raise NotFound("gone")

    def Version(self, request, context):
        return pb.VersionResponse(runtime_api_version=context.cri_api)

    closed = 0

    def close(self):
        self.closed += 1


@pytest.fixture
def inproc(tmp_path):
    server = CriServer(str(tmp_path / "s.sock"), runtime=Failing())
    server.start()
    ch = channel(server.path)
    try:
        yield server, ch
    finally:
        ch.close()
        server.stop(0)
    assert not os.path.exists(server.path)
    assert server.impls["RuntimeService"].closed == 1  # the impl's close() at the end


def test_a_child_of_a_serving_process_is_single_threaded(inproc):
    """With grpc's fork support on, its threads start again in every forked child, and
    the kernel then refuses the child a new user namespace (EINVAL): minirun.cri turns
    it off before grpc's first import."""
    _, ch = inproc
    pb_grpc.RuntimeServiceStub(ch).Version(pb.VersionRequest(), timeout=10)
    assert os.environ.get("GRPC_ENABLE_FORK_SUPPORT") == "0"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, str(len(os.listdir("/proc/self/task"))).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        assert f.read() == "1"


@pytest.mark.parametrize("cid,code", [
    ("notfound", grpc.StatusCode.NOT_FOUND), ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
    ("exists", grpc.StatusCode.ALREADY_EXISTS),
    ("state", grpc.StatusCode.FAILED_PRECONDITION), ("other", grpc.StatusCode.UNKNOWN)])
def test_errors_map_to_status_codes(inproc, cid, code):
    _, ch = inproc
    for stub in (pb_grpc.RuntimeServiceStub(ch), None):
        with pytest.raises(grpc.RpcError) as e:
            if stub is not None:
                stub.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=10)
            else:
                ch.unary_unary("/runtime.v1alpha2.RuntimeService/StartContainer",
                               request_serializer=pb.StartContainerRequest.SerializeToString,
                               response_deserializer=pb.StartContainerResponse.FromString)(
                    pb.StartContainerRequest(container_id=cid), timeout=10)
        assert e.value.code() == code
        assert e.value.details() == str(Failing.ERRORS[cid])


def test_an_unexpected_exception_is_internal_and_logged(inproc, capfd):
    _, ch = inproc
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.RuntimeServiceStub(ch).StartContainer(
            pb.StartContainerRequest(container_id="bug"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "division by zero" in e.value.details()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()
             if line.startswith("{")]
    [rec] = [r for r in lines if r.get("error.type") == "ZeroDivisionError"]
    assert rec["log.level"] == "error" and "StartContainer" in rec["message"]
    assert "ZeroDivisionError" in rec["error.stack_trace"]


def test_an_impl_abort_and_stream_errors_keep_their_status(inproc):
    _, ch = inproc
    stub = pb_grpc.RuntimeServiceStub(ch)
    with pytest.raises(grpc.RpcError) as e:
        stub.ExecSync(pb.ExecSyncRequest(container_id="a"), timeout=10)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                   "timed out")
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for ev in stub.GetContainerEvents(pb.GetEventsRequest(), timeout=10):
            got.append(ev.container_id)
    assert got == ["a"]
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "gone")


def test_missing_rpcs_and_services_are_unimplemented(inproc):
    _, ch = inproc
    stub = pb_grpc.RuntimeServiceStub(ch)
    assert stub.Version(pb.VersionRequest(), timeout=10).runtime_api_version == "v1"
    with pytest.raises(grpc.RpcError) as e:
        stub.RunPodSandbox(pb.RunPodSandboxRequest(), timeout=10)
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.UNIMPLEMENTED, "minirun does not implement RPC RunPodSandbox")
    with pytest.raises(grpc.RpcError) as e:
        list(stub.StreamContainers(pb.StreamContainersRequest(), timeout=10))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.ImageServiceStub(ch).ListImages(pb.ListImagesRequest(), timeout=10)
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.UNIMPLEMENTED, "minirun does not implement RPC ListImages")


def test_every_rpc_of_the_proto_is_served_under_both_packages(inproc):
    _, ch = inproc
    for package in ("runtime.v1", "runtime.v1alpha2"):
        for service in pb.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                req = getattr(pb, m.input_type.name)()
                make = ch.unary_stream if m.server_streaming else ch.unary_unary
                call = make(f"/{package}.{service.name}/{m.name}",
                            request_serializer=type(req).SerializeToString,
                            response_deserializer=getattr(pb, m.output_type.name).FromString)
                try:
                    result = call(req, timeout=10)
                    if m.server_streaming:
                        list(result)
                except grpc.RpcError as e:
                    # ours (the message names the rpc) or the impl's own status
                    assert e.code() != grpc.StatusCode.UNIMPLEMENTED or \
                        e.details() == f"minirun does not implement RPC {m.name}", \
                        (package, m.name, e.details())


# --- minirun cri's pieces ----------------------------------------------------------------


def test_the_services_fall_back_only_when_their_module_is_missing(monkeypatch, tmp_path):
    from minirun import cli_cri

    fallback = object()
    assert cli_cri.load_service("no_such_module", "X", fallback) is fallback
    # a module that exists but fails to import is an error, not a silent fallback
    pkg = tmp_path / "minirun_fake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "broken.py").write_text("import minirun_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(cli_cri.importlib, "import_module",
                        lambda name: real(name.replace("minirun.cri.", "minirun_fake.")))
    with pytest.raises(ModuleNotFoundError):
        cli_cri.load_service("broken", "X", fallback)
    # with neither module there: Version and friends, and no image rpcs
    monkeypatch.setattr(cli_cri, "load_service", lambda module, name, fallback: fallback)
    runtime, image = cli_cri.build_services(
        engine=None, config=cli_cri.CriConfig(socket="/x"))
    assert hasattr(runtime, "Version") and hasattr(runtime, "Status")
    assert not hasattr(image, "PullImage")


def test_the_default_conflist_is_written_only_into_an_empty_conf_dir(monkeypatch, tmp_path):
    from minirun import cli_cri

    conf_dir = tmp_path / "net.d"
    monkeypatch.setenv("MINIRUN_CNI_CONF_DIR", str(conf_dir))
    path = cli_cri.write_default_cni()
    assert path == str(conf_dir / "99-minirun-pods.conflist")
    with open(path) as f:
        written = json.load(f)
    assert written["name"] == "minirun-pods"
    assert [p["type"] for p in written["plugins"]] == ["bridge", "portmap"]
    assert os.listdir(conf_dir) == ["99-minirun-pods.conflist"]
    # a config there (ours, or a cluster's CNI) is left alone
    os.unlink(path)
    (conf_dir / "05-cluster.conflist").write_text(json.dumps(dict(CONFLIST, name="cluster")))
    assert cli_cri.write_default_cni() is None
    assert os.listdir(conf_dir) == ["05-cluster.conflist"]
