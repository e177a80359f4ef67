"""The caller's terminal and a container's.

TerminalProxy: foreground `run` of a terminal container without --console-socket:
minirun-oci itself receives the pty master and relays between it and its own
stdin/stdout, as runc does.

AttachSession: `minirun attach`, the client side: the container's output arrives from
the daemon as stream messages; input goes straight to the pty master or the stdin pipe
the daemon handed over, through the detach keys.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import tty

from .errors import InvalidArgument, MiniRunError

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"  # docker's
_CTRL_PUNCTUATION = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


class TerminalProxy:
    def __init__(self) -> None:
        self.our_end, self.container_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.master = -1
        self._saved = None

    def receive_master(self, timeout: float = 10.0) -> None:
        self.our_end.settimeout(timeout)
        try:
            _, fds, _, _ = socket.recv_fds(self.our_end, 1024, 1)
        except TimeoutError:
            raise MiniRunError("no terminal received from the container") from None
        if not fds:
            raise MiniRunError("no terminal received from the container")
        self.master = fds[0]
        self.container_end.close()
        # now, before start: a command that asks at once must not see a 0x0 terminal
        self._sync_size()

    def _sync_size(self) -> None:
        if os.isatty(0):
            copy_window_size(0, self.master)

    def run_until_exit(self, pid: int) -> int:
        if os.isatty(0):
            self._saved = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSANOW)  # not the default TCSAFLUSH: keep type-ahead
        self._sync_size()
        old = signal.signal(signal.SIGWINCH, lambda *_: self._sync_size())
        pidfd = os.pidfd_open(pid)
        stdin_open = True
        try:
            while True:
                watch = [self.master, pidfd] + ([0] if stdin_open else [])
                ready, _, _ = select.select(watch, [], [])
                if self.master in ready:
                    try:
                        data = os.read(self.master, 65536)
                    except OSError:
                        data = b""
                    if data:
                        os.write(1, data)
                if 0 in ready:
                    data = os.read(0, 65536)
                    if data:
                        os.write(self.master, data)
                    else:
                        stdin_open = False
                if pidfd in ready:
                    self._drain()
                    _, status = os.waitpid(pid, 0)
                    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
                        else 128 + os.WTERMSIG(status)
        finally:
            os.close(pidfd)
            signal.signal(signal.SIGWINCH, old)
            if self._saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved)

    def _drain(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                return
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            os.write(1, data)

    def close(self) -> None:
        for s in (self.our_end, self.container_end):
            s.close()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def copy_window_size(terminal: int, master: int) -> None:
    """The size of our terminal onto the container's (its foreground gets SIGWINCH)."""
    try:
        cols, rows = os.get_terminal_size(terminal)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError:
        pass


def parse_detach_keys(text: str) -> bytes:
    """docker's --detach-keys: comma-separated keys, each one character or ctrl-<a-z, @,
    [, \\, ], ^ or _>. An empty string turns detaching off (as podman)."""
    if not text:
        return b""
    out = bytearray()
    for key in text.split(","):
        lower = key.lower()
        if len(key) == 1:
            out += key.encode()
        elif lower.startswith("ctrl-") and len(lower) == 6 and "a" <= lower[5] <= "z":
            out.append(ord(lower[5]) - ord("a") + 1)
        elif lower.startswith("ctrl-") and len(lower) == 6 and lower[5] in _CTRL_PUNCTUATION:
            out.append(_CTRL_PUNCTUATION[lower[5]])
        else:
            raise InvalidArgument(f"invalid detach keys {text!r}: unknown key {key!r}")
    return bytes(out)


class DetachKeys:
    """Watches the input for the detach sequence; bytes that could start it are held
    back until the next byte shows whether they do (docker's escape proxy)."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(the input to pass on, whether the sequence was typed)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    self.matched = 0
                    return bytes(out), True
                continue
            out += self.keys[:self.matched]
            self.matched = 0
            if byte == self.keys[0]:
                self.matched = 1
                if len(self.keys) == 1:
                    return bytes(out), True
            else:
                out.append(byte)
        return bytes(out), False


class AttachSession:
    def __init__(self, sock: socket.socket, tty_mode: bool, stdin: bool, input_fd: int | None,
                 detach_keys: bytes) -> None:
        self.sock = sock
        self.tty = tty_mode
        self.input_fd = input_fd
        self.forward_stdin = stdin and input_fd is not None
        self.keys = DetachKeys(detach_keys)
        self._saved = None

    def run(self) -> int:
        """Until the container exits (its status) or the detach keys (0)."""
        from .daemon import proto

        if self.input_fd is not None:
            # a pty master is non-blocking already: the daemon reads the same file
            os.set_blocking(self.input_fd, False)
        if self.tty and self.forward_stdin and os.isatty(0):
            self._saved = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSANOW)  # not the default TCSAFLUSH: keep type-ahead
        old_winch = None
        if self.tty:
            self._sync_size()
            old_winch = signal.signal(signal.SIGWINCH, lambda *_: self._sync_size())
        old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            return self._relay(proto)
        finally:
            if old_winch is not None:
                signal.signal(signal.SIGWINCH, old_winch)
            signal.signal(signal.SIGPIPE, old_pipe)
            if self._saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved)
            self.close()

    def _relay(self, proto) -> int:
        stdin_open = self.forward_stdin
        pending = b""  # input the container has not taken yet
        while True:
            readers = [self.sock] + ([0] if stdin_open and not pending else [])
            writers = [self.input_fd] if pending else []
            ready, writable, _ = select.select(readers, writers, [])
            if self.sock in ready:
                try:
                    msg = self.sock.recv(1 << 17)  # the daemon sends 64 KiB reads, tagged
                except OSError:
                    msg = b""
                if not msg:
                    raise MiniRunError("the minirun daemon closed the attach connection")
                tag, payload = msg[:1], msg[1:]
                if tag == proto.EXIT:
                    return int(payload)
                _write_all(1 if tag == proto.STDOUT else 2, payload)
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    stdin_open = False
                    if not self.tty:
                        self._close_stdin(proto)
                    continue
                data, detach = self.keys.feed(data)
                pending += data
                if detach:
                    self._write_input(pending)  # what came before the keys, if it fits
                    return 0
            if pending and (self.input_fd in writable or not writers):
                written = self._write_input(pending)
                if written is None:  # the container closed its stdin or exited
                    pending, stdin_open = b"", False
                else:
                    pending = pending[written:]

    def _write_input(self, data: bytes) -> int | None:
        """How much of data the container took; None if it takes no more."""
        try:
            return os.write(self.input_fd, data) if data else 0
        except BlockingIOError:
            return 0
        except OSError:
            return None

    def _close_stdin(self, proto) -> None:
        """Our EOF is the container's: the daemon and the keeper close their ends too."""
        if self.input_fd is not None:
            os.close(self.input_fd)
            self.input_fd = None
        proto.send(self.sock, {"op": "close_stdin"})

    def _sync_size(self) -> None:
        if self.input_fd is None:
            return
        for fd in (0, 1):
            if os.isatty(fd):
                copy_window_size(fd, self.input_fd)
                return

    def close(self) -> None:
        self.sock.close()
        if self.input_fd is not None:
            os.close(self.input_fd)
            self.input_fd = None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            select.select([], [fd], [])
        except OSError as e:
            if e.errno == errno.EPIPE:
                return  # nobody reads our output any more; the container's goes on
            raise
