"""`minirun daemon`: serves the CLI, writes container logs, records exits, restarts,
runs health checks (health.py: timers and probe processes in this same loop).

  CLI -> daemon  {"op": "ping"}            <- {"ok": true, "pid"}
  CLI -> daemon  {"op": "start", "id", "trace"?}  <- {"ok": true, "pid", "trace"?} | {"error"}
                 trace: the caller's span id (minirun/monitor/trace.py); the reply
                 then has the start's spans
  CLI -> daemon  {"op": "stop", "id"}      <- {"ok": true}: the user stops or removes
                 it: no restart policy applies from now on, a pending restart is off
  CLI -> daemon  {"op": "attach", "id", "stdin", "until_started"?}
                 <- {"ok": true, "tty", "stdin", "stdin_once"} + [pty master | stdin
                 pipe] | {"error"}
                 (until_started: a container that is not running yet is attached when
                 it starts, before any of its output is read: {"waiting": true} at once,
                 the reply then; the Docker API's attach-then-start)
                 then the container's output as stream messages (proto.py) until its
                 exit status; the client may send {"op": "close_stdin"} (its EOF) and
                 {"op": "kill", "signal"} (a signal for the container). stdin_once (the
                 CRI's, no tty): the stdin is closed when this client goes, however
  CLI -> daemon  {"op": "run", ...}        a foreground run: daemon/foreground.py
  CRI -> daemon  {"op": "reopen_log", "id"} <- {"ok": true} | {"error"}: the log file is
                 closed and opened again at its path (kubelet rotates a CRI log by
                 renaming it, then asks for this); an error if the container is not running

Attach: the daemon reads the container's output (for the log) and copies it to every
attached client; input does not pass through the daemon: the client gets a dup of the
pty master (it also sets the window size on it) or of the stdin pipe's write end and
writes to it itself. Detach keys are the client's business: it just goes away.

Logs are in the CRI format kubelet writes and Filebeat / Fluent Bit read as they are:
`<RFC3339Nano> <stdout|stderr> <P|F> <message>`, P for a partial line, rotated by the
bytes of output they hold (--log-opt max-size, max-file). A container with a log_path
(the CRI's) logs there and is not rotated by the daemon unless --log-opt asks: kubelet
rotates it (rename, then reopen_log).

At a container's exit, before the runtime deletes its cgroup, the cgroup's OOM kill
count decides the record's `reason`: "OOMKilled" when the kernel's OOM killer killed one
of its processes, else "".

The daemon's own log (daemon.log in the run root, its stderr) is JSON lines with Elastic
Common Schema names by default, laid out as the ecs-logging libraries write them
(`@timestamp`, `log.level`, `message`, `ecs.version` at the top, dotted; `container.id`,
`container.name`, `container.image.name`, `event.action`, `process.pid` nested where they
apply), so Filebeat's ndjson parser ships it as it is; `--log-format text` (or
MINIRUN_LOG_FORMAT=text for a daemon started on demand) writes a line for people instead.

Order: one thread; an exit the keeper reports while the daemon waits for a reply of its
own is queued and handled after that call returns (never inside it), and restarts are
timers of the main loop (docker's back-off), so requests, exits and restarts each run to
their end before the next begins. One daemon per run root: it holds an flock on
daemon.lock for its life; one that cannot take it exits at once.
"""

from __future__ import annotations

import base64
import json
import os
import select
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time

from ..errors import ContainerStateError, MiniRunError
from ..monitor import trace as spans
from . import foreground, proto
from .timers import Timers

# the bytes of output (not of the file: the CRI prefix is not counted) a log file holds
# before it is rotated, and how many files (the current one and rotated ones) are kept:
# docker's `local` driver's defaults, so at least (max-file - 1) * max-size bytes of
# output are always there
LOG_MAX_SIZE = 20 * 1024 * 1024
LOG_MAX_FILE = 5
CRI_PREFIX = len("2006-01-02T15:04:05.000000000Z stdout F ")
# docker's restart manager: 100 ms, doubled for each restart in a row, at most a minute;
# back to 100 ms once the container ran for 10 s
RESTART_FIRST, RESTART_MAX, RESTART_RESET_AFTER = 0.1, 60.0, 10.0
PARTIAL_AT = 16 * 1024
# output queued for an attached client that does not read it; past this it is dropped
# (the log still has everything) rather than let it stall the daemon
ATTACH_QUEUE_MAX = 8 * 1024 * 1024
STOPPED = "you cannot attach to a stopped container, start it first"
LOG_FORMATS = ("json", "text")
ECS_VERSION = "1.6.0"  # the version the ecs-logging libraries write
LOCK_BUSY = "another minirun daemon"  # a second daemon's error: it lost the lock
ERROR_PREFIX = "minirun: error: "  # how the daemon command prints a fatal error


def rfc3339nano(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def log_options(opts: dict) -> tuple[int, int]:
    """(max-size, max-file) from the --log-opt values `run` stored (checked there)."""
    from ..engine import parse_log_opts

    return parse_log_opts(opts.get("log_opts") or [], LOG_MAX_SIZE, LOG_MAX_FILE)


class CriLog:
    """One container's log file; both streams write through it. A line is stamped with
    the time its end was read (by the daemon, or by the keeper while no daemon was
    there), which is when the container wrote it give or take a scheduling delay."""

    def __init__(self, path: str, max_size: int = LOG_MAX_SIZE,
                 max_file: int = LOG_MAX_FILE) -> None:
        self.path = path
        self.max_size = max_size
        self.max_file = max_file
        self.f = open(path, "ab")  # noqa: SIM115 - open for the log's life
        self.size = self._output_bytes()
        self.pending = {"stdout": b"", "stderr": b""}

    def _output_bytes(self) -> int:
        """The output the current file holds: its size less each line's prefix."""
        lines = 0
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
        return max(0, self.f.tell() - lines * CRI_PREFIX)

    def write(self, stream: str, data: bytes, ns: int | None = None) -> None:
        stamp = rfc3339nano(ns)
        buf = self.pending[stream] + data
        *lines, rest = buf.split(b"\n")
        for line in lines:
            self._line(stream, "F", line, stamp)
        while len(rest) >= PARTIAL_AT:
            self._line(stream, "P", rest[:PARTIAL_AT], stamp)
            rest = rest[PARTIAL_AT:]
        self.pending[stream] = rest
        self.f.flush()

    def close_stream(self, stream: str) -> None:
        """The stream's end: output after its last newline is a partial line (P), as
        containerd writes it, so a reader (kubelet, `minirun logs`) shows it without
        the newline the container did not write."""
        if self.pending[stream]:
            self._line(stream, "P", self.pending[stream], rfc3339nano())
            self.pending[stream] = b""
            self.f.flush()

    def _line(self, stream: str, tag: str, msg: bytes, stamp: str) -> None:
        self.f.write(f"{stamp} {stream} {tag} ".encode() + msg + b"\n")
        self.size += len(msg) + 1
        # never after a P line: a reader of one file (Filebeat's harvester) joins a P to
        # the line after it in that file, and a rotated file gets none
        if self.size >= self.max_size and tag == "F":
            self.rotate()

    def rotate(self) -> None:
        """ctr.log becomes ctr.log.1, .1 becomes .2, ...; max-file files in all."""
        self.f.close()
        if self.max_file > 1:
            for n in range(self.max_file - 1, 0, -1):
                src = self.path if n == 1 else f"{self.path}.{n - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{n}")
            self.f = open(self.path, "ab")  # noqa: SIM115
        else:
            self.f = open(self.path, "wb")  # noqa: SIM115 - one file: it starts again (as docker's)
        self.size = 0

    def reopen(self) -> None:
        """The file at `path` from now on: a new one if the old was renamed away."""
        self.f.close()
        self.f = open(self.path, "ab")  # noqa: SIM115
        self.size = self._output_bytes()

    def close(self) -> None:
        for stream in self.pending:
            self.close_stream(stream)
        self.f.close()


class Stdio:
    """A running container's input as the daemon holds it for attach (the pty master,
    or the stdin pipe's write end while it is open) and the clients attached to it."""

    def __init__(self, tty: bool, interactive: bool, input_fd: int | None,
                 stdin_once: bool = False) -> None:
        self.tty = tty
        self.interactive = interactive
        self.input_fd = input_fd
        self.stdin_once = stdin_once and not tty  # containerd's: a tty's stays open
        self.clients: set[AttachedClient] = set()

    def close_input(self) -> None:
        if self.input_fd is not None:
            os.close(self.input_fd)
            self.input_fd = None


class AttachedClient:
    def __init__(self, conn, cid: str, closes_stdin: bool = False) -> None:
        self.conn = conn
        self.cid = cid
        self.closes_stdin = closes_stdin  # it writes to a stdin_once container's stdin
        self.queue: list[bytes] = []
        self.queued = 0
        self.closing = False  # the exit status is queued: close once it is sent


class Daemon:
    def __init__(self, engine, metrics_addr: str | None = None) -> None:
        self.engine = engine
        self.metrics_addr = metrics_addr  # serve Prometheus metrics there (monitor/metrics.py)
        self.run_root = engine.run_root
        self.sock_path = os.path.join(self.run_root, "minirun.sock")
        self.keeper_path = os.path.join(self.run_root, "keeper.sock")
        self.sel = selectors.DefaultSelector()
        self.logs: dict[str, CriLog] = {}
        self.open_streams: dict[str, int] = {}
        self.stdio: dict[str, Stdio] = {}  # the containers the daemon holds, running
        self.attached: dict[object, AttachedClient] = {}  # by connection
        self.keeper = None
        self.exits: list[tuple[str, int]] = []  # reported, not handled yet: in order
        self.restarts = Timers()  # id -> when its restart is due
        self.backoff: dict[str, float] = {}  # id -> the last restart delay
        from .health import HealthChecks

        self.health = HealthChecks(self)
        self.waiting: dict[str, list] = {}  # id -> [(conn, stdin)] attached at its start

    # --- the keeper --------------------------------------------------------------------------

    def connect_keeper(self) -> None:
        try:
            self.keeper = proto.connect(self.keeper_path)
        except OSError:
            spawn_detached([sys.executable, "-m", "minirun.daemon.keeper", self.run_root],
                           os.path.join(self.run_root, "keeper.log"))
            self.keeper = wait_for_socket(self.keeper_path)
        self.keeper.settimeout(None)
        # the keeper starts another daemon like this one if this one dies
        proto.send(self.keeper, {"op": "hello",
                                 "respawn": daemon_argv(self.engine, self.metrics_addr),
                                 "log": os.path.join(self.run_root, "daemon.log")})
        adopted = 0
        orphans = []
        while True:
            msg, fds = proto.recv(self.keeper)
            if msg is None:
                raise RuntimeError("the keeper went away")
            if msg.get("done"):
                break
            held = msg["held"]
            if not self.adopt(held["id"], fds, held.get("streams", ["stdout", "stderr"])):
                orphans.append(held["id"])
                continue
            adopted += 1
            if held["status"] is not None:
                self.exits.append((held["id"], held["status"]))
            elif self.engine.get_status_only(held["id"]) != "running":
                # started for a daemon that died before it could record the start
                self.engine._update(held["id"], status="running", pid=held["pid"],
                                    started=time.time(), exit_code=None, reason="")
                self.engine.record_event("started", held["id"],
                                         self.run_options(held["id"]).get("pod") or None)
            if held["status"] is None:
                self.health.started(held["id"], self.run_options(held["id"]), adopted=True)
        for cid in orphans:
            self.discard_orphan(cid)
        return adopted

    def discard_orphan(self, cid: str) -> None:
        """A container the keeper started for a daemon that died in that start: the
        `run -d` that asked saw the daemon go, removed the record, snapshot and network,
        and the keeper finished the start after that. Nobody lists it: it goes (its
        processes, cgroups and runtime state), and the keeper lets go of it."""
        from .. import container as ctr
        from ..errors import NotFound

        try:
            ctr.delete(self.engine.oci_root, cid, force=True)
        except NotFound:
            pass
        except MiniRunError as e:
            log_line(f"the orphan {cid[:12]} was not removed: {e}", "error",
                     {"id": cid}, "destroy")
            return
        self.keeper_call({"op": "forget", "id": cid})
        log_line(f"removed the container {cid[:12]}, started after its removal",
                 container={"id": cid}, action="destroy")

    def ecs_container(self, cid: str) -> dict:
        """The ECS container fields of a container, for its log lines: its id alone when
        its record is gone."""
        row = self.engine.db.execute("SELECT id, name, image FROM containers WHERE id = ?",
                                     (cid,)).fetchone()
        return ecs_container_of(dict(zip(("id", "name", "image"), row))) if row else {"id": cid}

    def take_over(self) -> None:
        """Just before the main loop: the keeper stops reading the pipes and hands over
        what it read (while no daemon was there, and while this one started), with the
        times it read it."""
        proto.send(self.keeper, {"op": "ready"})
        while True:
            msg, fds = proto.recv(self.keeper)
            for fd in fds:
                os.close(fd)
            if msg is None:
                raise RuntimeError("the keeper went away")
            if "event" in msg:
                self.exits.append((msg["id"], msg["status"]))
            elif "backlog" in msg:
                b = msg["backlog"]
                log = self.logs.get(b["id"])
                if log is not None:
                    log.write(b["stream"], base64.b64decode(b["data"]), b["ns"])
            else:
                return

    def keeper_call(self, msg: dict) -> tuple[dict, list[int]]:
        """A request to the keeper. Exit events that arrive meanwhile are queued, not
        handled here: handling one calls the keeper too, and that call would take this
        call's reply."""
        proto.send(self.keeper, msg)
        while True:
            reply, fds = proto.recv(self.keeper)
            if reply is None:
                raise RuntimeError("the keeper went away")
            if "event" in reply:
                self.exits.append((reply["id"], reply["status"]))
                continue
            return reply, fds

    def adopt(self, cid: str, fds: list[int], streams: list[str]) -> bool:
        """Read the container's output into its log; keep its input for attach. A pty
        master is both: its output is logged as stdout. False for a container whose
        files are gone (removed)."""
        if not os.path.isdir(os.path.join(self.engine.root, "containers", cid)):
            for fd in fds:
                os.close(fd)
            return False
        opts = self.run_options(cid)
        if cid not in self.logs:
            self.logs[cid] = self.open_log(cid, opts)
        readers = []
        input_fd = None
        for fd, stream in zip(fds, streams):
            if stream == "tty":
                input_fd = fd
                readers.append((os.dup(fd), "stdout"))
            elif stream == "stdin":
                input_fd = fd
            else:
                readers.append((fd, stream))
        old = self.stdio.pop(cid, None)
        if old is not None:
            old.close_input()
        self.stdio[cid] = Stdio("tty" in streams, bool(opts.get("interactive")), input_fd,
                                bool(opts.get("stdin_once")))
        self.open_streams[cid] = len(readers)
        for fd, stream in readers:
            os.set_blocking(fd, False)  # for a pty master: also the keeper's, the clients'
            self.sel.register(fd, selectors.EVENT_READ, ("pipe", cid, stream))
        return True

    def open_log(self, cid: str, opts: dict) -> CriLog:
        path = self.engine.log_path(cid, opts)
        max_size, max_file = log_options(opts)
        if opts.get("log_path"):
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            if not opts.get("log_opts"):  # kubelet rotates it
                max_size = 1 << 62
        return CriLog(path, max_size, max_file)

    def reopen_log(self, cid: str) -> None:
        log = self.logs.get(cid)
        if log is None or cid not in self.stdio:
            raise ContainerStateError(f"container {cid[:12]} is not running")
        log.reopen()

    def run_options(self, cid: str) -> dict:
        row = self.engine.db.execute("SELECT options FROM containers WHERE id = ?",
                                     (cid,)).fetchone()
        return json.loads(row[0]) if row else {}

    # --- events --------------------------------------------------------------------------------

    def on_pipe(self, fd: int, cid: str, stream: str) -> None:
        data = proto.read_output(fd)
        if data is None:
            return
        log = self.logs.get(cid)
        if data:
            if log:
                log.write(stream, data)
            st = self.stdio.get(cid)
            for client in list(st.clients if st else ()):
                self.send_to(client, proto.STREAM_TAGS[stream] + data)
            return
        self.sel.unregister(fd)
        os.close(fd)
        if log:
            log.close_stream(stream)
        self.open_streams[cid] = self.open_streams.get(cid, 1) - 1

    def drain(self, cid: str) -> None:
        """Read what the container wrote before it exited, so the log is complete."""
        for key in list(self.sel.get_map().values()):
            if isinstance(key.data, tuple) and key.data[0] == "pipe" and key.data[1] == cid:
                deadline = time.monotonic() + 2
                while self.sel.get_map().get(key.fd) is key and time.monotonic() < deadline:
                    self.on_pipe(key.fileobj, cid, key.data[2])

    def on_exit(self, cid: str, status: int) -> None:
        from .. import container as ctr
        from ..errors import NotFound
        from ..lookup import find_record

        self.health.stopped(cid)
        self.drain(cid)
        log = self.logs.pop(cid, None)
        if log:
            log.close()
        try:
            # the record as it is, not reconciled: the exit is written below, with its
            # event, in one transaction (whoever sees it exited sees its die event)
            rec = find_record(self.engine.db, "containers", "container", cid)
        except NotFound:
            rec = None
        if rec is not None and not json.loads(rec["options"]).get("remove"):
            # before the record says exited: `stop` returns then, and a `start` right
            # after must find nothing left to release
            self.release_network(cid)
        reason = self.engine.oom_reason(cid)
        # the record first: the status file the keeper wrote goes with `forget`
        if rec is not None:
            db = self.engine.db
            with db:
                db.execute("BEGIN IMMEDIATE")
                if self.engine._update(cid, status="exited", exit_code=status,
                                       finished=time.time(), pid=0, reason=reason):
                    if reason == "OOMKilled":  # docker's order: oom, then die
                        self.engine.record_object_event("container", "oom", cid)
                    self.engine.record_event("stopped", cid,
                                             json.loads(rec["options"]).get("pod") or None,
                                             exit_code=status, reason=reason)
        if rec is not None:
            log_line(f"{rec['name']} exited with code {status}" +
                     (f" ({reason})" if reason else ""), container=ecs_container_of(rec),
                     action="oom" if reason == "OOMKilled" else "die")
        st = self.stdio.pop(cid, None)
        if st is not None:
            st.close_input()
        try:
            ctr.delete(self.engine.oci_root, cid, force=True)
        except NotFound:
            pass
        if self.keeper is not None:
            self.keeper_call({"op": "forget", "id": cid})
        if rec is not None:
            if self.engine.should_restart(rec, status):
                self.schedule_restart(cid, rec)
            elif json.loads(rec["options"]).get("remove"):
                self.remove(cid)
        # the status last: a `run --rm` client returns once nothing of the container is left
        for client in list(st.clients if st else ()):
            self.send_to(client, proto.EXIT + str(status).encode())
            client.closing = True
            if not client.queue:
                self.detach(client)

    def release_network(self, cid: str) -> None:
        """Its veth, netns and port rules go while it is not running (docker's stopped
        containers have no sandbox); its address stays for the next start."""
        try:
            if self.engine._has_endpoint(cid):
                self.engine.networks.release(cid)
        except Exception as e:  # noqa: BLE001 - one container's trouble
            log_line(f"release of the network of {cid[:12]} failed: {e}", "error",
                     self.ecs_container(cid), "disconnect")

    def remove(self, cid: str) -> None:
        """`run -d --rm`: everything goes once it has exited (files, snapshot, network
        lease, record), as `rm` would do it."""
        from ..image.store import ImageStore

        try:
            self.engine._remove_everything(cid, ImageStore(self.engine.root))
        except Exception as e:  # noqa: BLE001 - one container's trouble
            log_line(f"removal of {cid[:12]} (--rm) failed: {e}", "error",
                     self.ecs_container(cid), "destroy")

    def schedule_restart(self, cid: str, rec: dict) -> None:
        """docker's back-off: the first restart after 100 ms, each one in a row after
        twice the last, at most a minute; a container that ran 10 s starts again at
        100 ms."""
        end = rec["finished"] if rec["status"] == "exited" and rec["finished"] else time.time()
        ran = end - (rec["started"] or 0)
        last = self.backoff.get(cid)
        if last is None or ran >= RESTART_RESET_AFTER:
            delay = RESTART_FIRST
        else:
            delay = min(last * 2, RESTART_MAX)
        self.backoff[cid] = delay
        self.restarts.set(cid, delay)

    def cancel_restart(self, cid: str) -> None:
        self.restarts.cancel(cid)

    def due_restarts(self) -> float | None:
        """Start the containers whose restart is due; the seconds until the next one."""
        while (cid := self.restarts.pop_due()) is not None:
            try:
                self.restart(cid)
            except Exception as e:  # noqa: BLE001 - one container's trouble
                log_line(f"restart of {cid[:12]} failed: {type(e).__name__}: {e}", "error",
                         self.ecs_container(cid), "restart")
        return self.restarts.next_in()

    def restart(self, cid: str) -> None:
        from ..errors import NotFound

        try:
            rec = self.engine.get(cid)
        except NotFound:
            return  # removed meanwhile
        # stopped or removed by the user meanwhile (stop tells us, so this is the
        # second line), or started again by `start`
        if rec["user_stopped"] or rec["status"] != "exited":
            return
        self.engine.network_for_start(rec)
        self.engine._update(cid, restart_count=(rec["restart_count"] or 0) + 1)
        self.start(cid)
        self.engine.record_object_event("container", "restart", cid)

    def user_stop(self, cid: str) -> None:
        """The user stops (or removes) it: no restart from now on, none pending. As
        requests and restarts take turns, a restart is either done (the container runs:
        the caller signals it) or will not happen."""
        self.cancel_restart(cid)
        self.engine._update(cid, user_stopped=1)

    def handle_exits(self) -> None:
        while self.exits:
            cid, status = self.exits.pop(0)
            try:
                self.on_exit(cid, status)
            except Exception as e:  # noqa: BLE001 - one container's trouble
                log_line(f"error: handling the exit of {cid[:12]}: {type(e).__name__}: {e}",
                         "error", self.ecs_container(cid), "die")

    def resume_restarts(self) -> None:
        """Containers whose restart was pending when the last daemon died: their exit
        is recorded and the keeper has let them go, so only their records say it. Read
        as they are, not reconciled: a container a `run -d` is preparing has no runtime
        state yet and would pass for exited (and be started twice)."""
        try:
            rows = self.engine.db.execute(
                "SELECT id FROM containers WHERE status = 'exited' AND started IS NOT NULL"
                " AND user_stopped = 0").fetchall()
            pending = {cid for cid, _ in self.exits}
            for (cid,) in rows:
                if cid in self.stdio or cid in pending:
                    continue
                rec = self.engine.get(cid)
                if json.loads(rec["options"]).get("detach") and \
                        self.engine.should_restart(rec, rec["exit_code"] or 0):
                    self.schedule_restart(cid, rec)
        except Exception as e:  # noqa: BLE001 - never a reason not to serve
            log_line(f"pending restarts not resumed: {type(e).__name__}: {e}", "error")

    def start(self, cid: str, on_started=None) -> int:
        """Start the container in the keeper; a -t container gets a new pty, a -i one
        a new stdin pipe, each time. on_started is called once its output is held, before
        any of it is read (the foreground client attaches then)."""
        self.cancel_restart(cid)
        bundle = os.path.join(self.engine.root, "containers", cid)
        opts = self.run_options(cid)
        start = spans.begin("start", **{"container.id": cid})
        msg = {"op": "start", "id": cid, "oci_root": self.engine.oci_root, "bundle": bundle,
               "tty": bool(opts.get("tty")), "stdin": bool(opts.get("interactive"))}
        if spans.ON:
            msg["trace"] = spans.parent_id()
        reply, fds = self.keeper_call(msg)
        spans.adopt(reply.get("trace"))
        if "error" in reply:
            raise proto.reply_error(reply)
        db = self.engine.db
        with db:
            db.execute("BEGIN")
            self.engine._update(cid, status="running", pid=reply["pid"],
                                started=time.time(), exit_code=None, reason="")
            self.engine.record_event("started", cid, opts.get("pod") or None)
        spans.end(start)
        log_line(f"started {cid[:12]} (pid {reply['pid']})", container=self.ecs_container(cid),
                 action="start")
        self.adopt(cid, fds, reply.get("streams", ["stdout", "stderr"]))
        self.health.started(cid, opts)
        for conn, want_stdin in self.waiting.pop(cid, []):
            try:
                self.attach(conn, cid, want_stdin)
            except (OSError, KeyError, ValueError):
                pass  # that client went away meanwhile
        if on_started is not None:
            on_started()
        if reply.get("status") is not None:  # it has exited already
            self.exits.append((cid, reply["status"]))
        return reply["pid"]

    def on_client(self, conn) -> None:
        try:
            msg, fds = proto.recv(conn)
        except OSError:
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:
            self.sel.unregister(conn)
            conn.close()
            return
        try:
            if msg.get("op") == "ping":
                proto.send(conn, {"ok": True, "pid": os.getpid()})
            elif msg.get("op") == "start":
                with spans.serving(msg.get("trace")):
                    reply = {"ok": True, "pid": self.start(msg["id"])}
                    if spans.ON:
                        reply["trace"] = spans.take()
                proto.send(conn, reply)
            elif msg.get("op") == "stop":
                self.user_stop(msg["id"])
                proto.send(conn, {"ok": True})
            elif msg.get("op") == "reopen_log":
                self.reopen_log(msg["id"])
                proto.send(conn, {"ok": True})
            elif msg.get("op") == "attach":
                self.attach(conn, msg["id"], bool(msg.get("stdin", True)),
                            bool(msg.get("until_started")))
            elif msg.get("op") == "run":
                foreground.handle_run(self, conn, msg)
            else:
                proto.send(conn, {"error": f"unknown op {msg.get('op')!r}"})
        except Exception as e:  # noqa: BLE001 - answer the client, keep serving
            try:
                proto.send(conn, proto.error_reply(e))
            except OSError:
                pass

    # --- attach --------------------------------------------------------------------------------

    def attach(self, conn, cid: str, want_stdin: bool, until_started: bool = False) -> None:
        st = self.stdio.get(cid)
        if st is None and until_started and \
                self.engine.get_status_only(cid) in ("created", "exited"):
            proto.send(conn, {"waiting": True})
            self.waiting.setdefault(cid, []).append((conn, want_stdin))
            return
        if st is None:  # foreground runs are the daemon's too: not running is stopped
            raise ContainerStateError(STOPPED)
        stdin = want_stdin and st.input_fd is not None and (st.interactive or not st.tty)
        # a tty client needs the master to set the window size even without stdin
        fds = [st.input_fd] if stdin or st.tty else []
        reply = {"ok": True, "tty": st.tty, "stdin": stdin,
                 "stdin_once": stdin and st.stdin_once}
        self.add_client(conn, cid, reply, fds, closes_stdin=reply["stdin_once"])

    def add_client(self, conn, cid: str, reply: dict, fds: list[int],
                   closes_stdin: bool = False) -> None:
        """The reply, then the container's output from now on. A client that
        closes_stdin closes the container's stdin when it goes, however it goes."""
        st = self.stdio[cid]
        proto.send(conn, reply, fds)
        conn.setblocking(False)
        client = AttachedClient(conn, cid, closes_stdin)
        st.clients.add(client)
        self.attached[conn] = client
        self.sel.modify(conn, selectors.EVENT_READ, ("attached", cid))

    def send_to(self, client: AttachedClient, msg: bytes) -> None:
        if client.closing:
            return
        if not client.queue:
            try:
                client.conn.send(msg)
                return
            except BlockingIOError:
                pass
            except OSError:
                self.detach(client)
                return
        client.queue.append(msg)
        client.queued += len(msg)
        if client.queued > ATTACH_QUEUE_MAX:
            log_line(f"attach to {client.cid[:12]}: the client reads too slowly; dropped it",
                     "warning", self.ecs_container(client.cid), "attach")
            self.detach(client)
            return
        self.sel.modify(client.conn, selectors.EVENT_READ | selectors.EVENT_WRITE,
                        ("attached", client.cid))

    def flush(self, client: AttachedClient) -> None:
        while client.queue:
            try:
                client.conn.send(client.queue[0])
            except BlockingIOError:
                return
            except OSError:
                self.detach(client)
                return
            client.queued -= len(client.queue.pop(0))
        if client.closing:
            self.detach(client)
        else:
            self.sel.modify(client.conn, selectors.EVENT_READ, ("attached", client.cid))

    def on_attached(self, conn, events: int) -> None:
        client = self.attached[conn]
        if events & selectors.EVENT_WRITE:
            self.flush(client)
            if conn not in self.attached:
                return
        if not events & selectors.EVENT_READ:
            return
        try:
            msg, fds = proto.recv(conn)
        except BlockingIOError:
            return
        except OSError:
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:  # detached (or gone)
            self.detach(client)
        elif msg.get("op") == "close_stdin":
            self.close_stdin(client.cid)
        elif msg.get("op") == "kill":
            self.kill(client.cid, int(msg["signal"]))

    def kill(self, cid: str, signum: int) -> None:
        """A signal the client received, for the container (docker's --sig-proxy)."""
        from .. import container as ctr

        if cid in self.stdio:
            try:
                ctr.kill(self.engine.oci_root, cid, signum)
            except MiniRunError as e:
                log_line(f"kill {signum} of {cid[:12]}: {e}", "warning",
                         self.ecs_container(cid), "kill")

    def close_stdin(self, cid: str) -> None:
        """An attached client's EOF: every write end of the pipe goes (the client has
        closed its own), so the container reads EOF."""
        st = self.stdio.get(cid)
        if st is None or st.tty or st.input_fd is None:
            return
        st.close_input()
        self.keeper_call({"op": "close_stdin", "id": cid})

    def detach(self, client: AttachedClient) -> None:
        self.attached.pop(client.conn, None)
        st = self.stdio.get(client.cid)
        if st is not None:
            st.clients.discard(client)
        try:
            self.sel.unregister(client.conn)
        except (KeyError, ValueError):
            pass
        client.conn.close()
        if client.closes_stdin and st is not None and st.input_fd is not None:
            try:  # stdin_once: the first attach is over, and so is the container's input
                self.close_stdin(client.cid)
            except Exception as e:  # noqa: BLE001 - never a reason not to serve
                log_line(f"closing the stdin of {client.cid[:12]}: {e}", "warning",
                         self.ecs_container(client.cid), "attach")

    def serve(self, wait: bool = False) -> None:
        from .keeper import lock_holder, take_lock

        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        new_run_root = not os.path.isdir(self.run_root)
        os.makedirs(self.run_root, mode=0o711, exist_ok=True)
        # the lock, not the pid file, decides: a second daemon must not take the socket
        # (listen unlinks it) nor start a second keeper
        lock = os.path.join(self.run_root, "daemon.lock")
        if take_lock(lock) is None:
            if not wait:
                raise MiniRunError(f"{LOCK_BUSY} ({lock_holder(self.run_root, 'daemon')})"
                                   f" serves {self.run_root}")
            log_line(f"waiting for the daemon ({lock_holder(self.run_root, 'daemon')}) "
                     "to end")
            take_lock(lock, wait=True)
        metrics_sock = self.bind_metrics(lock if new_run_root else None)
        try:
            with open(os.path.join(self.run_root, "daemon.pid")) as f:
                previous = int(f.read())
        except (OSError, ValueError):
            previous = None
        with open(os.path.join(self.run_root, "daemon.pid"), "w") as f:
            f.write(str(os.getpid()))
        from ..monitor.metrics import count_daemon_start

        count_daemon_start(self.run_root)
        adopted = self.connect_keeper()
        signal.signal(signal.SIGTERM, self.on_sigterm)
        listener = proto.listen(self.sock_path)
        self.sel.register(listener, selectors.EVENT_READ, ("listen",))
        self.sel.register(self.keeper, selectors.EVENT_READ, ("keeper",))
        if metrics_sock is not None:
            from ..monitor.metrics import MetricsServer

            MetricsServer(self.engine, metrics_sock, self.sel)
        self.recover_networks()
        self.resume_restarts()
        self.take_over()
        log_line(f"minirun daemon {os.getpid()} serving {self.sock_path}; adopted {adopted} "
                 "container(s)" + (f" (the daemon before, pid {previous}, ended without a "
                                   "clean exit)" if previous else ""))
        while True:
            self.handle_exits()
            timeout = self.due_restarts()
            checks = self.health.run_due()
            if checks is not None:
                timeout = checks if timeout is None else min(timeout, checks)
            if self.exits:
                continue  # a restart's container exited at once
            for key, events in self.sel.select(timeout):
                # A key handled earlier in this round may have closed a pipe (an exit
                # drains it) and its number may be a new pipe's now: skip stale keys.
                if self.sel.get_map().get(key.fd) is not key:
                    continue
                try:
                    if self.dispatch(key, events, listener) is False:
                        return
                except Exception as e:  # noqa: BLE001 - one container's trouble
                    log_line(f"error: {type(e).__name__}: {e}", "error")

    def bind_metrics(self, made_lock: str | None):
        """The metrics endpoint's socket, bound before anything is started or written; on
        failure the run root this call made (made_lock: its lock file) goes again."""
        if not self.metrics_addr:
            return None
        from ..monitor.metrics import bind, check_client_library

        try:
            check_client_library()
            return bind(self.metrics_addr)
        except MiniRunError:
            if made_lock is not None:
                os.unlink(made_lock)
                os.rmdir(self.run_root)
            raise

    def on_sigterm(self, *_) -> None:
        """A clean exit: the keeper is told not to start another daemon. The message
        only (its reply does not matter): this may run in the middle of a keeper call."""
        try:
            proto.send(self.keeper, {"op": "bye"})
        except OSError:
            pass
        try:
            os.unlink(os.path.join(self.run_root, "daemon.pid"))
        except FileNotFoundError:
            pass
        self.health.cancel_probes()
        log_line("exiting (SIGTERM)")
        os._exit(0)

    def recover_networks(self) -> None:
        """Leases, links and netns of containers whose records a crash took away."""
        try:
            known = {r["id"] for r in self.engine.records()}
            for cid in self.engine.networks.recover(known):
                log_line(f"cleaned the network of the vanished container {cid[:12]}",
                         container={"id": cid}, action="disconnect")
        except Exception as e:  # noqa: BLE001 - never a reason not to serve
            log_line(f"network recovery failed: {e}", "error")

    def dispatch(self, key, events: int, listener) -> bool:
        """Handle one ready key; False when the daemon must stop (the keeper is gone)."""
        kind = key.data[0]
        if kind == "listen":
            conn, _ = listener.accept()
            self.sel.register(conn, selectors.EVENT_READ, ("client",))
        elif kind == "client":
            self.on_client(key.fileobj)
        elif kind == "attached":
            self.on_attached(key.fileobj, events)
        elif kind == "pipe":
            self.on_pipe(key.fileobj, key.data[1], key.data[2])
        elif kind == "metrics":
            key.data[1](key.fileobj, events)
        elif kind == "probe":
            self.health.on_ready(key.data[1], key.data[2])
        elif kind == "keeper":
            # a keeper call earlier in this round (a client's start) may have read what
            # made the socket ready (it queues the exits it meets): a blocking recv here
            # would wait for the keeper forever, the daemon deaf to every client
            if not select.select([self.keeper], [], [], 0)[0]:
                return True
            msg, fds = proto.recv(self.keeper)
            for fd in fds:
                os.close(fd)
            if msg is None:
                log_line("the keeper went away; exiting", "warning")
                return False
            if "event" in msg:
                self.exits.append((msg["id"], msg["status"]))
        return True


_log_format: str | None = None  # the daemon's --log-format; None: MINIRUN_LOG_FORMAT or json


def set_log_format(fmt: str | None) -> None:
    global _log_format
    _log_format = fmt


def log_format() -> str:
    """json or text: the daemon's --log-format, else MINIRUN_LOG_FORMAT, else json."""
    fmt = _log_format or os.environ.get("MINIRUN_LOG_FORMAT") or "json"
    if fmt not in LOG_FORMATS:
        raise MiniRunError(f"MINIRUN_LOG_FORMAT={fmt!r}: want json or text")
    return fmt


def ecs_container_of(rec: dict) -> dict:
    return {"id": rec["id"], "name": rec.get("name"), "image": rec.get("image")}


def log_line(msg: str, level: str = "info", container: dict | None = None,
             action: str | None = None) -> None:
    """A line of the daemon's own log (see the module's docstring). `container`: id, and
    name and image where known; `action`: docker's name of what happened (start, die,
    destroy, ...)."""
    if _log_format == "text":
        who = ""
        if container:
            who = f" container={container.get('name') or container['id'][:12]}"
        sys.stderr.write(f"{rfc3339nano()} {level}{who} {msg}\n")
    else:
        doc: dict = {"@timestamp": rfc3339nano(), "log.level": level, "message": msg,
                     "ecs.version": ECS_VERSION}
        if container:
            fields = {"id": container["id"]}
            if container.get("name"):
                fields["name"] = container["name"]
            if container.get("image"):
                fields["image"] = {"name": container["image"]}
            doc["container"] = fields
        if action:
            doc["event"] = {"action": action}
        doc["process"] = {"pid": os.getpid()}
        sys.stderr.write(json.dumps(doc) + "\n")
    sys.stderr.flush()


def log_json(level: str, msg: str, **fields) -> None:
    """One JSON line on stderr with ECS names and these extra fields: the CRI server's
    and the Docker API service's log, as the daemon's."""
    doc = {"@timestamp": rfc3339nano(), "log.level": level, "message": msg,
           "ecs.version": ECS_VERSION, **fields, "process": {"pid": os.getpid()}}
    sys.stderr.write(json.dumps(doc) + "\n")
    sys.stderr.flush()


def fatal(msg: str) -> None:
    """The daemon's error when it cannot serve (a bad --metrics, the lock taken): one
    line. Into its log file (spawned on demand or by the keeper, stderr is daemon.log) a
    JSON line as the rest of the log, for Filebeat's ndjson parser; to a terminal or a
    pipe `minirun: error: ...` as every verb prints it."""
    try:
        to_file = stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode)
    except (OSError, ValueError):
        to_file = False
    if to_file and log_format() == "json":
        # losing the lock to another daemon is the normal end of a race of several
        # `run -d` starting one: not an error in the log a shipper alerts on
        log_line(msg, "info" if msg.startswith(LOCK_BUSY) else "error")
    else:
        sys.stderr.write(f"{ERROR_PREFIX}{msg}\n")
        sys.stderr.flush()


def spawn_detached(argv: list[str], log_path: str) -> subprocess.Popen:
    """Start a long-lived process outside our session, its output in log_path."""
    # without MINIRUN_TRACE: a daemon traces the requests that ask (spans.serving)
    env = {k: v for k, v in os.environ.items() if k != "MINIRUN_TRACE"}
    with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
        return subprocess.Popen(argv, stdin=null, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True, cwd="/", env=env)


def startup_error(proc: subprocess.Popen | None, log_path: str, offset: int) -> str | None:
    """Why a daemon we started ended without serving (a bad --metrics address or
    daemon.json, a port in use): its error line, from what it wrote to the log after
    `offset`. None while it runs, after a clean exit, or when it only lost the lock to
    another daemon (which will answer)."""
    if proc is None or proc.poll() in (None, 0):
        return None
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read(65536).decode(errors="replace")
    except OSError:
        return None
    errors = []
    for line in text.splitlines():
        if line.startswith(ERROR_PREFIX):
            errors.append(line[len(ERROR_PREFIX):])
        elif line.startswith("{") and '"error"' in line:  # fatal() in a JSON log
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("log.level") == "error" and doc.get("process", {}).get("pid") == \
                    proc.pid:
                errors.append(str(doc.get("message", "")))
    if not errors or errors[-1].startswith(LOCK_BUSY):
        return None
    return errors[-1]


def wait_for_socket(path: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proto.connect(path)
        except OSError:
            if time.monotonic() > deadline:
                raise MiniRunError(f"nothing answers on {path}") from None
            time.sleep(0.05)


def daemon_argv(engine, metrics_addr: str | None = None) -> list[str]:
    """How a daemon is started: on demand, and by the keeper when one dies (with this
    daemon's log format and metrics address, so the one after it does the same)."""
    return [sys.executable, "-m", "minirun.cli", "daemon", "--root", engine.root,
            "--run-root", engine.run_root, "--log-format", log_format()] + \
        (["--metrics", metrics_addr] if metrics_addr else [])


def revive(engine) -> None:
    """For the commands that read or change detached containers (ps, logs, stop, exec,
    ...): a daemon that died is brought back (the keeper does it too, this is the second
    line) so that exits are recorded and restart policies applied before we look. Only
    where detached containers were ever run (the keeper's socket is there)."""
    if os.path.exists(os.path.join(engine.run_root, "keeper.sock")):
        ensure_daemon(engine)


def ensure_daemon(engine, timeout: float = 15.0, busy_timeout: float = 120.0) -> None:
    """Connect to the daemon, starting it on first need. A daemon that is dying (killed:
    its socket still accepts for a moment, then resets) counts as none; one that accepts
    and is slow to answer is busy (starting containers on a loaded host), not gone: it
    is waited for (up to busy_timeout), never replaced."""
    path = os.path.join(engine.run_root, "minirun.sock")
    log_path = os.path.join(engine.run_root, "daemon.log")
    begun = time.monotonic()
    spawned = False
    proc, offset = None, 0
    while True:
        busy = False
        try:
            sock = proto.connect(path, timeout=5)
            try:
                proto.send(sock, {"op": "ping"})
                reply, _ = proto.recv(sock)
            finally:
                sock.close()
            if reply and reply.get("ok"):
                return
        except TimeoutError:
            busy = True
        except OSError:
            pass
        failed = startup_error(proc, log_path, offset)
        if failed:  # at once, not after the timeout's "does not answer"
            raise MiniRunError(f"the minirun daemon did not start: {failed}")
        if time.monotonic() - begun > (busy_timeout if busy else timeout):
            raise MiniRunError(f"the minirun daemon does not answer on {path}")
        if not spawned and not busy:
            # if another daemon is starting (the keeper's, another command's), this one
            # cannot take the lock and exits at once: we wait for whichever answers
            os.makedirs(engine.run_root, mode=0o711, exist_ok=True)
            try:
                offset = os.path.getsize(log_path)
            except FileNotFoundError:
                offset = 0
            proc = spawn_detached(daemon_argv(engine), log_path)
            spawned = True
        time.sleep(0.05)


def open_attach(engine, cid: str, stdin: bool) -> tuple[socket.socket, dict, int | None]:
    """An attach connection to the daemon: (socket, reply, the input fd or None)."""
    sock, reply, fds = attach_request(engine, cid, stdin)
    return sock, reply, fds[0] if fds else None


def attach_request(engine, cid: str, stdin: bool,
                   until_started: bool = False) -> tuple[socket.socket, dict, list[int]]:
    """An attach connection to the daemon: (socket, reply, its fds); with until_started
    the reply may be {"waiting": true} (the attach reply then comes at the start)."""
    ensure_daemon(engine)
    sock = proto.connect(os.path.join(engine.run_root, "minirun.sock"), timeout=120)
    try:
        proto.send(sock, {"op": "attach", "id": cid, "stdin": stdin,
                          **({"until_started": True} if until_started else {})})
        reply, fds = proto.recv(sock)
    except BaseException:
        sock.close()
        raise
    if reply is None or "error" in reply:
        for fd in fds:
            os.close(fd)
        sock.close()
        if reply is None:
            raise MiniRunError("the minirun daemon closed the connection")
        raise proto.reply_error(reply)
    sock.settimeout(None)
    return sock, reply, fds


def request(engine, msg: dict) -> dict:
    ensure_daemon(engine)
    sock = proto.connect(os.path.join(engine.run_root, "minirun.sock"), timeout=120)
    try:
        proto.send(sock, msg)
        reply, fds = proto.recv(sock)
        for fd in fds:
            os.close(fd)
    finally:
        sock.close()
    if reply is None:
        raise MiniRunError("the minirun daemon closed the connection")
    return reply
