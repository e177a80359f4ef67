"""The Docker API's HTTP server: docker client -> unix socket -> a route's handler -> engine.

Routes (the interface every resource module uses)
--------------------------------------------------
Every module of this package other than server.py that has a ROUTES list is found and
imported when the server starts (pkgutil over the package: a new resource is a new file,
nothing to edit here). ROUTES is a list of (method, pattern, handler):

    ROUTES = [
        ("GET", "/containers/json", list_containers),
        ("POST", "/containers/{id}/start", start),
        ("GET", "/images/{name:path}/json", inspect_image),   # {x:path} may hold "/"
    ]

A pattern is the path after the optional /v1.xx prefix; `{x}` matches one path segment,
`{x:path}` one or more. A request is matched against routes without parameters first,
then the others in module (alphabetical) and list order; the first match wins. No match
(or a match for another method only) is a 501 with docker's error JSON.

handler(req) gets a Request (req.method, req.path, req.api_version as a (major, minor)
tuple, req.params from the pattern, req.query, req.headers, req.engine: an Engine made on
first use, one per connection process) and returns one of:

    dict or list       -> 200, that JSON
    None               -> 204, no body
    Response(status, body=b"" | dict | list, content_type=..., headers={...})
    Stream(iterable of bytes, content_type=..., status=200, headers={...})
                       -> sent chunk by chunk (chunked encoding, flushed each chunk);
                          the iterable's close() runs when the client goes away
    Hijack(fn, content_type=...)
                       -> the connection is the handler's: the server answers
                          "101 UPGRADED" (Upgrade: tcp, as docker does when the client asked
                          for it, else 200), then calls fn(conn) with a Hijacked (conn.sock,
                          conn.pending: client bytes already read past the request); the
                          connection is closed after fn returns

Errors: raise ApiError(status, message) for a given status, or let a minirun error
through: NotFound -> 404, AlreadyExists / ContainerStateError -> 409, InvalidArgument /
InvalidSpec / NotExecutable / ExecutableNotFound -> 400, Unsupported -> 501, other
MiniRunError -> 500, anything else -> 500 with the traceback in the server's log. Every
error goes out as docker's {"message": "..."} so the clients print their usual lines and
exit codes (the docker CLI's 125/126/127 come from the message of a failed start).
Helpers for handlers: req.json() (the body as JSON; {} when empty), req.body_file() (a
reader over the body, chunked or not: `docker cp`'s tar), req.q(name), req.qbool(name),
req.qint(name), req.filters() (docker's `filters` JSON as {name: [values]}),
req.client_gone() (the client closed its side: for follow loops), json_lines(items).

Versions: /_ping and /version say API 1.41 (docker CLI 20.10's); a request under
/v1.xx/ with xx from 1.24 (MinAPIVersion) up to 1.41 is served (req.api_version says
which), one above or below is a 400 worded as docker words it; no prefix means 1.41.

Server model: the standard library (socketserver over AF_UNIX, http.server's request
parsing) rather than a framework: the API is plain HTTP/1.1 plus the connection
hijacking that attach and exec need (which WSGI frameworks cannot express), the routes
are a table, and minirun's start path stays free of new dependencies. A process per
connection (fork, no exec) rather than threads: the engine's code forks without exec and
the child unshare()s a user namespace (Engine.prepare's idmapped snapshot for --userns,
the host probes behind /info), which the kernel refuses a child of a multithreaded
process (EINVAL), and each process has its own SQLite connection. The listening process
itself stays single-threaded and never opens the engine's database. A fork costs about
1 ms; a connection's process lives as long as the client keeps the connection open
(the docker CLI keeps it alive across its requests, long streams hold theirs).

The socket is made under umask 177 (never more open than 0600, even for an instant),
then chmod 0660, root's (or systemd passes it: socket activation, LISTEN_FDS=1, as
contrib/systemd/minirun-docker.socket makes it); `<socket>.lock` is flocked for the server's life, so a second
server on the same socket refuses at once with one line, and a socket file nobody serves
(a killed server's) is removed before binding. SIGTERM/SIGINT: the listening socket and
its file go; the connections' processes are sent SIGTERM and reaped.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import pkgutil
import re
import select
import signal
import socket
import socketserver
import sys
import traceback
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from .. import __version__
from ..errors import (AlreadyExists, ContainerStateError, ExecutableNotFound, InvalidArgument,
                      InvalidSpec, MiniRunError, NotExecutable, NotFound, Unsupported)
from . import API_VERSION, DEFAULT_SOCKET, MIN_API_VERSION

# first match wins: subclasses before their bases
STATUS_FOR_ERROR = (
    ((ExecutableNotFound, NotExecutable), 400),
    (NotFound, 404),
    (Unsupported, 501),
    ((InvalidArgument, InvalidSpec), 400),
    ((AlreadyExists, ContainerStateError), 409),
    (MiniRunError, 500),
)
# imported by the listening process once, so that no connection's process pays for them
# (~100 ms of imports, most requests need some of them)
PRELOAD = ("minirun.engine", "minirun.image.store", "minirun.network.manager",
           "minirun.daemon.server", "minirun.container", "minirun.dockerview",
           "minirun.containerfs", "minirun.containerops", "minirun.logs", "minirun.lookup",
           "minirun.names", "minirun.runflags", "minirun.execproc", "minirun.terminal",
           "minirun.monitor.cgstats", "minirun.dockerapi.translate")
MAX_CHILDREN = 512  # connections served at once (each a process; streams hold theirs)
VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


API = parse_version(API_VERSION)
MIN_API = parse_version(MIN_API_VERSION)


def socket_path(arg: str | None = None) -> str:
    """--socket, else $MINIRUN_DOCKER_SOCKET, else the default; unix:// accepted."""
    path = arg or os.environ.get("MINIRUN_DOCKER_SOCKET") or DEFAULT_SOCKET
    return path.removeprefix("unix://")


# --- what handlers return -------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Response:
    def __init__(self, status: int = 200, body=b"", content_type: str = "application/json",
                 headers: dict | None = None) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


class Stream:
    def __init__(self, chunks, content_type: str = "application/json", status: int = 200,
                 headers: dict | None = None) -> None:
        self.chunks = chunks
        self.content_type = content_type
        self.status = status
        self.headers = headers or {}


class Hijack:
    def __init__(self, fn, content_type: str = "application/vnd.docker.raw-stream",
                 headers: dict | None = None) -> None:
        self.fn = fn
        self.content_type = content_type
        self.headers = headers or {}


class Hijacked:
    """A hijacked connection: the socket and the client's bytes already read with the
    request (to be treated as the start of its input)."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self.pending = pending


def json_lines(items) -> Stream:
    """A Stream of JSON documents, one a line (pull progress, events, stats)."""
    return Stream(json.dumps(i).encode() + b"\n" for i in items)


def error_body(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


# --- routes ---------------------------------------------------------------------------------

class Route:
    def __init__(self, method: str, pattern: str, handler) -> None:
        self.method = method
        self.pattern = pattern
        self.handler = handler
        parts = []
        for piece in re.split(r"(\{[^}]+\})", pattern):
            if piece.startswith("{"):
                name, _, kind = piece[1:-1].partition(":")
                parts.append(f"(?P<{name}>.+)" if kind == "path" else f"(?P<{name}>[^/]+)")
            else:
                parts.append(re.escape(piece))
        self.regex = re.compile("^" + "".join(parts) + "$")
        self.literal = "{" not in pattern


def load_routes(package: str = __package__) -> list[Route]:
    """Every ROUTES of the package's modules, routes without parameters first."""
    pkg = importlib.import_module(package)
    routes = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name == "server" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for method, pattern, handler in getattr(module, "ROUTES", ()):
            routes.append(Route(method, pattern, handler))
    return [r for r in routes if r.literal] + [r for r in routes if not r.literal]


def match(routes: list[Route], method: str, path: str):
    """(route, params) or (None, None)."""
    for r in routes:
        if r.method != method:
            continue
        m = r.regex.match(path)
        if m:
            return r, {k: unquote(v) for k, v in m.groupdict().items()}
    return None, None


# --- a request ------------------------------------------------------------------------------

class Request:
    def __init__(self, handler: "Handler", method: str, path: str, api_version, query: dict,
                 params: dict) -> None:
        self._h = handler
        self.method = method
        self.path = path
        self.api_version = api_version
        self.query = query
        self.params = params
        self.headers = handler.headers
        self.server = handler.server
        self._body_read = False

    @property
    def engine(self):
        return self.server.engine()

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def qbool(self, name: str, default: bool = False) -> bool:
        value = self.q(name)
        if value is None:
            return default
        return value.lower() not in ("", "0", "false", "no")

    def qint(self, name: str, default: int | None = None) -> int | None:
        value = self.q(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise ApiError(400, f"invalid value for {name}: {value!r}") from None

    def filters(self) -> dict[str, list[str]]:
        """docker's filters: {"status": ["running"]} or the old {"status": {"running": true}}."""
        text = self.q("filters")
        if not text:
            return {}
        try:
            doc = json.loads(text)
        except ValueError:
            raise ApiError(400, f"invalid filters: {text}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, f"invalid filters: {text}")
        out = {}
        for k, v in doc.items():
            if isinstance(v, dict):
                out[k] = [x for x, on in v.items() if on]
            elif isinstance(v, list):
                out[k] = [str(x) for x in v]
            else:
                out[k] = [str(v)]
        return out

    def body_file(self):
        """A reader over the request's body (read(n) -> bytes, b"" at its end)."""
        self._body_read = True
        return self._h.body_reader()

    def body(self) -> bytes:
        f = self.body_file()
        chunks = []
        while True:
            b = f.read(65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)

    def json(self) -> dict:
        data = self.body()
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError as e:
            raise ApiError(400, f"invalid JSON body: {e}") from None

    def client_gone(self) -> bool:
        """The client closed its side (a follow loop's cue to end)."""
        sock = self._h.connection
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class _LengthReader:
    def __init__(self, rfile, length: int) -> None:
        self.rfile = rfile
        self.left = length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data = self.rfile.read(n)
        self.left -= len(data)
        if not data:
            self.left = 0
        return data


class _ChunkedReader:
    def __init__(self, rfile) -> None:
        self.rfile = rfile
        self.left = 0
        self.done = False

    def read(self, n: int = -1) -> bytes:
        if self.done:
            return b""
        if self.left == 0:
            line = self.rfile.readline(1024)
            try:
                self.left = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise ApiError(400, "malformed chunked body") from None
            if self.left == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                self.done = True
                return b""
        n = self.left if n < 0 else min(n, self.left)
        data = self.rfile.read(n)
        if not data:
            self.done = True
            return b""
        self.left -= len(data)
        if self.left == 0:
            self.rfile.readline(16)  # the chunk's CRLF
        return data


# --- the HTTP side --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def version_string(self) -> str:
        return f"minirun/{__version__} (linux)"

    def log_message(self, fmt, *args) -> None:
        if self.server.debug:
            log("debug", fmt % args)

    def body_reader(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return _ChunkedReader(self.rfile)
        return _LengthReader(self.rfile, int(self.headers.get("Content-Length") or 0))

    def _common_headers(self) -> None:
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Docker-Experimental", "false")
        self.send_header("Ostype", "linux")

    def send_plain(self, status: int, body: bytes, content_type: str, headers=(),
                   head: bool = False) -> None:
        self.send_response(status)
        self._common_headers()
        for k, v in dict(headers).items():
            self.send_header(k, v)
        if status != 204 and status != 304:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head and status != 204:
            self.wfile.write(body)
        self.wfile.flush()

    def send_error_json(self, status: int, message: str) -> None:
        self.send_plain(status, error_body(message), "application/json")

    def handle_one_request(self) -> None:
        # BaseHTTPRequestHandler's, with every method going to dispatch()
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = ""
                self.request_version = ""
                self.command = ""
                self.send_error_json(414, "request line too long")
                self.close_connection = True
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.dispatch()
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def send_error(self, code, message=None, explain=None) -> None:
        # parse_request's errors, as docker's JSON
        self.close_connection = True
        self.send_error_json(code, message or "bad request")

    def dispatch(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        version = API
        m = VERSION_PREFIX.match(path)
        if m:
            version = (int(m.group(1)), int(m.group(2)))
            path = m.group(3)
        method = self.command
        head = method == "HEAD"
        req = None
        try:
            if version > API:
                raise ApiError(400, f"client version {version[0]}.{version[1]} is too new. "
                                    f"Maximum supported API version is {API_VERSION}")
            if version < MIN_API:
                raise ApiError(400, f"client version {version[0]}.{version[1]} is too old. "
                                    f"Minimum supported API version is {MIN_API_VERSION}, "
                                    "please upgrade your client to a newer version")
            route, params = match(self.server.routes, method, path)
            if route is None and head:
                route, params = match(self.server.routes, "GET", path)
            if route is None:
                raise ApiError(501, f"minirun does not implement {method} {path}")
            req = Request(self, method, path, version,
                          parse_qs(url.query, keep_blank_values=True), params)
            result = route.handler(req)
        except ApiError as e:
            self._drain(req)
            self.send_error_json(e.status, e.message)
            return
        except MiniRunError as e:
            self._drain(req)
            self.send_error_json(status_for(e), str(e))
            return
        except Exception as e:  # noqa: BLE001 - every error is an answer
            log("error", f"{method} {path}: unexpected {type(e).__name__}: {e}",
                **{"error.stack_trace": traceback.format_exc()})
            self._drain(req)
            self.send_error_json(500, f"{type(e).__name__}: {e}")
            return
        self._drain(req)
        self.respond(result, head)

    def _drain(self, req: Request | None) -> None:
        """A body the handler left unread is read away, so the next request on the
        connection starts where it should (a large one closes the connection instead)."""
        if req is not None and req._body_read:
            return
        length = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if chunked or (length and int(length) > 1 << 20):
            self.close_connection = True
        elif length:
            self.rfile.read(int(length))

    def respond(self, result, head: bool) -> None:
        if result is None:
            self.send_plain(204, b"", "")
        elif isinstance(result, (dict, list)):
            self.send_plain(200, json.dumps(result).encode(), "application/json", head=head)
        elif isinstance(result, Response):
            self.send_plain(result.status, result.body, result.content_type, result.headers,
                            head=head)
        elif isinstance(result, Stream):
            self.send_stream(result)
        elif isinstance(result, Hijack):
            self.hijack(result)
        else:
            raise TypeError(f"a handler returned {type(result).__name__}")

    def send_stream(self, s: Stream) -> None:
        self.send_response(s.status)
        self._common_headers()
        for k, v in s.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", s.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        chunks = iter(s.chunks)
        try:
            for chunk in chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def hijack(self, h: Hijack) -> None:
        upgrade = (self.headers.get("Upgrade") or "").lower() == "tcp"
        if upgrade:
            self.send_response_only(101, "UPGRADED")
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
        else:
            self.send_response_only(200)
        self._common_headers()
        self.send_header("Content-Type", h.content_type)
        for k, v in h.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        sock = self.connection
        sock.setblocking(False)
        try:
            pending = self.rfile.read1(1 << 16) or b""
        except (BlockingIOError, TypeError):
            pending = b""
        finally:
            sock.setblocking(True)
        try:
            h.fn(Hijacked(sock, pending))
        except (BrokenPipeError, ConnectionResetError):
            pass


def status_for(e: BaseException) -> int:
    for kinds, status in STATUS_FOR_ERROR:
        if isinstance(e, kinds):
            return status
    return 500


def log(level: str, msg: str, **fields) -> None:
    """One JSON line on stderr, as the daemon's log (Elastic Common Schema names)."""
    from ..daemon.server import rfc3339nano

    rec = {"@timestamp": rfc3339nano(), "log.level": level, "message": msg,
           "process.pid": os.getpid()}
    rec.update(fields)
    sys.stderr.write(json.dumps(rec) + "\n")
    sys.stderr.flush()


# --- the listening process ------------------------------------------------------------------

class Server(socketserver.UnixStreamServer):
    """A process per connection (see the module's docstring for why)."""

    allow_reuse_address = False
    request_queue_size = 128

    def __init__(self, path: str, root: str | None = None, run_root: str | None = None,
                 debug: bool = False) -> None:
        self.path = path
        self.root = root
        self.run_root = run_root
        self.debug = debug
        self.routes = load_routes()
        for name in PRELOAD:
            importlib.import_module(name)
        self.children: set[int] = set()
        self.activated = systemd_socket()
        self.lock_fd = lock_socket(path, remove_stale=self.activated is None)
        self._engine = None
        old = os.umask(0o177)
        try:
            super().__init__(path, Handler, bind_and_activate=self.activated is None)
        finally:
            os.umask(old)
        if self.activated is not None:  # systemd made, bound and listens on it
            self.socket.close()
            self.socket = self.activated
        else:
            os.chmod(path, 0o660)
        os.set_inheritable(self.socket.fileno(), False)

    def engine(self):
        """The connection process's Engine (never the listening process's: a fork must
        not share an SQLite connection)."""
        if self._engine is None:
            from ..engine import Engine

            self._engine = Engine(self.root, self.run_root)
        return self._engine

    def process_request(self, request, client_address) -> None:
        self.reap(block=len(self.children) >= MAX_CHILDREN)
        pid = os.fork()
        if pid:
            self.children.add(pid)
            request.close()
            return
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.socket.close()
            os.close(self.lock_fd)
            self.finish_request(request, client_address)
            code = 0
        except Exception:  # noqa: BLE001 - logged; the child ends either way
            log("error", "connection failed", **{"error.stack_trace": traceback.format_exc()})
        finally:
            try:
                self.shutdown_request(request)
            finally:
                os._exit(code)

    def reap(self, block: bool = False) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            block = False

    def run(self) -> None:
        """Until SIGTERM or SIGINT."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        try:
            while not stop:
                try:
                    ready, _, _ = select.select([self.socket, r], [], [], 5.0)
                except InterruptedError:
                    ready = []
                if r in ready:
                    try:
                        while os.read(r, 512):
                            pass
                    except BlockingIOError:
                        pass
                self.reap()
                if self.socket in ready and not stop:
                    self._handle_request_noblock()
        finally:
            signal.set_wakeup_fd(-1)
            os.close(r)
            os.close(w)
            self.close()

    def close(self) -> None:
        try:
            self.server_close()
        finally:
            try:
                if self.activated is None:  # systemd's socket stays for the next start
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            for pid in list(self.children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            while self.children:
                self.reap(block=True)
            os.close(self.lock_fd)


def systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation: LISTEN_PID is us,
    LISTEN_FDS 1, the socket is fd 3), else None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or \
            os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for the processes we start
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise MiniRunError("the socket systemd passed is not a unix stream socket")
    return sock


def lock_socket(path: str, remove_stale: bool = True) -> int:
    """flock <path>.lock for the server's life; a stale socket file is removed. A
    MiniRunError (one line) when another server has it."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o711, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise MiniRunError(f"another server is serving {path}"
                               + (f" (pid {pid})" if pid else "")) from None
        raise MiniRunError(f"cannot lock {path}.lock: {e.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    if remove_stale:
        try:
            os.unlink(path)  # a killed server's socket: nobody serves it (we hold the lock)
        except FileNotFoundError:
            pass
    return fd
