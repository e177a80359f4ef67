"""/containers/...: docker's container endpoints as the engine's verbs.

create   Config + HostConfig -> RunOptions (translate.py) -> Engine.prepare; every
         container the API makes is the daemon's (as `run -d`'s): it logs, supervises,
         restarts and (AutoRemove) removes it
start    Engine.start; a failed start of an AutoRemove container removes it (the docker
         CLI waits for that before it exits 125/126/127)
wait     the events table (stopped / deleted rows of the container), polled; the
         headers go out at once, the JSON when the condition is met
attach   the daemon's attach connection, asked before the start: the daemon attaches it
         when the container starts, before it reads any output, so nothing is missed;
         relayed on the hijacked connection (stdio.py)
logs     the daemon's CRI log file, as docker's 8-byte frames (raw with a tty)
inspect, list   dockerview's docker-shaped documents
"""

from __future__ import annotations

import base64
import json
import os
import time

from ..errors import InvalidArgument, MiniRunError, NotFound
from .server import ApiError, Hijack, Response, Stream
from .stdio import attach_session, frame

WAIT_POLL = 0.05
LOG_POLL = 0.1


def get_record(req, key: str = "id") -> dict:
    try:
        return req.engine.get(req.params[key])
    except NotFound:
        raise ApiError(404, f"No such container: {req.params[key]}") from None


def _opts(rec: dict) -> dict:
    return json.loads(rec.get("options") or "{}")


# --- create, start, stop ----------------------------------------------------------------------

def create(req):
    from ..engine import check_run_options
    from ..image.store import ImageStore
    from .translate import create_options

    body = req.json()
    image, opts, warnings = create_options(body, req.q("name") or None)
    try:
        ImageStore(req.engine.root).get(image)
    except NotFound:
        raise ApiError(404, f"No such image: {familiar(image)}") from None
    check_run_options(opts)
    cid = req.engine.prepare(image, opts)
    size = (body.get("HostConfig") or {}).get("ConsoleSize") or [0, 0]
    if opts.tty and len(size) == 2 and size[0] and size[1]:
        from ..daemon.foreground import set_console_size

        set_console_size(os.path.join(req.engine.root, "containers", cid), *size)
    return Response(201, {"Id": cid, "Warnings": warnings})


def familiar(ref: str) -> str:
    """busybox -> busybox:latest, as docker names an image in its errors."""
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last or "@" in ref else f"{ref}:latest"


def start(req):
    rec = get_record(req)
    if rec["status"] == "running":
        return Response(304)
    try:
        req.engine.start(rec["id"])
    except MiniRunError:
        if _opts(rec).get("remove"):
            try:
                req.engine.remove(rec["id"], force=True)
            except MiniRunError:
                pass
        raise
    return None


def stop(req):
    rec = get_record(req)
    if rec["status"] != "running":
        return Response(304)
    req.engine.stop(rec["id"], _timeout(req))
    return None


def _timeout(req) -> float | None:
    t = req.qint("t")
    return None if t is None or t < 0 and t != -1 else (None if t == -1 else float(t))


def restart(req):
    rec = get_record(req)
    if rec["status"] == "running":
        req.engine.stop(rec["id"], _timeout(req))
    req.engine.start(rec["id"])


def kill(req):
    rec = get_record(req)
    if rec["status"] != "running":
        raise ApiError(409, f"Container {rec['id']} is not running")
    req.engine.kill(rec["id"], req.q("signal") or "KILL")


def remove(req):
    rec = get_record(req)
    if rec["status"] == "running" and not req.qbool("force"):
        raise ApiError(409, f"You cannot remove a running container {rec['id']}. Stop the "
                            "container before attempting removal or force remove")
    req.engine.remove(rec["id"], force=req.qbool("force"))
    from .execs import forget_container

    forget_container(req.engine, rec["id"])
    if req.qbool("v"):
        remove_anonymous_volumes(req.engine, _opts(rec))


def remove_anonymous_volumes(engine, opts: dict) -> None:
    """rm -v: the container's anonymous volumes that no other container uses."""
    import subprocess

    from ..cli_volume import is_anonymous, volume_users, volumes_dir

    users = volume_users(engine)
    for spec in opts.get("volumes") or []:
        name = spec.split(":")[0]
        if not name.startswith("/") and is_anonymous(name) and not users.get(name):
            path = os.path.join(volumes_dir(engine.root), name)
            if os.path.isdir(path):
                subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


def pause(req):
    from ..containerops import pause as pause_container

    pause_container(req.engine, get_record(req)["id"])
    req.engine.record_event("pause", get_record(req)["id"])


def unpause(req):
    from ..containerops import unpause as unpause_container

    unpause_container(req.engine, get_record(req)["id"])
    req.engine.record_event("unpause", get_record(req)["id"])


def rename(req):
    from ..containerops import rename_container

    rec = get_record(req)
    new = req.q("name") or ""
    rename_container(req.engine, rec["id"], new.lstrip("/"))
    req.engine.record_event("rename", rec["id"], oldName="/" + rec["name"])


def prune(req):
    from ..dockerview import filter_records

    filters = req.filters()
    until = filters.pop("until", None)
    labels = filters.pop("label", [])
    negated = filters.pop("label!", [])
    if filters:
        raise ApiError(400, f"invalid filter '{next(iter(filters))}'")
    deleted, space = [], 0
    recs = [r for r in req.engine.records() if r["status"] not in ("running", "creating")]
    if labels:
        recs = filter_records(req.engine, recs, {"label": labels})
    for rec in recs:
        if negated and filter_records(req.engine, [rec], {"label": negated}):
            continue
        if until and not _before(rec, until[0]):
            continue
        from ..dockerview import upper_size

        size = upper_size(req.engine, rec["id"])
        try:
            req.engine.remove(rec["id"])
        except MiniRunError:
            continue
        deleted.append(rec["id"])
        space += size
    return {"ContainersDeleted": deleted or None, "SpaceReclaimed": space}


def _before(rec: dict, until: str) -> bool:
    from ..cli_more import _parse_time

    cutoff = _parse_time(until)
    if cutoff is None:
        raise ApiError(400, f"invalid filter 'until={until}'")
    return rec["created"] < cutoff


# --- wait ---------------------------------------------------------------------------------

def wait(req):
    rec = get_record(req)
    cid = rec["id"]
    condition = req.q("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise ApiError(400, f"invalid condition: {condition!r}")
    db = req.engine.db
    seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    if condition == "not-running" and rec["status"] != "running":
        return {"StatusCode": _exit_code(rec), "Error": None}

    def until_met():
        nonlocal seq
        code = _exit_code(rec)
        while True:
            rows = db.execute("SELECT seq, type, attrs FROM events WHERE seq > ? AND"
                              " container = ? ORDER BY seq", (seq, cid)).fetchall()
            for seq, kind, attrs in rows:
                if kind == "stopped":
                    code = int((json.loads(attrs or "{}")).get("exit_code", code) or 0)
                    if condition != "removed":
                        yield _wait_body(code)
                        return
                elif kind == "deleted":
                    yield _wait_body(code)
                    return
            if req.client_gone():
                return
            time.sleep(WAIT_POLL)

    return Stream(until_met())


def _wait_body(code: int) -> bytes:
    return json.dumps({"StatusCode": code, "Error": None}).encode() + b"\n"


def _exit_code(rec: dict) -> int:
    from ..dockerview import exit_code_of

    return exit_code_of(rec) if rec["status"] == "exited" else 0


# --- list, inspect -------------------------------------------------------------------------

def list_containers(req):
    from ..dockerview import PS_FILTERS, filter_records

    filters = req.filters()
    for key in filters:
        if key not in PS_FILTERS:
            raise ApiError(400, f"invalid filter '{key}'")
    engine = req.engine
    recs = engine.records(all_containers=req.qbool("all") or bool(filters.get("status")))
    recs = filter_records(engine, recs, filters)
    recs.sort(key=lambda r: r["created"], reverse=True)
    limit = req.qint("limit", -1)
    if limit and limit > 0:
        recs = recs[:limit]
    return [summary(engine, rec, req.qbool("size")) for rec in recs]


def summary(engine, rec: dict, size: bool = False) -> dict:
    """GET /containers/json's entry (moby's types.Container)."""
    from ..dockerview import health_suffix, inspect_container, state_of, status_text, upper_size

    doc = inspect_container(engine, rec)
    ports = []
    for port, bindings in sorted((doc["NetworkSettings"].get("Ports") or {}).items()):
        number, _, proto = port.partition("/")
        for b in bindings or []:
            ports.append({"IP": b.get("HostIp") or "0.0.0.0", "PrivatePort": int(number),
                          "PublicPort": int(b.get("HostPort") or 0), "Type": proto or "tcp"})
        if not bindings:
            ports.append({"PrivatePort": int(number), "Type": proto or "tcp"})
    out = {
        "Id": rec["id"], "Names": ["/" + rec["name"]], "Image": rec["image"],
        "ImageID": rec["image_id"], "Command": " ".join(json.loads(rec["command"])),
        "Created": int(rec["created"]), "Ports": ports,
        "Labels": doc["Config"]["Labels"] or {}, "State": state_of(rec),
        "Status": status_text(rec) + health_suffix(engine, rec),
        "HostConfig": {"NetworkMode": doc["HostConfig"]["NetworkMode"]},
        "NetworkSettings": {"Networks": doc["NetworkSettings"].get("Networks") or {}},
        "Mounts": doc["Mounts"],
    }
    if size:
        out["SizeRw"] = upper_size(engine, rec["id"])
        out["SizeRootFs"] = out["SizeRw"]
    return out


def inspect(req):
    from ..dockerview import inspect_container, upper_size

    rec = get_record(req)
    doc = inspect_container(req.engine, rec)
    doc["ExecIDs"] = _exec_ids(req.engine, rec["id"])
    if req.qbool("size"):
        doc["SizeRw"] = doc["SizeRootFs"] = upper_size(req.engine, rec["id"])
    return doc


def _exec_ids(engine, cid: str):
    try:
        from .execs import exec_ids
    except ImportError:
        return None
    return exec_ids(engine, cid) or None


def top(req):
    rec = get_record(req)
    args = (req.q("ps_args") or "").split()
    lines = req.engine.top(rec["id"], args)
    titles = lines[0].split()
    processes = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        processes.append(fields + [""] * (len(titles) - len(fields)))
    return {"Titles": titles, "Processes": processes}


def changes(req):
    from ..containerfs import changes as container_changes

    kinds = {"C": 0, "A": 1, "D": 2}
    rec = get_record(req)
    return [{"Path": path, "Kind": kinds.get(kind, 0)}
            for kind, path in container_changes(req.engine, rec)] or None


# --- logs --------------------------------------------------------------------------------------

def logs(req):
    from ..logs import _since_cutoff

    rec = get_record(req)
    want = {s for s in ("stdout", "stderr") if req.qbool(s)}
    if not want:
        raise ApiError(400, "Bad parameters: you must choose at least one stream")
    tty = bool(_opts(rec).get("tty"))
    tail = req.q("tail") or "all"
    if tail != "all" and not tail.isdigit():
        raise ApiError(400, f"invalid tail: {tail!r}")
    since = req.q("since") or "0"
    until = req.q("until") or "0"
    cutoff = _since_cutoff(since) if since not in ("0", "") else None
    end = _since_cutoff(until) if until not in ("0", "") else None
    if end is not None and until.replace(".", "", 1).isdigit():
        end = _stamp(float(until))  # an absolute unix time, as docker reads it
    if cutoff is not None and since.replace(".", "", 1).isdigit():
        cutoff = _stamp(float(since))
    stamps = req.qbool("timestamps")
    content = "application/vnd.docker.raw-stream" if tty else \
        "application/vnd.docker.multiplexed-stream"

    def chunks():
        for stream, stamp, text in log_entries(req, rec["id"], req.qbool("follow"),
                                               None if tail == "all" else int(tail)):
            if stream not in want or (cutoff and stamp < cutoff) or (end and stamp > end):
                continue
            data = (stamp + " " if stamps else "").encode() + \
                text.encode("utf-8", "surrogateescape")
            yield data if tty else frame(stream, data)

    return Stream(chunks(), content_type=content)


def _stamp(epoch: float) -> str:
    secs, frac = divmod(int(epoch * 1e9), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def log_entries(req, cid: str, follow: bool, tail: int | None):
    """(stream, timestamp, text) of the container's log; with follow, on while it runs
    (and the client is there)."""
    from collections import deque

    from ..logs import _entries, log_files

    engine = req.engine
    path = engine.log_path(cid)
    lines = []
    for p in log_files(path):
        try:
            with open(p, errors="surrogateescape", newline="\n") as f:
                lines += f.readlines()
        except FileNotFoundError:
            pass
    entries = list(_entries(lines))
    if tail is not None:
        entries = list(deque(entries, maxlen=tail)) if tail > 0 else []
    yield from entries
    if not follow:
        return
    f = None
    try:
        try:
            f = open(path, errors="surrogateescape", newline="\n")  # noqa: SIM115
        except FileNotFoundError:
            return
        f.seek(0, os.SEEK_END)
        buf = ""
        while True:
            data = f.read()
            running = True
            if not data:
                running = engine.get_status_only(cid) == "running"
                data = f.read()  # what the daemon drained before it recorded the exit
            if data:
                buf += data
                *complete, buf = buf.split("\n")
                yield from _entries(line + "\n" for line in complete)
            if not running:
                return
            if data:
                continue
            if req.client_gone():
                return
            try:
                rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                f.close()
                f = open(path, errors="surrogateescape", newline="\n")  # noqa: SIM115
            time.sleep(LOG_POLL)
    finally:
        if f is not None:
            f.close()


# --- attach, resize -------------------------------------------------------------------------

def attach(req):
    rec = get_record(req)
    if not req.qbool("stream") and not req.qbool("logs"):
        raise ApiError(400, "Bad parameters: you must choose at least one of stream or logs")
    if rec["status"] not in ("running", "created", "exited"):
        raise ApiError(409, f"You cannot attach to a {rec['status']} container")
    tty = bool(_opts(rec).get("tty"))
    want = {s for s in ("stdout", "stderr") if req.qbool(s)}
    stdin = req.qbool("stdin") and bool(_opts(rec).get("interactive"))
    from ..terminal import parse_detach_keys

    try:
        keys = parse_detach_keys(req.q("detachKeys", "ctrl-p,ctrl-q"))
    except InvalidArgument as e:
        raise ApiError(400, str(e)) from None
    backlog = b""
    if req.qbool("logs"):
        for stream, _stamp, text in log_entries(req, rec["id"], False, None):
            if stream in want:
                data = text.encode("utf-8", "surrogateescape")
                backlog += data if tty else frame(stream, data)
    if not req.qbool("stream"):
        return Response(200, backlog, "application/vnd.docker.raw-stream")
    from .stdio import open_daemon_attach

    sock, got = open_daemon_attach(req.engine, rec["id"], stdin, until_started=True)
    content = "application/vnd.docker.raw-stream" if tty else \
        "application/vnd.docker.multiplexed-stream"
    if req.api_version < (1, 42):
        content = "application/vnd.docker.raw-stream"

    def session(conn):
        if backlog:
            conn.sock.sendall(backlog)
        attach_session(req, conn, sock, got, want, stdin, keys, rec["id"])

    return Hijack(session, content_type=content)


def resize(req):
    from .stdio import resize_container

    rec = get_record(req)
    if rec["status"] != "running":
        raise ApiError(409, f"Container {rec['id']} is not running")
    h, w = req.qint("h", 0), req.qint("w", 0)
    resize_container(req.engine, rec["id"], h, w)
    return Response(200, b"", "text/plain")


# --- stats ----------------------------------------------------------------------------------

def stats(req):
    from .stats import stats_stream

    rec = get_record(req)
    stream = req.qbool("stream", True)
    one_shot = req.qbool("one-shot")
    return stats_stream(req, rec, stream, one_shot)


# --- archive (docker cp) -------------------------------------------------------------------

def _path_stat(req, rec: dict, path: str) -> dict:
    from ..containerfs import stat_in_container

    st, link = stat_in_container(req.engine, rec, path)
    if st is None:
        raise ApiError(404, f"Could not find the file {path} in container {rec['name']}")
    import stat as stat_mod

    return {"name": os.path.basename(path.rstrip("/")) or "/", "size": st.st_size,
            "mode": _go_mode(st.st_mode, stat_mod), "mtime": _stamp(st.st_mtime)
            .replace(".000000000Z", "Z"), "linkTarget": link}


def _go_mode(mode: int, stat_mod) -> int:
    """os.FileMode's bits, as docker sends them in the stat header."""
    out = stat_mod.S_IMODE(mode) & 0o777
    if stat_mod.S_ISDIR(mode):
        out |= 1 << 31
    elif stat_mod.S_ISLNK(mode):
        out |= 1 << 27
    elif stat_mod.S_ISFIFO(mode):
        out |= 1 << 25
    elif stat_mod.S_ISSOCK(mode):
        out |= 1 << 24
    elif stat_mod.S_ISCHR(mode):
        out |= (1 << 26) | (1 << 21)
    elif stat_mod.S_ISBLK(mode):
        out |= 1 << 26
    if mode & stat_mod.S_ISUID:
        out |= 1 << 23
    if mode & stat_mod.S_ISGID:
        out |= 1 << 22
    if mode & stat_mod.S_ISVTX:
        out |= 1 << 20
    return out


def _stat_header(doc: dict) -> dict:
    return {"X-Docker-Container-Path-Stat":
            base64.b64encode(json.dumps(doc).encode()).decode()}


def archive_head(req):
    rec = get_record(req)
    path = req.q("path")
    if not path:
        raise ApiError(400, "Bad parameters: path is required")
    return Response(200, b"", "application/json", _stat_header(_path_stat(req, rec, path)))


def archive_get(req):
    import tempfile

    from ..containerfs import archive_from_container

    rec = get_record(req)
    path = req.q("path")
    if not path:
        raise ApiError(400, "Bad parameters: path is required")
    header = _stat_header(_path_stat(req, rec, path))
    # the tar first (the container frozen only while it is written), then sent
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the stream closes it when sent
    archive_from_container(req.engine, rec, path, spool)
    spool.seek(0)

    def chunks():
        with spool:
            while data := spool.read(1 << 16):
                yield data

    return Stream(chunks(), content_type="application/x-tar", headers=header)


def archive_put(req):
    from ..containerfs import extract_into_container

    rec = get_record(req)
    path = req.q("path")
    if not path:
        raise ApiError(400, "Bad parameters: path is required")
    try:
        extract_into_container(req.engine, rec, path, req.body_file(),
                               keep_owner=req.qbool("copyUIDGID"))
    except InvalidArgument as e:
        if "not a directory" in str(e):
            raise ApiError(400, f"extraction point is not a directory: {path}") from None
        raise
    except NotFound as e:
        raise ApiError(404, str(e)) from None
    return Response(200, b"", "text/plain")


def export(req):
    import tempfile

    from ..containerfs import export as export_fs

    rec = get_record(req)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the stream closes it when sent
    export_fs(req.engine, rec, spool)
    spool.seek(0)

    def chunks():
        with spool:
            while data := spool.read(1 << 16):
                yield data

    return Stream(chunks(), content_type="application/x-tar")


def update(req):
    from ..containerops import update_container

    rec = get_record(req)
    body = req.json()
    values = {}
    if body.get("Memory"):
        values["memory"] = str(body["Memory"])
    if body.get("MemorySwap"):
        values["memory_swap"] = str(body["MemorySwap"])
    if body.get("MemoryReservation"):
        values["memory_reservation"] = str(body["MemoryReservation"])
    if body.get("NanoCpus"):
        values["cpus"] = str(body["NanoCpus"] / 1e9)
    if body.get("CpuShares"):
        values["cpu_shares"] = body["CpuShares"]
    if body.get("CpusetCpus"):
        values["cpuset_cpus"] = body["CpusetCpus"]
    if body.get("PidsLimit"):
        values["pids_limit"] = body["PidsLimit"]
    policy = body.get("RestartPolicy") or {}
    if policy.get("Name"):
        from .translate import restart_policy

        values["restart"] = restart_policy(policy)
    warnings = []
    update_container(req.engine, rec["id"], values, warn=warnings.append)
    return {"Warnings": warnings}


ROUTES = [
    ("POST", "/containers/create", create),
    ("GET", "/containers/json", list_containers),
    ("POST", "/containers/prune", prune),
    ("GET", "/containers/{id}/json", inspect),
    ("POST", "/containers/{id}/start", start),
    ("POST", "/containers/{id}/stop", stop),
    ("POST", "/containers/{id}/restart", restart),
    ("POST", "/containers/{id}/kill", kill),
    ("POST", "/containers/{id}/wait", wait),
    ("DELETE", "/containers/{id}", remove),
    ("GET", "/containers/{id}/logs", logs),
    ("POST", "/containers/{id}/attach", attach),
    ("POST", "/containers/{id}/resize", resize),
    ("GET", "/containers/{id}/top", top),
    ("GET", "/containers/{id}/changes", changes),
    ("GET", "/containers/{id}/stats", stats),
    ("POST", "/containers/{id}/pause", pause),
    ("POST", "/containers/{id}/unpause", unpause),
    ("POST", "/containers/{id}/rename", rename),
    ("POST", "/containers/{id}/update", update),
    ("HEAD", "/containers/{id}/archive", archive_head),
    ("GET", "/containers/{id}/archive", archive_get),
    ("PUT", "/containers/{id}/archive", archive_put),
    ("GET", "/containers/{id}/export", export),
]
