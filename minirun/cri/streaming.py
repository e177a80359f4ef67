"""The CRI streaming server: Exec, Attach and PortForward as kubelet's own
(k8s.io/kubelet/pkg/cri/streaming, which containerd and CRI-O embed) serves them.

The RPC stores the request under a random single-use token and answers a URL:
  GET|POST /exec/{token}         the stored ExecRequest (container, cmd, stdio, tty)
  GET|POST /attach/{token}       the stored AttachRequest
  GET|POST /portforward/{token}  the stored PortForwardRequest (pod, ports)
A token works once and for one minute (kubelet's request cache); an unknown, used or
expired one is a 404. The connection is then upgraded, by its headers:

SPDY/3.1 (`Upgrade: SPDY/3.1`, spdy.py), what kubelet, kubectl and crictl speak. The
sub-protocol comes from the client's `X-Stream-Protocol-Version` headers, best first:
  exec/attach  v5.channel.k8s.io (as v4 over SPDY), v4.channel.k8s.io, v3.channel.k8s.io,
               v2.channel.k8s.io, channel.k8s.io (also when none is given). The client
               opens one stream per `streamtype` header: error, stdin, stdout, stderr and
               (v3+, tty) resize; we start the process once all have come. stdin's FIN is
               the process's EOF; resize carries {"Width":W,"Height":H} JSON objects. At
               the end stdout/stderr get FIN and the error stream the status: v4 a
               metav1.Status JSON ({"metadata":{},"status":"Success"}, or reason
               NonZeroExitCode with the exit code as details.causes[0].message), before
               v4 an error text only on failure.
  portforward  portforward.k8s.io: per forwarded connection the client opens a `data`
               and an `error` stream with the same `requestID` and `port` headers; the
               error stream carries {"message": ...} if the forward fails.
WebSocket (`Upgrade: websocket`, websocket.py), Sec-WebSocket-Protocol:
  exec/attach  v5.channel.k8s.io, v4.channel.k8s.io, v4.base64.channel.k8s.io,
               channel.k8s.io, base64.channel.k8s.io: channels 0 stdin, 1 stdout,
               2 stderr, 3 error (the status as above), 4 resize; v5's 255 closes one.
               An empty message on the first output channel says the session is open.
  portforward  v4.channel.k8s.io, v4.base64.channel.k8s.io: channels 2i (data) and
               2i+1 (error) for the i-th port; the first message of each carries the port
               (16-bit little-endian).
Anything else is a 400 (no upgrade) or 403 (no common sub-protocol), as kubelet answers.

Server: the standard library's ThreadingHTTPServer: it parses the one HTTP request a
stream connection starts with and gives each connection its own thread, which then owns
the upgraded socket; no framework is needed for three routes that hand the socket over.

Backends plug the engine in (EngineBackend in stream_engine.py); `StreamingMixin` is the
RuntimeService's Exec, Attach and PortForward.
"""

from __future__ import annotations

import json
import queue
import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from ..errors import ContainerStateError, InvalidArgument, MiniRunError
from . import spdy
from . import websocket as ws

TOKEN_TTL = 60.0  # kubelet's request cache
MAX_IN_FLIGHT = 1000
STREAM_CREATION_TIMEOUT = 30.0  # remotecommand.DefaultStreamCreationTimeout
LINGER = 5.0  # seconds a finished session waits for the client to close the connection

SPDY_EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                       "v2.channel.k8s.io", "channel.k8s.io")
SPDY_PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)
# name -> binary frames?
WS_EXEC_PROTOCOLS = {"v5.channel.k8s.io": True, "v4.channel.k8s.io": True,
                     "v4.base64.channel.k8s.io": False, "channel.k8s.io": True,
                     "base64.channel.k8s.io": False, "": True}
WS_PORTFORWARD_PROTOCOLS = {"v4.channel.k8s.io": True, "v4.base64.channel.k8s.io": False,
                            "": True}
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


# --- requests and the backend ---------------------------------------------------------------

@dataclass
class ExecRequest:
    container_id: str
    cmd: list[str]
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass
class AttachRequest:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass
class PortForwardRequest:
    pod_sandbox_id: str
    port: list[int] = field(default_factory=list)


class Backend(Protocol):
    """What the streaming server needs from the runtime. Readers have read(n) -> bytes
    (b"" at the end); writers write(data) and close(), and `closed` once the client has
    gone; resize is None without a tty, else get(timeout=None) -> (width, height), or
    None when no more sizes come."""

    def exec(self, container_id: str, cmd: list[str], tty: bool, stdin, stdout, stderr,
             resize) -> int:
        """Run cmd in the container with these streams; its exit code."""

    def attach(self, container_id: str, tty: bool, stdin, stdout, stderr, resize) -> None:
        """Until the container exits or the client goes."""

    def port_forward(self, pod_id: str, port: int, stream) -> None:
        """Connect to port in the pod's network namespace and copy both ways until the
        pod's side ends or the client goes (`closed`). stream: recv(n) (b"" at the
        client's end), sendall(data), shutdown(socket.SHUT_WR) (our end)."""


class ResizeQueue:
    """Terminal sizes decoded from a stream of JSON objects ({"Width":..,"Height":..})."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._buf = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> None:
        self._buf += data.decode(errors="replace")
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return
            try:
                obj, end = self._decoder.raw_decode(text)
            except ValueError:
                # an object cut in two waits for its end; anything else is dropped
                self._buf = text if text.startswith("{") and len(text) < 4096 else ""
                return
            self._buf = text[end:]
            if isinstance(obj, dict):
                try:
                    self._queue.put((int(obj.get("Width") or 0), int(obj.get("Height") or 0)))
                except (TypeError, ValueError):
                    pass

    def end(self) -> None:
        self._queue.put(None)

    def get(self, timeout: float | None = None):
        """The next size, None at the end; queue.Empty after timeout."""
        return self._queue.get(timeout=timeout)


def status_json(exit_code: int | None, cmd: list[str] | None = None,
                error: str | None = None) -> dict:
    """The metav1.Status kubelet writes on the v4 error channel."""
    if error is not None:
        return {"metadata": {}, "status": "Failure",
                "message": f"Internal error occurred: {error}", "reason": "InternalError",
                "details": {"causes": [{"message": error}]}, "code": 500}
    if not exit_code:
        return {"metadata": {}, "status": "Success"}
    what = f"error executing command [{' '.join(cmd)}], exit code {exit_code}" if cmd \
        else f"exit code {exit_code}"
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: {what}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}


# --- tokens -----------------------------------------------------------------------------------

class TokenCache:
    def __init__(self, ttl: float = TOKEN_TTL, clock=time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, object]] = {}

    def insert(self, req) -> str:
        with self._lock:
            now = self.clock()
            for token in [t for t, (exp, _) in self._items.items() if exp <= now]:
                del self._items[token]
            if len(self._items) >= MAX_IN_FLIGHT:
                raise MiniRunError("too many streaming requests in flight")
            token = secrets.token_urlsafe(8)  # 64 bits, as kubelet's
            self._items[token] = (now + self.ttl, req)
            return token

    def consume(self, token: str):
        """The request, once; None if unknown, used or expired."""
        with self._lock:
            item = self._items.pop(token, None)
        if item is None or item[0] <= self.clock():
            return None
        return item[1]


# --- the server -------------------------------------------------------------------------------

def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        raise InvalidArgument(f"stream address {address!r}: expected HOST:PORT")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise InvalidArgument(f"stream address {address!r}: bad port {port!r}") from None


class StreamingServer:
    def __init__(self, address: str = "127.0.0.1:0", backend: Backend | None = None) -> None:
        self.address = _parse_address(address)
        self.backend = backend
        self.cache = TokenCache()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def start(self) -> None:
        host, port = self.address
        server_cls = _IPv6Server if ":" in host else _Server
        try:
            httpd = server_cls((host, port), _Handler)
        except OSError as e:
            raise MiniRunError(f"stream server on {host}:{port}: {e.strerror}") from None
        httpd.streaming = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.1,),
                                        name="cri-streaming", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base of the URLs handed out. Bound to every address (0.0.0.0, ::), it
        names loopback: kubelet, on this node, proxies the stream to it."""
        host, port = self._httpd.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving and end the connections that are open."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._conns_lock:
            for sock in self._conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._httpd = None

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(sock)

    # kubelet's validation (server.go), the same messages
    def get_exec(self, req) -> str:
        r = ExecRequest(req.container_id, list(req.cmd), bool(req.tty), bool(req.stdin),
                        bool(req.stdout), bool(req.stderr))
        _check_stdio(r)
        if not r.cmd:
            raise InvalidArgument("exec needs a command (cmd is empty)")
        return self._url("exec", r)

    def get_attach(self, req) -> str:
        r = AttachRequest(req.container_id, bool(req.tty), bool(req.stdin), bool(req.stdout),
                          bool(req.stderr))
        _check_stdio(r)
        return self._url("attach", r)

    def get_port_forward(self, req) -> str:
        if not req.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        ports = [int(p) for p in req.port]
        bad = [p for p in ports if not 0 < p < 65536]
        if bad:
            raise InvalidArgument(f"invalid port {bad[0]}: must be 1-65535")
        return self._url("portforward", PortForwardRequest(req.pod_sandbox_id, ports))

    def _url(self, kind: str, req) -> str:
        return f"{self.url}/{kind}/{self.cache.insert(req)}"


def start_streaming(engine, address: str = "127.0.0.1:0", pod_netns=None) -> StreamingServer:
    """The streaming server of `minirun cri`, on the engine (stop() it at the end)."""
    from .stream_engine import EngineBackend

    server = StreamingServer(address, EngineBackend(engine, pod_netns))
    server.start()
    return server


def _check_stdio(r) -> None:
    if not r.container_id:
        raise InvalidArgument("missing required container_id")
    if r.tty and r.stderr:
        # a terminal has one output: stdout and stderr cannot be told apart
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (r.stdin or r.stdout or r.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops SYNs when kubectl opens many at once


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


_KINDS = {"exec": ExecRequest, "attach": AttachRequest, "portforward": PortForwardRequest}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "minirun-streaming"
    timeout = 30  # for the request; an upgraded stream may then idle as long as it likes

    def log_message(self, fmt, *args) -> None:  # no access log on stderr
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        self.connection.settimeout(None)
        parsed = urllib.parse.urlsplit(self.path)
        parts = parsed.path.strip("/").split("/")
        kind = parts[0] if len(parts) == 2 else ""
        server: StreamingServer = self.server.streaming
        req = server.cache.consume(parts[1]) if kind in _KINDS else None
        if not isinstance(req, _KINDS.get(kind, ())):
            return self._plain(404, "404 page not found")
        query = urllib.parse.parse_qs(parsed.query)
        server._track(self.connection, True)
        try:
            if kind == "portforward":
                self._port_forward(server.backend, req, query)
            else:
                self._remote_command(server.backend, kind, req)
        finally:
            server._track(self.connection, False)

    do_POST = do_GET

    def _plain(self, code: int, text: str, headers: dict | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # --- upgrades --------------------------------------------------------------------------

    def _is_websocket(self) -> bool:
        return self.headers.get("Upgrade", "").lower() == "websocket" and \
            "upgrade" in self.headers.get("Connection", "").lower()

    def _is_spdy(self) -> bool:
        return self.headers.get("Upgrade", "").lower() == "spdy/3.1" and \
            "upgrade" in self.headers.get("Connection", "").lower()

    def _spdy_upgrade(self, supported: tuple[str, ...]) -> str | None:
        """The negotiated sub-protocol ("" if the client named none) after the 101, or
        None after an error answer (httpstream.Handshake + the SPDY upgrader)."""
        if not self._is_spdy():
            self._plain(400, "unable to upgrade: missing upgrade headers in request")
            return None
        offered = [p.strip() for v in self.headers.get_all("X-Stream-Protocol-Version", [])
                   for p in v.split(",") if p.strip()]
        chosen = "" if not offered else next((p for p in offered if p in supported), None)
        if chosen is None:
            self._plain(403, "unable to upgrade: unable to negotiate protocol: client supports "
                        f"{offered}, server accepts {list(supported)}",
                        {"X-Accepted-Stream-Protocol-Versions": ", ".join(supported)})
            return None
        self.send_response(101, "Switching Protocols")
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        if chosen:
            self.send_header("X-Stream-Protocol-Version", chosen)
        self.end_headers()
        return chosen

    def _ws_upgrade(self, supported: dict[str, bool]) -> tuple[str, ws.Connection] | None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Sec-WebSocket-Version", "") != "13" or not key:
            self._plain(400, "websocket: version 13 and a Sec-WebSocket-Key are required",
                        {"Sec-WebSocket-Version": "13"})
            return None
        offered = [p.strip() for v in self.headers.get_all("Sec-WebSocket-Protocol", [])
                   for p in v.split(",") if p.strip()] or [""]
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            self._plain(403, f"requested protocol(s) are not supported: {offered}; supports "
                        f"{[p for p in supported if p]}")
            return None
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", ws.accept_key(key))
        if chosen:
            self.send_header("Sec-WebSocket-Protocol", chosen)
        self.end_headers()
        return chosen, ws.Connection(self.connection, self.rfile)

    # --- exec and attach -----------------------------------------------------------------

    def _remote_command(self, backend, kind: str, req) -> None:
        if self._is_websocket():
            up = self._ws_upgrade(WS_EXEC_PROTOCOLS)
            if up:
                _WsCommand(backend, kind, req, *up).run()
            return
        protocol = self._spdy_upgrade(SPDY_EXEC_PROTOCOLS)
        if protocol is None:
            return
        _SpdyCommand(backend, kind, req, protocol, self.connection, self.rfile).run()

    # --- port forwarding -------------------------------------------------------------------

    def _port_forward(self, backend, req: PortForwardRequest, query: dict) -> None:
        if self._is_websocket():
            ports = list(req.port)
            if not ports:
                try:
                    ports = [int(p) for v in query.get("port", []) for p in v.split(",")]
                except ValueError:
                    return self._plain(400, f"unable to parse port: {query.get('port')}")
            if not ports or not all(0 < p < 65536 for p in ports):
                return self._plain(400, 'query parameter "port" is required (1-65535)')
            up = self._ws_upgrade(WS_PORTFORWARD_PROTOCOLS)
            if up:
                _WsPortForward(backend, req.pod_sandbox_id, ports, *up).run()
            return
        if self._spdy_upgrade(SPDY_PORTFORWARD_PROTOCOLS) is None:
            return
        _SpdyPortForward(backend, req.pod_sandbox_id, self.connection, self.rfile).run()


# --- one exec or attach session -------------------------------------------------------------

def _run_command(backend, kind: str, req, stdin, stdout, stderr, resize) -> dict:
    """Run it; the Status for the error channel."""
    try:
        if kind == "exec":
            code = backend.exec(req.container_id, req.cmd, req.tty, stdin, stdout, stderr,
                                resize)
            return status_json(code, req.cmd)
        backend.attach(req.container_id, req.tty, stdin, stdout, stderr, resize)
        return status_json(0)
    except Exception as e:  # noqa: BLE001 - whatever it was, the client must hear of it
        what = "executing command in" if kind == "exec" else "attaching to"
        return status_json(None, error=f"error {what} container: {e}")


def _status_bytes(status: dict, v4: bool) -> bytes:
    if v4:
        return json.dumps(status, separators=(",", ":")).encode()
    return b"" if status["status"] == "Success" else status["message"].encode()


class _SpdyCommand:
    def __init__(self, backend, kind, req, protocol, sock, rfile) -> None:
        self.backend, self.kind, self.req = backend, kind, req
        self.v4 = protocol in ("v4.channel.k8s.io", "v5.channel.k8s.io")
        self.resizable = protocol not in ("", "channel.k8s.io", "v2.channel.k8s.io")
        self.streams: dict[str, spdy.Stream] = {}
        self.session = spdy.Session(sock, rfile, self._accept, self._ready)
        self.ready = self.session.cond  # also told when the session ends

    def _expected(self) -> int:
        r = self.req
        return 1 + r.stdin + r.stdout + r.stderr + bool(r.tty and self.resizable)

    def _accept(self, stream: spdy.Stream) -> bool:
        kind = stream.header("streamtype")
        return kind in ("error", "stdin", "stdout", "stderr", "resize") and \
            kind not in self.streams

    def _ready(self, stream: spdy.Stream) -> None:
        with self.ready:
            self.streams[stream.header("streamtype")] = stream
            self.ready.notify_all()

    def run(self) -> None:
        reader = threading.Thread(target=self.session.serve, daemon=True)
        reader.start()
        deadline = time.monotonic() + STREAM_CREATION_TIMEOUT
        with self.ready:
            while len(self.streams) < self._expected() and not self.session.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.ready.wait(left)
            complete = len(self.streams) >= self._expected()
        if not complete:  # timed out waiting for the client to create streams
            self.session.close()
            _linger_close(self.session.sock, reader)
            return
        s = self.streams
        resize = None
        if "resize" in s and self.req.tty:
            resize = ResizeQueue()
            threading.Thread(target=_pump_resize, args=(s["resize"], resize),
                             daemon=True).start()
        stdin = s.get("stdin") if self.req.stdin else None
        stdout = s.get("stdout") if self.req.stdout else None
        stderr = s.get("stderr") if self.req.stderr else None
        status = _run_command(self.backend, self.kind, self.req, stdin, stdout, stderr,
                              resize)
        for name in ("stdout", "stderr"):
            if name in s:
                s[name].close()
        if "error" in s:
            try:
                payload = _status_bytes(status, self.v4)
                if payload:
                    s["error"].write(payload)
            except OSError:
                pass
            s["error"].close()
        self.session.close()
        _linger_close(self.session.sock, reader)


def _linger_close(sock: socket.socket, reader: threading.Thread) -> None:
    """Our side is done: FIN, then read on (the reader thread) until the client closes
    too, LINGER seconds at most. Closing with the client's data unread would send a RST,
    which can cost the client the end of our output."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    reader.join(LINGER)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    reader.join()


def _pump_resize(stream, resize: ResizeQueue) -> None:
    while True:
        data = stream.read()
        if not data:
            break
        resize.feed(data)
    resize.end()


class _Pipe:
    """Bytes one thread feeds and another reads (read(n), b"" after end()). feed()
    waits while `limit` bytes are unread: the WebSocket's reader, and so TCP, push back."""

    def __init__(self, limit: int = spdy.INBOX_LIMIT) -> None:
        self._buf = bytearray()
        self._eof = False
        self._cond = threading.Condition()
        self.limit = limit

    def feed(self, data: bytes) -> None:
        with self._cond:
            while len(self._buf) >= self.limit and not self._eof:
                self._cond.wait()
            if not self._eof:
                self._buf += data
                self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def read(self, n: int = 65536) -> bytes:
        with self._cond:
            while not self._buf and not self._eof:
                self._cond.wait()
            data = bytes(self._buf[:n])
            del self._buf[:n]
            self._cond.notify_all()
            return data

    recv = read


class _ChannelWriter:
    def __init__(self, channels: ws.Channels, num: int) -> None:
        self.channels = channels
        self.num = num

    @property
    def closed(self) -> bool:
        return self.channels.conn.closed

    def write(self, data: bytes) -> int:
        if data:
            self.channels.write(self.num, bytes(data))
        return len(data)

    sendall = write

    def close(self) -> None:
        pass

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        pass


class _WsCommand:
    def __init__(self, backend, kind, req, protocol: str, conn: ws.Connection) -> None:
        self.backend, self.kind, self.req = backend, kind, req
        self.protocol = protocol
        self.conn = conn
        self.channels = ws.Channels(conn, WS_EXEC_PROTOCOLS[protocol])
        self.v4 = protocol.startswith(("v4.", "v5."))

    def run(self) -> None:
        r = self.req
        stdin = _Pipe() if r.stdin else None
        resize = ResizeQueue() if r.tty else None
        first = STDOUT if r.stdout else STDERR if r.stderr else ERROR
        try:
            self.channels.write(first, b"")  # the session is open
        except OSError:
            return
        reader = threading.Thread(target=self._read, args=(stdin, resize), daemon=True)
        reader.start()
        stdout = _ChannelWriter(self.channels, STDOUT) if r.stdout else None
        stderr = _ChannelWriter(self.channels, STDERR) if r.stderr else None
        status = _run_command(self.backend, self.kind, r, stdin, stdout, stderr, resize)
        if stdin:
            stdin.end()  # the reader must not wait on input nobody will read
        try:
            payload = _status_bytes(status, self.v4)
            if payload:
                self.channels.write(ERROR, payload)
        except OSError:
            pass
        self.conn.close()
        _linger_close(self.conn.sock, reader)

    def _read(self, stdin: _Pipe | None, resize: ResizeQueue | None) -> None:
        v5 = self.protocol == "v5.channel.k8s.io"
        for _op, payload in self.conn.messages():
            msg = self.channels.decode(payload)
            if msg is None:
                continue
            channel, data = msg
            if channel == STDIN and stdin:
                stdin.feed(data)
            elif channel == RESIZE and resize:
                resize.feed(data)
            elif channel == ws.CLOSE_CHANNEL and v5 and data:
                if data[0] == STDIN and stdin:
                    stdin.end()
                elif data[0] == RESIZE and resize:
                    resize.end()
        self.conn.closed = True  # the client has gone: writes fail from now on
        if stdin:
            stdin.end()
        if resize:
            resize.end()


# --- port forwarding sessions -----------------------------------------------------------------

def _forward(backend, pod_id: str, port: int, data, report) -> None:
    """One forwarded connection; report(message, fatal) on failure."""
    try:
        backend.port_forward(pod_id, port, data)
    except Exception as e:  # noqa: BLE001 - the client must hear of it
        fatal = not isinstance(e, (BrokenPipeError, ConnectionResetError))
        report(f"error forwarding port {port} to pod {pod_id}, uid : {e}", fatal)


class _SpdyPortForward:
    def __init__(self, backend, pod_id: str, sock, rfile) -> None:
        self.backend = backend
        self.pod_id = pod_id
        self.pairs: dict[str, dict[str, spdy.Stream]] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.session = spdy.Session(sock, rfile, self._accept, self._ready)

    def _accept(self, stream: spdy.Stream) -> bool:
        # httpStreamReceived: a valid port and a data or error stream type
        try:
            port = int(stream.header("port"))
        except ValueError:
            return False
        return 0 < port < 65536 and stream.header("streamtype") in ("data", "error")

    def _ready(self, stream: spdy.Stream) -> None:
        kind = stream.header("streamtype")
        request_id = stream.header("requestid")
        if not request_id:  # old clients: consecutive stream ids, error first
            request_id = str(stream.id if kind == "error" else stream.id - 2)
        with self.lock:
            pair = self.pairs.setdefault(request_id, {})
            if kind in pair:
                stream.send_reset(spdy.PROTOCOL_ERROR)
                return
            pair[kind] = stream
            if len(pair) < 2:
                return
            del self.pairs[request_id]
        t = threading.Thread(target=self._forward_pair, args=(pair,), daemon=True)
        self.threads.append(t)
        t.start()

    def _forward_pair(self, pair: dict[str, spdy.Stream]) -> None:
        data, error = pair["data"], pair["error"]

        def report(message: str, fatal: bool) -> None:
            body = {"closeConnection": True, "message": message} if fatal \
                else {"message": message}
            try:
                error.write(json.dumps(body).encode() + b"\n")
            except OSError:
                pass

        _forward(self.backend, self.pod_id, int(data.header("port")), data, report)
        data.abandon()
        data.close()
        error.close()

    def run(self) -> None:
        self.session.serve()  # until the client goes away
        for t in self.threads:
            t.join(5)
        self.session.close()


class _WsPortForward:
    def __init__(self, backend, pod_id: str, ports: list[int], protocol: str,
                 conn: ws.Connection) -> None:
        self.backend = backend
        self.pod_id = pod_id
        self.ports = ports
        self.conn = conn
        self.channels = ws.Channels(conn, WS_PORTFORWARD_PROTOCOLS[protocol])
        self.inputs = [_Pipe() for _ in ports]

    def run(self) -> None:
        threads = []
        try:
            for i, port in enumerate(self.ports):
                prefix = port.to_bytes(2, "little")
                self.channels.write(2 * i, prefix)
                self.channels.write(2 * i + 1, prefix)
        except OSError:
            return
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        for i, port in enumerate(self.ports):
            t = threading.Thread(target=self._forward_one, args=(i, port), daemon=True)
            threads.append(t)
            t.start()
        for t in threads:
            t.join()
        self.conn.close()
        _linger_close(self.conn.sock, reader)

    def _forward_one(self, i: int, port: int) -> None:
        data = _WsData(self.inputs[i], _ChannelWriter(self.channels, 2 * i))
        errors = _ChannelWriter(self.channels, 2 * i + 1)

        def report(message: str, _fatal: bool) -> None:
            try:
                errors.write(message.encode())
            except OSError:
                pass

        _forward(self.backend, self.pod_id, port, data, report)
        self.inputs[i].end()  # what the client still sends for this port is dropped

    def _read(self) -> None:
        for _op, payload in self.conn.messages():
            msg = self.channels.decode(payload)
            if msg and msg[0] % 2 == 0 and msg[0] // 2 < len(self.inputs):
                self.inputs[msg[0] // 2].feed(msg[1])
        self.conn.closed = True
        for pipe in self.inputs:
            pipe.end()


class _WsData:
    """A port's data channel as a socket-like stream for the backend."""

    def __init__(self, pipe: _Pipe, writer: _ChannelWriter) -> None:
        self.recv = self.read = pipe.read
        self.writer = writer

    @property
    def closed(self) -> bool:
        return self.writer.closed

    def sendall(self, data: bytes) -> None:
        self.writer.write(data)

    write = sendall

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        pass  # the channels of v4 have no half-close

    def close(self) -> None:
        pass


# --- the RPCs ---------------------------------------------------------------------------------

class StreamingMixin:
    """Exec, Attach and PortForward of runtime.v1.RuntimeService: check the request,
    store it in the streaming server (self.streaming), answer its URL."""

    def _running_container(self, container_id: str) -> str:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        rec = self.engine.get(container_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {container_id} is not running")
        return rec["id"]

    def Exec(self, request, context):
        from .api import api_pb2 as pb

        _check_stdio(request)
        cid = self._running_container(request.container_id)
        req = ExecRequest(cid, list(request.cmd), request.tty, request.stdin, request.stdout,
                          request.stderr)
        return pb.ExecResponse(url=self.streaming.get_exec(req))

    def Attach(self, request, context):
        from .api import api_pb2 as pb

        _check_stdio(request)
        cid = self._running_container(request.container_id)
        req = AttachRequest(cid, request.tty, request.stdin, request.stdout, request.stderr)
        return pb.AttachResponse(url=self.streaming.get_attach(req))

    def PortForward(self, request, context):
        from .api import api_pb2 as pb

        if not request.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        pod = self.pods.get(request.pod_sandbox_id)
        if pod.get("state", "ready") != "ready":  # containerd: its sandbox is not running
            raise ContainerStateError(f"pod sandbox {pod['id']} is not ready")
        req = PortForwardRequest(pod["id"], list(request.port))
        return pb.PortForwardResponse(url=self.streaming.get_port_forward(req))
