"""The keeper: parent of every detached container, holder of their stdio (output pipes,
the stdin pipe of a -i container, the pty master of a -t one), and the one place exit
statuses are learnt (see minirun/daemon/__init__.py).

  daemon -> keeper  {"op": "start", "id", "oci_root", "bundle", "tty", "stdin", "trace"?}
                    <- {"ok": true, "pid", "status", "streams", "trace"?} + fds | {"error"}
                    trace: the daemon's span id; the reply then has the spans of the
                    create and start (minirun/monitor/trace.py)
  daemon -> keeper  {"op": "hello", "respawn": argv, "log": path}
                    <- {"held": {"id", "pid", "status", "streams"}} + fds, one per
                       container, then {"done"}
  daemon -> keeper  {"op": "ready"}  the daemon reads the pipes from now on
                    <- the backlog, {"backlog": {"id", "stream", "ns", "data" (base64)}}
                       messages, then {"ok"}
  daemon -> keeper  {"op": "bye"}       a clean exit (SIGTERM): do not start another
  daemon -> keeper  {"op": "close_stdin", "id"}  an attached client sent EOF
  daemon -> keeper  {"op": "forget", "id"}    the daemon has recorded the exit: let go
  keeper -> daemon  {"event": "exit", "id", "status"}

"streams" names the fds in order: "stdout", "stderr" and "stdin" (the write end) for a
container on pipes, "tty" (the pty master) for a terminal container.

When the daemon's connection closes without a bye (it died), the keeper starts a new one
with the argv of its hello (again after a back-off if it keeps dying) and, meanwhile,
reads the containers' output itself so that no container blocks on a full pipe: each
chunk is kept with the time it was read (so the log says when it was written, not when
a daemon came back), up to BACKLOG_MAX bytes per container; past that it stops reading
that container, whose writes then block as on a full pipe (nothing is dropped). It reads
on after the next daemon's hello, while that daemon starts, and hands the backlog over
when the daemon says it is ready to read the pipes itself.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import time

from . import proto

EXITS = "exits"
BACKLOG_MAX = 4 * 1024 * 1024
BACKLOG_MSG = 512 * 1024  # raw bytes per backlog message (base64 keeps it under MAX_MSG)
OUTPUT_STREAMS = {"stdout": "stdout", "stderr": "stderr", "tty": "stdout"}
RESPAWN_MAX_DELAY = 30.0
RESPAWN_RESET_AFTER = 10.0


def take_lock(path: str, wait: bool = False) -> int | None:
    """An exclusive flock on path, held for the life of the process (the fd is never
    closed); None if another process holds it and we do not wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_holder(run_root: str, name: str) -> str:
    """The pid the process holding name.lock wrote to name.pid, for error lines."""
    try:
        with open(os.path.join(run_root, f"{name}.pid")) as f:
            return f"pid {int(f.read())}"
    except (OSError, ValueError):
        return "pid unknown"


def exit_file(run_root: str, cid: str) -> str:
    return os.path.join(run_root, EXITS, cid)


def read_exit_status(run_root: str, cid: str) -> int | None:
    try:
        with open(exit_file(run_root, cid)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class Held:
    def __init__(self, cid: str, pid: int, streams: dict[str, int]) -> None:
        self.id = cid
        self.pid = pid
        self.streams = streams
        self.status: int | None = None
        self.backlog: list[tuple[int, str, bytes]] = []  # read while no daemon was there
        self.backlog_bytes = 0
        self.spans: list | None = None  # its start's, when the daemon asked (trace)

    def close(self, name: str | None = None) -> None:
        for stream in [name] if name else list(self.streams):
            fd = self.streams.pop(stream, None)
            if fd is not None:
                os.close(fd)


class Keeper:
    def __init__(self, run_root: str) -> None:
        self.run_root = run_root
        self.sock_path = os.path.join(run_root, "keeper.sock")
        self.held: dict[str, Held] = {}
        self.by_pid: dict[int, str] = {}
        self.daemon: socket.socket | None = None
        self.unclaimed: dict[int, int] = {}  # pid -> status of children not (yet) known
        self.starting: str | None = None
        self.sel = selectors.DefaultSelector()
        self.respawn: list[str] | None = None  # the argv of the last daemon's hello
        self.respawn_log = os.path.join(run_root, "daemon.log")
        self.respawn_at: float | None = None  # monotonic time to start a daemon
        self.respawn_delay = 0.0
        self.spawned_at = 0.0
        self.helpers: set[int] = set()  # daemons we started: children, not containers
        self.buffering = False

    def serve(self) -> None:
        from .. import sys as _sys
        # loaded once here: each start's worker is a fork of the keeper (6 ms a start)
        from .. import container, layout, runtime  # noqa: F401

        os.makedirs(os.path.join(self.run_root, EXITS), mode=0o700, exist_ok=True)
        if take_lock(os.path.join(self.run_root, "keeper.lock")) is None:
            sys.stderr.write(f"minirun keeper: another keeper ({lock_holder(self.run_root, 'keeper')}) "
                             f"holds {self.run_root}; exiting\n")
            sys.exit(1)
        _sys.prctl(_sys.PR_SET_CHILD_SUBREAPER, 1, name="prctl(PR_SET_CHILD_SUBREAPER)")
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        listener = proto.listen(self.sock_path)
        with open(os.path.join(self.run_root, "keeper.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.sel.register(listener, selectors.EVENT_READ, "listen")
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        while True:
            timeout = None
            if self.respawn_at is not None:
                timeout = max(0.0, self.respawn_at - time.monotonic())
            ready = self.sel.select(timeout)
            if self.respawn_at is not None and time.monotonic() >= self.respawn_at:
                self.spawn_daemon()
            for key, _ in ready:
                if self.sel.get_map().get(key.fd) is not key:
                    continue  # closed earlier in this round
                if isinstance(key.data, tuple):
                    self.on_output(key.fd, key.data[1], key.data[2])
                elif key.data == "listen":
                    conn, _ = listener.accept()
                    self.sel.register(conn, selectors.EVENT_READ, "conn")
                elif key.data == "wake":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                else:
                    self.handle(key.fileobj)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.helpers:
                self.helpers.discard(pid)
                continue
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
            cid = self.by_pid.pop(pid, None)
            if cid is None:
                # an init that exited before start() registered it, or some process
                # re-parented to us: keep the status in case it is claimed
                self.unclaimed[pid] = code
                continue
            self.record(cid, code)

    def record(self, cid: str, code: int) -> None:
        """The exit status goes to a file first: whatever happens to the daemon, it is
        not lost. A container that exits while start() still answers for it is reported
        in that answer, after its pipes, never before."""
        held = self.held.get(cid)
        if held is None:  # let go of already (a new start of the id replaced it)
            return
        held.status = code
        path = exit_file(self.run_root, cid)
        with open(path + ".tmp", "w") as f:
            f.write(str(code))
        os.rename(path + ".tmp", path)
        if cid != self.starting:
            self.notify({"event": "exit", "id": cid, "status": code})

    def notify(self, msg: dict) -> None:
        if self.daemon is None:
            return
        try:
            proto.send(self.daemon, msg)
        except OSError:
            self.drop(self.daemon)

    def drop(self, conn: socket.socket) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        if conn is self.daemon:
            self.daemon = None
            if self.respawn is not None:
                # it died (a clean exit says bye first): another one, at once the first
                # time, later if they keep dying
                now = time.monotonic()
                if now - self.spawned_at > RESPAWN_RESET_AFTER:
                    self.respawn_delay = 0.0
                self.respawn_at = now + self.respawn_delay
                self.respawn_delay = min(max(0.5, self.respawn_delay * 2), RESPAWN_MAX_DELAY)
                log(f"the daemon went away; starting another in {self.respawn_at - now:.1f}s")
            self.buffer_output(True)
        conn.close()

    def spawn_daemon(self) -> None:
        self.respawn_at = None
        self.spawned_at = time.monotonic()
        # posix_spawn, not Popen: subprocess may reap a Popen's pid behind our back, and
        # a container could get the number before our reap() learnt it was a daemon's
        # (every fd of ours is close-on-exec)
        try:
            pid = os.posix_spawn(self.respawn[0], self.respawn, os.environ, setsid=True,
                                 file_actions=[
                                     (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                     (os.POSIX_SPAWN_OPEN, 1, self.respawn_log,
                                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
                                     (os.POSIX_SPAWN_DUP2, 1, 2)])
            self.helpers.add(pid)
        except OSError as e:
            log(f"cannot start the daemon: {e}")

    def buffer_output(self, on: bool) -> None:
        """Read the containers' output ourselves (no daemon is there) or stop (one is)."""
        self.buffering = on
        for held in self.held.values():
            self._watch(held, on)

    def _watch(self, held: Held, on: bool) -> None:
        for stream, fd in held.streams.items():
            if stream not in OUTPUT_STREAMS:
                continue
            registered = fd in self.sel.get_map()
            if on and not registered and held.backlog_bytes < BACKLOG_MAX:
                self.sel.register(fd, selectors.EVENT_READ, ("out", held.id, stream))
            elif not on and registered:
                self.sel.unregister(fd)

    def on_output(self, fd: int, cid: str, stream: str) -> None:
        held = self.held[cid]
        data = proto.read_output(fd)
        if data is None:
            return
        if data:
            held.backlog.append((time.time_ns(), OUTPUT_STREAMS[stream], data))
            held.backlog_bytes += len(data)
            if held.backlog_bytes >= BACKLOG_MAX:
                self._watch(held, False)  # the container blocks on its pipe meanwhile
            return
        self.sel.unregister(fd)
        held.close(stream)

    def handle(self, conn: socket.socket) -> None:
        try:
            msg, fds = proto.recv(conn)
        except OSError:
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:
            self.drop(conn)
            return
        op = msg.get("op")
        try:
            if op == "hello":
                if self.daemon is not None and self.daemon is not conn:
                    self.drop(self.daemon)  # a stale connection: the newest daemon wins
                self.daemon = conn
                self.respawn = msg.get("respawn") or self.respawn
                self.respawn_log = msg.get("log") or self.respawn_log
                self.respawn_at = None
                for held in self.held.values():
                    proto.send(conn, {"held": {"id": held.id, "pid": held.pid,
                                               "status": held.status,
                                               "streams": list(held.streams)}},
                               list(held.streams.values()))
                proto.send(conn, {"done": True})
            elif op == "ready":
                # the daemon is about to read the pipes: until now we did (its start may
                # take a while), from now on it does, after this backlog
                self.buffer_output(False)
                for held in self.held.values():
                    self.send_backlog(conn, held)
                proto.send(conn, {"ok": True})
            elif op == "bye":
                self.respawn = None
                proto.send(conn, {"ok": True})
            elif op == "start":
                self.starting = msg["id"]
                try:
                    held = self.start(msg["id"], msg["oci_root"], msg["bundle"],
                                      tty=bool(msg.get("tty")), stdin=bool(msg.get("stdin")),
                                      trace=msg.get("trace"))
                finally:
                    self.starting = None
                reply = {"ok": True, "pid": held.pid, "status": held.status,
                         "streams": list(held.streams)}
                if held.spans:
                    reply["trace"], held.spans = held.spans, None
                proto.send(conn, reply, list(held.streams.values()))
            elif op == "close_stdin":
                held = self.held.get(msg["id"])
                if held:
                    held.close("stdin")
                proto.send(conn, {"ok": True})
            elif op == "forget":
                held = self.held.pop(msg["id"], None)
                if held:
                    self._watch(held, False)
                    held.close()
                    try:
                        os.unlink(exit_file(self.run_root, held.id))
                    except FileNotFoundError:
                        pass
                proto.send(conn, {"ok": True})
            else:
                proto.send(conn, {"error": f"unknown op {op!r}"})
        except Exception as e:  # noqa: BLE001 - the keeper answers, it does not die
            try:
                proto.send(conn, proto.error_reply(e))
            except OSError:
                self.drop(conn)

    @staticmethod
    def send_backlog(conn: socket.socket, held: Held) -> None:
        for ns, stream, data in held.backlog:
            for at in range(0, len(data), BACKLOG_MSG):
                proto.send(conn, {"backlog": {
                    "id": held.id, "stream": stream, "ns": ns,
                    "data": base64.b64encode(data[at:at + BACKLOG_MSG]).decode()}})
        held.backlog, held.backlog_bytes = [], 0

    def start(self, cid: str, oci_root: str, bundle: str, tty: bool = False,
              stdin: bool = False, trace: str | None = None) -> Held:
        """Create and start the container in a worker whose container init then becomes
        our child (we are a subreaper); its output goes to pipes we keep, or to a pty
        whose master we keep."""
        if cid in self.held:
            old = self.held.pop(cid)
            self._watch(old, False)
            old.close()
            self.by_pid.pop(old.pid, None)
        ours: dict[str, int] = {}  # stream -> the end we keep
        theirs: dict[int, int] = {}  # the worker's (then the init's) fd -> the other end
        console = None
        if tty:
            # the init sends the pty master on this socket during create
            console = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            for fd, stream in ((1, "stdout"), (2, "stderr")):
                r, w = os.pipe2(os.O_CLOEXEC)
                ours[stream], theirs[fd] = r, w
            if stdin:
                r, w = os.pipe2(os.O_CLOEXEC)
                ours["stdin"], theirs[0] = w, r
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        worker = os.fork()
        if worker == 0:
            self._worker(cid, oci_root, bundle, ours, theirs, console, res_r, res_w, trace)
        for fd in [*theirs.values(), res_w]:
            os.close(fd)
        if console is not None:
            console[1].close()  # so a worker that failed cannot leave us waiting for it
        try:
            # the worker's exit, not the pipe's EOF: a container init forked from it holds
            # the write end until it execs, forever if the worker failed before `start`
            os.waitpid(worker, 0)
            text = _read_result(res_r).decode(errors="replace")
            if not text.startswith("ok "):
                kind, _, error = text[6:].partition(" ")
                raise proto.reply_error({"error": error or "create failed", "kind": kind})
            if console is not None:
                ours["tty"] = _receive_master(console[0])
        except BaseException:
            for fd in ours.values():
                os.close(fd)
            raise
        finally:
            if console is not None:
                for end in console:
                    end.close()
        pid = int(text.split()[1])
        try:
            os.unlink(exit_file(self.run_root, cid))
        except FileNotFoundError:
            pass
        held = Held(cid, pid, ours)
        if trace and "\n" in text:
            held.spans = json.loads(text.partition("\n")[2])
        self.held[cid] = held
        self.by_pid[pid] = cid
        if self.buffering:
            self._watch(held, True)
        self.reap()
        if pid in self.unclaimed:  # it exited before we got here
            del self.by_pid[pid]
            self.record(cid, self.unclaimed.pop(pid))
        return held

    @staticmethod
    def _worker(cid: str, oci_root: str, bundle: str, ours: dict[str, int],
                theirs: dict[int, int], console, res_r: int, res_w: int,
                trace: str | None = None) -> None:
        """The forked worker: its stdio (the init inherits it) are the container's
        pipes, /dev/null for what is not kept; with a tty the init replaces them. With
        `trace` its spans follow its result, a line of JSON (a few KiB: the pipe holds
        them while we wait for its exit)."""
        code = 1
        try:
            for fd in [*ours.values(), res_r]:
                os.close(fd)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(theirs.get(fd, null), fd)
            from .. import container, runtime
            from ..layout import seccomp_cache_dir
            from ..monitor import trace as spans

            if trace:
                spans.enable(trace)
            opts = runtime.CreateOptions(console_fd=console[1] if console else None,
                                         seccomp_cache=seccomp_cache_dir(bundle))
            c = runtime.create(oci_root, cid, bundle, opts)
            container.start(oci_root, cid)
            result = f"ok {c.pid}"
            if trace:
                result += "\n" + json.dumps(spans.take())
            os.write(res_w, result.encode())
            code = 0
        except BaseException as e:  # noqa: BLE001
            os.write(res_w, f"error {type(e).__name__} {e}".encode())
        os._exit(code)


def _read_result(fd: int) -> bytes:
    """What an exited worker wrote (a few bytes: all in the pipe by now)."""
    os.set_blocking(fd, False)
    out = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return out
            out += chunk
    except BlockingIOError:
        return out
    finally:
        os.close(fd)


def _receive_master(sock: socket.socket, timeout: float = 10.0) -> int:
    sock.settimeout(timeout)
    try:
        _, fds, _, _ = socket.recv_fds(sock, 1024, 1)
    except TimeoutError:
        fds = []
    if not fds:
        raise RuntimeError("no terminal received from the container")
    os.set_inheritable(fds[0], False)
    return fds[0]


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} keeper "
                     f"{os.getpid()}: {msg}\n")
    sys.stderr.flush()


def main() -> None:
    Keeper(sys.argv[1]).serve()  # started in its own session by spawn_detached


if __name__ == "__main__":
    main()
