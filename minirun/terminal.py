"""Foreground `run` of a terminal container without --console-socket: minirun-oci itself
receives the pty master and relays between it and its own stdin/stdout, as runc does."""

from __future__ import annotations

import os
import select
import signal
import socket
import termios
import tty

from .errors import MiniRunError


class TerminalProxy:
    def __init__(self) -> None:
        self.our_end, self.container_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.master = -1
        self._saved = None

    def receive_master(self, timeout: float = 10.0) -> None:
        self.our_end.settimeout(timeout)
        try:
            _, fds, _, _ = socket.recv_fds(self.our_end, 1024, 1)
        except socket.timeout:
            raise MiniRunError("no terminal received from the container") from None
        if not fds:
            raise MiniRunError("no terminal received from the container")
        self.master = fds[0]
        self.container_end.close()

    def _sync_size(self) -> None:
        if os.isatty(0):
            try:
                rows, cols = os.get_terminal_size(0)
                import fcntl
                import struct

                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows,
                                                                        cols, 0, 0))
            except OSError:
                pass

    def run_until_exit(self, pid: int) -> int:
        if os.isatty(0):
            self._saved = termios.tcgetattr(0)
            tty.setraw(0)
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
