"""The small message protocol between the CLI, the daemon and the keeper: one JSON object
per SOCK_SEQPACKET message, file descriptors alongside with SCM_RIGHTS.

After an attach handshake the daemon sends the client stream messages instead: one tag
byte and the payload, STDOUT/STDERR with the container's output, EXIT with its exit
status in ASCII (the last message)."""

from __future__ import annotations

import array
import json
import os
import socket

MAX_MSG = 1 << 20
MAX_FDS = 64

STDOUT, STDERR, EXIT = b"o", b"e", b"x"
STREAM_TAGS = {"stdout": STDOUT, "stderr": STDERR}


def send(sock: socket.socket, msg: dict, fds: list[int] | tuple = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """(message, fds); (None, []) when the peer has gone."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, MAX_FDS)
    for fd in fds:
        # recvmsg does not ask for MSG_CMSG_CLOEXEC: a pty master or pipe must not leak
        # into whatever the receiver forks next
        os.set_inheritable(fd, False)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def error_reply(e: BaseException) -> dict:
    """An error as a reply: the message and, for the CLI's exit status, its class."""
    return {"error": str(e) or type(e).__name__, "kind": type(e).__name__}


def reply_error(reply: dict) -> Exception:
    """The exception an error reply stands for (MiniRunError's subclasses by name)."""
    from .. import errors

    cls = getattr(errors, reply.get("kind") or "", None)
    if not (isinstance(cls, type) and issubclass(cls, errors.MiniRunError)):
        cls = errors.MiniRunError
    return cls(reply["error"])


def connect(path: str, timeout: float | None = 30.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def listen(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def read_output(fd: int) -> bytes | None:
    """A chunk of a container's output from its non-blocking pipe or pty master: None
    when there is nothing now, b"" at its end (EOF, or EIO: a pty master whose container
    side has all gone)."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""
