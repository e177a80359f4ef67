"""The CRI gRPC server: kubelet -> unix socket -> impl objects -> engine.

  kubelet -> /runtime.v1.RuntimeService/<Rpc>       RuntimeService impl (runtime_service.py)
  kubelet -> /runtime.v1.ImageService/<Rpc>         ImageService impl (image_service.py)
  kubelet -> /runtime.v1alpha2.{Runtime,Image}Service/<Rpc>   the same impls: v1alpha2
             messages are wire-compatible subsets of v1's, so v1 classes decode them
             (containerd 1.6 serves both the same way; kubelets up to 1.25 speak v1alpha2)

Handlers are built from the rpcs api.proto declares and the methods an impl object has:
a method named as the rpc, with a servicer's signature `(self, request, context)`
(a generator for the stream rpcs, GetContainerEvents and the Stream* lists). An rpc the
impl lacks answers UNIMPLEMENTED. Each call sees `context.cri_api`, the package it was
called under ("v1" or "v1alpha2"), and goes through one wrapper that turns minirun.errors
into status codes:

  NotFound -> NOT_FOUND            InvalidArgument, InvalidSpec -> INVALID_ARGUMENT
  AlreadyExists -> ALREADY_EXISTS  ContainerStateError -> FAILED_PRECONDITION
  other MiniRunError -> UNKNOWN    anything else -> INTERNAL, logged with its traceback

(a program that is missing or not executable is UNKNOWN, as containerd answers a start
that fails). An impl may also abort the call itself (`context.abort(code, msg)`).

The socket is made under umask 077 (never world-accessible, even for an instant) and
chmod 0600; `<socket>.lock` is flocked for the server's life, so a second server on the
same socket refuses at once, and a socket file nobody serves (a killed server's) is
removed before binding. SIGTERM/SIGINT stop it: calls in flight get `grace` seconds,
then the socket goes, then each impl's close() (if it has one: the streaming server's
end) is called.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import threading
import traceback
from concurrent import futures

import grpc

from ..errors import (
    AlreadyExists,
    ContainerStateError,
    ExecutableNotFound,
    InvalidArgument,
    InvalidSpec,
    MiniRunError,
    NotExecutable,
    NotFound,
    Unsupported,
)
from .api import api_pb2 as pb

DEFAULT_SOCKET = "/run/minirun/cri.sock"
PACKAGES = {"runtime.v1": "v1", "runtime.v1alpha2": "v1alpha2"}
# kubelet's own limit for CRI messages (16 MiB; ListContainers on a busy node)
MAX_MESSAGE = 16 * 1024 * 1024
# first match wins: subclasses before their bases
STATUS_FOR_ERROR = (
    ((ExecutableNotFound, NotExecutable), grpc.StatusCode.UNKNOWN),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    ((InvalidArgument, InvalidSpec), grpc.StatusCode.INVALID_ARGUMENT),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (ContainerStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (MiniRunError, grpc.StatusCode.UNKNOWN),
)


def socket_path(arg: str | None = None) -> str:
    """--cri-socket, else $MINIRUN_CRI_SOCKET, else the default; unix:// accepted."""
    path = arg or os.environ.get("MINIRUN_CRI_SOCKET") or DEFAULT_SOCKET
    return path.removeprefix("unix://")


def log(level: str, msg: str, **fields) -> None:
    """One JSON line on stderr, as the daemon's log (Elastic Common Schema names)."""
    from ..daemon.server import log_json

    log_json(level, msg, **fields)


def status_for(e: BaseException) -> grpc.StatusCode | None:
    for kinds, code in STATUS_FOR_ERROR:
        if isinstance(e, kinds):
            return code
    return None


def _fail(context, method: str, e: Exception) -> None:
    """Abort the call with the status for e (raises)."""
    if context.code() not in (None, grpc.StatusCode.OK):
        raise e  # the impl aborted the call itself: that status stands
    code = status_for(e)
    if code is None:
        log("error", f"{method}: unexpected {type(e).__name__}: {e}",
            **{"error.type": type(e).__name__, "error.message": str(e),
               "error.stack_trace": traceback.format_exc()})
        context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {e}")
    context.abort(code, str(e))


def _unary(fn, method: str, api: str):
    def handle(request, context):
        context.cri_api = api
        try:
            return fn(request, context)
        except Exception as e:  # noqa: BLE001 - every error becomes a status
            _fail(context, method, e)
    return handle


def _stream(fn, method: str, api: str):
    def handle(request, context):
        context.cri_api = api
        try:
            yield from fn(request, context)
        except Exception as e:  # noqa: BLE001 - every error becomes a status
            _fail(context, method, e)
    return handle


def _unimplemented(method: str, streaming: bool):
    msg = f"minirun does not implement RPC {method}"
    if streaming:
        def handle_stream(request, context):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, msg)
            yield  # a generator, as grpc expects of a stream handler
        return handle_stream

    def handle(request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, msg)
    return handle


def generic_handlers(impls: dict) -> list:
    """{service name: impl object} -> grpc generic handlers for both packages."""
    handlers = []
    for package, api in PACKAGES.items():
        for service_name, impl in impls.items():
            service = pb.DESCRIPTOR.services_by_name[service_name]
            methods = {}
            for m in service.methods:
                req, resp = getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)
                fn = getattr(impl, m.name, None)
                if fn is None:
                    behaviour = _unimplemented(m.name, m.server_streaming)
                elif m.server_streaming:
                    behaviour = _stream(fn, m.name, api)
                else:
                    behaviour = _unary(fn, m.name, api)
                make = (grpc.unary_stream_rpc_method_handler if m.server_streaming
                        else grpc.unary_unary_rpc_method_handler)
                methods[m.name] = make(behaviour, request_deserializer=req.FromString,
                                       response_serializer=resp.SerializeToString)
            handlers.append(grpc.method_handlers_generic_handler(
                f"{package}.{service_name}", methods))
    return handlers


class CriServer:
    """The gRPC server on its unix socket: claim() takes the socket (refusing another
    server's), start() binds and serves, stop() ends it. `impls` maps the service names
    to the impl objects (None: every rpc of that service is UNIMPLEMENTED)."""

    def __init__(self, path: str, runtime=None, image=None, workers: int = 32) -> None:
        self.path = path
        self.impls = {"RuntimeService": runtime, "ImageService": image}
        self.workers = workers
        self._server = None
        self._lock_fd = -1
        self._inode = None

    def claim(self) -> None:
        """The lock, then a stale socket out of the way; refuses a live server's. start()
        claims if this was not called before."""
        if self._lock_fd >= 0:
            return
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o711, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MiniRunError(f"another minirun cri serves {self.path}") from None
        self._lock_fd = fd
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise MiniRunError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(2)
            probe.connect(self.path)
        except OSError:  # refused: nobody listens, the file is a dead server's
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise MiniRunError(f"another server answers on {self.path}")

    def start(self) -> None:
        self.claim()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cri"),
            handlers=generic_handlers(self.impls),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                     ("grpc.max_send_message_length", MAX_MESSAGE)])
        old = os.umask(0o077)  # the socket is born 0600: no window where others reach it
        try:
            if server.add_insecure_port(f"unix:{self.path}") == 0:
                raise MiniRunError(f"cannot listen on {self.path}")
            os.chmod(self.path, 0o600)
            self._inode = os.stat(self.path).st_ino
            server.start()
        finally:
            os.umask(old)
        self._server = server

    def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
            for impl in self.impls.values():
                close = getattr(impl, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception as e:  # noqa: BLE001 - the socket must still go
                        log("error", f"cri: closing {type(impl).__name__}: {e}")
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._inode = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def serve_until_signal(self, grace: float = 5.0) -> None:
        """start(), then serve until SIGTERM or SIGINT; stop() in any case."""
        done = threading.Event()

        def on_signal(signum, _frame):
            log("info", f"cri: {signal.Signals(signum).name}, stopping")
            done.set()
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            log("info", f"cri: serving runtime.v1 and runtime.v1alpha2 on {self.path}")
            while not done.wait(3600):
                pass
        finally:
            self.stop(grace)
            for s, h in old.items():
                signal.signal(s, h)
