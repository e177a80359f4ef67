"""`minirun run --trace` and MINIRUN_TRACE=1 (minirun/monitor/trace.py): the waterfall of
the start path on stderr, nothing on stdout, nothing when off, and the same spans over
OTLP/HTTP to a real receiver that decodes them with opentelemetry-proto."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from enginetest import engine  # noqa: F401
from ocitest import base_config, needs_root, oci, rootfs  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

LINE = re.compile(r"^(?P<indent> *)(?P<name>\S(?:.*\S)?) +(?P<ms>\d+\.\d\d) ms(?: \|[ #]+)?$")
# the steps in the order they happen; seccomp ones only where a profile applies
RUN_STEPS = ["minirun run", "prepare", "image resolve", "snapshot", "network", "netns", "veth",
             "config", "start", "create", "config load", "seccomp compile", "cgroup", "fork",
             "cgroup join", "namespaces", "fork init", "mounts", "pivot_root", "process",
             "seccomp", "execve"]
OCI_RUN_STEPS = ["minirun-oci run", "import runtime", "create", "config load", "cgroup", "fork",
                 "cgroup join", "namespaces", "fork init", "mounts", "pivot_root", "process",
                 "execve"]
SECCOMP_STEPS = {"seccomp compile", "seccomp"}


def client(engine, *args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minirun.client", *args],
                          env=dict(engine.env, **(env or {})), capture_output=True, text=True,
                          timeout=120, check=False, **kw)


def parse_waterfall(text: str) -> list[tuple[int, str, float]]:
    """(depth, name, ms) of each waterfall line; every line must be one."""
    rows = []
    for line in text.splitlines():
        m = LINE.match(line)
        assert m, f"not a waterfall line: {line!r}\n{text}"
        rows.append((len(m["indent"]) // 2, m["name"], float(m["ms"])))
    return rows


def check_durations(rows: list[tuple[int, str, float]]) -> None:
    """Every step took time, and the children of each span add up within it (they run one
    after the other); the lines are rounded to 0.01 ms."""
    assert all(ms > 0 for _, _, ms in rows), rows
    for i, (depth, name, ms) in enumerate(rows):
        children = []
        for d, _, child_ms in rows[i + 1:]:
            if d <= depth:
                break
            if d == depth + 1:
                children.append(child_ms)
        assert sum(children) <= ms + 0.01 * (len(children) + 1), (name, ms, children, rows)


def test_run_trace_waterfall(engine):
    proc = client(engine, "run", "--rm", "--trace", "busybox", "sh", "-c",
                  "echo out; echo err >&2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "out\n"  # the container's stdout alone
    # the container's stderr first, the waterfall when the run ends
    assert proc.stderr.startswith("err\n")
    rows = parse_waterfall(proc.stderr[len("err\n"):])
    names = [name for _, name, _ in rows]
    has_seccomp = "seccomp" in names
    assert names == [n for n in RUN_STEPS if has_seccomp or n not in SECCOMP_STEPS], names
    depth = {name: d for d, name, _ in rows}
    assert (depth["minirun run"], depth["prepare"], depth["netns"], depth["create"],
            depth["mounts"], depth["execve"]) == (0, 1, 3, 2, 3, 2)
    check_durations(rows)


def test_minirun_trace_env_on_a_foreground_run_with_network_none(engine):
    proc = client(engine, "run", "--rm", "--network", "none", "busybox", "true",
                  env={"MINIRUN_TRACE": "1"})
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    names = [name for _, name, _ in parse_waterfall(proc.stderr)]
    # --network none: a netns with lo only, no veth
    assert names[names.index("network"):names.index("config")] == ["network", "netns"]
    check_durations(parse_waterfall(proc.stderr))


def test_tracing_off_leaves_stderr_alone(engine):
    for env in ({}, {"MINIRUN_TRACE": "0"}):
        proc = client(engine, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2",
                      env=env)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")


@pytest.mark.parametrize("value", ["true", "YES", "on"])
def test_minirun_trace_takes_the_usual_spellings_of_on(engine, value):
    proc = client(engine, "run", "--rm", "--network", "none", "busybox", "true",
                  env={"MINIRUN_TRACE": value})
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert [name for _, name, _ in parse_waterfall(proc.stderr)][:2] == ["minirun run",
                                                                         "prepare"]


@pytest.mark.parametrize("module", ["minirun.client", "minirun.cli"])
def test_an_odd_minirun_trace_value_is_one_line_and_tracing_stays_off(engine, module):
    proc = subprocess.run([sys.executable, "-m", module, "run", "--rm", "busybox", "sh", "-c",
                           "echo out"], env=dict(engine.env, MINIRUN_TRACE="2"),
                          capture_output=True, text=True, timeout=120, check=False)
    assert (proc.returncode, proc.stdout) == (0, "out\n")
    assert proc.stderr == ("minirun: MINIRUN_TRACE='2' is not 1 or 0 (true/false, yes/no, "
                           "on/off): tracing stays off\n")


def test_run_detached_trace(engine):
    """run -d goes through the click CLI and the daemon's start op: the same steps."""
    proc = engine("run", "-d", "--trace", "--name", "traced-d", "busybox", "true")
    try:
        assert proc.returncode == 0, proc.stderr
        assert re.fullmatch(r"[0-9a-f]{64}\n", proc.stdout)
        rows = parse_waterfall(proc.stderr)
        names = [name for _, name, _ in rows]
        assert names[0] == "minirun run"
        for step in ("image resolve", "snapshot", "veth", "cgroup", "mounts", "execve"):
            assert step in names
        check_durations(rows)
    finally:
        engine("rm", "-f", "traced-d")


def test_oci_run_create_start_with_minirun_trace(oci, rootfs):
    env = dict(os.environ, MINIRUN_TRACE="1")
    proc = oci.run(base_config(["echo", "hello"]), rootfs, env=env)
    assert (proc.returncode, proc.stdout) == (0, "hello\n"), proc.stderr
    rows = parse_waterfall(proc.stderr)
    assert [name for _, name, _ in rows] == OCI_RUN_STEPS
    check_durations(rows)

    cid = oci.new_id()
    bundle = oci.bundle(base_config(["true"]), rootfs)
    created = oci("create", "--bundle", bundle, cid, env=env)
    assert created.returncode == 0, created.stderr
    names = [name for _, name, _ in parse_waterfall(created.stderr)]
    assert names == ["minirun-oci create"] + OCI_RUN_STEPS[1:-1]
    started = oci("start", cid, env=env)
    assert started.returncode == 0, started.stderr
    assert [name for _, name, _ in parse_waterfall(started.stderr)] == \
        ["minirun-oci start", "execve"]
    # without it, as before: nothing on stderr
    assert oci("delete", cid).stderr == ""


def test_a_pull_on_the_way_is_a_step(engine, tmp_path):
    """A run of an image not here yet: the pull is the client's step before the prepare."""
    from registry import Layout, Registry, skopeo_copy

    tar = os.path.join(engine.top, "busybox.tar")  # what the engine fixture imported
    with open(tar, "rb") as f:
        blob = gzip.compress(f.read(), mtime=0)
    layout = Layout(str(tmp_path / "layout"))
    layout.tag_image("busybox", layout.image(
        [], layer_blobs=[(blob, "application/vnd.oci.image.layer.v1.tar+gzip")]))
    reg = Registry(str(tmp_path), str(tmp_path / "storage")).start()
    try:
        skopeo_copy(f"oci:{layout.path}:busybox", f"docker://{reg.host}/traced:1",
                    "--preserve-digests")
        proc = client(engine, "run", "--rm", "--trace", "--network", "none",
                      f"{reg.host}/traced:1", "true")
    finally:
        reg.stop()
        engine("rmi", f"{reg.host}/traced:1")
    assert proc.returncode == 0, proc.stderr
    waterfall = proc.stderr[proc.stderr.index("minirun run "):]
    rows = parse_waterfall(waterfall)
    assert [(d, n) for d, n, _ in rows[:3]] == [(0, "minirun run"), (1, "pull"),
                                                 (1, "prepare")]
    check_durations(rows)


def test_the_run_path_does_not_import_opentelemetry(engine):
    """Traced, without an endpoint: the waterfall, and no OpenTelemetry import."""
    proc = client(engine, "run", "--rm", "--trace", "--network", "none", "busybox", "true",
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "minirun.monitor.trace" in imported  # the witness works
    assert not [m for m in imported if m.startswith("opentelemetry")]


# --- OTLP ------------------------------------------------------------------------------------

class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint on 127.0.0.1: each POST's ExportTraceServiceRequest,
    decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        self.requests: list = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append((self.path, self.headers["Content-Type"], request))
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _value(any_value):
    return getattr(any_value, any_value.WhichOneof("value"))


def test_otlp_export_to_a_real_receiver(engine, receiver):
    before = time.time_ns()
    proc = client(engine, "run", "--trace", "--name", "traced-otlp", "busybox", "true",
                  env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    after = time.time_ns()
    try:
        assert proc.returncode == 0, proc.stderr
        cid = json.loads(engine("inspect", "traced-otlp", check=True).stdout)[0]["Id"]
    finally:
        engine("rm", "-f", "traced-otlp")
    rows = parse_waterfall(proc.stderr)  # the waterfall as well, and no warning
    assert len(receiver.requests) == 1
    path, content_type, request = receiver.requests[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    [resource_spans] = request.resource_spans
    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "minirun"
    got = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert sorted(s.name for s in got) == sorted(name for _, name, _ in rows)
    assert len({s.trace_id for s in got}) == 1
    by_id = {s.span_id: s for s in got}
    by_name = {s.name: s for s in got}
    # the parent links are the waterfall's indentation
    stack = []
    for depth, name, _ in rows:
        del stack[depth:]
        span = by_name[name]
        if stack:
            assert by_id[span.parent_span_id].name == stack[-1], name
        else:
            assert span.parent_span_id == b"", name
        stack.append(name)
    # the recorded times: on the wall clock, each child within its parent
    root = by_name["minirun run"]
    assert before <= root.start_time_unix_nano <= root.end_time_unix_nano <= after
    for s in got:
        assert s.start_time_unix_nano < s.end_time_unix_nano, s.name
        if s.parent_span_id:
            parent = by_id[s.parent_span_id]
            assert parent.start_time_unix_nano <= s.start_time_unix_nano, s.name
            assert s.end_time_unix_nano <= parent.end_time_unix_nano, s.name
    attrs = {a.key: _value(a.value) for a in root.attributes}
    assert attrs == {"container.id": cid, "container.image.name": "busybox"}
    assert {a.key: _value(a.value) for a in by_name["create"].attributes} == \
        {"container.id": cid}


def test_otlp_endpoint_alone_does_not_turn_tracing_on(engine, receiver):
    proc = client(engine, "run", "--rm", "busybox", "true",
                  env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert receiver.requests == []


def test_otlp_grpc_is_refused_by_name(engine, receiver):
    proc = client(engine, "run", "--rm", "--trace", "busybox", "true",
                  env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                       "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.splitlines()[-1]
    assert warning == ("minirun: trace: OTLP protocol 'grpc' is not supported, only "
                       "http/protobuf: spans not sent")
    parse_waterfall("\n".join(proc.stderr.splitlines()[:-1]))
    assert receiver.requests == []


def test_otlp_without_the_extra_is_one_warning(engine, receiver):
    """The SDK not installed (hidden from this interpreter): the waterfall, one line
    that says what to install, and the run's own status."""
    hide = ("import sys; sys.modules['opentelemetry'] = None; "
            "from minirun.client import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", hide, "run", "--rm", "--trace", "busybox",
                           "sh", "-c", "exit 3"],
                          env=dict(engine.env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1] == ("minirun: trace: OTEL_EXPORTER_OTLP_ENDPOINT is set but the "
                         "OpenTelemetry SDK is missing (opentelemetry): "
                         "pip install 'minirun[trace]'")
    parse_waterfall("\n".join(lines[:-1]))
    assert receiver.requests == []


def test_otlp_unreachable_endpoint_is_one_warning(engine):
    """Nothing listens there: one line, and the run's status is the container's."""
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = client(engine, "run", "--rm", "--trace", "busybox", "true",
                      env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                           "OTEL_EXPORTER_OTLP_TIMEOUT": "2"})
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"minirun: trace: sending \d+ spans to http://127\.0\.0\.1:{port} failed",
                        proc.stderr.splitlines()[-1]), proc.stderr
