"""`minirun daemon`: serves the CLI, writes container logs, records exits, restarts.

  CLI -> daemon  {"op": "ping"}            <- {"ok": true, "pid"}
  CLI -> daemon  {"op": "start", "id"}     <- {"ok": true, "pid"} | {"error"}
  CLI -> daemon  {"op": "stop", "id"}      <- {"ok": true}: the user stops or removes
                 it: no restart policy applies from now on, a pending restart is off
  CLI -> daemon  {"op": "attach", "id", "stdin", "until_started"?}
                 <- {"ok": true, "tty", "stdin"} + [pty master | stdin pipe] | {"error"}
                 (until_started: a container that is not running yet is attached when
                 it starts, before any of its output is read: {"waiting": true} at once,
                 the reply then; the Docker API's attach-then-start)
                 then the container's output as stream messages (proto.py) until its
                 exit status; the client may send {"op": "close_stdin"} (its EOF) and
                 {"op": "kill", "signal"} (a signal for the container)
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

Order: one thread; an exit the keeper reports while the daemon waits for a reply of its
own is queued and handled after that call returns (never inside it), and restarts are
timers of the main loop (docker's back-off), so requests, exits and restarts each run to
their end before the next begins. One daemon per run root: it holds an flock on
daemon.lock for its life; one that cannot take it exits at once.
"""

from __future__ import annotations

import base64
import heapq
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time

from ..errors import ContainerStateError, MiniRunError
from . import foreground, proto

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
        if self.size >= self.max_size:
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

    def __init__(self, tty: bool, interactive: bool, input_fd: int | None) -> None:
        self.tty = tty
        self.interactive = interactive
        self.input_fd = input_fd
        self.clients: set[AttachedClient] = set()

    def close_input(self) -> None:
        if self.input_fd is not None:
            os.close(self.input_fd)
            self.input_fd = None


class AttachedClient:
    def __init__(self, conn, cid: str) -> None:
        self.conn = conn
        self.cid = cid
        self.queue: list[bytes] = []
        self.queued = 0
        self.closing = False  # the exit status is queued: close once it is sent


class Daemon:
    def __init__(self, engine) -> None:
        self.engine = engine
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
        self.restarts: list[tuple[float, str]] = []  # (when, id): a heap of timers
        self.restart_due: dict[str, float] = {}  # id -> when; an id not here is cancelled
        self.backoff: dict[str, float] = {}  # id -> the last restart delay
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
        proto.send(self.keeper, {"op": "hello", "respawn": daemon_argv(self.engine),
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
            log_line(f"the orphan {cid[:12]} was not removed: {e}")
            return
        self.keeper_call({"op": "forget", "id": cid})
        log_line(f"removed the container {cid[:12]}, started after its removal")

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
        self.stdio[cid] = Stdio("tty" in streams, bool(opts.get("interactive")), input_fd)
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
            log_line(f"release of the network of {cid[:12]} failed: {e}")

    def remove(self, cid: str) -> None:
        """`run -d --rm`: everything goes once it has exited (files, snapshot, network
        lease, record), as `rm` would do it."""
        from ..image.store import ImageStore

        try:
            self.engine._remove_everything(cid, ImageStore(self.engine.root))
        except Exception as e:  # noqa: BLE001 - one container's trouble
            log_line(f"removal of {cid[:12]} (--rm) failed: {e}")

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
        due = time.monotonic() + delay
        self.restart_due[cid] = due
        heapq.heappush(self.restarts, (due, cid))

    def cancel_restart(self, cid: str) -> None:
        self.restart_due.pop(cid, None)  # its heap entry is skipped when it comes up

    def due_restarts(self) -> float | None:
        """Start the containers whose restart is due; the seconds until the next one."""
        while self.restarts:
            due, cid = self.restarts[0]
            if self.restart_due.get(cid) != due:
                heapq.heappop(self.restarts)  # cancelled or rescheduled
                continue
            now = time.monotonic()
            if due > now:
                return due - now
            heapq.heappop(self.restarts)
            del self.restart_due[cid]
            try:
                self.restart(cid)
            except Exception as e:  # noqa: BLE001 - one container's trouble
                log_line(f"restart of {cid[:12]} failed: {type(e).__name__}: {e}")
        return None

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
                log_line(f"error: handling the exit of {cid[:12]}: {type(e).__name__}: {e}")

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
            log_line(f"pending restarts not resumed: {type(e).__name__}: {e}")

    def start(self, cid: str, on_started=None) -> int:
        """Start the container in the keeper; a -t container gets a new pty, a -i one
        a new stdin pipe, each time. on_started is called once its output is held, before
        any of it is read (the foreground client attaches then)."""
        self.cancel_restart(cid)
        bundle = os.path.join(self.engine.root, "containers", cid)
        opts = self.run_options(cid)
        reply, fds = self.keeper_call({"op": "start", "id": cid,
                                       "oci_root": self.engine.oci_root, "bundle": bundle,
                                       "tty": bool(opts.get("tty")),
                                       "stdin": bool(opts.get("interactive"))})
        if "error" in reply:
            raise proto.reply_error(reply)
        db = self.engine.db
        with db:
            db.execute("BEGIN")
            self.engine._update(cid, status="running", pid=reply["pid"],
                                started=time.time(), exit_code=None, reason="")
            self.engine.record_event("started", cid, opts.get("pod") or None)
        self.adopt(cid, fds, reply.get("streams", ["stdout", "stderr"]))
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
                proto.send(conn, {"ok": True, "pid": self.start(msg["id"])})
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
        self.add_client(conn, cid, {"ok": True, "tty": st.tty, "stdin": stdin}, fds)

    def add_client(self, conn, cid: str, reply: dict, fds: list[int]) -> None:
        """The reply, then the container's output from now on."""
        st = self.stdio[cid]
        proto.send(conn, reply, fds)
        conn.setblocking(False)
        client = AttachedClient(conn, cid)
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
            log_line(f"attach to {client.cid[:12]}: the client reads too slowly; dropped it")
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
                log_line(f"kill {signum} of {cid[:12]}: {e}")

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

    def serve(self, wait: bool = False) -> None:
        from .keeper import lock_holder, take_lock

        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        os.makedirs(self.run_root, mode=0o711, exist_ok=True)
        # the lock, not the pid file, decides: a second daemon must not take the socket
        # (listen unlinks it) nor start a second keeper
        lock = os.path.join(self.run_root, "daemon.lock")
        if take_lock(lock) is None:
            if not wait:
                raise MiniRunError(f"another minirun daemon ({lock_holder(self.run_root, 'daemon')})"
                                   f" serves {self.run_root}")
            log_line(f"waiting for the daemon ({lock_holder(self.run_root, 'daemon')}) "
                     "to end")
            take_lock(lock, wait=True)
        try:
            with open(os.path.join(self.run_root, "daemon.pid")) as f:
                previous = int(f.read())
        except (OSError, ValueError):
            previous = None
        with open(os.path.join(self.run_root, "daemon.pid"), "w") as f:
            f.write(str(os.getpid()))
        adopted = self.connect_keeper()
        signal.signal(signal.SIGTERM, self.on_sigterm)
        listener = proto.listen(self.sock_path)
        self.sel.register(listener, selectors.EVENT_READ, ("listen",))
        self.sel.register(self.keeper, selectors.EVENT_READ, ("keeper",))
        self.recover_networks()
        self.resume_restarts()
        self.take_over()
        log_line(f"minirun daemon {os.getpid()} serving {self.sock_path}; adopted {adopted} "
                 "container(s)" + (f" (the daemon before, pid {previous}, ended without a "
                                   "clean exit)" if previous else ""))
        while True:
            self.handle_exits()
            timeout = self.due_restarts()
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
                    log_line(f"error: {type(e).__name__}: {e}")

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
        log_line("exiting (SIGTERM)")
        os._exit(0)

    def recover_networks(self) -> None:
        """Leases, links and netns of containers whose records a crash took away."""
        try:
            known = {r["id"] for r in self.engine.records()}
            for cid in self.engine.networks.recover(known):
                log_line(f"cleaned the network of the vanished container {cid[:12]}")
        except Exception as e:  # noqa: BLE001 - never a reason not to serve
            log_line(f"network recovery failed: {e}")

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
                log_line("the keeper went away; exiting")
                return False
            if "event" in msg:
                self.exits.append((msg["id"], msg["status"]))
        return True


def log_line(msg: str) -> None:
    """The daemon's own log: JSON lines with Elastic Common Schema names."""
    import json

    sys.stderr.write(json.dumps({"@timestamp": rfc3339nano(), "log.level": "info",
                                 "message": msg, "process.pid": os.getpid()}) + "\n")
    sys.stderr.flush()


def spawn_detached(argv: list[str], log_path: str) -> None:
    """Start a long-lived process outside our session, its output in log_path."""
    with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
        subprocess.Popen(argv, stdin=null, stdout=log, stderr=log, start_new_session=True,
                         close_fds=True, cwd="/")


def wait_for_socket(path: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proto.connect(path)
        except OSError:
            if time.monotonic() > deadline:
                raise MiniRunError(f"nothing answers on {path}") from None
            time.sleep(0.05)


def daemon_argv(engine) -> list[str]:
    return [sys.executable, "-m", "minirun.cli", "daemon", "--root", engine.root,
            "--run-root", engine.run_root]


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
    begun = time.monotonic()
    spawned = False
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
        if time.monotonic() - begun > (busy_timeout if busy else timeout):
            raise MiniRunError(f"the minirun daemon does not answer on {path}")
        if not spawned and not busy:
            # if another daemon is starting (the keeper's, another command's), this one
            # cannot take the lock and exits at once: we wait for whichever answers
            os.makedirs(engine.run_root, mode=0o711, exist_ok=True)
            spawn_detached(daemon_argv(engine), os.path.join(engine.run_root, "daemon.log"))
            spawned = True
        time.sleep(0.05)


def open_attach(engine, cid: str, stdin: bool) -> tuple[socket.socket, dict, int | None]:
    """An attach connection to the daemon: (socket, reply, the input fd or None)."""
    ensure_daemon(engine)
    sock = proto.connect(os.path.join(engine.run_root, "minirun.sock"), timeout=120)
    try:
        proto.send(sock, {"op": "attach", "id": cid, "stdin": stdin})
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
        raise MiniRunError(reply["error"])
    sock.settimeout(None)
    return sock, reply, fds[0] if fds else None


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
