"""`minirun doctor`: what a crashed run left on the host, and what is wrong with the host.

What is audited, and how each object is known to be minirun's (the names are made in
engine.py, network/, pods.py, daemon/ and cgroups/):

  process   pids in a cgroup under /minirun that no container of the roots claims; a
            daemon or keeper whose run root is gone, or that sits in a container's cgroup
  state     <run_root>/engine/<id> (the engine's runtime state) with no record
  snapshot  <root>/containers/<id> (its overlay mounted or not) with no record
  pin       <run_root>/pods/<id>/ns/{ipc,uts} nsfs pins and the <run_root>/pods/<id>/shm
            tmpfs (its /dev/shm) of a pod with no record
  netns     /run/netns/minirun-<id12> with no endpoint row, or of a container not running
  link      mr<id12> veth halves with no endpoint row; bridges whose alias says
            "minirun <table> <network>" with no network in use
  nft       rules of the root's table (minirun, minirun_<tag>) for ports no running
            container publishes; the table with no network in use
  lease     endpoint rows (address, ports) of containers with no record; CNI host-local
            lease files of ids the root knew and no container or pod holds
  file      daemon/keeper pid files and sockets whose holder is dead (its lock is free);
            exit-status files of containers with no record
  cgroup    cgroups under /minirun (every v1 hierarchy and cgroup2) no container claims
  record    records that say running with no process; records whose bundle is gone;
            records stuck in `creating`
  host      missing kernel features (minirun/info.py), the cgroup layout, ip_forward off
            while minirun's bridges exist

Scope. Host-wide objects (cgroups, links, netns, nftables) are shared by every root on
the host. With the default roots (/var/lib/minirun, /run/minirun) the audit is host-wide:
anything named as minirun names its objects that no root in effect claims is a leftover.
With other roots (tests, a second installation: MINIRUN_ROOT / MINIRUN_RUN_ROOT) it is
scoped: a host-wide object is only judged when its id is one that root has known (its
records, events, endpoint rows, snapshots, runtime state, exit files), or its name
carries the root's tag (tables and bridges); others' are none of its business.
`--host-wide` / `--scoped` choose explicitly.

Fixes. Each finding carries the one command that repairs it. `--fix` runs the safe ones
(the finding's `safe`): unmount lazily, rmdir empty cgroups, delete orphan links, rules,
netns, leases, state and stale files, mark records exited, and SIGKILL the processes of a
cgroup under /minirun that has no record (checked again just before: the pid is still in
that cgroup). Nothing that is not provably minirun's is touched; the others (a record to
remove, a daemon to stop, a host setting) are printed for a human to run.

Exit codes: 0 nothing found (or everything found was fixed), 1 findings remain,
2 the audit itself failed; a usage error is 125 as for every minirun verb.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import mountinfo
from ..container import proc_start_time

DEFAULT_ROOT = "/var/lib/minirun"
DEFAULT_RUN_ROOT = "/run/minirun"
CGROUP_PARENT = "/minirun"
NETNS_DIR = "/run/netns"
# a cgroup or record younger than this may be a create under way in another process:
# judged only when the audit is scoped to ids its root has known
GRACE_SECONDS = 30.0
LIVE_STATUSES = ("running", "paused", "created")
# the controllers each driver needs: v2 has no devices or freezer controller (device rules
# are eBPF programs, freezing is every cgroup's cgroup.freeze), so cgroup.controllers never
# lists them
NEEDED_CONTROLLERS = {"v1": ("cpu", "memory", "pids", "devices", "freezer"),
                      "v2": ("cpu", "memory", "pids")}
VETH_RE = re.compile(r"^mr[0-9a-f]{12}$")
NETNS_RE = re.compile(r"^minirun-([0-9a-f]{12})$")
POD_NETNS_RE = re.compile(r"^minirun-pod-([0-9a-f]{12})$")
# the order --fix goes in: processes before their cgroups, netns before their links
KINDS = ("process", "state", "snapshot", "pin", "netns", "link", "nft", "lease", "file",
         "cgroup", "record", "host")

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


@dataclass
class Finding:
    kind: str
    what: str
    why: str
    fix: str  # the shell command that repairs it ("" when only a human can judge)
    safe: bool = False  # --fix runs it
    fixed: bool = False
    vanished: bool = False  # not found again just before the fix: someone else acted
    error: str = ""
    action: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "what": self.what, "why": self.why, "fix": self.fix,
                "safe": self.safe, "fixed": self.fixed, "vanished": self.vanished,
                "error": self.error}


@dataclass
class HostPaths:
    """Where the host's state is read: fixture trees in the unit tests."""

    proc: str = "/proc"
    mountinfo: str = "/proc/self/mountinfo"
    netns_dir: str = NETNS_DIR
    sys_net: str = "/sys/class/net"
    cni_lease_dirs: list[str] | None = None  # None: host-local's dirs of the conflists


# --- what a root knows -------------------------------------------------------------------


@dataclass
class Root:
    root: str
    run_root: str
    records: dict[str, dict] = field(default_factory=dict)
    history: set[str] = field(default_factory=set)  # every id this root has known
    endpoints: dict[str, dict] = field(default_factory=dict)
    networks: list[dict] = field(default_factory=list)
    pods: dict[str, dict] = field(default_factory=dict)
    states: dict[str, dict] = field(default_factory=dict)  # runtime state.json by id
    table: str = "minirun"

    @property
    def oci_root(self) -> str:
        return os.path.join(self.run_root, "engine")

    @property
    def db_path(self) -> str:
        return os.path.join(self.root, "engine.db")

    def env_prefix(self) -> str:
        """What a command needs before it to act on this root."""
        parts = []
        if os.path.realpath(self.root) != DEFAULT_ROOT:
            parts.append(f"MINIRUN_ROOT={shlex.quote(self.root)}")
        if os.path.realpath(self.run_root) != DEFAULT_RUN_ROOT:
            parts.append(f"MINIRUN_RUN_ROOT={shlex.quote(self.run_root)}")
        return " ".join(parts) + " " if parts else ""

    def sql_command(self, sql: str) -> str:
        # the ids are hex and the statements have no double quote: readable as typed
        return f'sqlite3 {shlex.quote(self.db_path)} "{sql}"'

    def owns_id(self, ident: str) -> bool:
        """An id (or a 12-character prefix of one, as in link and netns names) this root
        has known."""
        return any(h.startswith(ident) for h in self.history)


def load_root(root: str, run_root: str) -> Root:
    """Everything a root knows, read without changing anything (no database is made)."""
    r = Root(root=root, run_root=run_root)
    if os.path.realpath(root) != DEFAULT_ROOT:
        from ..network.manager import _root_tag

        r.table = f"minirun_{_root_tag(root)}"
    if os.path.exists(r.db_path):
        db = sqlite3.connect(r.db_path, timeout=30)
        try:
            db.row_factory = sqlite3.Row
            r.records = {row["id"]: dict(row) for row in _select(db, "SELECT * FROM containers")}
            r.history |= {row["container"] for row in
                          _select(db, "SELECT DISTINCT container FROM events")}
            r.endpoints = {row["container"]: dict(row)
                           for row in _select(db, "SELECT * FROM endpoints")}
            r.networks = [dict(row) for row in _select(db, "SELECT * FROM networks")]
            r.pods = {row["id"]: dict(row) for row in _select(db, "SELECT * FROM pods")}
        finally:
            db.close()
    r.states = {cid: _read_json(os.path.join(r.oci_root, cid, "state.json"))
                for cid in _listdir(r.oci_root)}
    r.history |= set(r.records) | set(r.endpoints) | set(r.pods) | set(r.states)
    r.history |= set(_listdir(os.path.join(root, "containers")))
    r.history |= set(_listdir(os.path.join(run_root, "exits")))
    r.history |= set(_listdir(os.path.join(run_root, "pods"))) - {"locks"}
    return r


def _select(db: sqlite3.Connection, sql: str) -> list:
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # a table this root never made (no network, no pod)
        return []


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def state_alive(proc: str, state: dict) -> bool:
    pid = state.get("pid") or 0
    return pid > 0 and proc_start_time(pid, proc) == state.get("start_time")


# --- the host's cgroups, processes and mounts (pure over HostPaths) ----------------------


def cgroup_mounts(mounts: list[mountinfo.Mount]) -> list[str]:
    """The mount points of the hierarchies whose root is the hierarchy's root (cgroup
    paths read in /proc/<pid>/cgroup are relative to that)."""
    return sorted({m.mountpoint for m in mounts
                   if m.fstype in ("cgroup", "cgroup2") and m.root == "/"})


def minirun_cgroups(mounts: list[str]) -> dict[str, list[str]]:
    """Every cgroup under /minirun, as cgroup path -> the directories that hold it (one
    per hierarchy), deepest first."""
    found: dict[str, list[str]] = {}
    for mp in mounts:
        top = os.path.join(mp, CGROUP_PARENT.lstrip("/"))
        for dirpath, _dirs, _files in os.walk(top):
            rel = "/" + os.path.relpath(dirpath, mp)
            if rel != CGROUP_PARENT:
                found.setdefault(rel, []).append(dirpath)
    return dict(sorted(found.items(), key=lambda kv: kv[0].count("/"), reverse=True))


def cgroup_members(proc: str) -> dict[int, set[str]]:
    """pid -> its cgroup paths under /minirun (any hierarchy)."""
    out: dict[int, set[str]] = {}
    for name in _listdir(proc):
        if not name.isdigit():
            continue
        text = _read(f"{proc}/{name}/cgroup") or ""
        paths = {line.split(":", 2)[2] for line in text.splitlines() if line.count(":") >= 2}
        paths = {p for p in paths if p.startswith(CGROUP_PARENT + "/")}
        if paths:
            out[int(name)] = paths
    return out


def cmdline(proc: str, pid: int) -> list[str]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def supervisor_of(argv: list[str], environ: dict[str, str]) -> tuple[str, str] | None:
    """("daemon" | "keeper", its run root) when argv is minirun's daemon or keeper."""
    if "minirun.daemon.keeper" in argv:
        i = argv.index("minirun.daemon.keeper")
        return ("keeper", argv[i + 1]) if i + 1 < len(argv) else None
    names = [os.path.basename(a) for a in argv[:3]]
    if "daemon" in argv[1:4] and ("minirun.cli" in argv or "minirun" in names):
        run_root = environ.get("MINIRUN_RUN_ROOT") or DEFAULT_RUN_ROOT
        for i, arg in enumerate(argv):
            if arg == "--run-root" and i + 1 < len(argv):
                run_root = argv[i + 1]
            elif arg.startswith("--run-root="):
                run_root = arg.split("=", 1)[1]
        return "daemon", run_root
    return None


def served_roots(proc: str) -> set[tuple[str, str]]:
    """(root, run root) of every running minirun daemon: the roots in use on the host."""
    out = set()
    for name in _listdir(proc):
        if not name.isdigit():
            continue
        argv = cmdline(proc, int(name))
        if "daemon" not in argv:
            continue
        env = read_environ(proc, int(name))
        found = supervisor_of(argv, env)
        if found is None or found[0] != "daemon":
            continue
        root = env.get("MINIRUN_ROOT") or DEFAULT_ROOT
        for i, arg in enumerate(argv[:-1]):
            if arg == "--root":
                root = argv[i + 1]
        out.add((root, found[1]))
    return out


def read_environ(proc: str, pid: int) -> dict[str, str]:
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    env = {}
    for item in items:
        k, sep, v = item.decode(errors="replace").partition("=")
        if sep:
            env[k] = v
    return env


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


# --- the audit ---------------------------------------------------------------------------


class Audit:
    def __init__(self, roots: list[Root], oci_state_root: str | None, host_wide: bool,
                 paths: HostPaths | None = None, check_host: bool = True,
                 grace: float = GRACE_SECONDS) -> None:
        self.roots = roots
        self.grace = grace
        self.oci_state_root = oci_state_root
        self.host_wide = host_wide
        self.paths = paths or HostPaths()
        self.check_host = check_host
        self.findings: list[Finding] = []
        self.notes: dict = {}
        self.now = time.time()
        self.mounts = mountinfo.parse(_read(self.paths.mountinfo) or "")
        self.oci_states = {cid: _read_json(os.path.join(oci_state_root, cid, "state.json"))
                           for cid in _listdir(oci_state_root)} if oci_state_root else {}

    def add(self, kind: str, what: str, why: str, fix: str, action=None) -> None:
        self.findings.append(Finding(kind, what, why, fix, safe=action is not None,
                                     action=action))

    def run(self) -> list[Finding]:
        for check in (self.check_processes, self.check_supervisors, self.check_states,
                      self.check_snapshots, self.check_pins, self.check_netns,
                      self.check_links, self.check_nft, self.check_leases, self.check_files,
                      self.check_cgroups, self.check_records):
            check()
        if self.check_host:
            self.check_host_setup()
        self.findings.sort(key=lambda f: KINDS.index(f.kind))
        return self.findings

    # which container, if any, a host-wide object belongs to

    def claimed_cgroups(self) -> set[str]:
        """Cgroup paths of the containers the roots in effect have: the engine's runtime
        states that have a record, and every state of minirun-oci's root (the runtime
        keeps a stopped container's cgroup until `delete`)."""
        out = set()
        for r in self.roots:
            for cid, st in r.states.items():
                if cid in r.records and st.get("cgroup_path"):
                    out.add(st["cgroup_path"])
        for st in self.oci_states.values():
            if st.get("cgroup_path"):
                out.add(st["cgroup_path"])
        return out

    def cgroup_claimed(self, path: str, claimed: set[str]) -> bool:
        """Claimed, a parent of a claimed one (a pod's parent cgroup) or below one (a
        container that made cgroups of its own)."""
        if any(under(c, path) or under(path, c) for c in claimed):
            return True
        # a record whose runtime state is not written yet (or lost): by its id
        parts = path.strip("/").split("/")
        return any(part in r.records for r in self.roots for part in parts)

    def judged(self, ident: str, born: float | None = None) -> bool:
        """Whether a host-wide object named by `ident` (an id or a 12-character prefix)
        that no root in effect claims is ours to call a leftover."""
        if self.host_wide:
            return born is None or self.now - born > self.grace
        return any(r.owns_id(ident) for r in self.roots)

    # processes

    def check_processes(self) -> None:
        claimed = self.claimed_cgroups()
        dirs = minirun_cgroups(cgroup_mounts(self.mounts))
        orphans: dict[str, list[int]] = {}
        for pid, paths in cgroup_members(self.paths.proc).items():
            if any(self.cgroup_claimed(p, claimed) for p in paths):
                continue
            path = min(paths)
            ident = path[len(CGROUP_PARENT) + 1:].split("/")[0]
            born = min((_ctime(d) or self.now for d in dirs.get(path, [])), default=None)
            if self.judged(ident, born):
                orphans.setdefault(path, []).append(pid)
        for path, pids in sorted(orphans.items()):
            pids.sort()
            starts = {pid: proc_start_time(pid, self.paths.proc) for pid in pids}
            self.add("process", f"pid {', '.join(map(str, pids))} in cgroup {path}",
                     "processes of a container that has no record: no minirun command "
                     "will ever stop them",
                     "kill -9 " + " ".join(map(str, pids)),
                     lambda path=path, starts=starts: self._kill_in_cgroup(path, starts))

    def _kill_in_cgroup(self, path: str, starts: dict[int, int | None]) -> None:
        for pid, start in starts.items():
            text = _read(f"{self.paths.proc}/{pid}/cgroup") or ""
            if path not in {ln.split(":", 2)[2] for ln in text.splitlines()
                            if ln.count(":") >= 2}:
                continue  # gone, or the pid was reused by another process
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if proc_start_time(pid, self.paths.proc) == start:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                proc_start_time(pid, self.paths.proc) == start for pid, start in starts.items()):
            time.sleep(0.05)

    def check_supervisors(self) -> None:
        run_roots = {os.path.realpath(r.run_root) for r in self.roots}
        for name in _listdir(self.paths.proc):
            if not name.isdigit():
                continue
            pid = int(name)
            argv = cmdline(self.paths.proc, pid)
            found = supervisor_of(argv, read_environ(self.paths.proc, pid)) if argv else None
            if found is None:
                continue
            what, run_root = found
            ours = os.path.realpath(run_root) in run_roots
            if not (ours or self.host_wide):
                continue
            text = _read(f"{self.paths.proc}/{pid}/cgroup") or ""
            inside = sorted({ln.split(":", 2)[2] for ln in text.splitlines()
                             if ln.count(":") >= 2 and
                             ln.split(":", 2)[2].startswith(CGROUP_PARENT + "/")})
            if not os.path.isdir(run_root):
                self.add("process", f"minirun {what} pid {pid} (run root {run_root})",
                         f"a {what} whose run root is gone serves nothing", f"kill {pid}")
            if inside:
                self.supervisor_in_cgroup(what, run_root, pid, inside[0])

    def supervisor_in_cgroup(self, what: str, run_root: str, pid: int, path: str) -> None:
        """A process with the daemon's or the keeper's command line in a container's
        cgroup. The keeper forks a worker per start, which forks the container's first
        child, which forks the init: until the init calls execve, all of them show the
        keeper's command line. So it is either the keeper itself (its pid file says so),
        or a container's init that was created and never started (the start that made
        it died between the two: the init waits on its exec fifo for ever), or another
        fork that never reached execve."""
        try:
            with open(os.path.join(run_root, f"{what}.pid")) as f:
                recorded = int(f.read())
        except (OSError, ValueError):
            recorded = None
        where = f"minirun {what} pid {pid} in cgroup {path}"
        if pid == recorded:
            self.add("process", where, f"the {what} itself sits in a container's cgroup: the "
                     "container's limits and its kill-all apply to it",
                     f"kill {pid}  # the next minirun command starts another")
            return
        for r in self.roots:
            for cid, st in r.states.items():
                if st.get("pid") != pid or cid not in r.records:
                    continue
                born = _ctime(os.path.join(r.oci_root, cid, "state.json"))
                if born is None or self.now - born < self.grace:
                    return  # a start under way
                name = r.records[cid]["name"]
                self.add("process", where, f"the init of container {name}, made by the "
                         f"{what} and never started (the start died between create and "
                         "start): it still runs minirun's code, waiting on its exec fifo",
                         f"{r.env_prefix()}minirun rm -f {name}")
                return
        if self.cgroup_claimed(path, self.claimed_cgroups()):
            self.add("process", where, f"a fork of the {what} that never reached execve (a "
                     "container's first child or init whose parent died)", f"kill -9 {pid}")

    # the engine's runtime state, snapshots, pod pins

    def check_states(self) -> None:
        for r in self.roots:
            for cid in r.states:
                if cid in r.records:
                    continue
                self.add("state", os.path.join(r.oci_root, cid),
                         "runtime state of a container with no record",
                         f"minirun-oci --root {shlex.quote(r.oci_root)} delete --force {cid}",
                         lambda r=r, cid=cid: _delete_state(r.oci_root, cid))
        if self.oci_state_root:
            for cid, st in self.oci_states.items():
                if not st:
                    path = os.path.join(self.oci_state_root, cid)
                    self.add("state", path, "a minirun-oci state directory with no "
                             "state.json (a create that crashed)",
                             f"minirun-oci --root {shlex.quote(self.oci_state_root)} "
                             f"delete --force {cid}",
                             lambda cid=cid: _delete_state(self.oci_state_root, cid))

    def check_snapshots(self) -> None:
        for r in self.roots:
            top = os.path.join(r.root, "containers")
            for cid in _listdir(top):
                if cid in r.records:
                    continue
                cdir = os.path.join(top, cid)
                held = sorted({m.mountpoint for m in self.mounts if under(m.mountpoint, cdir)},
                              key=lambda p: p.count("/"), reverse=True)
                why = ("overlay snapshot mounted for a container with no record" if held
                       else "snapshot directory of a container with no record")
                cmd = "".join(f"umount -l {shlex.quote(p)} && " for p in held)
                self.add("snapshot", cdir, why,
                         cmd + f"rm -rf --one-file-system {shlex.quote(cdir)}",
                         lambda r=r, cid=cid: _release_snapshot(r.root, cid))

    def check_pins(self) -> None:
        for r in self.roots:
            top = os.path.join(r.run_root, "pods")
            for pod_id in _listdir(top):
                if pod_id == "locks" or pod_id in r.pods:
                    continue
                pdir = os.path.join(top, pod_id)
                held = sorted(m.mountpoint for m in self.mounts if under(m.mountpoint, pdir))
                why = ("namespace pins (nsfs) or /dev/shm (tmpfs) of a pod with no record"
                       if held
                       else "directory of a pod with no record")
                cmd = "".join(f"umount -l {shlex.quote(p)} && " for p in held)
                self.add("pin", pdir, why, cmd + f"rm -rf --one-file-system {shlex.quote(pdir)}",
                         lambda held=held, pdir=pdir: _unmount_and_remove(held, pdir))

    # network objects

    def live_endpoints(self) -> dict[str, tuple[Root, dict]]:
        """Endpoint rows whose container has a record: cid -> (root, row)."""
        return {cid: (r, ep) for r in self.roots for cid, ep in r.endpoints.items()
                if cid in r.records}

    def running(self, r: Root, cid: str) -> bool:
        st = r.states.get(cid)
        return bool(st) and state_alive(self.paths.proc, st)

    def wired_by_right(self, r: Root, cid: str) -> bool:
        """Whether the container may have its netns, veth and port rules now: it runs, or
        it is made and not started yet (`create` wires it; the runtime has no state for it
        until the start), or it was made moments ago. One whose record check will mark
        it exited has none by right: both go in one pass."""
        status = r.records[cid]["status"]
        return self.running(r, cid) or self.settling(r, cid) or status == "creating" or \
            (status == "created" and cid not in r.states)

    def settling(self, r: Root, cid: str) -> bool:
        """A record made moments ago, whose container another process may still be making."""
        rec = r.records.get(cid) or {}
        return self.now - (rec.get("created") or 0) < self.grace

    def check_netns(self) -> None:
        live = self.live_endpoints()
        by_path = {ep["netns"]: (r, cid) for cid, (r, ep) in live.items()}
        pods = {p["netns"] for r in self.roots for p in r.pods.values() if p.get("netns")}
        for name in _listdir(self.paths.netns_dir):
            path = os.path.join(self.paths.netns_dir, name)
            m = NETNS_RE.match(name) or POD_NETNS_RE.match(name)
            if m is None or path in pods:
                continue
            fix = f"ip netns delete {name}"
            if path in by_path:
                r, cid = by_path[path]
                if self.wired_by_right(r, cid) or \
                        r.endpoints[cid]["network"].startswith("cni:"):
                    continue  # a CNI container keeps its netns until rm
                self.add("netns", path, f"network namespace of container "
                         f"{r.records[cid]['name']}, which is not running (its exit did not "
                         "release it)", fix, lambda path=path: _remove_netns(path))
                continue
            if self.unleased(path, m.group(1), fix, lambda path=path: _remove_netns(path)):
                continue
            if not self.judged(m.group(1), _ctime(path)):
                continue
            self.add("netns", path, "network namespace of a container or pod with no record",
                     fix, lambda path=path: _remove_netns(path))

    def unleased(self, what: str, id12: str, fix: str, action) -> bool:
        """A netns or veth named for a container that has a record but no endpoint row (a
        lost lease): True when it is that container's (and reported here). While the
        container runs it is in use: only a human should act (its address may be handed
        out again)."""
        for r in self.roots:
            for cid, rec in r.records.items():
                if not cid.startswith(id12) or cid in r.endpoints:
                    continue
                if self.wired_by_right(r, cid):
                    self.add("lease", what, f"container {rec['name']} runs with network objects "
                             "but no endpoint row: its address may be handed out again",
                             f"{r.env_prefix()}minirun rm -f {rec['name']}")
                else:
                    self.add("netns" if "/" in what else "link", what,
                             f"network object of container {rec['name']}, which is not "
                             "running and has no endpoint row", fix, action)
                return True
        return False

    def check_links(self) -> None:
        live = self.live_endpoints()
        veths = {ep["veth"]: (r, cid) for cid, (r, ep) in live.items() if ep.get("veth")}
        tables = {r.table: r for r in self.roots}
        in_use = {n["bridge"] for r in self.roots for n in r.networks
                  if any(ep["network"] == n["name"] for cid, (rr, ep) in live.items()
                         if rr is r)}
        for name in _listdir(self.paths.sys_net):
            if not name.startswith(("mr", "minirun")):
                continue
            base = os.path.join(self.paths.sys_net, name)
            if os.path.isdir(os.path.join(base, "bridge")):
                alias = (_read(os.path.join(base, "ifalias")) or "").split()
                if len(alias) < 2 or alias[0] != "minirun":
                    continue  # not one of the bridges minirun makes (mrpods0 is CNI's)
                if alias[1] not in tables or name in in_use:
                    continue
                self.add("link", name, f"bridge of network {' '.join(alias[2:]) or '?'} "
                         "that no container uses (or that was deleted)",
                         f"ip link delete {name}", lambda name=name: _delete_link(name))
                continue
            if not VETH_RE.match(name):
                continue
            if name in veths:
                r, cid = veths[name]
                if self.wired_by_right(r, cid):
                    continue
                why = (f"veth of container {r.records[cid]['name']}, which is not running "
                       "(its exit did not release it)")
            elif self.unleased(name, name[2:], f"ip link delete {name}",
                               lambda name=name: _delete_link(name)):
                continue
            elif self.judged(name[2:]):
                why = "veth half of a container with no record"
            else:
                continue
            master = _link_target(os.path.join(base, "master"))
            if master is not None:
                alias = (_read(os.path.join(self.paths.sys_net, master, "ifalias")) or "")
                if not alias.startswith("minirun "):
                    continue  # on a bridge that is not minirun's: not provably ours
            self.add("link", name, why, f"ip link delete {name}",
                     lambda name=name: _delete_link(name))

    def check_nft(self) -> None:
        live = self.live_endpoints()
        for r in self.roots:
            doc = _nft_table(r.table)
            if doc is None:
                continue
            wired = set()
            in_use = False
            bridged = {n["name"] for n in r.networks}
            for cid, (rr, ep) in live.items():
                if rr is not r or ep["network"] not in bridged:
                    continue
                in_use = True
                if self.wired_by_right(r, cid):
                    for p in json.loads(ep["ports"] or "[]"):
                        wired.add((p["proto"], p["host_port"], ep["ip"], p["container_port"]))
            if not in_use:
                self.add("nft", f"table ip {r.table}", "no network of this root is in use",
                         f"nft delete table ip {r.table}",
                         lambda t=r.table: _nft(f"delete table ip {t}"))
                continue
            for rule in _port_rules(doc):
                key, handle = rule
                if key in wired:
                    continue
                proto, port, ip, cport = key
                self.add("nft", f"table ip {r.table} chain ports handle {handle}: "
                         f"{proto} dport {port} dnat to {ip}:{cport}",
                         "a published port of a container that is not running or gone",
                         f"nft delete rule ip {r.table} ports handle {handle}",
                         lambda t=r.table, h=handle: _nft(f"delete rule ip {t} ports handle {h}"))

    def check_leases(self) -> None:
        self.check_cni_leases()
        for r in self.roots:
            for cid, ep in r.endpoints.items():
                if cid in r.records:
                    continue
                sql = f"DELETE FROM endpoints WHERE container = '{cid}'"
                self.add("lease", f"{ep['network']} {ep['ip'] or '-'} ({cid[:12]})",
                         "address and ports leased to a container with no record",
                         r.sql_command(sql), lambda r=r, sql=sql: _sql(r, sql))

    def check_cni_leases(self) -> None:
        """host-local's lease files (one per address, holding the container id) of ids a
        root has known and that have no container or pod left. Other runtimes (podman,
        containerd) share these dirs: ids no root in effect knows are never judged."""
        dirs = self.paths.cni_lease_dirs
        if dirs is None:
            dirs = cni_lease_dirs()
        for d in dirs:
            for name in _listdir(d):
                if name == "lock" or name.startswith("last_reserved_ip"):
                    continue
                path = os.path.join(d, name)
                owner = (_read(path) or "").split("\n", 1)[0].strip()
                if not owner or any(owner in r.records or owner in r.pods for r in self.roots):
                    continue
                if any(owner in r.history for r in self.roots):
                    self.add("lease", f"{path} ({owner[:12]})", "a CNI host-local lease of a "
                             "container or pod with no record", f"rm {shlex.quote(path)}",
                             lambda path=path: _unlink(path))

    # files

    def check_files(self) -> None:
        for r in self.roots:
            for name in ("daemon", "keeper"):
                lock = os.path.join(r.run_root, f"{name}.lock")
                stale = [p for p in (os.path.join(r.run_root, f"{name}.pid"),
                                     os.path.join(r.run_root,
                                                  "minirun.sock" if name == "daemon"
                                                  else "keeper.sock"))
                         if os.path.lexists(p)]
                if not stale or _lock_held(lock):
                    continue
                for path in stale:
                    self.add("file", path, f"the {name} that wrote it is gone ({name}.lock "
                             "is free)", f"rm {shlex.quote(path)}",
                             lambda lock=lock, path=path: _remove_if_unlocked(lock, path))
            for cid in _listdir(os.path.join(r.run_root, "exits")):
                if cid in r.records or cid.endswith(".tmp") and cid[:-4] in r.records:
                    continue
                path = os.path.join(r.run_root, "exits", cid)
                self.add("file", path, "exit status of a container with no record",
                         f"rm {shlex.quote(path)}", lambda path=path: _unlink(path))

    # cgroups and records

    def check_cgroups(self) -> None:
        claimed = self.claimed_cgroups()
        found = {}
        for path, dirs in minirun_cgroups(cgroup_mounts(self.mounts)).items():
            if self.cgroup_claimed(path, claimed):
                continue
            ident = path[len(CGROUP_PARENT) + 1:].split("/")[0]
            born = min((_ctime(d) or self.now) for d in dirs)
            if self.judged(ident, born):
                found[path] = dirs
        for path, dirs in found.items():
            if any(under(path, other) and other != path for other in found):
                continue  # its parent's finding removes it first
            self.add("cgroup", path, f"cgroup with no container ({len(dirs)} hierarchies)",
                     " && ".join(f"find {shlex.quote(d)} -depth -type d -exec rmdir {{}} +"
                                 for d in dirs),  # children first, as --fix
                     lambda dirs=dirs: _rmdir_cgroups(dirs))

    def check_records(self) -> None:
        for r in self.roots:
            prefix = r.env_prefix()
            for cid, rec in r.records.items():
                if self.settling(r, cid):
                    continue
                name = rec["name"]
                st = r.states.get(cid)
                if rec["status"] == "creating":
                    self.add("record", f"{name} ({cid[:12]})", "stuck in `creating`: the "
                             "command making it was killed", f"{prefix}minirun rm -f {name}")
                    continue
                # `created` with no runtime state is a container made and not started
                # (the runtime creates it at start); with a state, its init must live
                if rec["status"] in LIVE_STATUSES and not (st and state_alive(
                        self.paths.proc, st)) and (st or rec["status"] != "created"):
                    why = (f"says {rec['status']} but its init (pid {rec['pid']}) is gone"
                           if st else f"says {rec['status']} but the runtime has no state for it")
                    from ..daemon.keeper import read_exit_status

                    code = read_exit_status(r.run_root, cid)
                    code = -1 if code is None else code
                    sql = (f"UPDATE containers SET status = 'exited', exit_code = {code}, "
                           f"finished = strftime('%s','now') WHERE id = '{cid}' "
                           f"AND status = '{rec['status']}'")  # not if the daemon just did
                    self.add("record", f"{name} ({cid[:12]})", why, r.sql_command(sql),
                             lambda r=r, sql=sql: _sql(r, sql))
                bundle = os.path.join(r.root, "containers", cid)
                if not os.path.exists(os.path.join(bundle, "config.json")):
                    self.add("record", f"{name} ({cid[:12]})",
                             f"its bundle is gone ({bundle}/config.json): it cannot start again",
                             f"{prefix}minirun rm -f {name}")

    # the host

    def check_host_setup(self, host=None) -> None:
        """What `minirun info` finds missing (`host`: its HostInfo, collected here when
        not given), and ip_forward."""
        if host is None:
            from ..info import collect

            host = collect(self.paths.proc)
        cg = host.cgroup
        self.notes["cgroup"] = {"mode": cg.mode, "driver": cg.driver}
        if cg.mode is None:
            self.add("host", "cgroups", f"no usable cgroup hierarchy: {cg.reason} (mount "
                     "cgroup2 at /sys/fs/cgroup, or set MINIRUN_CGROUP_ROOT)", "")
        else:
            have = set(cg.v1_controllers) if cg.driver == "v1" else set(cg.v2_controllers)
            for name in NEEDED_CONTROLLERS["v1" if cg.driver == "v1" else "v2"]:
                if name not in have:
                    reason = cg.unusable_controllers.get(name, "not mounted")
                    self.add("host", f"cgroup controller {name}",
                             f"the {cg.driver} driver cannot use it: {reason}", "")
        for name, reason in host.missing_namespaces.items():
            self.add("host", f"{name} namespace", reason, "")
        for name, feature in host.features.items():
            if not feature.available:
                self.add("host", name.replace("_", " "), feature.reason or "unavailable", "")
        bridges = [n for n in _listdir(self.paths.sys_net)
                   if (_read(os.path.join(self.paths.sys_net, n, "ifalias")) or "")
                   .startswith("minirun ")]
        forward = (_read(f"{self.paths.proc}/sys/net/ipv4/ip_forward") or "").strip()
        if bridges and forward == "0":
            self.add("host", "net.ipv4.ip_forward", f"off while minirun's bridges "
                     f"({', '.join(bridges)}) exist: containers cannot reach past the host",
                     "sysctl -w net.ipv4.ip_forward=1")


def cni_lease_dirs() -> list[str]:
    """The host-local plugin's data dirs of the conflists minirun would use: dataDir, else
    /var/lib/cni/networks, then the network's name."""
    from ..network import cni

    env = os.environ.get(cni.CONF_DIR_ENV)
    out = []
    for conf_dir in [d for d in env.split(":") if d] if env else cni.DEFAULT_CONF_DIRS:
        for name in _listdir(conf_dir):
            if not name.endswith((".conf", ".conflist", ".json")):
                continue
            doc = _read_json(os.path.join(conf_dir, name))
            plugins = doc.get("plugins") or [doc]
            for plugin in plugins:
                ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
                if isinstance(ipam, dict) and ipam.get("type") == "host-local" and \
                        doc.get("name"):
                    top = ipam.get("dataDir") or "/var/lib/cni/networks"
                    out.append(os.path.join(top, doc["name"]))
    return sorted(set(out))


# --- the repairs -------------------------------------------------------------------------


def _delete_state(oci_root: str, cid: str) -> None:
    from .. import container
    from ..errors import NotFound

    try:
        container.delete(oci_root, cid, force=True)
    except NotFound:
        pass


def _release_snapshot(root: str, cid: str) -> None:
    from ..image.store import ImageStore

    ImageStore(root).release(cid)


def _unmount_and_remove(mounts: list[str], path: str) -> None:
    for mp in sorted(mounts, key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=True, capture_output=True)


def _remove_netns(path: str) -> None:
    from ..network import netns

    netns.remove(path)


def _delete_link(name: str) -> None:
    from ..network.netlink import Netlink

    with Netlink() as nl:
        nl.delete_link(name)


def _nft(command: str) -> None:
    from ..network import nft

    nft.run(command + "\n")


def _nft_table(table: str) -> dict | None:
    try:
        proc = subprocess.run(["nft", "-j", "-a", "list", "table", "ip", table],
                              capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return None
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def _port_rules(doc: dict) -> list[tuple[tuple[str, int, str, int], int]]:
    """The dnat rules of the `ports` chain: ((proto, host port, container ip, container
    port), handle)."""
    out = []
    for item in doc.get("nftables", []):
        rule = item.get("rule")
        if not rule or rule.get("chain") != "ports":
            continue
        proto = port = ip = cport = None
        for expr in rule.get("expr", []):
            match = expr.get("match")
            if match and isinstance(match.get("left"), dict) and \
                    match["left"].get("payload", {}).get("field") == "dport":
                proto, port = match["left"]["payload"]["protocol"], match["right"]
            if "dnat" in expr:
                ip, cport = expr["dnat"].get("addr"), expr["dnat"].get("port")
        if proto is not None and ip is not None:
            out.append(((proto, port, ip, cport), rule["handle"]))
    return out


def _sql(r: Root, sql: str) -> None:
    db = sqlite3.connect(r.db_path, timeout=30, isolation_level=None)
    try:
        db.execute(sql)
    finally:
        db.close()


def _lock_held(path: str) -> bool:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _remove_if_unlocked(lock: str, path: str) -> None:
    """Under the lock, so that a daemon starting now cannot lose its fresh pid file."""
    import fcntl

    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _unlink(path)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir_cgroups(dirs: list[str]) -> None:
    """Children first; a cgroup whose processes were just killed empties a moment later."""
    for d in dirs:
        subs = sorted((os.path.join(dp, n) for dp, ns, _ in os.walk(d) for n in ns),
                      key=lambda p: p.count("/"), reverse=True)
        for target in subs + [d]:
            deadline = time.monotonic() + 5
            while True:
                try:
                    os.rmdir(target)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def _ctime(path: str) -> float | None:
    try:
        return os.lstat(path).st_ctime
    except OSError:
        return None


def _link_target(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


# --- the verb's entry points -------------------------------------------------------------


def roots_in_effect(root: str | None = None, run_root: str | None = None) -> Root:
    return load_root(root or os.environ.get("MINIRUN_ROOT") or DEFAULT_ROOT,
                     run_root or os.environ.get("MINIRUN_RUN_ROOT") or DEFAULT_RUN_ROOT)


def is_default(r: Root) -> bool:
    return os.path.realpath(r.root) == DEFAULT_ROOT and \
        os.path.realpath(r.run_root) == DEFAULT_RUN_ROOT


def audit(root: str | None = None, run_root: str | None = None,
          oci_state_root: str | None = None, host_wide: bool | None = None,
          check_host: bool = True, paths: HostPaths | None = None,
          grace: float = GRACE_SECONDS) -> Audit:
    """Run every check; the Audit holds the findings (not fixed yet)."""
    r = roots_in_effect(root, run_root)
    for path, what in ((r.root, "engine root"), (r.run_root, "run root")):
        if os.path.lexists(path) and not os.path.isdir(path):  # as every verb says it
            from ..errors import MiniRunError

            raise MiniRunError(f"the {what} {path} is not a directory")
    if host_wide is None:
        host_wide = is_default(r)
    if oci_state_root is None and host_wide:
        from ..container import default_root

        oci_state_root = default_root()
    roots = [r]
    if host_wide:  # another root's containers are claimed, and judged, by that root
        for other_root, other_run_root in sorted(served_roots((paths or HostPaths()).proc)):
            if os.path.realpath(other_run_root) != os.path.realpath(r.run_root):
                roots.append(load_root(other_root, other_run_root))
    a = Audit(roots, oci_state_root, host_wide, paths, check_host, grace)
    a.run()
    return a


def fix(findings: list[Finding], again: list[Finding] | None = None) -> None:
    """Run the safe repairs, in KINDS order (findings are sorted so). `again`: a second
    audit's findings, made after the first listed the host. Only what both found is
    touched: every object minirun makes has its record or row written before it (the
    record before the cgroup, the endpoint row before the netns and veth), so an object
    the first audit saw had its owner written before the second read the records; a
    finding the second audit does not repeat was claimed meanwhile, and is left alone."""
    seen = None if again is None else {(g.kind, g.what) for g in again}
    for f in findings:
        if f.action is None:
            continue
        if seen is not None and (f.kind, f.what) not in seen:
            f.vanished = True
            continue
        try:
            f.action()
            f.fixed = True
        except Exception as e:  # noqa: BLE001 - one failed repair must not stop the others
            f.error = f"{type(e).__name__}: {e}"


def report(a: Audit) -> dict:
    left = [f for f in a.findings if not (f.fixed or f.vanished)]
    return {"roots": [{"root": r.root, "run_root": r.run_root, "table": r.table}
                      for r in a.roots],
            "oci_state_root": a.oci_state_root, "host_wide": a.host_wide,
            "host": a.notes,
            "findings": [f.to_dict() for f in a.findings],
            "summary": {"found": len(a.findings),
                        "fixed": sum(f.fixed for f in a.findings),
                        "vanished": sum(f.vanished for f in a.findings), "left": len(left)}}


def format_text(a: Audit) -> str:
    lines = []
    for kind in KINDS:
        group = [f for f in a.findings if f.kind == kind]
        if not group:
            continue
        lines.append(f"{kind} ({len(group)})")
        for f in group:
            state = "fixed" if f.fixed else "gone or claimed meanwhile: left alone" \
                if f.vanished else f"fix failed: {f.error}" if f.error else \
                "safe: --fix does it" if f.safe else "by hand"
            lines.append(f"  {f.what}")
            lines.append(f"    why: {f.why}")
            if f.fix:
                lines.append(f"    fix: {f.fix}  [{state}]")
            else:
                lines.append("    fix: none known to minirun (see why)")
    doc = report(a)["summary"]
    scope = "host-wide" if a.host_wide else f"scoped to {a.roots[0].root}"
    cg = a.notes.get("cgroup")
    layout = f", cgroups {cg['mode']} ({cg['driver']} driver)" if cg else ""
    if not doc["found"]:
        lines.append(f"no findings ({scope}{layout})")
    else:
        lines.append(f"{doc['found']} finding(s), {doc['fixed']} fixed, {doc['left']} left "
                     f"({scope}{layout})")
    return "\n".join(lines)


def exit_code(a: Audit) -> int:
    return EXIT_FINDINGS if any(not (f.fixed or f.vanished) for f in a.findings) \
        else EXIT_CLEAN
