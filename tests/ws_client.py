"""A WebSocket (RFC 6455) client for the streaming server's tests, used as client-go's
WebSocket executor (kubectl exec since 1.30: v5.channel.k8s.io) and a v4 port-forward
client use a kubelet's streaming URL.

Covers: the opening handshake (Sec-WebSocket-Key checked against the server's
Sec-WebSocket-Accept, sub-protocol offers and the one chosen); masked client frames, the
server's unmasked ones, fragmented messages, ping/pong and the close handshake; the k8s
channel framing, binary (one channel byte) and base64 (one ASCII digit + base64).
Written apart from minirun/cri/websocket.py.

exec_ws(): stdin on channel 0 then (v5) the close signal [255, 0]; stdout 1, stderr 2,
the status on 3, resize JSON on 4; ends at the server's close.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

from spdy_client import http_upgrade

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsClient:
    def __init__(self, url: str, protocols=("v5.channel.k8s.io",)) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                   ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", key)]
        if protocols:
            headers.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
        self.sock, self.response, self.buf = http_upgrade(url, headers)
        want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if self.response.get("sec-websocket-accept") != want:
            raise AssertionError(f"bad Sec-WebSocket-Accept {self.response}")
        self.protocol = self.response.get("sec-websocket-protocol", "")
        self.binary = "base64" not in self.protocol
        self.close_received = False

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        mask = os.urandom(4)
        n = len(payload)
        b0 = (0x80 if fin else 0) | opcode
        if n < 126:
            head = struct.pack(">BB", b0, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", b0, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", b0, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, channel: int, data: bytes) -> None:
        if self.binary:
            self.send_frame(2, bytes([channel]) + data)
        else:
            self.send_frame(1, str(channel).encode() + base64.b64encode(data))

    def _read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            more = self.sock.recv(65536)
            if not more:
                return None
            self.buf += more
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self) -> tuple[int, bytes] | None:
        head = self._read_exact(2)
        if head is None:
            return None
        b0, b1 = head
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read_exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read_exact(8))[0]
        return b0 & 0x0F, self._read_exact(n) or b""

    def messages(self):
        """(channel, data) of each data message until the server closes."""
        while True:
            frame = self.recv_frame()
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 8:
                self.close_received = True
                try:
                    self.send_frame(8, payload[:2])
                except OSError:
                    pass
                return
            if opcode in (1, 2) and payload:
                if self.binary:
                    yield payload[0], payload[1:]
                else:
                    yield payload[0] - ord("0"), base64.b64decode(payload[1:])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def exec_ws(url: str, stdin: bytes | None = None, resize: tuple[int, int] | None = None,
            protocols=("v5.channel.k8s.io",), timeout: float = 60
            ) -> tuple[bytes, bytes, bytes, WsClient]:
    """(stdout, stderr, status bytes, client) of an exec or attach session."""
    c = WsClient(url, protocols)
    c.sock.settimeout(timeout)
    try:
        if resize:
            c.send(4, json.dumps({"Width": resize[0], "Height": resize[1]}).encode())
        if stdin is not None:
            if stdin:
                c.send(0, stdin)
            if c.protocol == "v5.channel.k8s.io":
                c.send(255, bytes([0]))
        out = {1: b"", 2: b"", 3: b""}
        for channel, data in c.messages():
            out[channel] = out.get(channel, b"") + data
        return out[1], out[2], out[3], c
    finally:
        c.close()
