"""`minirun run -d` with -t / -i and `minirun attach`: the client on a real pseudo-terminal
(its controlling terminal, so that resizing it sends SIGWINCH), the container under the
daemon and the keeper."""

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from enginetest import engine  # noqa: F401
from ocitest import needs_root, wait_for

from minirun.errors import InvalidArgument
from minirun.terminal import DetachKeys, parse_detach_keys

CTRL_P_Q = b"\x10\x11"


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class OnPty:
    """A minirun command on a new pty that is its controlling terminal."""

    def __init__(self, engine, *args, rows: int = 24, cols: int = 80) -> None:
        self.master, slave = os.openpty()
        set_size(self.master, rows, cols)

        def controlling_tty():  # after setsid: the pty is the session's terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "minirun.cli", *args],
                                         stdin=slave, stdout=slave, stderr=slave,
                                         env=engine.env, start_new_session=True,
                                         preexec_fn=controlling_tty)  # noqa: PLW1509
        finally:
            os.close(slave)
        self.out = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 15.0) -> re.Match:
        """Read until `pattern` (a regex) shows up in what came since the last match."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.out)
            if found:
                self.out = self.out[found.end():]
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen; got {self.out!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the command has gone
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{pattern!r} not seen before the end; "
                                         f"got {self.out!r}")
                self.out += chunk

    def wait_attached(self) -> None:
        """Until the shell in the container answers: what is typed before attach has
        set raw mode would be lost to the local line discipline."""
        for _ in range(30):
            self.send(b"\r")
            try:
                self.expect(rb"/ # ", timeout=1)
                return
            except AssertionError:
                continue
        raise AssertionError(f"no prompt from the container; got {self.out!r}")

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.out += os.read(self.master, 4096)
                except OSError:
                    pass
        status = self.proc.wait(timeout=1)
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.out += chunk
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def state(engine, name):
    return json.loads(engine("inspect", name, check=True).stdout)[0]["State"]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() == b""  # a zombie
    except FileNotFoundError:
        return True


def running(engine, name):
    return state(engine, name)["Status"] == "running"


# --- the detach keys (no root) -------------------------------------------------------------

def test_detach_keys_format():
    assert parse_detach_keys("ctrl-p,ctrl-q") == CTRL_P_Q
    assert parse_detach_keys("ctrl-@,ctrl-[,ctrl-\\,ctrl-_,a") == b"\x00\x1b\x1c\x1fa"
    assert parse_detach_keys("") == b""
    for bad in ("ctrl-1", "ctrlp", "ab", "ctrl-p,"):
        with pytest.raises(InvalidArgument):
            parse_detach_keys(bad)


def test_detach_keys_hold_back_only_a_possible_sequence():
    keys = DetachKeys(CTRL_P_Q)
    assert keys.feed(b"ab\x10") == (b"ab", False)  # ctrl-p held: it may start the keys
    assert keys.feed(b"c") == (b"\x10c", False)  # it did not
    assert keys.feed(b"\x10\x10") == (b"\x10", False)
    assert keys.feed(b"\x11rest") == (b"", True)
    assert DetachKeys(b"").feed(CTRL_P_Q) == (CTRL_P_Q, False)


# --- with a container ------------------------------------------------------------------------

@needs_root
@pytest.mark.root
def test_tty_attach_detach_and_exit_status(engine):
    engine("run", "-dit", "--name", "shell", "busybox", "sh", check=True)
    try:
        client = OnPty(engine, "attach", "shell")
        try:
            client.wait_attached()
            client.send(b"echo hi; tty\r")
            client.expect(rb"\r\nhi\r\n")
            client.expect(rb"/dev/pts/\d+\r\n")
            # written while nobody is attached: still logged
            client.send(b"(sleep 1; echo while-$((40+2))) &\r")
            client.expect(rb"/ # ")
            client.send(CTRL_P_Q)
            assert client.wait() == 0, client.out
        finally:
            client.close()
        assert running(engine, "shell")
        assert wait_for(lambda: "while-42" in engine("logs", "shell").stdout)

        client = OnPty(engine, "attach", "shell")
        try:
            client.wait_attached()
            client.send(b"exit 3\r")
            assert client.wait() == 3, client.out
        finally:
            client.close()
        shell = state(engine, "shell")
        assert (shell["Status"], shell["ExitCode"], shell["Pid"]) == ("exited", 3, 0)
        assert "Exited (3)" in engine("ps", "-a").stdout
    finally:
        engine("rm", "-f", "shell")


@needs_root
@pytest.mark.root
def test_window_size_at_attach_and_on_sigwinch(engine):
    engine("run", "-dit", "--name", "sized", "busybox", "sh", check=True)
    try:
        client = OnPty(engine, "attach", "--detach-keys", "ctrl-x", "sized", rows=30,
                       cols=100)
        try:
            client.wait_attached()
            client.send(b"stty size\r")
            client.expect(rb"\r\n30 100\r\n")
            set_size(client.master, 40, 120)  # the kernel sends the client SIGWINCH
            for _ in range(20):
                client.send(b"stty size\r")
                size = client.expect(rb"\r\n(\d+ \d+)\r\n").group(1)
                if size == b"40 120":
                    break
                time.sleep(0.2)
            assert size == b"40 120"
            client.send(b"\x18")
            assert client.wait() == 0, client.out
        finally:
            client.close()
        assert running(engine, "sized")
    finally:
        engine("rm", "-f", "sized")


@needs_root
@pytest.mark.root
def test_interactive_stdin_until_the_client_eof(engine):
    engine("run", "-d", "-i", "--name", "cat", "busybox", "cat", check=True)
    try:
        time.sleep(1)
        assert running(engine, "cat")  # the keeper holds stdin open: no EOF yet
        proc = engine("attach", "cat", input="abc\n", timeout=30)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "abc\n", "")
        assert state(engine, "cat")["ExitCode"] == 0
        assert engine("logs", "cat").stdout == "abc\n"
        # started again: a new stdin pipe, open again
        engine("start", "cat", check=True)
        time.sleep(1)
        assert running(engine, "cat")
        proc = engine("attach", "cat", input="xyz\n", timeout=30)
        assert (proc.returncode, proc.stdout) == (0, "xyz\n")
    finally:
        engine("rm", "-f", "cat")


@needs_root
@pytest.mark.root
def test_non_tty_output_streams_and_exit_status(engine):
    engine("run", "-d", "--name", "streams", "busybox", "sh", "-c",
           "while [ ! -e /tmp/go ]; do echo tick; sleep 0.2; done; "
           "echo out; echo err >&2; exit 5", check=True)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "minirun.cli", "attach", "streams"],
                                env=engine.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"tick\n"  # attached
            engine("exec", "streams", "touch", "/tmp/go", check=True)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 5
        lines = out.decode().split()
        assert lines[-1] == "out" and set(lines[:-1]) <= {"tick"}, out
        assert err == b"err\n"
    finally:
        engine("rm", "-f", "streams")


@needs_root
@pytest.mark.root
def test_attach_to_a_stopped_container(engine):
    engine("run", "-d", "--name", "done", "busybox", "true", check=True)
    try:
        assert wait_for(lambda: state(engine, "done")["Status"] == "exited")
        proc = engine("attach", "done")
        assert proc.returncode == 1
        assert "cannot attach to a stopped container, start it first" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1
        proc = engine("attach", "no-such-container")
        assert proc.returncode == 1 and "no such container" in proc.stderr
    finally:
        engine("rm", "-f", "done")


@needs_root
@pytest.mark.root
def test_restarted_tty_container_gets_a_new_terminal(engine):
    engine("run", "-dit", "--restart", "on-failure:1", "--name", "again", "busybox", "sh",
           check=True)
    try:
        client = OnPty(engine, "attach", "again")
        try:
            client.wait_attached()
            client.send(b"exit 1\r")
            assert client.wait() == 1, client.out
        finally:
            client.close()
        assert wait_for(lambda: json.loads(engine("inspect", "again").stdout)[0]
                        ["RestartCount"] == 1 and running(engine, "again"))
        for status in (0, 4):  # the restart, then `minirun start`
            client = OnPty(engine, "attach", "again")
            try:
                client.wait_attached()
                client.send(b"tty\r")
                client.expect(rb"/dev/pts/\d+\r\n")
                client.send(f"exit {status}\r".encode())
                assert client.wait() == status, client.out
            finally:
                client.close()
            if status == 0:
                assert state(engine, "again")["Status"] == "exited"
                engine("start", "again", check=True)
    finally:
        engine("rm", "-f", "again")


@needs_root
@pytest.mark.root
def test_attach_after_the_daemon_was_killed(engine):
    engine("run", "-dit", "--name", "survivor", "busybox", "sh", check=True)
    try:
        daemon = engine.pid_of("daemon")
        os.kill(daemon, signal.SIGKILL)
        assert wait_for(lambda: gone(daemon))
        # attach starts a new daemon, which takes the pty master from the keeper again
        client = OnPty(engine, "attach", "survivor")
        try:
            client.wait_attached()
            assert engine.pid_of("daemon") != daemon
            client.send(b"echo $((6*7))\r")
            client.expect(rb"\r\n42\r\n")
            client.send(b"exit 0\r")
            assert client.wait() == 0, client.out
        finally:
            client.close()
        assert state(engine, "survivor")["ExitCode"] == 0
    finally:
        engine("rm", "-f", "survivor")


@needs_root
@pytest.mark.root
def test_foreground_run_it_still_relays_and_sizes(engine):
    client = OnPty(engine, "run", "-it", "--rm", "busybox", "sh", "-c",
                   "stty size; tty; exit 6", rows=33, cols=101)
    try:
        assert client.wait() == 6, client.out
        assert re.search(rb"33 101\r\n/dev/pts/\d+\r\n", client.out), client.out
    finally:
        client.close()
