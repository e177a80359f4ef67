"""A SPDY/3.1 client for the streaming server's tests, used as kubectl and crictl use a
kubelet's streaming URL (client-go's remotecommand and portforward over spdystream).

Covers: the HTTP upgrade (Upgrade: SPDY/3.1, X-Stream-Protocol-Version offers, the 101 and
its chosen version, or the refusal's status and body); client-opened streams (odd ids)
with SYN_STREAM, zlib-compressed header blocks with the SPDY/3 dictionary through one
compression context per direction, FIN on DATA frames, SYN_REPLY / RST_STREAM / PING /
GOAWAY / WINDOW_UPDATE / SETTINGS from the server, and a record of every frame received
so tests can check flow control (the server's WINDOW_UPDATEs, and that it never sends
past a window we announced with SETTINGS). Written apart from minirun/cri/spdy.py: only
the dictionary (a published constant, checked by its adler32) is shared.

exec_v4(): the remote command session of kubectl exec: error, stdin, stdout, stderr and
resize streams in that order; stdin sent then closed; the error stream read to its end.
"""

from __future__ import annotations

import json
import queue
import socket
import struct
import threading
import time
import urllib.parse
import zlib

from minirun.cri.spdy import DICTIONARY

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = \
    1, 2, 3, 4, 6, 7, 8, 9


class UpgradeRefused(Exception):
    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        super().__init__(f"upgrade refused: {status} {body!r}")
        self.status, self.headers, self.body = status, headers, body


def http_upgrade(url: str, headers: list[tuple[str, str]], method: str = "GET"
                 ) -> tuple[socket.socket, dict, bytes]:
    """Send the request; (socket, response headers, bytes already read past them) on a
    101, else UpgradeRefused."""
    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    target = u.path + (f"?{u.query}" if u.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {u.netloc}"] + \
        [f"{k}: {v}" for k, v in headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        if not more:
            break
        buf += more
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    status = int(status_line.split()[1])
    resp = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        resp[k.strip().lower()] = v.strip()
    if status != 101:
        length = int(resp.get("content-length", "0"))
        while len(rest) < length:
            more = sock.recv(65536)
            if not more:
                break
            rest += more
        sock.close()
        raise UpgradeRefused(status, resp, rest)
    return sock, resp, rest


class ClientStream:
    def __init__(self, conn: SpdyConnection, sid: int) -> None:
        self.conn = conn
        self.id = sid
        self.data = bytearray()
        self.fin = threading.Event()
        self.replied = threading.Event()
        self.reset_status: int | None = None

    def write(self, data: bytes, chunk: int = 16384) -> None:
        for i in range(0, len(data), chunk):
            self.conn._send(struct.pack(">II", self.id, len(data[i:i + chunk])) +
                            data[i:i + chunk])

    def close(self) -> None:
        self.conn._send(struct.pack(">II", self.id, (1 << 24) | 0))

    def read_all(self, timeout: float = 30) -> bytes:
        if not self.fin.wait(timeout):
            raise TimeoutError(f"stream {self.id}: no FIN after {timeout}s "
                               f"({len(self.data)} bytes so far)")
        return bytes(self.data)

    def wait_for(self, needle: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            if time.monotonic() > deadline or self.fin.is_set():
                raise TimeoutError(f"stream {self.id}: {needle!r} not in {bytes(self.data)!r}")
            time.sleep(0.02)
        return bytes(self.data)


class SpdyConnection:
    def __init__(self, url: str, protocols=("v4.channel.k8s.io",), method: str = "GET",
                 window: int | None = None, auto_window_update: bool = True) -> None:
        """window: announce this receive window with SETTINGS (and then keep it: no
        WINDOW_UPDATE is sent until consume() is called, unless auto_window_update)."""
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")] + \
            [("X-Stream-Protocol-Version", p) for p in protocols]
        self.sock, self.response, rest = http_upgrade(url, headers, method)
        self.protocol = self.response.get("x-stream-protocol-version", "")
        self.sock.settimeout(None)
        self.buf = rest
        self.lock = threading.Lock()
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.frames: list[tuple] = []  # ("data", sid, flags, len) / ("ctrl", type, payload)
        self.goaway = threading.Event()
        self.closed = threading.Event()
        self.deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                        DICTIONARY)
        self.inflate = zlib.decompressobj(15, DICTIONARY)
        self.window = window
        self.auto_window_update = auto_window_update
        self.received: dict[int, int] = {}
        if window is not None:
            self._control(SETTINGS, 0, struct.pack(">III", 1, 7, window))
        self._updates: queue.Queue = queue.Queue()
        threading.Thread(target=self._send_updates, daemon=True).start()
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()

    # --- sending ---------------------------------------------------------------------------

    def _send(self, raw: bytes) -> None:
        with self.lock:
            self.sock.sendall(raw)

    def _control(self, ftype: int, flags: int, payload: bytes) -> None:
        self._send(struct.pack(">HHI", 0x8003, ftype, (flags << 24) | len(payload)) + payload)

    def open_stream(self, headers: dict[str, str], fin: bool = False,
                    wait: bool = True) -> ClientStream:
        block = struct.pack(">I", len(headers))
        for k, v in headers.items():
            block += struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + \
                v.encode()
        with self.lock:
            sid = self.next_id
            self.next_id += 2
            stream = self.streams[sid] = ClientStream(self, sid)
            comp = self.deflate.compress(block) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
            payload = struct.pack(">IIBB", sid, 0, 0, 0) + comp
            self.sock.sendall(struct.pack(">HHI", 0x8003, SYN_STREAM,
                                          ((1 if fin else 0) << 24) | len(payload)) + payload)
        if wait:
            deadline = time.monotonic() + 10
            while not stream.replied.is_set() and stream.reset_status is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no SYN_REPLY for stream {sid}")
                time.sleep(0.005)
        return stream

    def _send_updates(self) -> None:
        while (item := self._updates.get()) is not None:
            try:
                self.window_update(*item)
            except OSError:
                return

    def ping(self, ping_id: int = 1) -> None:
        self._control(PING, 0, struct.pack(">I", ping_id))

    def window_update(self, sid: int, delta: int) -> None:
        self._control(WINDOW_UPDATE, 0, struct.pack(">II", sid, delta))

    def close(self) -> None:
        try:
            self._control(GOAWAY, 0, struct.pack(">II", 0, 0))
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # --- receiving -------------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            try:
                more = self.sock.recv(65536)
            except OSError:
                more = b""
            if not more:
                return None
            self.buf += more
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_loop(self) -> None:
        try:
            while True:
                head = self._read_exact(8)
                if head is None:
                    break
                first, second = struct.unpack(">II", head)
                flags, length = second >> 24, second & 0xFFFFFF
                payload = self._read_exact(length) if length else b""
                if payload is None:
                    break
                if first & 0x80000000:
                    self._on_control(first & 0xFFFF, flags, payload)
                else:
                    self._on_data(first & 0x7FFFFFFF, flags, payload)
        finally:
            self.closed.set()
            self._updates.put(None)
            for s in self.streams.values():
                s.fin.set()
                s.replied.set()

    def _on_control(self, ftype: int, flags: int, payload: bytes) -> None:
        self.frames.append(("ctrl", ftype, payload))
        if ftype == SYN_REPLY:
            sid = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            self.inflate.decompress(payload[4:])
            s = self.streams.get(sid)
            if s:
                s.replied.set()
                if flags & 1:
                    s.fin.set()
        elif ftype == RST_STREAM:
            sid, status = struct.unpack(">II", payload[:8])
            s = self.streams.get(sid & 0x7FFFFFFF)
            if s:
                s.reset_status = status
                s.fin.set()
                s.replied.set()
        elif ftype == GOAWAY:
            self.goaway.set()
        elif ftype == PING:
            pass

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        self.frames.append(("data", sid, flags, len(payload)))
        s = self.streams.get(sid)
        if s is None:
            return
        s.data += payload
        self.received[sid] = self.received.get(sid, 0) + len(payload)
        if payload and self.auto_window_update:
            # from another thread: our reader must never wait on our writes
            self._updates.put((sid, len(payload)))
        if flags & 1:
            s.fin.set()

    def window_updates_for(self, sid: int) -> int:
        """The window the server gave back on stream sid."""
        total = 0
        for f in list(self.frames):
            if f[0] == "ctrl" and f[1] == WINDOW_UPDATE:
                got_sid, delta = struct.unpack(">II", f[2][:8])
                total += delta if got_sid == sid else 0
        return total


def exec_v4(url: str, stdin: bytes | None = None, stdout: bool = True, stderr: bool = True,
            tty: bool = False, resize: tuple[int, int] | None = None,
            protocols=("v4.channel.k8s.io",), timeout: float = 60
            ) -> tuple[bytes, bytes, bytes]:
    """(stdout, stderr, error stream) of a session as kubectl exec runs it."""
    conn = SpdyConnection(url, protocols)
    try:
        error = conn.open_stream({"streamtype": "error"})
        s_in = conn.open_stream({"streamtype": "stdin"}) if stdin is not None else None
        s_out = conn.open_stream({"streamtype": "stdout"}) if stdout else None
        s_err = conn.open_stream({"streamtype": "stderr"}) if stderr and not tty else None
        s_resize = conn.open_stream({"streamtype": "resize"}) if tty else None
        if s_resize and resize:
            s_resize.write(json.dumps({"Width": resize[0], "Height": resize[1]}).encode())
        if s_in is not None:
            if stdin:
                s_in.write(stdin)
            s_in.close()
        err = error.read_all(timeout)
        out = s_out.read_all(timeout) if s_out else b""
        errout = s_err.read_all(timeout) if s_err else b""
        return out, errout, err
    finally:
        conn.close()
