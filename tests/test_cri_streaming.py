"""The CRI streaming server (minirun/cri/streaming.py) against a fake backend: SPDY/3.1
and WebSocket framing, header compression, flow control, the status JSON, tokens and
refusals. The real engine behind it: test_cri_streaming_engine.py."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import zlib
from typing import ClassVar

import pytest
from spdy_client import SpdyConnection, UpgradeRefused, exec_v4, http_upgrade
from ws_client import WsClient, exec_ws

from minirun.cri import spdy, streaming
from minirun.cri.streaming import AttachRequest, ExecRequest, PortForwardRequest, StreamingServer
from minirun.errors import InvalidArgument

SUCCESS = b'{"metadata":{},"status":"Success"}'


class FakeBackend:
    """exec: echo ARGS | cat | exit N | fail | big N | size | stderr; attach: a greeting
    then stdin back; port_forward: an upper-casing echo of the stream."""

    def __init__(self) -> None:
        self.forwards: list[tuple[str, int]] = []
        self.go = threading.Event()

    def exec(self, cid, cmd, tty, stdin, stdout, stderr, resize):
        verb = cmd[0]
        if verb == "echo":
            stdout.write((" ".join(cmd[1:]) + "\n").encode())
        elif verb == "cat":
            while data := stdin.read(65536):
                stdout.write(data)
        elif verb == "hold":  # cat, once the test says go
            self.go.wait(30)
            while data := stdin.read(65536):
                stdout.write(data)
        elif verb == "exit":
            return int(cmd[1])
        elif verb == "fail":
            raise RuntimeError("no such process")
        elif verb == "big":
            stdout.write(b"x" * int(cmd[1]))
        elif verb == "size":
            width, height = resize.get(timeout=10)
            stdout.write(f"{width}x{height}".encode())
        elif verb == "stderr":
            stderr.write(b"oops\n")
            return 1
        return 0

    def attach(self, cid, tty, stdin, stdout, stderr, resize):
        stdout.write(f"attached to {cid}\n".encode())
        while stdin and (data := stdin.read(65536)):
            stdout.write(data)

    def port_forward(self, pod_id, port, stream):
        self.forwards.append((pod_id, port))
        if port == 9:
            raise ConnectionRefusedError(111, "Connection refused")
        while data := stream.recv(65536):
            stream.sendall(data.upper())
        stream.shutdown(socket.SHUT_WR)


@pytest.fixture
def server():
    backend = FakeBackend()
    s = StreamingServer("127.0.0.1:0", backend)
    s.start()
    yield s
    s.stop()


def exec_url(server, cmd, **kw):
    opts = {'stdout': True, 'stderr': True}
    opts.update(kw)
    return server.get_exec(ExecRequest("c1", cmd, **opts))


# --- SPDY framing ------------------------------------------------------------------------------

def test_dictionary_is_spdy3s():
    # every SPDY/3 header block names the dictionary by its adler32: 0xe3c6a7c2
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_header_blocks_share_one_zlib_context():
    c, d = spdy.compressor(), spdy.decompressor()
    blocks = []
    for i in range(3):
        raw = spdy.encode_headers({"streamtype": "stdout", "X-Many": ["a", f"b{i}"]})
        blocks.append(c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH))
    assert blocks[0][2:6] == bytes.fromhex("e3c6a7c2")  # the dictionary id
    assert len(blocks[2]) < len(blocks[0])  # the later ones reuse the context
    for i, block in enumerate(blocks):
        assert spdy.decode_headers(d.decompress(block)) == \
            {"streamtype": ["stdout"], "x-many": ["a", f"b{i}"]}


def test_malformed_header_block_is_a_protocol_error():
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_headers(struct.pack(">II", 1, 50) + b"short")


# --- exec over SPDY ------------------------------------------------------------------------------

def test_spdy_exec_success_status(server):
    conn_protocols = ("v4.channel.k8s.io", "v3.channel.k8s.io")
    out, err, status = exec_v4(exec_url(server, ["echo", "hello", "world"]),
                               protocols=conn_protocols)
    assert out == b"hello world\n" and err == b""
    assert status == SUCCESS


def test_spdy_exec_nonzero_exit_status(server):
    _out, _err, status = exec_v4(exec_url(server, ["exit", "3"]))
    st = json.loads(status)
    assert st["status"] == "Failure" and st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert st["message"] == ("command terminated with non-zero exit code: error executing "
                             "command [exit 3], exit code 3")


def test_spdy_exec_backend_error_is_internal_error(server):
    _, _, status = exec_v4(exec_url(server, ["fail"]))
    st = json.loads(status)
    assert st["reason"] == "InternalError" and st["code"] == 500
    assert "no such process" in st["message"]


def test_spdy_stderr_stream(server):
    out, err, status = exec_v4(exec_url(server, ["stderr"]))
    assert (out, err) == (b"", b"oops\n")
    assert json.loads(status)["details"]["causes"][0]["message"] == "1"


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io",
                                      "channel.k8s.io"])
def test_spdy_exec_before_v4_sends_text_errors_only(server, protocol):
    _, _, status = exec_v4(exec_url(server, ["echo", "x"]), protocols=(protocol,))
    assert status == b""
    _, _, status = exec_v4(exec_url(server, ["exit", "2"]), protocols=(protocol,))
    assert status.startswith(b"command terminated with non-zero exit code")


def test_spdy_negotiates_the_clients_first_supported_version(server):
    conn = SpdyConnection(exec_url(server, ["echo"]),
                          ("v9.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"))
    assert conn.protocol == "v3.channel.k8s.io"
    conn.close()


def test_spdy_stdin_and_window_updates(server):
    """We keep to the server's 64 KiB receive window: it must open it again as its reader
    consumes the data, or this stalls."""
    payload = bytes(range(256)) * 800  # 200 KiB: three windows' worth
    conn = SpdyConnection(exec_url(server, ["cat"], stdin=True, stderr=False))
    try:
        error = conn.open_stream({"streamtype": "error"})
        s_in = conn.open_stream({"streamtype": "stdin"})
        s_out = conn.open_stream({"streamtype": "stdout"})
        sent = 0
        deadline = time.monotonic() + 20
        while sent < len(payload):
            window = spdy.INITIAL_WINDOW + conn.window_updates_for(s_in.id) - sent
            if window <= 0:
                assert time.monotonic() < deadline, "the server never opened its window"
                time.sleep(0.01)
                continue
            chunk = payload[sent:sent + min(window, 8192)]
            s_in.write(chunk)
            sent += len(chunk)
        s_in.close()
        assert error.read_all() == SUCCESS
        assert s_out.read_all() == payload
    finally:
        conn.close()


def test_spdy_input_nobody_reads_pushes_back(server):
    """A client that ignores our window (as spdystream does) is held back by TCP once
    a stream holds INBOX_LIMIT unread bytes: the server does not buffer without end."""
    payload = os.urandom(1 << 20) * 16
    # like spdystream, without WINDOW_UPDATEs: its reader never waits on its writer
    conn = SpdyConnection(exec_url(server, ["hold"], stdin=True, stderr=False),
                          auto_window_update=False)
    try:
        error = conn.open_stream({"streamtype": "error"})
        s_in = conn.open_stream({"streamtype": "stdin"})
        s_out = conn.open_stream({"streamtype": "stdout"})
        writer = threading.Thread(target=lambda: (s_in.write(payload, chunk=65536),
                                                  s_in.close()))
        writer.start()
        time.sleep(1)
        assert writer.is_alive()  # blocked: 16 MiB do not fit the server's buffers
        server.backend.go.set()
        writer.join(30)
        assert s_out.read_all() == payload and error.read_all() == SUCCESS
    finally:
        conn.close()


def test_pipe_feed_waits_for_the_reader():
    pipe = streaming._Pipe(limit=10)
    pipe.feed(b"0123456789")
    fed = threading.Event()
    t = threading.Thread(target=lambda: (pipe.feed(b"more"), fed.set()))
    t.start()
    assert not fed.wait(0.3)
    assert pipe.read(4) == b"0123"
    assert fed.wait(5)
    pipe.end()
    assert pipe.read() == b"456789more" and pipe.read() == b""
    pipe.feed(b"dropped")
    assert pipe.read() == b""


def test_spdy_send_window_is_honoured(server):
    """A client that announced a 16 KiB window gets no more until it opens it."""
    conn = SpdyConnection(exec_url(server, ["big", "100000"], stderr=False), window=16384,
                          auto_window_update=False)
    try:
        error = conn.open_stream({"streamtype": "error"})
        s_out = conn.open_stream({"streamtype": "stdout"})
        time.sleep(4 * spdy.STALL_GRACE)  # past the grace for peers without flow control
        assert len(s_out.data) == 16384
        conn.window_update(s_out.id, 100000 - 16384)
        assert s_out.read_all() == b"x" * 100000
        assert error.read_all() == SUCCESS
    finally:
        conn.close()


def test_spdy_peer_without_flow_control_is_not_stalled(server):
    """spdystream (kubectl, crictl) never sends WINDOW_UPDATE: output past 64 KiB must
    still arrive."""
    conn = SpdyConnection(exec_url(server, ["big", "300000"], stderr=False),
                          auto_window_update=False)
    try:
        error = conn.open_stream({"streamtype": "error"})
        s_out = conn.open_stream({"streamtype": "stdout"})
        assert s_out.read_all(timeout=10) == b"x" * 300000
        assert error.read_all() == SUCCESS
    finally:
        conn.close()


def test_spdy_resize_stream(server):
    out, _, status = exec_v4(exec_url(server, ["size"], tty=True, stderr=False),
                             stderr=False, tty=True, resize=(100, 40))
    assert out == b"100x40" and status == SUCCESS


def test_spdy_ping_is_answered_and_unknown_stream_refused(server):
    conn = SpdyConnection(exec_url(server, ["echo"]))
    try:
        conn.ping(7)
        bogus = conn.open_stream({"streamtype": "video"})
        assert bogus.reset_status == spdy.REFUSED_STREAM
        deadline = time.monotonic() + 5
        while not any(f[0] == "ctrl" and f[1] == spdy.PING for f in conn.frames):
            assert time.monotonic() < deadline, "no PING answer"
            time.sleep(0.02)
        pong = next(f for f in conn.frames if f[0] == "ctrl" and f[1] == spdy.PING)
        assert struct.unpack(">I", pong[2])[0] == 7
    finally:
        conn.close()


def test_spdy_attach(server):
    url = server.get_attach(AttachRequest("c9", stdin=True, stdout=True))
    out, _, status = exec_v4(url, stdin=b"typed\n", stderr=False)
    assert out == b"attached to c9\ntyped\n" and status == SUCCESS


# --- refusals and tokens ---------------------------------------------------------------------

def test_token_is_single_use(server):
    url = exec_url(server, ["echo", "once"])
    assert exec_v4(url)[0] == b"once\n"
    with pytest.raises(UpgradeRefused) as e:
        SpdyConnection(url)
    assert e.value.status == 404


def test_token_expires_after_a_minute():
    now = [1000.0]
    cache = streaming.TokenCache(clock=lambda: now[0])
    t1, t2 = cache.insert("a"), cache.insert("b")
    now[0] += 59
    assert cache.consume(t1) == "a"
    now[0] += 2
    assert cache.consume(t2) is None


def test_bad_token_and_wrong_kind_are_404(server):
    for path in ("/exec/nosuchtoken", "/attach/", "/other/x"):
        with pytest.raises(UpgradeRefused) as e:
            SpdyConnection(server.url + path)
        assert e.value.status == 404
    url = exec_url(server, ["echo"]).replace("/exec/", "/attach/")
    with pytest.raises(UpgradeRefused) as e:
        SpdyConnection(url)
    assert e.value.status == 404


def test_missing_upgrade_is_400_and_unknown_protocol_403(server):
    with pytest.raises(UpgradeRefused) as e:
        http_upgrade(exec_url(server, ["echo"]), [("Connection", "close")])
    assert e.value.status == 400 and b"missing upgrade headers" in e.value.body
    with pytest.raises(UpgradeRefused) as e:
        SpdyConnection(exec_url(server, ["echo"]), ("v99.channel.k8s.io",))
    assert e.value.status == 403
    assert "v4.channel.k8s.io" in e.value.headers["x-accepted-stream-protocol-versions"]
    with pytest.raises(UpgradeRefused) as e:
        WsClient(exec_url(server, ["echo"]), ("v99.channel.k8s.io",))
    assert e.value.status == 403


def test_request_validation(server):
    with pytest.raises(InvalidArgument, match="tty and stderr"):
        server.get_exec(ExecRequest("c1", ["sh"], tty=True, stdout=True, stderr=True))
    with pytest.raises(InvalidArgument, match="one of stdin, stdout, or stderr"):
        server.get_attach(AttachRequest("c1"))
    with pytest.raises(InvalidArgument, match="container_id"):
        server.get_exec(ExecRequest("", ["sh"], stdout=True))
    with pytest.raises(InvalidArgument, match="pod_sandbox_id"):
        server.get_port_forward(PortForwardRequest(""))
    with pytest.raises(InvalidArgument, match="port 70000"):
        server.get_port_forward(PortForwardRequest("p", [70000]))


def test_a_silent_connection_is_dropped_and_a_session_may_idle(server, monkeypatch):
    monkeypatch.setattr(streaming._Handler, "timeout", 0.5)
    idle = SpdyConnection(exec_url(server, ["cat"], stdin=True, stderr=False))
    silent = socket.create_connection(server._httpd.server_address)
    silent.settimeout(5)
    assert silent.recv(100) == b""  # no request within the timeout: closed
    silent.close()
    time.sleep(0.5)
    error = idle.open_stream({"streamtype": "error"})  # the upgraded one lives on
    s_in = idle.open_stream({"streamtype": "stdin"})
    s_out = idle.open_stream({"streamtype": "stdout"})
    s_in.write(b"still here")
    s_in.close()
    assert s_out.read_all() == b"still here" and error.read_all() == SUCCESS
    idle.close()


def test_post_works_like_get(server):
    conn = SpdyConnection(exec_url(server, ["echo", "posted"], stderr=False), method="POST")
    try:
        error = conn.open_stream({"streamtype": "error"})
        out = conn.open_stream({"streamtype": "stdout"})
        assert out.read_all() == b"posted\n" and error.read_all() == SUCCESS
    finally:
        conn.close()


def test_stop_ends_open_sessions(server):
    conn = SpdyConnection(exec_url(server, ["cat"], stdin=True, stderr=False))
    conn.open_stream({"streamtype": "error"})
    conn.open_stream({"streamtype": "stdin"})
    conn.open_stream({"streamtype": "stdout"})
    server.stop()
    assert conn.closed.wait(10)
    conn.close()


# --- WebSocket -----------------------------------------------------------------------------------

def test_ws_v5_exec_with_stdin_close_signal(server):
    url = exec_url(server, ["cat"], stdin=True, stderr=False)
    out, _err, status, c = exec_ws(url, stdin=b"over websocket\n" * 5000)
    assert c.protocol == "v5.channel.k8s.io" and c.close_received
    assert out == b"over websocket\n" * 5000 and status == SUCCESS


def test_ws_v4_base64_exit_code(server):
    _out, _err, status, c = exec_ws(exec_url(server, ["exit", "5"]),
                                  protocols=("v4.base64.channel.k8s.io",))
    assert c.protocol == "v4.base64.channel.k8s.io"
    assert json.loads(status)["details"]["causes"][0]["message"] == "5"


def test_ws_legacy_channel_protocol_text_status(server):
    _, _, status, c = exec_ws(exec_url(server, ["exit", "4"]), protocols=("channel.k8s.io",))
    assert c.protocol == "channel.k8s.io"
    assert status.startswith(b"command terminated with non-zero exit code")


def test_ws_resize_and_first_empty_message(server):
    url = exec_url(server, ["size"], tty=True, stderr=False)
    c = WsClient(url, ("v5.channel.k8s.io",))
    try:
        opcode, first = c.recv_frame()
        assert (opcode, first) == (2, b"\x01")  # an empty message on stdout: open
        c.send(4, b'{"Width":132,"Height":50}\n')
        got = {}
        for ch, data in c.messages():
            got[ch] = got.get(ch, b"") + data
        assert got[1] == b"132x50" and got[3] == SUCCESS
    finally:
        c.close()


def test_ws_ping_is_answered(server):
    c = WsClient(exec_url(server, ["cat"], stdin=True, stderr=False))
    try:
        c.recv_frame()  # the open message
        c.send_frame(9, b"are you there")
        assert c.recv_frame() == (10, b"are you there")
        c.send(255, b"\x00")
        assert [m for m in c.messages()][-1] == (3, SUCCESS)
    finally:
        c.close()


# --- port forwarding -----------------------------------------------------------------------------

def test_spdy_port_forward_pairs_by_request_id(server):
    url = server.get_port_forward(PortForwardRequest("pod1", [8080]))
    conn = SpdyConnection(url, ("portforward.k8s.io",))
    try:
        assert conn.protocol == "portforward.k8s.io"
        streams = []
        for rid, port in (("0", 8080), ("1", 8081)):  # two connections at once
            err = conn.open_stream({"streamtype": "error", "port": str(port),
                                    "requestid": rid})
            data = conn.open_stream({"streamtype": "data", "port": str(port),
                                     "requestid": rid})
            streams.append((err, data))
        for i, (err, data) in enumerate(streams):
            data.write(b"hello %d" % i)
            data.close()
        for i, (err, data) in enumerate(streams):
            assert data.read_all() == b"HELLO %d" % i
            assert err.read_all() == b""
        assert sorted(server.backend.forwards) == [("pod1", 8080), ("pod1", 8081)]
        bad = conn.open_stream({"streamtype": "data", "port": "0", "requestid": "2"})
        assert bad.reset_status == spdy.REFUSED_STREAM
    finally:
        conn.close()


def test_spdy_port_forward_error_stream(server):
    conn = SpdyConnection(server.get_port_forward(PortForwardRequest("pod1", [9])),
                          ("portforward.k8s.io",))
    try:
        err = conn.open_stream({"streamtype": "error", "port": "9", "requestid": "0"})
        conn.open_stream({"streamtype": "data", "port": "9", "requestid": "0"})
        body = json.loads(err.read_all())
        assert "Connection refused" in body["message"] and body["closeConnection"]
    finally:
        conn.close()


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
def test_ws_port_forward(server, protocol):
    url = server.get_port_forward(PortForwardRequest("pod2", [8080, 8081]))
    c = WsClient(url, (protocol,))
    try:
        msgs = c.messages()
        firsts = [next(msgs) for _ in range(4)]
        port_bytes = [(8080).to_bytes(2, "little"), (8081).to_bytes(2, "little")]
        assert firsts == [(0, port_bytes[0]), (1, port_bytes[0]), (2, port_bytes[1]),
                          (3, port_bytes[1])]
        c.send(0, b"first port")
        c.send(2, b"second port")
        got = {}
        while got.get(0) != b"FIRST PORT" or got.get(2) != b"SECOND PORT":
            ch, data = next(msgs)
            got[ch] = got.get(ch, b"") + data
    finally:
        c.close()


def test_ws_port_forward_ports_from_the_query(server):
    url = server.get_port_forward(PortForwardRequest("pod3", []))
    c = WsClient(url + "?port=8082", ("v4.channel.k8s.io",))
    try:
        msgs = c.messages()
        assert next(msgs) == (0, (8082).to_bytes(2, "little"))
        next(msgs)
        c.send(0, b"q")
        assert next(msgs) == (0, b"Q")
    finally:
        c.close()


def test_many_sessions_at_once(server):
    results = []

    def one(i):
        results.append(exec_v4(exec_url(server, ["echo", str(i)]))[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(b"%d\n" % i for i in range(20))


# --- the RPCs over gRPC ----------------------------------------------------------------------

class FakeEngine:
    RECORDS: ClassVar[dict] = {"c-running": "running", "c-exited": "exited"}

    def get(self, name_or_id):
        from minirun.errors import NotFound

        for cid, status in self.RECORDS.items():
            if cid.startswith(name_or_id):
                return {"id": cid, "name": cid, "status": status}
        raise NotFound(f"no such container: {name_or_id}")


class FakePods:
    def get(self, pod_id):
        from minirun.errors import NotFound

        if pod_id not in ("pod-1", "pod-stopped"):
            raise NotFound(f"no such pod: {pod_id}")
        return {"id": pod_id, "state": "ready" if pod_id == "pod-1" else "notready"}


@pytest.fixture
def rpc(server, tmp_path):
    import grpc

    from minirun.cri.api import api_pb2_grpc as pb_grpc
    from minirun.cri.server import CriServer

    class Runtime(streaming.StreamingMixin):
        engine, pods = FakeEngine(), FakePods()

    impl = Runtime()
    impl.streaming = server
    cri = CriServer(str(tmp_path / "cri.sock"), runtime=impl)
    cri.start()
    ch = grpc.insecure_channel(f"unix:{tmp_path / 'cri.sock'}")
    yield pb_grpc.RuntimeServiceStub(ch)
    ch.close()
    cri.stop(0)


def test_rpc_exec_url_serves_the_stored_request(rpc, server):
    from minirun.cri.api import api_pb2 as pb

    # a unique prefix names the container; the URL holds the full id
    resp = rpc.Exec(pb.ExecRequest(container_id="c-run", cmd=["echo", "via", "rpc"],
                                   stdout=True))
    assert resp.url.startswith(server.url + "/exec/")
    assert exec_v4(resp.url, stderr=False)[0] == b"via rpc\n"
    resp = rpc.Attach(pb.AttachRequest(container_id="c-running", stdout=True))
    assert exec_v4(resp.url, stderr=False)[0] == b"attached to c-running\n"
    resp = rpc.PortForward(pb.PortForwardRequest(pod_sandbox_id="pod-1", port=[80]))
    assert resp.url.startswith(server.url + "/portforward/")


@pytest.mark.parametrize(("req", "code", "text"), [
    ({"container_id": "c-running", "cmd": ["sh"], "tty": True, "stdout": True,
      "stderr": True}, "INVALID_ARGUMENT", "tty and stderr cannot both be true"),
    ({"container_id": "c-running", "cmd": ["sh"]}, "INVALID_ARGUMENT",
     "one of stdin, stdout, or stderr must be set"),
    ({"container_id": "", "cmd": ["sh"], "stdout": True}, "INVALID_ARGUMENT",
     "missing required container_id"),
    ({"container_id": "c-running", "stdout": True}, "INVALID_ARGUMENT", "cmd is empty"),
    ({"container_id": "nope", "cmd": ["sh"], "stdout": True}, "NOT_FOUND", "nope"),
    ({"container_id": "c-exited", "cmd": ["sh"], "stdout": True}, "FAILED_PRECONDITION",
     "not running"),
])
def test_rpc_exec_refusals(rpc, req, code, text):
    import grpc

    from minirun.cri.api import api_pb2 as pb

    with pytest.raises(grpc.RpcError) as e:
        rpc.Exec(pb.ExecRequest(**req))
    assert e.value.code().name == code and text in e.value.details()


def test_rpc_port_forward_unknown_or_stopped_pod(rpc):
    import grpc

    from minirun.cri.api import api_pb2 as pb

    with pytest.raises(grpc.RpcError) as e:
        rpc.PortForward(pb.PortForwardRequest(pod_sandbox_id="pod-2", port=[80]))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        rpc.PortForward(pb.PortForwardRequest(pod_sandbox_id="pod-stopped", port=[80]))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_address_forms():
    s = StreamingServer("0.0.0.0:0", FakeBackend())
    s.start()
    try:
        assert s.url.startswith("http://127.0.0.1:")  # kubelet reaches it on loopback
        assert exec_v4(exec_url(s, ["echo", "any"]))[0] == b"any\n"
    finally:
        s.stop()
    if _ipv6_loopback():
        s = StreamingServer("[::1]:0", FakeBackend())
        s.start()
        try:
            assert s.url.startswith("http://[::1]:")
            assert exec_v4(exec_url(s, ["echo", "six"]))[0] == b"six\n"
        finally:
            s.stop()
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        StreamingServer("localhost")
    with pytest.raises(InvalidArgument, match="bad port"):
        StreamingServer("127.0.0.1:http")


# --- hostile peers -----------------------------------------------------------------------------

def wait_goaway(conn) -> int:
    """The status of the server's GOAWAY; the connection must end after it."""
    assert conn.goaway.wait(10), "no GOAWAY"
    assert conn.closed.wait(10), "the connection stayed open"
    frame = next(f for f in conn.frames if f[0] == "ctrl" and f[1] == spdy.GOAWAY)
    return struct.unpack(">II", frame[2][:8])[1]


def test_spdy_header_bomb_ends_the_session(server):
    conn = SpdyConnection(exec_url(server, ["echo"]))
    try:
        block = conn.deflate.compress(struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" +
                                      struct.pack(">I", 8 << 20) + b"\0" * (8 << 20))
        block += conn.deflate.flush(zlib.Z_SYNC_FLUSH)
        payload = struct.pack(">IIBB", 1, 0, 0, 0) + block
        conn._send(struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, len(payload)) + payload)
        assert wait_goaway(conn) == 1  # PROTOCOL_ERROR
    finally:
        conn.close()


def test_spdy_wrong_version_ends_the_session(server):
    conn = SpdyConnection(exec_url(server, ["echo"]))
    try:
        conn._send(struct.pack(">HHI", 0x8002, spdy.PING, 4) + struct.pack(">I", 1))
        assert wait_goaway(conn) == 1
    finally:
        conn.close()


def test_ws_endless_fragments_are_refused(server, monkeypatch):
    from minirun.cri import websocket

    monkeypatch.setattr(websocket, "MAX_MESSAGE", 100000)
    c = WsClient(exec_url(server, ["cat"], stdin=True, stderr=False))
    try:
        c.recv_frame()  # the open message
        c.send_frame(2, b"\0" + b"x" * 60000, fin=False)
        c.send_frame(0, b"x" * 60000, fin=False)
        assert c.recv_frame()[0] == 8  # close: message too big
    finally:
        c.close()
