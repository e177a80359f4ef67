"""SPDY/3.1, the server side of a session, as kubelet's streaming server speaks it
(k8s.io/apimachinery httpstream/spdy, on moby/spdystream): after `Upgrade: SPDY/3.1` the
client opens the streams (odd ids), the server only answers them.

Frames, integers big-endian:
  control  1 | version(15) = 3 | type(16) | flags(8) | length(24) | payload
  data     0 | stream id(31)           | flags(8) | length(24) | payload   (flag 1: FIN)
  SYN_STREAM    1  stream id, associated id, priority(3) unused(5) slot(8), header block
  SYN_REPLY     2  stream id, header block
  RST_STREAM    3  stream id, status
  SETTINGS      4  count, then count x flags(8) id(24) value(32)  (7: INITIAL_WINDOW_SIZE)
  PING          6  id: echoed back when it is the peer's (odd: the client's)
  GOAWAY        7  last good stream id, status
  HEADERS       8  stream id, header block
  WINDOW_UPDATE 9  stream id, delta(31)
Header blocks: count(32), then for each header name length(32) name, value length(32)
value (several values NUL-separated), compressed by one zlib stream per direction that
lives as long as the session (sync-flushed after each block), with SPDY/3's dictionary.

Flow control: every stream starts with a 64 KiB window each way (the peer may change its
receive window with SETTINGS). We send WINDOW_UPDATE for what our readers consume. Our
sends honour the peer's window once the peer has shown it keeps one (a SETTINGS
INITIAL_WINDOW_SIZE or a WINDOW_UPDATE): Go's spdystream, which kubectl, crictl and the
apiserver's proxy use, implements no flow control and never sends WINDOW_UPDATE, so a
stream whose window runs out with no sign of flow control from the peer after
STALL_GRACE seconds is not throttled any more (on that session), as spdystream's own
server never throttles. The grace is paid once per session by such peers with more than
64 KiB of output: kubectl 1.27's `exec` of 3 MB takes 0.41 s (1.13 s with a 1 s grace;
0.09-0.12 s over WebSocket with kubectl 1.33).
"""

from __future__ import annotations

import socket
import struct
import threading
import zlib

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = \
    1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
SETTINGS_INITIAL_WINDOW_SIZE = 7
# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL, INTERNAL_ERROR = 1, 2, 3, 5, 6
INITIAL_WINDOW = 64 * 1024
MAX_FRAME = 1 << 24
DATA_CHUNK = 32 * 1024
STALL_GRACE = 0.25
INBOX_LIMIT = 1 << 20  # bytes received and not yet read, per stream
MAX_HEADER_BLOCK = 256 * 1024  # decompressed: a few headers, not a zlib bomb

_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range",
    "referer", "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade",
    "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status",
    "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin")
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
    "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
    "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
# The SPDY/3 draft's header compression dictionary (section 2.6.10.1): the common header
# names, each with a 32-bit length, then common values. 1423 bytes; its zlib dictionary id
# (adler32) is 0xe3c6a7c2, the id every SPDY/3 header block names.
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class ProtocolError(Exception):
    """The peer broke SPDY/3.1 framing; the session ends."""


def encode_headers(headers: dict[str, str | list[str]]) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        raw = b"\0".join(v.encode() for v in value) if isinstance(value, list) \
            else value.encode()
        name_b = name.lower().encode()
        out += [struct.pack(">I", len(name_b)), name_b, struct.pack(">I", len(raw)), raw]
    return b"".join(out)


def decode_headers(block: bytes) -> dict[str, list[str]]:
    """Names (lower-case) to their values."""
    try:
        (count,), pos = struct.unpack_from(">I", block), 4
        headers: dict[str, list[str]] = {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
            (n,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4:pos + 4 + n]
            if len(value) != n:
                raise ProtocolError("truncated header block")
            pos += 4 + n
            headers.setdefault(name, []).extend(v.decode() for v in value.split(b"\0"))
    except (struct.error, UnicodeDecodeError):
        raise ProtocolError("malformed header block") from None
    return headers


def compressor():
    return zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                            zlib.Z_DEFAULT_STRATEGY, DICTIONARY)


def decompressor():
    return zlib.decompressobj(15, DICTIONARY)


def control_frame(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


def data_frame(sid: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">II", sid & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


def read_frame(rfile) -> tuple[bool, int, int, bytes] | None:
    """(control?, type or stream id, flags, payload); None at the end of the connection."""
    head = _read_exact(rfile, 8)
    if head is None:
        return None
    first, second = struct.unpack(">II", head)
    flags, length = second >> 24, second & 0xFFFFFF
    payload = _read_exact(rfile, length) if length else b""
    if payload is None:
        raise ProtocolError("connection ended inside a frame")
    if first & 0x80000000:
        version = (first >> 16) & 0x7FFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        return True, first & 0xFFFF, flags, payload
    return False, first & 0x7FFFFFFF, flags, payload


def _read_exact(rfile, n: int) -> bytes | None:
    data = rfile.read(n)
    if not data:
        return None
    while len(data) < n:
        more = rfile.read(n - len(data))
        if not more:
            return None
        data += more
    return data


class Stream:
    """One client-opened stream: read/recv (b"" at the peer's FIN), write/sendall
    (BrokenPipeError once it is reset or the session is gone), close (our FIN)."""

    def __init__(self, session: Session, sid: int, headers: dict[str, list[str]],
                 remote_fin: bool) -> None:
        self.session = session
        self.id = sid
        self.headers = headers
        self.remote_fin = remote_fin
        self.local_fin = False
        self.reset = False
        self.abandoned = False  # nobody reads it any more: what comes is dropped
        self.send_window = session.initial_send_window
        self._inbox = bytearray()
        self._unacked = 0

    @property
    def closed(self) -> bool:
        """The peer reset the stream or went away: nobody reads what we write."""
        return self.reset or self.session.closed

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    # --- receiving -----------------------------------------------------------------------

    def read(self, n: int = 65536) -> bytes:
        s = self.session
        with s.cond:
            while not self._inbox and not self.remote_fin and not self.reset and not s.closed:
                s.cond.wait()
            data = bytes(self._inbox[:n])
            del self._inbox[:n]
            if data:
                s.cond.notify_all()  # a reader held back by INBOX_LIMIT may go on
            self._unacked += len(data)
            ack = 0
            if self._unacked >= INITIAL_WINDOW // 2 and not self.remote_fin:
                ack, self._unacked = self._unacked, 0
        if ack:
            s.send_control(WINDOW_UPDATE, 0, struct.pack(">II", self.id, ack))
        return data

    recv = read

    def _deliver(self, data: bytes, fin: bool) -> None:  # under session.cond
        # a peer that ignores our window (spdystream) is held back here instead: the
        # connection's reader waits, TCP pushes back
        while len(self._inbox) >= INBOX_LIMIT and not (self.reset or self.session.closed or
                                                       self.abandoned):
            self.session.cond.wait()
        if data and not (self.remote_fin or self.abandoned or self.session.closed):
            self._inbox += data
        if fin:
            self.remote_fin = True
        self.session.cond.notify_all()

    # --- sending -------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = self._take_window(min(len(view), DATA_CHUNK))
            self.session.send_raw(data_frame(self.id, 0, bytes(view[:n])))
            view = view[n:]
        return len(data)

    sendall = write

    def _take_window(self, want: int) -> int:
        s = self.session
        with s.cond:
            while True:
                if self.reset or s.closed or self.local_fin:
                    raise BrokenPipeError(f"spdy stream {self.id} is closed")
                if self.send_window > 0 or s.ignore_windows:
                    break
                if not s.peer_flow_control:
                    s.cond.wait(STALL_GRACE)
                    if self.send_window <= 0 and not s.peer_flow_control:
                        s.ignore_windows = True  # spdystream: no flow control at all
                    continue
                s.cond.wait()
            n = want if s.ignore_windows else min(want, self.send_window)
            self.send_window -= n
            return n

    def close(self) -> None:
        """Our half: a DATA frame with FIN (once)."""
        with self.session.cond:
            if self.local_fin or self.reset or self.session.closed:
                return
            self.local_fin = True
        try:
            self.session.send_raw(data_frame(self.id, FLAG_FIN, b""))
        except OSError:
            pass

    def abandon(self) -> None:
        """Nobody will read this stream again: drop what it holds and what comes."""
        with self.session.cond:
            self.abandoned = True
            self._inbox.clear()
            self.session.cond.notify_all()

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self.close()

    def send_reset(self, status: int = CANCEL) -> None:
        with self.session.cond:
            if self.reset:
                return
            self.reset = True
            self.session.cond.notify_all()
        self.session.send_control(RST_STREAM, 0, struct.pack(">II", self.id, status))


class Session:
    """The frames of one upgraded connection. serve() reads them until the peer goes
    away. Every new stream goes to accept(stream) (from the reader thread), which returns
    False to refuse it, and once answered to on_ready(stream)."""

    def __init__(self, sock: socket.socket, rfile, accept, on_ready) -> None:
        self.sock = sock
        self.rfile = rfile
        self.on_stream = accept
        self.on_ready = on_ready
        self.cond = threading.Condition()
        self.write_lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self.goaway_sent = False
        self.initial_send_window = INITIAL_WINDOW
        self.peer_flow_control = False
        self.ignore_windows = False
        self.last_stream = 0
        self._deflate = compressor()
        self._inflate = decompressor()

    # --- sending (any thread) ------------------------------------------------------------

    def send_raw(self, frame: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(frame)

    def send_control(self, ftype: int, flags: int, payload: bytes) -> None:
        try:
            self.send_raw(control_frame(ftype, flags, payload))
        except OSError:
            pass

    def send_headers_frame(self, ftype: int, sid: int, headers: dict, flags: int = 0) -> None:
        # one compression context for the session: compress and send in the same order
        with self.write_lock:
            block = self._deflate.compress(encode_headers(headers)) + \
                self._deflate.flush(zlib.Z_SYNC_FLUSH)
            self.sock.sendall(control_frame(ftype, flags, struct.pack(">I", sid) + block))

    def go_away(self) -> None:
        with self.cond:
            if self.goaway_sent:
                return
            self.goaway_sent = True
        self.send_control(GOAWAY, 0, struct.pack(">II", self.last_stream, 0))

    def close(self) -> None:
        """GOAWAY; the streams are done. The caller ends the connection."""
        self.go_away()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    # --- receiving (the serve() thread) --------------------------------------------------

    def serve(self) -> None:
        try:
            while True:
                frame = read_frame(self.rfile)
                if frame is None:
                    break
                is_control, kind, flags, payload = frame
                if is_control:
                    if self._control(kind, flags, payload) is False:
                        break
                else:
                    self._data(kind, flags, payload)
        except (ProtocolError, zlib.error, struct.error):
            self.send_control(GOAWAY, 0, struct.pack(">II", self.last_stream, 1))
        except OSError:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def _control(self, kind: int, flags: int, payload: bytes) -> bool | None:
        if kind == SYN_STREAM:
            sid, _assoc = struct.unpack_from(">II", payload)
            sid &= 0x7FFFFFFF
            headers = decode_headers(self._inflate_block(payload[10:]))
            if sid % 2 == 0 or sid <= self.last_stream:
                self.send_control(RST_STREAM, 0, struct.pack(">II", sid, PROTOCOL_ERROR))
                return None
            self.last_stream = sid
            stream = Stream(self, sid, headers, bool(flags & FLAG_FIN))
            with self.cond:
                self.streams[sid] = stream
            if self.goaway_sent or not self.on_stream(stream):
                with self.cond:
                    self.streams.pop(sid, None)
                self.send_control(RST_STREAM, 0, struct.pack(">II", sid, REFUSED_STREAM))
            else:
                self.send_headers_frame(SYN_REPLY, sid, {})
                self.on_ready(stream)  # after the reply: its data must follow it
        elif kind == HEADERS or kind == SYN_REPLY:
            self._inflate_block(payload[4:])  # keep the zlib context in step
        elif kind == RST_STREAM:
            sid = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            with self.cond:
                stream = self.streams.pop(sid, None)
                if stream:
                    stream.reset = True
                    self.cond.notify_all()
        elif kind == SETTINGS:
            self._settings(payload)
        elif kind == PING:
            (ping_id,) = struct.unpack_from(">I", payload)
            if ping_id % 2 == 1:  # the client's: answer it
                self.send_control(PING, 0, payload[:4])
        elif kind == GOAWAY:
            return False
        elif kind == WINDOW_UPDATE:
            sid, delta = struct.unpack_from(">II", payload)
            with self.cond:
                self.peer_flow_control = True
                stream = self.streams.get(sid & 0x7FFFFFFF)
                if stream:
                    stream.send_window += delta & 0x7FFFFFFF
                self.cond.notify_all()
        return None

    def _inflate_block(self, block: bytes) -> bytes:
        raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        if self._inflate.unconsumed_tail:
            raise ProtocolError("header block too large")
        return raw

    def _settings(self, payload: bytes) -> None:
        (count,) = struct.unpack_from(">I", payload)
        for i in range(count):
            word, value = struct.unpack_from(">II", payload, 4 + 8 * i)
            if word & 0xFFFFFF == SETTINGS_INITIAL_WINDOW_SIZE:
                with self.cond:
                    delta = value - self.initial_send_window
                    self.initial_send_window = value
                    self.peer_flow_control = True
                    for stream in self.streams.values():
                        stream.send_window += delta
                    self.cond.notify_all()

    def _data(self, sid: int, flags: int, payload: bytes) -> None:
        with self.cond:
            stream = self.streams.get(sid)
            if stream is not None:
                stream._deliver(payload, bool(flags & FLAG_FIN))
                return
        self.send_control(RST_STREAM, 0, struct.pack(">II", sid, INVALID_STREAM))
