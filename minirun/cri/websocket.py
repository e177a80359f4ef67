"""RFC 6455 WebSocket, the server side, and Kubernetes' channel protocols on top of it.

Handshake: GET with `Upgrade: websocket`, `Sec-WebSocket-Version: 13`,
`Sec-WebSocket-Key` (answered with base64(sha1(key + GUID))) and the subprotocols the
client offers in `Sec-WebSocket-Protocol`, best first; we answer the first we speak.

Frames: FIN(1) RSV(3) opcode(4) | MASK(1) length(7) [16 or 64-bit length] [mask key(4)]
payload. Client frames are masked, ours are not. Opcodes: 0 continuation, 1 text,
2 binary, 8 close, 9 ping (answered with a pong), 10 pong.

Channel protocols (k8s.io/apimachinery wsstream): every message starts with its channel
number, one byte (channel.k8s.io, v4.channel.k8s.io, v5.channel.k8s.io; binary frames) or
one ASCII digit followed by the payload in base64 (base64.channel.k8s.io,
v4.base64.channel.k8s.io; text frames). v5 adds channel 255: a message [255, n] closes
channel n (the client's end of stdin).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
CLOSE_CHANNEL = 255
MAX_MESSAGE = 16 << 20


class ProtocolError(Exception):
    pass


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    n = len(payload)
    maskbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, maskbit | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, maskbit | 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, maskbit | 127, n)
    if mask:
        return head + mask + apply_mask(payload, mask)
    return head + payload


def apply_mask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big") if n else b""


def _read_exact(rfile, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        more = rfile.read(n - len(data))
        if not more:
            return None
        data += more
    return data


def read_frame(rfile) -> tuple[bool, int, bytes] | None:
    """(fin, opcode, unmasked payload); None at the end of the connection."""
    head = _read_exact(rfile, 2)
    if head is None:
        return None
    b0, b1 = head
    n = b1 & 0x7F
    if n == 126:
        raw = _read_exact(rfile, 2)
        n = struct.unpack(">H", raw)[0] if raw else -1
    elif n == 127:
        raw = _read_exact(rfile, 8)
        n = struct.unpack(">Q", raw)[0] if raw else -1
    if n < 0:
        return None
    if n > MAX_MESSAGE:
        raise ProtocolError(f"frame of {n} bytes is too large")
    mask = _read_exact(rfile, 4) if b1 & 0x80 else None
    payload = _read_exact(rfile, n) if n else b""
    if payload is None or (b1 & 0x80 and mask is None):
        return None
    if mask:
        payload = apply_mask(payload, mask)
    return bool(b0 & 0x80), b0 & 0x0F, payload


class Connection:
    """A server-side WebSocket: messages() yields whole data messages; send() and close()
    from any thread."""

    def __init__(self, sock: socket.socket, rfile) -> None:
        self.sock = sock
        self.rfile = rfile
        self.write_lock = threading.Lock()
        self.closed = False

    def send(self, opcode: int, payload: bytes) -> None:
        with self.write_lock:
            if self.closed:
                raise BrokenPipeError("websocket is closed")
            self.sock.sendall(encode_frame(opcode, payload))

    def close(self, code: int = 1000) -> None:
        with self.write_lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.sock.sendall(encode_frame(OP_CLOSE, struct.pack(">H", code)))
            except OSError:
                pass

    def messages(self):
        """(opcode, payload) of each text or binary message until a close or the end."""
        parts: list[bytes] = []
        first_op = size = 0
        while True:
            try:
                frame = read_frame(self.rfile)
            except (OSError, ProtocolError):
                return
            if frame is None:
                return
            fin, opcode, payload = frame
            if opcode == OP_CLOSE:
                self.close()
                return
            if opcode == OP_PING:
                try:
                    self.send(OP_PONG, payload)
                except OSError:
                    return
                continue
            if opcode == OP_PONG:
                continue
            if opcode != OP_CONT:
                first_op, parts, size = opcode, [], 0
            parts.append(payload)
            size += len(payload)
            if size > MAX_MESSAGE:  # fragments without end
                self.close(1009)
                return
            if fin:
                yield first_op, b"".join(parts)
                parts = []


class Channels:
    """The k8s channel framing of a Connection: write(channel, data); base64 protocols
    send text frames."""

    def __init__(self, conn: Connection, binary: bool) -> None:
        self.conn = conn
        self.binary = binary

    def write(self, channel: int, data: bytes) -> None:
        if self.binary:
            self.conn.send(OP_BINARY, bytes([channel]) + data)
        else:
            self.conn.send(OP_TEXT, str(channel).encode() + base64.b64encode(data))

    def decode(self, payload: bytes) -> tuple[int, bytes] | None:
        if not payload:
            return None
        if self.binary:
            return payload[0], payload[1:]
        try:
            return payload[0] - ord("0"), base64.b64decode(payload[1:], validate=True)
        except ValueError:
            return None
