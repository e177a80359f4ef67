"""The keeper: parent of every detached container, holder of their output pipes, and the
one place exit statuses are learnt (see minirun/daemon/__init__.py).

  daemon -> keeper  {"op": "start", "id", "oci_root", "bundle"}
                    <- {"ok": true, "pid"} + fds [stdout, stderr] | {"error"}
  daemon -> keeper  {"op": "hello"}
                    <- {"held": {"id", "pid", "status"}} + fds, one per container, then {"done"}
  daemon -> keeper  {"op": "forget", "id"}    the daemon has recorded the exit: let go
  keeper -> daemon  {"event": "exit", "id", "status"}
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
    def __init__(self, cid: str, pid: int, fds: list[int]) -> None:
        self.id = cid
        self.pid = pid
        self.fds = fds
        self.status: int | None = None


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
                                               "status": held.status}}, held.fds)
                proto.send(conn, {"done": True})
            elif op == "start":
                self.starting = msg["id"]
                try:
                    held = self.start(msg["id"], msg["oci_root"], msg["bundle"])
                finally:
                    self.starting = None
                proto.send(conn, {"ok": True, "pid": held.pid, "status": held.status},
                           held.fds)
            elif op == "forget":
                held = self.held.pop(msg["id"], None)
                if held:
                    for fd in held.fds:
                        os.close(fd)
                    try:
                        os.unlink(exit_file(self.run_root, held.id))
                    except FileNotFoundError:
                        pass
                proto.send(conn, {"ok": True})
            else:
                proto.send(conn, {"error": f"unknown op {op!r}"})
        except Exception as e:  # noqa: BLE001 - the keeper answers, it does not die
            try:
                proto.send(conn, {"error": str(e) or type(e).__name__})
            except OSError:
                self.drop(conn)

    def start(self, cid: str, oci_root: str, bundle: str) -> Held:
        """Create and start the container in a worker whose container init then becomes
        our child (we are a subreaper); its output goes to pipes we keep."""
        if cid in self.held:
            old = self.held.pop(cid)
            for fd in old.fds:
                os.close(fd)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        worker = os.fork()
        if worker == 0:
            code = 1
            try:
                os.close(out_r)
                os.close(err_r)
                os.close(res_r)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                from .. import container, runtime

                c = runtime.create(oci_root, cid, bundle, runtime.CreateOptions())
                container.start(oci_root, cid)
                os.write(res_w, f"ok {c.pid}".encode())
                code = 0
            except BaseException as e:  # noqa: BLE001
                os.write(res_w, f"error {e}".encode())
            os._exit(code)
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        result = b""
        while True:
            chunk = os.read(res_r, 65536)
            if not chunk:
                break
            result += chunk
        os.close(res_r)
        os.waitpid(worker, 0)
        text = result.decode(errors="replace")
        if not text.startswith("ok "):
            os.close(out_r)
            os.close(err_r)
            raise RuntimeError(text[6:] if text.startswith("error ") else "create failed")
        pid = int(text.split()[1])
        try:
            os.unlink(exit_file(self.run_root, cid))
        except FileNotFoundError:
            pass
        held = Held(cid, pid, [out_r, err_r])
        self.held[cid] = held
        self.by_pid[pid] = cid
        self.reap()
        if pid in self.unclaimed:  # it exited before we got here
            del self.by_pid[pid]
            self.record(cid, self.unclaimed.pop(pid))
        return held


def main() -> None:
    Keeper(sys.argv[1]).serve()  # started in its own session by spawn_detached


if __name__ == "__main__":
    main()
