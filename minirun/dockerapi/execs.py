"""Exec instances: POST /containers/{id}/exec, /exec/{id}/start|resize, GET /exec/{id}/json.

An instance is a file, <run root>/dockerapi/execs/<id>.json (each connection is its own
process, and create, start, resize and inspect come on different connections). start
runs `minirun-oci exec -p process.json` as a child of the connection's process (as the
CRI's streaming does: a child, not execproc in this process, which forks and installs
signal handlers), its stdio relayed on the hijacked connection (frames without a tty,
raw with one: the pty master it sends on a console socket); its exit code is written
to the instance before the connection closes, so the docker CLI's inspect right after
finds it. resize reaches the running exec's pty through <id>.sock, which the start's
process serves.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import termios

from ..errors import MiniRunError
from .containers import get_record
from .server import ApiError, Hijack, Response
from .stdio import frame

EXEC_NOT_FOUND, EXEC_CANNOT_RUN = 127, 126


def _dir(engine) -> str:
    path = os.path.join(engine.run_root, "dockerapi", "execs")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _path(engine, eid: str) -> str:
    if not eid or not all(c in "0123456789abcdef" for c in eid):
        raise ApiError(404, f"No such exec instance: {eid}")
    return os.path.join(_dir(engine), eid + ".json")


def load(engine, eid: str) -> dict:
    try:
        with open(_path(engine, eid)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        raise ApiError(404, f"No such exec instance: {eid}") from None


def save(engine, doc: dict) -> None:
    path = _path(engine, doc["ID"])
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def exec_ids(engine, cid: str) -> list[str]:
    out = []
    d = _dir(engine)
    for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
            try:
                with open(os.path.join(d, name)) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                continue
            if doc.get("ContainerID") == cid:
                out.append(doc["ID"])
    return out


def forget_container(engine, cid: str) -> None:
    """The instances of a removed container go with it."""
    for eid in exec_ids(engine, cid):
        try:
            os.unlink(_path(engine, eid))
        except FileNotFoundError:
            pass


def create(req):
    rec = get_record(req)
    if rec["status"] != "running":
        raise ApiError(409, f"Container {rec['id']} is not running")
    body = req.json()
    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    if not cmd:
        raise ApiError(400, "No exec command specified")
    if body.get("Privileged"):
        raise ApiError(400, "Privileged: minirun does not run privileged execs")
    eid = os.urandom(32).hex()
    doc = {"ID": eid, "ContainerID": rec["id"], "Running": False, "ExitCode": None,
           "Pid": 0, "OpenStdin": bool(body.get("AttachStdin")),
           "OpenStdout": bool(body.get("AttachStdout")),
           "OpenStderr": bool(body.get("AttachStderr")), "CanRemove": False,
           "DetachKeys": body.get("DetachKeys") or "",
           "ProcessConfig": {"tty": bool(body.get("Tty")), "entrypoint": cmd[0],
                             "arguments": cmd[1:], "privileged": False,
                             "user": body.get("User") or ""},
           "Env": list(body.get("Env") or []), "WorkingDir": body.get("WorkingDir") or "",
           "Started": False}
    save(req.engine, doc)
    req.engine.record_event("exec_create", rec["id"], execID=eid)
    return Response(201, {"Id": eid})


def inspect(req):
    doc = load(req.engine, req.params["id"])
    if doc["Running"] and doc["Pid"] and not os.path.exists(f"/proc/{doc['Pid']}"):
        doc["Running"] = False  # a detached exec that has ended (its status is unknown)
    return {k: v for k, v in doc.items() if k not in ("Env", "WorkingDir", "Started")}


def _process(engine, doc: dict) -> dict:
    from .. import execproc
    from ..container import Container

    rec = engine.get(doc["ContainerID"])
    if rec["status"] != "running":
        raise ApiError(409, f"Container {rec['id']} is not running")
    c = Container.load(engine.oci_root, rec["id"])
    pc = doc["ProcessConfig"]
    uid_gid = None
    if pc["user"]:
        u = engine._user(pc["user"], c.data.get("rootfs", ""))
        uid_gid = f"{u['uid']}:{u['gid']}"
    return execproc.build_process(c, [pc["entrypoint"], *pc["arguments"]], tty=pc["tty"],
                                  cwd=doc["WorkingDir"] or None, env=doc["Env"],
                                  user=uid_gid)


def start(req):
    doc = load(req.engine, req.params["id"])
    body = req.json()
    if doc["Started"]:
        raise ApiError(409, f"Exec {doc['ID']} has already been started")
    process = _process(req.engine, doc)
    size = body.get("ConsoleSize")
    if doc["ProcessConfig"]["tty"] and size and len(size) == 2 and size[0] and size[1]:
        process["consoleSize"] = {"height": int(size[0]), "width": int(size[1])}
    doc["Started"] = True
    save(req.engine, doc)
    if body.get("Detach"):
        _run_detached(req.engine, doc, process)
        return Response(200, b"", "application/json")
    content = "application/vnd.docker.raw-stream" if doc["ProcessConfig"]["tty"] or \
        req.api_version < (1, 42) else "application/vnd.docker.multiplexed-stream"
    resize_sock = _resize_listener(req.engine, doc["ID"])
    return Hijack(lambda conn: _session(req, conn, doc, process, resize_sock),
                  content_type=content)


def _argv(engine, tmp: str, process: dict) -> tuple[list[str], str]:
    pfile = os.path.join(tmp, "process.json")
    with open(pfile, "w") as f:
        json.dump(process, f)
    log = os.path.join(tmp, "log")
    return [sys.executable, "-m", "minirun.oci_cli", "--root", engine.oci_root, "--log",
            log, "--log-format", "json", "exec", "-p", pfile, "--pid-file",
            os.path.join(tmp, "pid")], log


def _read_pid(tmp: str) -> int:
    try:
        with open(os.path.join(tmp, "pid")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _logged_error(log: str) -> str | None:
    try:
        with open(log) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None
    errors = [e.get("msg", "") for e in lines if e.get("level") == "error"]
    return errors[-1] if errors else None


def _run_detached(engine, doc: dict, process: dict) -> None:
    process["terminal"] = False
    with tempfile.TemporaryDirectory(prefix="minirun-exec-") as tmp:
        argv, log = _argv(engine, tmp, process)
        proc = subprocess.run(argv + ["--detach", doc["ContainerID"]],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise MiniRunError(f"OCI runtime exec failed: {_logged_error(log) or ''}")
        doc.update(Running=True, Pid=_read_pid(tmp))
        save(engine, doc)


def _session(req, conn, doc: dict, process: dict, resize_sock) -> None:
    engine = req.engine
    tty = doc["ProcessConfig"]["tty"]
    client = conn.sock
    with tempfile.TemporaryDirectory(prefix="minirun-exec-") as tmp:
        argv, log = _argv(engine, tmp, process)
        master = -1
        stdin_w = -1
        try:
            if tty:
                proc, master = _start_tty(argv, tmp, doc["ContainerID"])
                outputs = {master: "stdout"} if master >= 0 else {}
            else:
                proc = subprocess.Popen(argv + [doc["ContainerID"]],
                                        stdin=subprocess.PIPE if doc["OpenStdin"]
                                        else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if proc.stdin is not None:
                    stdin_w = os.dup(proc.stdin.fileno())
                    proc.stdin.close()
                outputs = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
            doc.update(Running=True, Pid=0)
            save(engine, doc)
            code = _relay(proc, client, conn.pending, outputs, master, stdin_w, tty, doc,
                          resize_sock, tmp)
            if code == 255:
                message = _logged_error(log)
                if message is not None:
                    code = EXEC_NOT_FOUND if ("not found" in message or
                                              "no such file" in message) \
                        else EXEC_CANNOT_RUN
                    if tty:  # without one, minirun-oci's stderr (the client's) said it
                        try:
                            client.sendall(f"OCI runtime exec failed: {message}: unknown"
                                           "\r\n".encode())
                        except OSError:
                            pass
            doc.update(Running=False, ExitCode=code, Pid=0)
            save(engine, doc)
            engine.record_event("exec_die", doc["ContainerID"], execID=doc["ID"],
                                exitCode=str(code))
        finally:
            resize_sock.close()
            try:
                os.unlink(os.path.join(_dir(engine), doc["ID"][:24] + ".sock"))
            except FileNotFoundError:
                pass
            for fd in (master, stdin_w):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass


def _start_tty(argv: list[str], tmp: str, cid: str):
    from ..cri.stream_engine import _receive_master

    path = os.path.join(tmp, "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        proc = subprocess.Popen(argv + ["--console-socket", path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        return proc, _receive_master(listener, proc)
    finally:
        listener.close()


def _resize_path(engine, eid: str) -> tuple[int, str]:
    """(an fd of the instances' directory, the socket's path through it): a path under
    the run root may be longer than a unix socket address may be."""
    dfd = os.open(_dir(engine), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return dfd, f"/proc/self/fd/{dfd}/{eid[:24]}.sock"


def _resize_listener(engine, eid: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dfd, path = _resize_path(engine, eid)
    try:
        s.bind(path)
    finally:
        os.close(dfd)
    return s


def _relay(proc, client, pending: bytes, outputs: dict, master: int, stdin_w: int, tty: bool,
           doc: dict, resize_sock, tmp: str) -> int:
    """Output to the client, its input to the process, sizes onto the pty, until the
    process has exited and its output is read; its exit code."""
    from ..terminal import DetachKeys

    input_fd = master if tty and doc["OpenStdin"] else stdin_w
    reading = doc["OpenStdin"]
    watcher = DetachKeys(b"")
    pid_saved = False

    def take(data: bytes) -> bool:
        nonlocal input_fd
        if not data:
            if input_fd >= 0 and not tty:
                os.close(input_fd)
            input_fd = -1
            return False
        data, _ = watcher.feed(data)
        if input_fd >= 0:
            try:
                while data:
                    data = data[os.write(input_fd, data):]
            except OSError:
                pass
        return True

    if pending and reading:
        reading = take(pending)
    open_outputs = dict(outputs)
    while True:
        if not pid_saved:
            pid = _read_pid(tmp)
            if pid:
                doc["Pid"] = pid
                pid_saved = True
        watch = list(open_outputs) + [resize_sock] + ([client] if reading else [])
        exited = proc.poll() is not None
        ready, _, _ = select.select(watch, [], [], 0.05 if exited else 0.5)
        for fd in ready:
            if fd is client:
                try:
                    reading = take(client.recv(1 << 16))
                except OSError:
                    reading = False
            elif fd is resize_sock:
                data = resize_sock.recv(64)
                if master >= 0 and len(data) == 8:
                    fcntl.ioctl(master, termios.TIOCSWINSZ, data)
            else:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:  # a pty whose other side is gone: EIO
                    data = b""
                if not data:
                    del open_outputs[fd]
                    continue
                try:
                    client.sendall(data if tty else frame(open_outputs[fd], data))
                except OSError:  # the client has gone: so does the process (as docker's)
                    if proc.poll() is None:
                        proc.kill()
                    reading = False
        if exited and (not open_outputs or not ready):
            break
    code = proc.wait()
    return 128 - code if code < 0 else code


def resize(req):
    doc = load(req.engine, req.params["id"])
    h, w = req.qint("h", 0), req.qint("w", 0)
    if not doc["ProcessConfig"]["tty"]:
        return Response(200, b"", "text/plain")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dfd, path = _resize_path(req.engine, doc["ID"])
    try:
        s.sendto(struct.pack("HHHH", h, w, 0, 0), path)
    except (FileNotFoundError, ConnectionRefusedError):
        if doc["Running"]:
            raise ApiError(409, f"exec {doc['ID']} has no terminal yet") from None
        raise ApiError(409, f"exec {doc['ID']} is not running") from None
    finally:
        s.close()
        os.close(dfd)
    return Response(200, b"", "text/plain")


ROUTES = [
    ("POST", "/containers/{id}/exec", create),
    ("POST", "/exec/{id}/start", start),
    ("POST", "/exec/{id}/resize", resize),
    ("GET", "/exec/{id}/json", inspect),
]
