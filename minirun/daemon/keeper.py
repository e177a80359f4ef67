"""The keeper: parent of every detached container, holder of their stdio (output pipes,
the stdin pipe of a -i container, the pty master of a -t one), and the one place exit
statuses are learnt (see minirun/daemon/__init__.py).

  daemon -> keeper  {"op": "start", "id", "oci_root", "bundle", "tty", "stdin"}
                    <- {"ok": true, "pid", "status", "streams"} + fds | {"error"}
  daemon -> keeper  {"op": "hello"}
                    <- {"held": {"id", "pid", "status", "streams"}} + fds, one per
                       container, then {"done"}
  daemon -> keeper  {"op": "close_stdin", "id"}  an attached client sent EOF
  daemon -> keeper  {"op": "forget", "id"}    the daemon has recorded the exit: let go
  keeper -> daemon  {"event": "exit", "id", "status"}

"streams" names the fds in order: "stdout", "stderr" and "stdin" (the write end) for a
container on pipes, "tty" (the pty master) for a terminal container.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

from . import proto

EXITS = "exits"


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

    def serve(self) -> None:
        from .. import sys as _sys
        # loaded once here: each start's worker is a fork of the keeper (6 ms a start)
        from .. import container, layout, runtime  # noqa: F401

        os.makedirs(os.path.join(self.run_root, EXITS), mode=0o700, exist_ok=True)
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
            for key, _ in self.sel.select():
                if key.data == "listen":
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
        self.held[cid].status = code
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
        conn.close()

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
                self.daemon = conn
                for held in self.held.values():
                    proto.send(conn, {"held": {"id": held.id, "pid": held.pid,
                                               "status": held.status,
                                               "streams": list(held.streams)}},
                               list(held.streams.values()))
                proto.send(conn, {"done": True})
            elif op == "start":
                self.starting = msg["id"]
                try:
                    held = self.start(msg["id"], msg["oci_root"], msg["bundle"],
                                      tty=bool(msg.get("tty")), stdin=bool(msg.get("stdin")))
                finally:
                    self.starting = None
                proto.send(conn, {"ok": True, "pid": held.pid, "status": held.status,
                                  "streams": list(held.streams)},
                           list(held.streams.values()))
            elif op == "close_stdin":
                held = self.held.get(msg["id"])
                if held:
                    held.close("stdin")
                proto.send(conn, {"ok": True})
            elif op == "forget":
                held = self.held.pop(msg["id"], None)
                if held:
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

    def start(self, cid: str, oci_root: str, bundle: str, tty: bool = False,
              stdin: bool = False) -> Held:
        """Create and start the container in a worker whose container init then becomes
        our child (we are a subreaper); its output goes to pipes we keep, or to a pty
        whose master we keep."""
        if cid in self.held:
            self.held.pop(cid).close()
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
            self._worker(cid, oci_root, bundle, ours, theirs, console, res_r, res_w)
        for fd in [*theirs.values(), res_w]:
            os.close(fd)
        if console is not None:
            console[1].close()  # so a worker that failed cannot leave us waiting for it
        try:
            text = _read_all(res_r).decode(errors="replace")
            os.waitpid(worker, 0)
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
        self.held[cid] = held
        self.by_pid[pid] = cid
        self.reap()
        if pid in self.unclaimed:  # it exited before we got here
            del self.by_pid[pid]
            self.record(cid, self.unclaimed.pop(pid))
        return held

    @staticmethod
    def _worker(cid: str, oci_root: str, bundle: str, ours: dict[str, int],
                theirs: dict[int, int], console, res_r: int, res_w: int) -> None:
        """The forked worker: its stdio (the init inherits it) are the container's
        pipes, /dev/null for what is not kept; with a tty the init replaces them."""
        code = 1
        try:
            for fd in [*ours.values(), res_r]:
                os.close(fd)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(theirs.get(fd, null), fd)
            from .. import container, runtime
            from ..layout import seccomp_cache_dir

            opts = runtime.CreateOptions(console_fd=console[1] if console else None,
                                         seccomp_cache=seccomp_cache_dir(bundle))
            c = runtime.create(oci_root, cid, bundle, opts)
            container.start(oci_root, cid)
            os.write(res_w, f"ok {c.pid}".encode())
            code = 0
        except BaseException as e:  # noqa: BLE001
            os.write(res_w, f"error {type(e).__name__} {e}".encode())
        os._exit(code)


def _read_all(fd: int) -> bytes:
    out = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return out
            out += chunk
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


def main() -> None:
    Keeper(sys.argv[1]).serve()  # started in its own session by spawn_detached


if __name__ == "__main__":
    main()
