"""The streaming server with the real backend (minirun/cri/stream_engine.py): exec,
attach and port-forward on busybox containers under the engine and its daemon, driven
by the SPDY/3.1 and WebSocket test clients as kubectl would."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import uuid

import pytest
from enginetest import engine  # noqa: F401
from ocitest import REPO, needs_root, wait_for
from spdy_client import SpdyConnection, exec_v4
from ws_client import WsClient, exec_ws

from minirun.cri.streaming import AttachRequest, ExecRequest, PortForwardRequest, start_streaming
from minirun.engine import Engine

SUCCESS = b'{"metadata":{},"status":"Success"}'
BUSYBOX = os.path.join(REPO, "rootfs", "out", "rootfs", "bin", "busybox")

pytestmark = [needs_root, pytest.mark.root]


@pytest.fixture(scope="module")
def netns():
    """A network namespace of our own with lo up and a busybox nc server on port 8080
    (it greets each connection, then echoes it upper-cased); removed at the end."""
    name = f"minirun-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, BUSYBOX, "nc", "-ll", "-p", "8080", "-e", BUSYBOX,
             "sh", "-c", f"echo hello from pod; exec {BUSYBOX} tr a-z A-Z"])
        time.sleep(0.3)
        yield f"/run/netns/{name}"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def stream(engine, netns):  # noqa: F811
    server = start_streaming(Engine(engine.root, engine.run_root), "127.0.0.1:0",
                             pod_netns=lambda pod: netns)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def box(engine):  # noqa: F811
    """A running busybox container: its id."""
    engine("run", "-d", "--name", "streamed", "busybox", "sleep", "1000", check=True)
    yield Engine(engine.root, engine.run_root).get("streamed")["id"]
    engine("rm", "-f", "streamed")


def test_exec_echo_success(stream, box):
    url = stream.get_exec(ExecRequest(box, ["echo", "hello", "from", "exec"], stdout=True,
                                      stderr=True))
    out, err, status = exec_v4(url)
    assert (out, err, status) == (b"hello from exec\n", b"", SUCCESS)


def test_exec_nonzero_exit_and_stderr(stream, box):
    url = stream.get_exec(ExecRequest(box, ["sh", "-c", "echo bad >&2; exit 7"],
                                      stdout=True, stderr=True))
    out, err, status = exec_v4(url)
    assert (out, err) == (b"", b"bad\n")
    st = json.loads(status)
    assert st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]


def test_exec_stdin_cat(stream, box):
    data = b"".join(b"line %d\n" % i for i in range(20000))  # ~200 KB
    url = stream.get_exec(ExecRequest(box, ["cat"], stdin=True, stdout=True))
    out, _, status = exec_v4(url, stdin=data, stderr=False)
    assert out == data and status == SUCCESS


def test_exec_runs_inside_the_container(stream, box, engine):  # noqa: F811
    url = stream.get_exec(ExecRequest(box, ["hostname"], stdout=True))
    out, _, _ = exec_v4(url, stderr=False)
    assert out.strip().decode() == engine("exec", "streamed", "hostname").stdout.strip()
    assert out.strip().decode() != os.uname().nodename


def test_exec_tty_size_from_resize(stream, box):
    url = stream.get_exec(ExecRequest(box, ["stty", "size"], tty=True, stdout=True))
    out, _, status = exec_v4(url, stderr=False, tty=True, resize=(123, 45))
    assert out.replace(b"\r", b"").strip() == b"45 123" and status == SUCCESS


def test_exec_tty_resize_later_reaches_the_process(stream, box):
    """The second size: on the pty while the shell runs (it reads stty after a wait)."""
    url = stream.get_exec(ExecRequest(
        box, ["sh", "-c", "stty size; sleep 1; stty size"], tty=True, stdout=True))
    conn = SpdyConnection(url)
    try:
        error = conn.open_stream({"streamtype": "error"})
        out = conn.open_stream({"streamtype": "stdout"})
        resize = conn.open_stream({"streamtype": "resize"})
        resize.write(b'{"Width":80,"Height":24}\n')
        out.wait_for(b"24 80")
        resize.write(b'{"Width":200,"Height":60}\n')
        assert error.read_all() == SUCCESS
        assert out.read_all().replace(b"\r", b"").split(b"\n")[:2] == [b"24 80", b"60 200"]
    finally:
        conn.close()


def test_exec_over_websocket(stream, box):
    url = stream.get_exec(ExecRequest(box, ["sh", "-c", "cat; exit 3"], stdin=True,
                                      stdout=True, stderr=True))
    out, _err, status, c = exec_ws(url, stdin=b"through v5\n")
    assert c.protocol == "v5.channel.k8s.io"
    assert out == b"through v5\n"
    assert json.loads(status)["details"]["causes"][0]["message"] == "3"


def test_exec_of_a_missing_program_is_an_error_status(stream, box):
    url = stream.get_exec(ExecRequest(box, ["/no/such/program"], stdout=True, stderr=True))
    _, _, status = exec_v4(url)
    st = json.loads(status)
    assert st["reason"] == "InternalError"
    assert "exec failed" in st["message"] and "/no/such/program" in st["message"]
    url = stream.get_exec(ExecRequest(box, ["sh", "-c", "exit 255"], stdout=True))
    st = json.loads(exec_v4(url, stderr=False)[2])  # its own 255 is an exit code
    assert st["details"]["causes"][0]["message"] == "255"


def test_exec_in_a_missing_container_is_an_error_status(stream):
    url = stream.get_exec(ExecRequest("nosuchcontainer", ["true"], stdout=True))
    _, _, status = exec_v4(url, stderr=False)
    st = json.loads(status)
    assert st["status"] == "Failure" and "nosuchcontainer" in st["message"]


def test_attach_to_running_output(stream, engine):  # noqa: F811
    engine("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
           "i=0; while [ ! -e /tmp/stop ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; "
           "echo bye >&2", check=True)
    try:
        cid = Engine(engine.root, engine.run_root).get("ticker")["id"]
        url = stream.get_attach(AttachRequest(cid, stdout=True, stderr=True))
        conn = SpdyConnection(url)
        try:
            error = conn.open_stream({"streamtype": "error"})
            out = conn.open_stream({"streamtype": "stdout"})
            err = conn.open_stream({"streamtype": "stderr"})
            out.wait_for(b"tick")
            engine("exec", "ticker", "touch", "/tmp/stop", check=True)
            assert error.read_all() == SUCCESS  # the container exited: attach ends
            assert err.read_all() == b"bye\n"
            lines = out.read_all().decode().split("\n")
            assert all(line.startswith("tick ") for line in lines if line)
        finally:
            conn.close()
    finally:
        engine("rm", "-f", "ticker")


def test_attach_stdin_over_websocket(stream, engine):  # noqa: F811
    from minirun.engine import RunOptions

    eng = Engine(engine.root, engine.run_root)
    cid = eng.run_detached("busybox:latest", RunOptions(
        command=["cat"], name="catter", detach=True, interactive=True, stdin_once=True))
    try:
        url = stream.get_attach(AttachRequest(cid, stdin=True, stdout=True))
        out, _, status, _ = exec_ws(url, stdin=b"typed into attach\n")
        # stdin_once (kubectl run -i): the close signal is the container's EOF: cat
        # ends, attach ends
        assert out == b"typed into attach\n" and status == SUCCESS
        assert wait_for(lambda: Engine(engine.root, engine.run_root).get(cid)["status"]
                        == "exited")
    finally:
        engine("rm", "-f", "catter")


def test_port_forward_spdy(stream):
    url = stream.get_port_forward(PortForwardRequest("pod", [8080]))
    conn = SpdyConnection(url, ("portforward.k8s.io",))
    try:
        err = conn.open_stream({"streamtype": "error", "port": "8080", "requestid": "0"})
        data = conn.open_stream({"streamtype": "data", "port": "8080", "requestid": "0"})
        data.wait_for(b"hello from pod\n")
        data.write(b"ping over spdy\n")
        data.wait_for(b"PING OVER SPDY\n")
        data.close()  # our FIN: the pod's EOF, it closes, the streams end
        assert data.read_all() == b"hello from pod\nPING OVER SPDY\n"
        assert err.read_all() == b""
    finally:
        conn.close()


def test_port_forward_websocket(stream):
    url = stream.get_port_forward(PortForwardRequest("pod", [8080]))
    c = WsClient(url, ("v4.channel.k8s.io",))
    try:
        msgs = c.messages()
        assert [next(msgs), next(msgs)] == [(0, b"\x90\x1f"), (1, b"\x90\x1f")]
        got = b""
        while b"hello from pod\n" not in got:
            got += next(msgs)[1]
        c.send(0, b"ping over websocket\n")
        while b"PING OVER WEBSOCKET\n" not in got:
            ch, data = next(msgs)
            assert ch == 0
            got += data
    finally:
        c.close()


def test_port_forward_to_a_closed_port_reports_it(stream):
    url = stream.get_port_forward(PortForwardRequest("pod", [8081]))
    conn = SpdyConnection(url, ("portforward.k8s.io",))
    try:
        err = conn.open_stream({"streamtype": "error", "port": "8081", "requestid": "0"})
        conn.open_stream({"streamtype": "data", "port": "8081", "requestid": "0"})
        body = json.loads(err.read_all())
        assert "error forwarding port 8081" in body["message"]
        assert "refused" in body["message"].lower()
    finally:
        conn.close()


def sleepers(arg: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", arg.encode()]:
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("tty", [False, True])
def test_exec_is_killed_when_the_client_goes(stream, box, tty):
    arg = "777" if tty else "778"
    url = stream.get_exec(ExecRequest(box, ["sleep", arg], tty=tty, stdout=True))
    conn = SpdyConnection(url)
    conn.open_stream({"streamtype": "error"})
    conn.open_stream({"streamtype": "stdout"})
    if tty:
        conn.open_stream({"streamtype": "resize"})
    assert wait_for(lambda: sleepers(arg))
    conn.sock.shutdown(socket.SHUT_RDWR)  # gone without a word, as a killed kubectl
    conn.sock.close()
    assert wait_for(lambda: not sleepers(arg), timeout=10)


def pod_connections(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", os.path.basename(netns), "ss", "-Htn",
                          "state", "established", "( sport = :8080 )"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\n")[:-1]


def test_port_forward_connection_ends_with_the_client(stream, netns):
    conn = SpdyConnection(stream.get_port_forward(PortForwardRequest("pod", [8080])),
                          ("portforward.k8s.io",))
    conn.open_stream({"streamtype": "error", "port": "8080", "requestid": "0"})
    data = conn.open_stream({"streamtype": "data", "port": "8080", "requestid": "0"})
    data.wait_for(b"hello from pod\n")
    assert len(pod_connections(netns)) == 1
    conn.sock.shutdown(socket.SHUT_RDWR)  # gone without a word
    conn.sock.close()
    assert wait_for(lambda: not pod_connections(netns), timeout=10)


# --- a real kubectl, through a stand-in apiserver and kubelet proxy (fake_apiserver.py) ----

KUBECTLS = {  # 1.27: SPDY/3.1 v4.channel.k8s.io; 1.33: WebSocket v5.channel.k8s.io first
    v: path for v in ("1.27", "1.33")
    if os.path.exists(path := f"/usr/lib/google-cloud-sdk/bin/kubectl.{v}")}
needs_kubectl = pytest.mark.skipif(not KUBECTLS, reason="no versioned kubectl here")


@pytest.fixture(scope="module")
def apiserver(stream, box):
    from fake_apiserver import FakeApiServer

    api = FakeApiServer(stream, {"busy": {"container": box, "pod": "pod-busy"}})
    api.start()
    yield api
    api.stop()


def kubectl(version: str, api, *args, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG="/dev/null")
    return subprocess.run([KUBECTLS[version], "--server", api.url, *args], env=env,
                          capture_output=True, timeout=60, check=False, **kw)


@needs_kubectl
@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_exec(apiserver, version):
    r = kubectl(version, apiserver, "exec", "busy", "--", "sh", "-c", "echo out; echo err >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"out\n", b"err\n")
    upgrade = apiserver.requests[-1][2]
    assert upgrade == ("SPDY/3.1" if version == "1.27" else "websocket")
    r = kubectl(version, apiserver, "exec", "busy", "--", "sh", "-c", "exit 42")
    assert r.returncode == 42, r.stderr  # the exit code from the v4/v5 status
    data = os.urandom(300000).hex().encode()  # 600 KB in, and out again
    r = kubectl(version, apiserver, "exec", "-i", "busy", "--", "cat", input=data)
    assert r.returncode == 0 and r.stdout == data


@needs_kubectl
@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_port_forward(apiserver, version):
    env = dict(os.environ, KUBECONFIG="/dev/null")
    proc = subprocess.Popen([KUBECTLS[version], "--server", apiserver.url, "port-forward",
                             "busy", ":8080"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        line = proc.stdout.readline().decode()
        assert "-> 8080" in line, line + proc.stderr.read1(4096).decode()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        for _ in range(2):  # two connections over the one forwarding session
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                got = b""
                while b"hello from pod\n" not in got:
                    got += c.recv(4096)
                c.sendall(b"through kubectl\n")
                while b"THROUGH KUBECTL\n" not in got:
                    got += c.recv(4096)
    finally:
        proc.terminate()
        proc.wait(10)


@needs_kubectl
@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_attach(apiserver, engine, version):  # noqa: F811
    name = f"ticker-{version.replace('.', '')}"
    engine("run", "-d", "--name", name, "busybox", "sh", "-c",
           "while [ ! -e /tmp/stop ]; do echo tick; sleep 0.1; done; echo bye", check=True)
    try:
        apiserver.pods[name] = {"container": Engine(engine.root, engine.run_root).get(
            name)["id"], "pod": "pod-busy"}
        env = dict(os.environ, KUBECONFIG="/dev/null")
        proc = subprocess.Popen([KUBECTLS[version], "--server", apiserver.url, "attach",
                                 name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)
        try:
            assert proc.stdout.readline() == b"tick\n"
            engine("exec", name, "touch", "/tmp/stop", check=True)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        assert out.split()[-1] == b"bye" and set(out.split()[:-1]) <= {b"tick"}
    finally:
        engine("rm", "-f", name)


@needs_kubectl
@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_exec_tty_has_the_terminals_size(apiserver, version):
    """kubectl -it on a terminal of 33x111: its first size (the resize stream or
    channel 4) is the process's from the start."""
    import fcntl
    import select
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = dict(os.environ, KUBECONFIG="/dev/null")
    try:
        proc = subprocess.Popen([KUBECTLS[version], "--server", apiserver.url, "exec", "-it",
                                 "busy", "--", "stty", "size"], stdin=slave, stdout=slave,
                                stderr=slave, env=env, start_new_session=True,
                                preexec_fn=controlling_tty)  # noqa: PLW1509
    finally:
        os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break  # EIO: kubectl is gone
                if not chunk:
                    break
                out += chunk
        assert proc.wait(10) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"33 111" in out, out


@needs_kubectl
@pytest.mark.parametrize("version", sorted(KUBECTLS))
def test_kubectl_big_input_to_a_slow_reader(apiserver, version):
    """As `kubectl cp` into a container: 24 MB for a process that starts reading late.
    The server holds at most its per-stream limit; kubectl waits, nothing is lost."""
    data = os.urandom(3 << 20).hex().encode() * 4
    r = kubectl(version, apiserver, "exec", "-i", "busy", "--", "sh", "-c",
                "sleep 2; md5sum", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
