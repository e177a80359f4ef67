"""The streaming server's backend on the engine (streaming.Backend).

exec: `minirun-oci exec -p process.json [--console-socket S] ID` as a child process, its
stdio on pipes, or with a tty its pty master received on a console socket (runc's
protocol, as containerd's shim drives runc). A child process rather than execproc in
this process: exec_and_wait forks, makes the caller a child subreaper and installs signal
handlers (main thread only), none of which fits a threaded server that also runs gRPC.
The process is the container's own with the command laid over it
(execproc.build_process, as `minirun exec`), and with a tty the first size the client
sent (kubectl sends it at once) as its consoleSize, so that it starts at that size.

attach: the daemon's attach connection (daemon/server.py open_attach): output arrives as
stream messages (daemon/proto.py), input goes to the pty master or stdin pipe the daemon
hands over, the size onto the master.

port-forward: a socket to 127.0.0.1:PORT (else [::1]) made inside the pod's network
namespace by a short-lived thread that setns()es into it (CLONE_NEWNET changes only the
calling thread; the socket keeps its namespace and is used from any thread).
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading

from ..errors import ContainerStateError, MiniRunError, NotFound

FIRST_SIZE_WAIT = 1.0  # seconds to wait for the client's first terminal size
CONSOLE_WAIT = 30.0


class EngineBackend:
    def __init__(self, engine, pod_netns=None) -> None:
        """pod_netns(pod_id) -> the path of the pod's network namespace, or None/"host"
        for the node's; by default from minirun.pods."""
        self.root = engine.root
        self.run_root = engine.run_root
        self.oci_root = engine.oci_root
        self.pod_netns = pod_netns or self._pods_netns

    def _engine(self):
        # an Engine per call: its sqlite connection belongs to the thread that made it
        from ..engine import Engine

        return Engine(self.root, self.run_root)

    def _running(self, engine, container_id: str) -> dict:
        rec = engine.get(container_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['name']} is not running")
        return rec

    # --- exec ----------------------------------------------------------------------------

    def exec(self, container_id, cmd, tty, stdin, stdout, stderr, resize) -> int:
        return self._run(container_id, cmd, tty, stdin, stdout, stderr, resize)

    def _run(self, container_id, cmd, tty, stdin, stdout, stderr, resize) -> int:
        from .. import execproc
        from ..container import Container

        rec = self._running(self._engine(), container_id)
        process = execproc.build_process(Container.load(self.oci_root, rec["id"]), cmd,
                                         tty=tty)
        pending_size = None
        if tty and resize is not None:
            try:
                pending_size = resize.get(timeout=FIRST_SIZE_WAIT)
            except queue.Empty:
                pass
            if pending_size:
                process["consoleSize"] = {"width": pending_size[0],
                                          "height": pending_size[1]}
        with tempfile.TemporaryDirectory(prefix="minirun-exec-") as tmp:
            pfile = os.path.join(tmp, "process.json")
            with open(pfile, "w") as f:
                json.dump(process, f)
            pid_file, log = os.path.join(tmp, "pid"), os.path.join(tmp, "log")
            argv = [sys.executable, "-m", "minirun.oci_cli", "--root", self.oci_root,
                    "--log", log, "--log-format", "json", "exec", "-p", pfile,
                    "--pid-file", pid_file]
            if tty:
                code = self._exec_tty(argv, rec["id"], tmp, stdin, stdout, resize)
            else:
                code = self._exec_pipes(argv + [rec["id"]], stdin, stdout, stderr)
            if code == 255:  # runc's status for a process that could not be started
                _raise_logged_error(log)
            return code

    def _exec_pipes(self, argv, stdin, stdout, stderr) -> int:
        pipe = subprocess.PIPE
        in_r, in_w = os.pipe() if stdin else (subprocess.DEVNULL, -1)
        try:
            proc = subprocess.Popen(argv, stdin=in_r,
                                    stdout=pipe if stdout else subprocess.DEVNULL,
                                    stderr=pipe if stderr else subprocess.DEVNULL)
        except BaseException:
            if stdin:
                os.close(in_w)
            raise
        finally:
            if stdin:
                os.close(in_r)
        pumps = []
        if stdin:  # the feeder owns in_w: its close is the process's EOF
            threading.Thread(target=_feed, args=(stdin, in_w), daemon=True).start()
        for src, dst in ((proc.stdout, stdout), (proc.stderr, stderr)):
            if src is not None:
                t = threading.Thread(target=_drain, args=(src.fileno(), dst), daemon=True)
                t.start()
                pumps.append(t)
        code = _wait(proc, (stdout, stderr))
        for t in pumps:
            t.join()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        return 128 - code if code < 0 else code

    def _exec_tty(self, argv, cid, tmp, stdin, stdout, resize) -> int:
        path = os.path.join(tmp, "console.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        proc = subprocess.Popen(argv + ["--console-socket", path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        master = -1
        try:
            master = _receive_master(listener, proc)
            if master < 0:
                proc.wait()
                raise MiniRunError(f"exec: no terminal from minirun-oci: "
                                   f"{proc.stderr.read().decode(errors='replace').strip()}")
            out = threading.Thread(target=_drain, args=(master, stdout, True), daemon=True)
            out.start()
            # the helpers get their own fds: they may outlive this call
            if stdin:
                threading.Thread(target=_feed, args=(stdin, os.dup(master)),
                                 daemon=True).start()
            if resize is not None:
                threading.Thread(target=_apply_sizes, args=(resize, os.dup(master)),
                                 daemon=True).start()
            code = _wait(proc, (stdout,))
            out.join(5)  # the pty ends once no process holds its other side
            return 128 - code if code < 0 else code
        finally:
            listener.close()
            proc.stderr.close()
            if master >= 0:
                os.close(master)

    # --- attach --------------------------------------------------------------------------

    def attach(self, container_id, tty, stdin, stdout, stderr, resize) -> None:
        from ..daemon import proto
        from ..daemon.server import open_attach

        engine = self._engine()
        rec = self._running(engine, container_id)
        sock, reply, input_fd = open_attach(engine, rec["id"], stdin is not None)
        try:
            # the helpers get fds of their own: they may outlive this call
            if input_fd is not None and reply.get("tty") and resize is not None:
                threading.Thread(target=_apply_sizes, args=(resize, os.dup(input_fd)),
                                 daemon=True).start()
            if input_fd is not None and reply.get("stdin") and stdin is not None:
                # the feeder owns input_fd: for a pipe its close is the container's EOF
                fd, input_fd = input_fd, None
                threading.Thread(target=_feed_attach, args=(stdin, fd, sock, reply),
                                 daemon=True).start()
            writers = [w for w in (stdout, stderr) if w is not None]
            while True:
                ready, _, _ = select.select([sock], [], [], 0.5)
                if not ready:
                    if writers and all(getattr(w, "closed", False) for w in writers):
                        return  # the client has gone
                    continue
                msg = sock.recv(1 << 17)
                if not msg:
                    raise MiniRunError("the minirun daemon closed the attach connection")
                tag, payload = msg[:1], msg[1:]
                if tag == proto.EXIT:
                    return
                dst = stdout if tag == proto.STDOUT or reply.get("tty") else stderr
                if dst is not None:
                    try:
                        dst.write(payload)
                    except OSError:
                        return
        finally:
            sock.close()
            if input_fd is not None:
                os.close(input_fd)

    # --- port-forward --------------------------------------------------------------------

    def _pods_netns(self, pod_id: str) -> str | None:
        from ..pods import Pods

        return Pods(self._engine()).namespaces(pod_id).get("network")

    def port_forward(self, pod_id, port, stream) -> None:
        netns = self.pod_netns(pod_id)
        sock = connect_in_netns(None if netns in (None, "", "host") else netns, port)
        try:
            upstream = threading.Thread(target=_client_to_pod, args=(stream, sock),
                                        daemon=True)
            upstream.start()
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                stream.sendall(data)
            stream.shutdown(socket.SHUT_WR)
        finally:
            sock.close()


def _raise_logged_error(log: str) -> None:
    """minirun-oci's error from its --log file (what containerd's shim reports of runc),
    if it wrote one: the command did not run."""
    try:
        with open(log) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return
    errors = [e.get("msg", "") for e in lines if e.get("level") == "error"]
    if errors:
        raise MiniRunError(f"exec failed: {errors[-1]}")


def _wait(proc: subprocess.Popen, writers) -> int:
    """minirun-oci's status (the process's). If the client goes away first the process
    is killed, as containerd kills an exec whose stream ended (its pid from --pid-file: a
    SIGKILL cannot be forwarded through minirun-oci)."""
    writers = [w for w in writers if w is not None]
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        if writers and all(getattr(w, "closed", False) for w in writers) and \
                _kill_exec(proc):
            writers = []


def _kill_exec(proc: subprocess.Popen) -> bool:
    """SIGKILL for the process minirun-oci started; False if its pid is not known yet."""
    pid_file = proc.args[proc.args.index("--pid-file") + 1]
    try:
        with open(pid_file) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def connect_in_netns(netns: str | None, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to localhost:port in the network namespace at netns (None: ours)."""
    result: dict = {}

    def connect() -> None:
        try:
            if netns is not None:
                from .. import sys as _sys

                try:
                    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise NotFound(f"network namespace {netns}: {e.strerror}") from None
                try:
                    _sys.setns(fd, _sys.CLONE_NEWNET, netns)
                finally:
                    os.close(fd)
            errors = []
            for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.settimeout(timeout)
                try:
                    s.connect((addr, port))
                except OSError as e:
                    s.close()
                    errors.append(e)
                    continue
                s.settimeout(None)
                result["sock"] = s
                return
            raise errors[0]
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e

    # a thread of its own: it leaves our network namespace for the pod's, then ends
    t = threading.Thread(target=connect, name=f"netns-connect-{port}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]


def _client_to_pod(stream, sock: socket.socket) -> None:
    while True:
        try:
            data = stream.recv(65536)
        except OSError:
            data = b""
        if not data:
            break
        try:
            sock.sendall(data)
        except OSError:
            return
    try:
        # the client's FIN is the pod's EOF; a client gone for good ends both ways
        sock.shutdown(socket.SHUT_RDWR if getattr(stream, "closed", False)
                      else socket.SHUT_WR)
    except OSError:
        pass


def _drain(fd: int, writer, pty: bool = False) -> None:
    """Copy fd to writer until its end (EIO on a pty master: no process holds its other
    side). A writer whose client has gone is skipped but fd still read: the process must
    not block on a full pipe."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            select.select([fd], [], [])
            continue
        except OSError:
            data = b""
        if not data:
            return
        if writer is not None:
            try:
                writer.write(data)
            except OSError:
                writer = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _feed(reader, fd: int) -> None:
    """Copy the client's stdin to fd, then close fd (for a pipe: the process's EOF)."""
    try:
        while True:
            data = reader.read(65536)
            if not data:
                break
            _write_all(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


def _feed_attach(reader, fd: int, sock, reply: dict) -> None:
    """Attach's input: to the pty master or stdin pipe the daemon handed over (shared
    with the daemon: left non-blocking). For a stdin_once container (no tty) our EOF is
    the container's: close it and tell the daemon, which closes its ends too (it does
    as well when this attach's connection goes). Otherwise the container's stdin stays
    open for the next attach, as containerd keeps it."""
    from ..daemon import proto

    try:
        while True:
            data = reader.read(65536)
            if not data:
                break
            _write_all(fd, data)
        if reply.get("stdin_once"):
            proto.send(sock, {"op": "close_stdin"})
    except OSError:
        pass
    finally:
        os.close(fd)


def _apply_sizes(resize, master: int) -> None:
    """Each size the client sends onto the terminal (its foreground gets SIGWINCH);
    closes master at the end."""
    try:
        while True:
            size = resize.get()
            if size is None:
                return
            width, height = size
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    except OSError:
        pass
    finally:
        os.close(master)


def _receive_master(listener: socket.socket, proc: subprocess.Popen) -> int:
    """The pty master minirun-oci sends on the console socket; -1 if it exits first."""
    listener.settimeout(0.2)
    waited = 0.0
    while waited < CONSOLE_WAIT:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if proc.poll() is not None:
                return -1
            waited += 0.2
            continue
        with conn:
            conn.settimeout(CONSOLE_WAIT)
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        return fds[0] if fds else -1
    return -1
