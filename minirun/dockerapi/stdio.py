"""A container's stdio on a hijacked connection: docker's stream format, the relay
between the client and the daemon's attach connection, and resize.

Frames (no tty): an 8-byte header, [stream, 0, 0, 0, size as big-endian uint32] with
stream 1 for stdout and 2 for stderr, then the bytes; with a tty the output is raw.

The relay runs in the connection's own process, one select loop (no threads: the
process may fork later), until the container exits (the daemon's EXIT message), the
client goes away or types the detach keys. The client closing its write side (the
docker CLI's CloseWrite at its stdin's end) is the container's stdin EOF.
"""

from __future__ import annotations

import os
import select
import socket
import struct

from ..daemon import proto
from ..errors import MiniRunError

STREAM_IDS = {"stdin": 0, "stdout": 1, "stderr": 2}
TAG_STREAMS = {proto.STDOUT: "stdout", proto.STDERR: "stderr"}
RECORD_CHECK = 1.0  # seconds between looks at the record while the start is awaited


def frame(stream: str, data: bytes) -> bytes:
    return struct.pack(">BxxxL", STREAM_IDS[stream], len(data)) + data


def _daemon_socket(engine) -> socket.socket:
    from ..daemon.server import ensure_daemon

    ensure_daemon(engine)
    return proto.connect(os.path.join(engine.run_root, "minirun.sock"), timeout=120)


def open_daemon_attach(engine, cid: str, stdin: bool, until_started: bool):
    """The daemon's attach connection: (socket, its reply and fds, or None while the
    start is awaited). Returns once the daemon has registered the client: a start asked
    after this is attached (the order the docker CLI relies on: attach, then start)."""
    sock = _daemon_socket(engine)
    try:
        proto.send(sock, {"op": "attach", "id": cid, "stdin": stdin,
                          "until_started": until_started})
        reply, fds = proto.recv(sock)
    except BaseException:
        sock.close()
        raise
    if reply is None or "error" in reply:
        for fd in fds:
            os.close(fd)
        sock.close()
        if reply is None:
            raise MiniRunError("the minirun daemon closed the connection")
        raise proto.reply_error(reply)
    sock.settimeout(None)
    return sock, (None if reply.get("waiting") else (reply, fds))


def _await_reply(engine, cid: str, daemon: socket.socket, client: socket.socket,
                 early: list[bytes]):
    """The daemon's attach reply (dict, fds), or None if the container went away or the
    client did. Input the client sends meanwhile is kept in `early`."""
    reading = True
    while True:
        watch = [daemon, client] if reading else [daemon]
        ready, _, _ = select.select(watch, [], [], RECORD_CHECK)
        if daemon in ready:
            reply, fds = proto.recv(daemon)
            if reply is None or "error" in reply:
                for fd in fds:
                    os.close(fd)
                return None
            return reply, fds
        if client in ready:
            data = client.recv(1 << 16)
            early.append(data)
            if not data:
                reading = False
        if not ready and engine.get_status_only(cid) is None:
            return None  # removed before it started


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def attach_session(req, conn, daemon: socket.socket, got, want: set[str], stdin: bool,
                   keys: bytes, cid: str) -> None:
    from ..terminal import DetachKeys

    client = conn.sock
    early = [conn.pending] if conn.pending else []
    try:
        if got is None:
            got = _await_reply(req.engine, cid, daemon, client, early)
        if got is None:
            return
        reply, fds = got
        tty = bool(reply.get("tty"))
        input_fd = fds[0] if fds and reply.get("stdin") else None
        for fd in fds:
            if fd != input_fd:
                os.close(fd)
        watcher = DetachKeys(keys if input_fd is not None else b"")
        reading = True

        def take_input(data: bytes) -> bool:
            """False once the client is done sending (EOF or the detach keys)."""
            nonlocal input_fd
            if not data:
                if input_fd is not None:
                    os.close(input_fd)
                    input_fd = None
                    if not tty:
                        proto.send(daemon, {"op": "close_stdin"})
                return False
            data, detached = watcher.feed(data)
            if input_fd is not None and data:
                try:
                    _write_all(input_fd, data)
                except OSError:
                    pass
            if detached:
                raise _Detached()
            return True

        for data in early:
            if reading:
                reading = take_input(data)
        while True:
            ready, _, _ = select.select([daemon, client] if reading else [daemon], [], [])
            if daemon in ready:
                msg = daemon.recv(proto.MAX_MSG)
                if not msg or msg[:1] == proto.EXIT:
                    return
                stream = TAG_STREAMS.get(msg[:1])
                if stream in want:
                    client.sendall(msg[1:] if tty else frame(stream, msg[1:]))
            if client in ready:
                reading = take_input(client.recv(1 << 16))
    except _Detached:
        return
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        daemon.close()


class _Detached(Exception):
    pass


def resize_container(engine, cid: str, height: int, width: int) -> None:
    """The container's terminal to this size (nothing for one without a tty)."""
    import fcntl
    import termios

    sock = _daemon_socket(engine)
    try:
        proto.send(sock, {"op": "attach", "id": cid, "stdin": False})
        reply, fds = proto.recv(sock)
    finally:
        sock.close()
    if reply is None or "error" in reply:
        for fd in fds:
            os.close(fd)
        raise MiniRunError((reply or {}).get("error") or "the daemon closed the connection")
    try:
        if reply.get("tty") and fds:
            fcntl.ioctl(fds[0], termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    finally:
        for fd in fds:
            os.close(fd)
