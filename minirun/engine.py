"""The engine: named containers made from images, their records and their lifecycle.

It turns "image + options" into an OCI bundle (an overlay snapshot of the image and a
generated config.json) and drives minirun.runtime directly, in-process. Records live in
SQLite (<root>/engine.db): names are unique across concurrent `minirun` commands, and a
crash between steps leaves a record that `ps -a`, `rm` and `container prune` can see.

Defaults are docker's: its 14 capabilities, its masked and read-only /proc paths, the
default seccomp profile (containers-common's, when the runtime supports seccomp), a
private /dev, and a pids limit (podman's 2048).
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import stat
import time
from dataclasses import dataclass, field

from .errors import (AlreadyExists, ContainerStateError, InvalidArgument, MiniRunError,
                     NotFound)

DEFAULT_ROOT = "/var/lib/minirun"
DEFAULT_RUN_ROOT = "/run/minirun"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_PIDS_LIMIT = 2048
SECCOMP_PROFILE = "/usr/share/containers/seccomp.json"
TINI = "/usr/bin/tini-static"

# docker's default capability set
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# the events table keeps the last EVENTS_KEEP, cut every EVENTS_PRUNE_EVERY inserts
EVENTS_KEEP = 10000
EVENTS_PRUNE_EVERY = 1000
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# --userns auto: container ids 0..65535 map to one host range, the same for every
# container (as docker's userns-remap; podman's auto gives each container its own).
USERNS_RANGE_ENV = "MINIRUN_USERNS_RANGE"
USERNS_SUBID_USER = "containers"
DEFAULT_USERNS_RANGE = (100000, 65536)
USERNS_MAX_SIZE = 65536


@dataclass
class RunOptions:
    """`minirun run`'s options, as docker names them."""

    command: list[str] = field(default_factory=list)
    name: str | None = None
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    remove: bool = False
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    volumes: list[str] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    hostname: str | None = None
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    read_only: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    security_opt: list[str] = field(default_factory=list)
    init: bool = False
    restart: str = "no"
    entrypoint: str | None = None
    network: str = "bridge"
    userns: str = "host"
    publish: list[str] = field(default_factory=list)
    publish_all: bool = False
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_option: list[str] = field(default_factory=list)
    add_host: list[str] = field(default_factory=list)
    log_opts: list[str] = field(default_factory=list)
    # What the CRI needs (issue 11), with docker/podman names so the CLI can expose them;
    # the defaults keep `run`'s behaviour. Checked in prepare() before anything is made.
    pid: str = ""  # "" a new namespace | host | ns:PATH | container:NAME
    ipc: str = ""  # as pid
    uts: str = ""  # as pid
    mounts: list[dict] = field(default_factory=list)  # OCI mounts, after the defaults
    devices: list[dict] = field(default_factory=list)  # {"host", "container", "permissions"}
    masked_paths: list[str] | None = None  # None: docker's defaults; []: none
    readonly_paths: list[str] | None = None  # None: docker's defaults; []: none
    group: str | None = None  # the process's gid, a number or a group of the image
    group_add: list[str] = field(default_factory=list)  # more gids, numbers or names
    oom_score_adj: int | None = None
    no_new_privileges: bool = False  # as --security-opt no-new-privileges
    apparmor: str = ""  # "", unconfined, runtime/default: this host has no AppArmor
    cgroup_parent: str = ""  # absolute as given, relative under /minirun; "": /minirun
    log_path: str = ""  # the CRI log file the daemon writes; "": containers/<id>/ctr.log
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)  # also config.json's annotations
    pod: str = ""  # the id of the pod the container belongs to
    pod_files: str = ""  # a directory with hostname, hosts, resolv.conf for /etc
    sysctls: dict = field(default_factory=dict)
    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    memory_bytes: int | None = None  # as --memory, in bytes; wins over it
    memory_swap: int | None = None  # memory + swap, bytes; -1 unlimited
    hugepage_limits: dict = field(default_factory=dict)  # page size ("2MB") -> bytes
    unified: dict = field(default_factory=dict)  # cgroup v2 file -> value
    ulimits: list = field(default_factory=list)  # "nofile=1024:2048" or {type, soft, hard}
    stop_timeout: int | None = None  # seconds between the stop signal and SIGKILL
    # docker's run flags (issue 12)
    memory_reservation: int | None = None  # bytes, a soft limit
    oom_kill_disable: bool = False
    shm_size: int | None = None  # /dev/shm's size, bytes (default 64m)
    stop_signal: str = ""  # "": the image's StopSignal, else SIGTERM


def parse_size(text: str, what: str) -> int:
    """docker's sizes: 1024 (bytes), 100k, 512m, 1g (also with a trailing b: 512mb)."""
    units = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
    t = text.strip().lower()
    if t.endswith("b") and len(t) > 1 and t[-2] in "kmgt":
        t = t[:-1]
    number, unit = (t[:-1], t[-1]) if t and t[-1] in "bkmgt" else (t, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise InvalidArgument(f"{what}: invalid size {text!r}") from None
    if value <= 0:
        raise InvalidArgument(f"{what}: must be positive, got {text!r}")
    return int(value)


def parse_log_opts(values: list[str], max_size: int = 0,
                   max_file: int = 0) -> tuple[int, int]:
    """docker's --log-opt max-size=N[k|m|g] and max-file=N: (max-size, max-file), the
    defaults given for what is not set."""
    for value in values:
        key, eq, text = value.partition("=")
        if not eq:
            raise InvalidArgument(f"--log-opt {value!r}: want KEY=VALUE")
        if key == "max-size":
            max_size = parse_size(text, "--log-opt max-size")
        elif key == "max-file":
            if not text.isdigit() or int(text) < 1:
                raise InvalidArgument(f"--log-opt max-file: a positive number, got {text!r}")
            max_file = int(text)
        else:
            raise InvalidArgument(f"--log-opt {key!r}: unknown (max-size, max-file)")
    return max_size, max_file


def check_run_options(opts: RunOptions) -> None:
    """What docker refuses before it creates anything."""
    policy, _ = parse_restart(opts.restart)
    if opts.remove and policy != "no":
        raise InvalidArgument("Conflicting options: --restart and --rm")
    parse_log_opts(opts.log_opts)


@dataclass
class SecurityOptions:
    """--security-opt, parsed."""

    no_new_privileges: bool = False
    seccomp: str | None = None  # "unconfined", a profile's path, or None: the default
    # (also asked for by name: runtime/default, the CRI's RuntimeDefault)


# strconv.ParseBool's words, as docker reads no-new-privileges=VALUE
_BOOLS = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
          "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}
SECURITY_OPT_FORMS = ("no-new-privileges[=true|false], "
                      "seccomp=unconfined|runtime/default|PROFILE, "
                      "apparmor=unconfined or label=disable")


def parse_security_opts(opts: list[str]) -> SecurityOptions:
    """docker's --security-opt forms, KEY=VALUE and the older KEY:VALUE. What is unknown is
    refused, never ignored: a typo (no-new-privilege) must not run a container with less
    protection than was asked for."""
    out = SecurityOptions()
    for opt in opts:
        if opt == "no-new-privileges":
            out.no_new_privileges = True
            continue
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")
        if key == "no-new-privileges" and sep:
            if value not in _BOOLS:
                raise InvalidArgument(f"--security-opt {opt}: want true or false")
            out.no_new_privileges = _BOOLS[value]
        elif key == "seccomp" and value:
            out.seccomp = None if value == "runtime/default" else value
        elif key == "apparmor" and value:
            check_apparmor(value, f"--security-opt {opt}")
        elif key == "label" and value:
            if value != "disable":
                raise InvalidArgument(f"--security-opt {opt}: minirun has no SELinux "
                                      "support; only label=disable is accepted")
        else:
            raise InvalidArgument(f"unknown --security-opt {opt!r}: use {SECURITY_OPT_FORMS}")
    return out


def check_apparmor(profile: str, what: str) -> None:
    """Nothing to confine with, so only "unconfined" (and the runtime's default, which is
    no profile here) is true; a named profile is refused rather than silently not applied."""
    if profile not in ("", "unconfined", "runtime/default"):
        raise InvalidArgument(f"{what}: minirun has no AppArmor support; only "
                              "apparmor=unconfined is accepted")


def parse_restart(text: str) -> tuple[str, int | None]:
    """docker's --restart: no, always, unless-stopped, on-failure[:N]."""
    policy, _, count = text.partition(":")
    if policy not in ("no", "always", "unless-stopped", "on-failure") or \
            (count and (policy != "on-failure" or not count.isdigit())):
        raise InvalidArgument(f"invalid restart policy {text!r}: no, always, unless-stopped "
                              "or on-failure[:N]")
    return policy, int(count) if count else None


# libseccomp's name of this architecture (archMap) and Go's (the includes/excludes)
_NATIVE_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def docker_profile_to_oci(profile: dict, caps: list[str]) -> dict:
    """A docker/containers-common seccomp profile (archMap, includes/excludes by
    capability and architecture) as the OCI linux.seccomp for this host and these
    capabilities, as moby builds it."""
    native = _NATIVE_ARCH.get(os.uname().machine)
    go_arch = _GO_ARCH.get(os.uname().machine)
    arches = []
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == native:
            arches = [native] + list(entry.get("subArchitectures") or [])
    syscalls = []
    for call in profile.get("syscalls") or []:
        inc, exc = call.get("includes") or {}, call.get("excludes") or {}
        if any(c not in caps for c in inc.get("caps") or []):
            continue
        if inc.get("arches") and go_arch not in inc["arches"]:
            continue
        if any(c in caps for c in exc.get("caps") or []) or go_arch in (exc.get("arches") or []):
            continue
        rule = {"names": call.get("names") or [call["name"]], "action": call["action"]}
        for key in ("args", "errnoRet"):
            if call.get(key) is not None:
                rule[key] = call[key]
        syscalls.append(rule)
    out = {"defaultAction": profile.get("defaultAction", "SCMP_ACT_ERRNO"),
           "architectures": arches, "syscalls": syscalls}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    return out


@dataclass
class JoinedNetns:
    """--network ns:PATH: a network namespace made and wired by someone else (a pod's)."""

    netns: str


class Engine:
    def __init__(self, root: str | None = None, run_root: str | None = None) -> None:
        self.root = root or os.environ.get("MINIRUN_ROOT", DEFAULT_ROOT)
        self.run_root = run_root or os.environ.get("MINIRUN_RUN_ROOT", DEFAULT_RUN_ROOT)
        self.oci_root = os.path.join(self.run_root, "engine")
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        self._db = None
        self._networks = None

    # --- records ---------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(os.path.join(self.root, "engine.db"), timeout=30,
                                 isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            # WAL with NORMAL: a crash of minirun loses nothing; a power cut may lose the
            # last records (as it loses the containers): one fsync less per update
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("""CREATE TABLE IF NOT EXISTS containers (
                id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, image TEXT NOT NULL,
                image_id TEXT NOT NULL, command TEXT NOT NULL, created REAL NOT NULL,
                status TEXT NOT NULL, exit_code INTEGER, started REAL, finished REAL,
                pid INTEGER, options TEXT NOT NULL, restart_count INTEGER DEFAULT 0,
                stop_signal TEXT DEFAULT '', user_stopped INTEGER DEFAULT 0,
                reason TEXT DEFAULT '')""")
            columns = {row[1] for row in db.execute("PRAGMA table_info(containers)")}
            if "reason" not in columns:  # a database from before the column
                try:
                    db.execute("ALTER TABLE containers ADD COLUMN reason TEXT DEFAULT ''")
                except sqlite3.OperationalError as e:  # another process added it just now
                    if "duplicate column" not in str(e):
                        raise
            db.execute("""CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ns INTEGER NOT NULL,
                type TEXT NOT NULL, container TEXT NOT NULL, pod TEXT, attrs TEXT)""")
            db.execute("CREATE INDEX IF NOT EXISTS events_by_container ON events (container)")
            self._db = db
        return self._db

    @property
    def networks(self):
        if self._networks is None:
            from .network.manager import Networks

            self._networks = Networks(self.db, self.root, self.record_object_event)
        return self._networks

    def _insert(self, cid: str, name: str, image: str, image_id: str, command: list[str],
                opts: RunOptions) -> None:
        try:
            self.db.execute(
                "INSERT INTO containers (id, name, image, image_id, command, created, status,"
                " options) VALUES (?, ?, ?, ?, ?, ?, 'creating', ?)",
                (cid, name, image, image_id, json.dumps(command), time.time(),
                 json.dumps(opts.__dict__)))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"the container name {name!r} is already in use") from None

    def _insert_named(self, cid: str, name: str | None, image: str, image_id: str,
                      command: list[str], opts: RunOptions) -> str:
        """_insert with `name`, or without one a docker-style adjective_surname, another
        one (then with a digit, as docker's retries) while it is taken; the name."""
        from .names import random_name

        candidates = [name] if name is not None else \
            [random_name(attempt) for attempt in range(20)] + [f"minirun_{cid[:12]}"]
        for i, candidate in enumerate(candidates):
            try:
                self._insert(cid, candidate, image, image_id, command, opts)
                return candidate
            except AlreadyExists:
                if i == len(candidates) - 1:
                    raise
        raise AssertionError("unreachable")

    def record_event(self, type_: str, container: str, pod: str | None = None,
                     **attrs) -> int:
        """An event (created, started, stopped, deleted) for GetContainerEvents and
        `minirun events`: its sequence number. One INSERT, inside the caller's
        transaction when there is one; every EVENTS_PRUNE_EVERY events the table is cut
        to its last EVENTS_KEEP."""
        return self._insert_event(type_, container, pod, attrs)

    def _insert_event(self, type_: str, container: str, pod: str | None,
                      attrs: dict) -> int:
        seq = self.db.execute(
            "INSERT INTO events (time_ns, type, container, pod, attrs) VALUES (?, ?, ?, ?, ?)",
            (time.time_ns(), type_, container, pod,
             json.dumps(attrs) if attrs else None)).lastrowid
        if seq % EVENTS_PRUNE_EVERY == 0:
            self.db.execute("DELETE FROM events WHERE seq <= ?", (seq - EVENTS_KEEP,))
        return seq

    def record_object_event(self, object_: str, action: str, id_: str, **attrs) -> int:
        """An event of docker's `events` (EVENTS-CONTRACT.md): `action` by docker's name
        (kill, oom, stop, pull, connect, ...) on a container, image, network or volume
        whose id (a volume's name, a pulled reference) is `id_`; attrs as docker's
        Actor.Attributes. One INSERT, as record_event."""
        if object_ != "container":
            attrs["object"] = object_
        return self._insert_event(action, id_, None, attrs)

    def events_after(self, seq: int = 0, limit: int = 1000) -> list[dict]:
        """The events after sequence number `seq`, oldest first: dicts with seq, time_ns,
        type, container, pod and attrs (a dict)."""
        rows = self.db.execute(
            "SELECT seq, time_ns, type, container, pod, attrs FROM events WHERE seq > ?"
            " ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [{"seq": r[0], "time_ns": r[1], "type": r[2], "container": r[3],
                 "pod": r[4], "attrs": json.loads(r[5]) if r[5] else {}} for r in rows]

    def _update(self, cid: str, **fields) -> int:
        """Set fields of a record: 1 if it was there, else 0."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        return self.db.execute(f"UPDATE containers SET {sets} WHERE id = ?",
                               (*fields.values(), cid)).rowcount

    def records(self, all_containers: bool = True) -> list[dict]:
        self.db.row_factory = sqlite3.Row
        rows = [dict(r) for r in self.db.execute("SELECT * FROM containers ORDER BY created")]
        for r in rows:
            self._reconcile(r)
        return [r for r in rows if all_containers or r["status"] == "running"]

    def get(self, name_or_id: str) -> dict:
        from .lookup import find_record

        rec = find_record(self.db, "containers", "container", name_or_id)
        self._reconcile(rec)
        return rec

    def log_path(self, cid: str, opts: dict | None = None) -> str:
        """The container's log file: its log_path (a CRI log), else ctr.log in its
        directory. `opts`: its options, when the caller has them."""
        if opts is None:
            row = self.db.execute("SELECT options FROM containers WHERE id = ?",
                                  (cid,)).fetchone()
            opts = json.loads(row[0]) if row else {}
        return opts.get("log_path") or os.path.join(self.root, "containers", cid, "ctr.log")

    def get_status_only(self, cid: str) -> str | None:
        row = self.db.execute("SELECT status FROM containers WHERE id = ?", (cid,)).fetchone()
        return row[0] if row else None

    def _reconcile(self, rec: dict) -> None:
        """A record still saying running whose container the runtime no longer has
        running (a crashed foreground `minirun run`): mark it exited."""
        if rec["status"] not in ("running", "creating"):
            return
        from .container import Container

        try:
            status = Container.load(self.oci_root, rec["id"]).status()
        except NotFound:
            status = "missing"
        except MiniRunError:
            return
        if status in ("stopped", "missing"):
            from .daemon.keeper import read_exit_status

            # the keeper writes the status of a detached container the moment it reaps
            # it, whether or not the daemon is there to record it
            kept = read_exit_status(self.run_root, rec["id"])
            if kept is None and _is_zombie(rec["pid"]):
                return  # its parent (the keeper) is about to reap it and record the status
            if kept is None:
                # reaped a moment ago: the keeper writes the status right after waitpid
                # (foreground runs are the keeper's children too)
                deadline = time.monotonic() + 1.0
                while kept is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                    kept = read_exit_status(self.run_root, rec["id"])
                if kept is None and self.get_status_only(rec["id"]) == "exited":
                    return  # the daemon recorded it meanwhile
            if self._daemon_alive() and self._await_daemon_exit(rec):
                return
            rec["status"] = "exited"
            rec["exit_code"] = kept if kept is not None else (
                rec["exit_code"] if rec["exit_code"] is not None else -1)
            # the daemon records the stopped event once it has the container's last
            # output; the reason is the same from here or from there
            rec["reason"] = self.oom_reason(rec["id"])
            self._update(rec["id"], status="exited", exit_code=rec["exit_code"],
                         finished=time.time(), reason=rec["reason"])

    def _daemon_alive(self) -> bool:
        """Another process, a daemon, serves this run root (its pid file names a live
        `minirun daemon`); the daemon itself records exits and must not wait for them."""
        try:
            with open(os.path.join(self.run_root, "daemon.pid")) as f:
                pid = int(f.read())
            if pid == os.getpid():
                return False
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return b"daemon" in f.read()
        except (OSError, ValueError):
            return False

    def _await_daemon_exit(self, rec: dict, timeout: float = 2.0) -> bool:
        """The daemon records an exit once it has drained the container's output into
        its log: until then the container is not shown exited, so whoever sees it
        exited (kubelet, critest, `logs` after `wait`) finds its whole log. True (and
        rec updated from the record) once the daemon has written it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cur = self.db.execute("SELECT * FROM containers WHERE id = ?", (rec["id"],))
            row = cur.fetchone()
            if row is None:
                return False
            fresh = dict(zip([c[0] for c in cur.description], tuple(row)))
            if fresh["status"] == "exited":
                rec.update(fresh)
                return True
            time.sleep(0.01)
        return False

    def oom_reason(self, cid: str) -> str:
        """"OOMKilled" if the kernel's OOM killer killed a process of the container (its
        cgroup counts them until the runtime deletes it), else ""."""
        from .container import Container

        try:
            cg = Container.load(self.oci_root, cid).cgroup()
            return "OOMKilled" if cg.oom_kill_count() > 0 else ""
        except (MiniRunError, OSError, ValueError):
            return ""

    # --- create ------------------------------------------------------------------------------

    def create(self, image_ref: str, opts: RunOptions, console_fd=None):
        """The container's record, snapshot and bundle, and the runtime's container,
        created (not started) by this process, which will be its init's parent."""
        from . import runtime
        from .image.store import ImageStore
        from .layout import seccomp_cache_dir

        cid = self.prepare(image_ref, opts)
        try:
            bundle = os.path.join(self.root, "containers", cid)
            c = runtime.create(self.oci_root, cid, bundle,
                               runtime.CreateOptions(console_fd=console_fd,
                                                     seccomp_cache=seccomp_cache_dir(bundle)))
            self._update(cid, status="created", pid=c.pid)
        except BaseException:
            self._remove_everything(cid, ImageStore(self.root))
            raise
        return cid, c

    def prepare(self, image_ref: str, opts: RunOptions) -> str:
        """The record, the overlay snapshot and config.json of a new container."""
        from .image.store import ImageStore

        security = parse_security_opts(opts.security_opt)
        security.no_new_privileges = security.no_new_privileges or opts.no_new_privileges
        checked = self._check_options(opts)
        store = ImageStore(self.root)
        image = store.get(image_ref)
        cid = os.urandom(32).hex()  # secrets would import hashlib and OpenSSL: 6 ms
        name = opts.name
        if name is not None and (not set(name) <= NAME_CHARS or not name[:1].isalnum()):
            raise InvalidArgument(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]")
        config = image.config.get("config") or {}
        args = self._command(config, opts)
        idmap = self._userns_idmap(opts)
        if opts.volumes:
            from .runflags import name_anonymous_volumes

            opts.volumes = name_anonymous_volumes(opts.volumes)
        name = self._insert_named(cid, name, image_ref, image.id, args, opts)
        try:
            rootfs = store.snapshot(image, cid, idmap=idmap)
            bundle = os.path.join(self.root, "containers", cid)
            net = self._network(cid, name, config, opts)
            cfg = self._oci_config(cid, config, args, rootfs, bundle, opts, security, net,
                                   checked)
            self._apply_userns(cfg, idmap, bundle, rootfs)
            with open(os.path.join(bundle, "config.json"), "w") as f:
                f.write(json.dumps(cfg))  # dumps is C; dump the pure-Python encoder: 2 ms
            with self.db:  # one transaction: the record's state and its event
                self.db.execute("BEGIN")
                self._update(cid, status="created",
                             stop_signal=opts.stop_signal or config.get("StopSignal") or "")
                self.record_event("created", cid, opts.pod or None,
                                  **container_event_attrs(name, image_ref, opts.labels))
                if self._networks is not None:  # it attached the container just now
                    self._networks.connected(cid)
        except BaseException:
            self._remove_everything(cid, store)
            raise
        return cid

    def _check_options(self, opts: RunOptions) -> dict:
        """What can be checked before anything is made, checked (one-line
        InvalidArgument), and turned into what _oci_config needs: namespaces (kind ->
        None for the host's, else the OCI entry), mounts, devices, rlimits, resources,
        the cgroup parent, the oom score."""
        from . import runopts

        namespaces: dict = {}
        for kind in ("pid", "ipc", "uts"):
            how, what = runopts.split_ns_mode(kind, getattr(opts, kind))
            if how == "host":
                namespaces[kind] = None
            elif how == "ns":
                namespaces[kind] = {"type": kind, "path": what}
            elif how == "container":
                other = self.get(what)
                if other["status"] != "running" or not other["pid"]:
                    raise ContainerStateError(f"cannot join the {kind} namespace of "
                                              f"{other['name']}: it is not running")
                namespaces[kind] = {"type": kind, "path": f"/proc/{other['pid']}/ns/"
                                                          f"{runopts.PROC_NS_NAMES[kind]}"}
            else:
                namespaces[kind] = {"type": kind}
        if opts.hostname and (opts.uts == "host" or opts.uts.startswith("container:")):
            raise InvalidArgument(f"--hostname conflicts with --uts {opts.uts}")
        if (opts.network or "").startswith("ns:"):
            runopts.namespace_path("network", opts.network[3:], "--network")
        check_apparmor(opts.apparmor, f"apparmor profile {opts.apparmor!r}")
        for what, mapping in (("labels", opts.labels), ("annotations", opts.annotations),
                              ("sysctls", opts.sysctls)):
            if not isinstance(mapping, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
                raise InvalidArgument(f"{what}: want a map of strings to strings")
        types = {"mount"} | {k for k, v in namespaces.items() if v is not None}
        if opts.network != "host":
            types.add("network")
        for key in opts.sysctls:
            from .runtime import _check_sysctl

            try:
                _check_sysctl(key, types)
            except MiniRunError as e:
                raise InvalidArgument(f"--sysctl: {e}") from None
        for what, paths in (("masked_paths", opts.masked_paths),
                            ("readonly_paths", opts.readonly_paths)):
            if paths is not None and not all(isinstance(p, str) and p.startswith("/")
                                             for p in paths):
                raise InvalidArgument(f"{what}: want absolute paths, got {paths!r}")
        if opts.log_path and not os.path.isabs(opts.log_path):
            raise InvalidArgument(f"log path {opts.log_path!r}: must be absolute")
        if opts.pod_files and not os.path.isdir(opts.pod_files):
            raise InvalidArgument(f"pod files {opts.pod_files}: not a directory")
        oom = opts.oom_score_adj
        if oom is not None and (isinstance(oom, bool) or not isinstance(oom, int) or
                                not -1000 <= oom <= 1000):
            raise InvalidArgument(f"--oom-score-adj {oom!r}: an integer from -1000 to 1000")
        if opts.stop_timeout is not None and (not isinstance(opts.stop_timeout, int) or
                                              opts.stop_timeout < 0):
            raise InvalidArgument(f"--stop-timeout {opts.stop_timeout!r}: seconds, 0 or more")
        nodes, rules = runopts.device_entries(opts.devices)
        if opts.unified and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            raise InvalidArgument("unified: cgroup v2 settings, and this host runs cgroup v1")
        memory = opts.memory_bytes
        if memory is None and opts.memory:
            memory = parse_size(opts.memory, "--memory")
        resources = runopts.resources_doc({
            "cpu_shares": opts.cpu_shares, "cpu_quota": opts.cpu_quota,
            "cpu_period": opts.cpu_period, "cpuset_cpus": opts.cpuset_cpus,
            "cpuset_mems": opts.cpuset_mems, "memory_bytes": memory,
            "memory_swap": opts.memory_swap, "hugepage_limits": opts.hugepage_limits,
            "memory_reservation": opts.memory_reservation,
            "unified": opts.unified})
        return {"namespaces": namespaces, "mounts": runopts.check_mounts(opts.mounts),
                "devices": nodes, "device_rules": rules,
                "rlimits": runopts.parse_ulimits(opts.ulimits), "resources": resources,
                "cgroup_parent": runopts.cgroup_parent_path(opts.cgroup_parent)}

    def _network(self, cid: str, name: str, config: dict, opts: RunOptions):
        """The container's network: an Attachment (its own netns, wired, or holding only
        lo for none), the record of the container whose netns it shares, a JoinedNetns
        (ns:PATH: a netns someone else made and wired), or None (host)."""
        mode = opts.network or "bridge"
        if mode.startswith("ns:"):
            if opts.publish or opts.publish_all:
                raise InvalidArgument("-p/-P need a bridge or CNI network, not ns:PATH")
            return JoinedNetns(mode[3:])
        if mode in ("host", "none") or mode.startswith("container:"):
            if opts.publish or opts.publish_all:
                raise InvalidArgument(f"-p/-P need a bridge or CNI network, not {mode}")
            if mode.startswith("container:"):
                if opts.hostname:
                    raise InvalidArgument("--hostname conflicts with --network container:")
                other = self.get(mode.split(":", 1)[1])
                if other["status"] != "running":
                    raise ContainerStateError(
                        f"cannot join the network of {other['name']}: it is not running")
                return other
            if mode == "none":
                return self.networks.attach_none(cid, name, opts.hostname or cid[:12])
            return None
        exposed = list((config.get("ExposedPorts") or {}).keys()) if opts.publish_all else []
        return self.networks.attach(cid, mode, name=name, hostname=opts.hostname or cid[:12],
                                    publish=opts.publish, exposed=exposed,
                                    extra_hosts=opts.add_host)

    def _command(self, config: dict, opts: RunOptions) -> list[str]:
        if opts.entrypoint is not None:
            # docker: --entrypoint replaces the image's and drops its Cmd
            entrypoint = shlex.split(opts.entrypoint) if opts.entrypoint else []
            cmd = list(opts.command)
        else:
            entrypoint = list(config.get("Entrypoint") or [])
            cmd = list(opts.command) or list(config.get("Cmd") or [])
        args = entrypoint + cmd
        if not args:
            raise InvalidArgument("no command specified: the image has no Cmd or Entrypoint")
        if opts.init:
            if not os.path.exists(TINI):
                raise MiniRunError(f"--init needs {TINI} (apt-get install tini)")
            args = ["/sbin/minirun-init", "--"] + args
        return args

    def _env(self, config: dict, opts: RunOptions, hostname: str) -> list[str]:
        env: dict[str, str] = {}
        for item in [DEFAULT_PATH_ENV] + list(config.get("Env") or []):
            k, _, v = item.partition("=")
            env[k] = v
        env["HOSTNAME"] = hostname
        if opts.tty:
            env["TERM"] = "xterm"
        lines = []
        for path in opts.env_files:
            try:
                with open(path) as f:
                    lines += [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            except OSError as e:
                raise InvalidArgument(f"--env-file {path}: {e.strerror}") from None
        for item in lines + list(opts.env):
            k, sep, v = item.partition("=")
            if not k:
                raise InvalidArgument(f"invalid environment variable {item!r}")
            if sep:
                env[k] = v
            elif k in os.environ:  # docker: -e NAME passes the caller's value
                env[k] = os.environ[k]
        return [f"{k}={v}" for k, v in env.items()]

    def _user(self, spec_user: str, rootfs: str) -> dict:
        """uid[:gid] or name[:group], looked up in the image's /etc files (read inside the
        rootfs, never through a symlink to the host)."""
        user, _, group = spec_user.partition(":")
        passwd = _read_in_root(rootfs, "/etc/passwd")
        groups = _read_in_root(rootfs, "/etc/group")
        uid = gid = None
        if user.isdigit():
            uid = int(user)
        for line in passwd.splitlines():
            f = line.split(":")
            if len(f) >= 4 and (f[0] == user or (uid is not None and f[2] == str(uid))):
                uid, gid = int(f[2]), int(f[3])
                break
        if uid is None:
            raise InvalidArgument(f"unable to find user {user}: no matching entries in passwd file")
        if group:
            gid = _group_id(group, groups)
        extra = []
        name = next((ln.split(":")[0] for ln in passwd.splitlines()
                     if ln.split(":")[2:3] == [str(uid)]), None)
        for line in groups.splitlines():
            f = line.split(":")
            if len(f) >= 4 and name and name in f[3].split(",") and f[2].isdigit():
                extra.append(int(f[2]))
        return {"uid": uid, "gid": gid or 0, "additionalGids": sorted(set(extra))}

    def _oci_config(self, cid: str, config: dict, args: list[str], rootfs: str, bundle: str,
                    opts: RunOptions, security: SecurityOptions, net=None,
                    checked: dict | None = None) -> dict:
        from .spec import UNSUPPORTED, default_spec

        checked = checked if checked is not None else self._check_options(opts)
        ns = checked["namespaces"]
        cfg = default_spec()
        cfg["root"] = {"path": rootfs, "readonly": opts.read_only}
        hostname = self._hostname(cid, opts, ns["uts"])
        if opts.hostname or ns["uts"] == {"type": "uts"}:
            cfg["hostname"] = hostname
        else:  # the host's or a joined namespace's name stays as it is
            del cfg["hostname"]
        user = self._process_user(opts, config, rootfs)
        caps = self._caps(opts, user["uid"])
        process = cfg["process"]
        process.update(terminal=opts.tty, args=args, env=self._env(config, opts, hostname),
                       cwd=_workdir(opts.workdir, config.get("WorkingDir")), user=user,
                       capabilities=caps, rlimits=checked["rlimits"],
                       noNewPrivileges=security.no_new_privileges)
        oom = self._oom_score_adj(opts.oom_score_adj)
        if oom is not None:
            process["oomScoreAdj"] = oom
        linux = cfg["linux"]
        linux["maskedPaths"] = list(opts.masked_paths) if opts.masked_paths is not None \
            else [] if opts.privileged else list(MASKED_PATHS)
        linux["readonlyPaths"] = list(opts.readonly_paths) \
            if opts.readonly_paths is not None \
            else [] if opts.privileged else list(READONLY_PATHS)
        linux["cgroupsPath"] = f"{checked['cgroup_parent'].rstrip('/')}/{cid}"
        if checked["devices"]:
            linux["devices"] = checked["devices"]
        if opts.sysctls:
            linux["sysctl"] = dict(opts.sysctls)
        res = {"devices": [{"allow": opts.privileged, "access": "rwm"}] +
               checked["device_rules"],
               "pids": {"limit": opts.pids_limit if opts.pids_limit is not None
                        else DEFAULT_PIDS_LIMIT}}
        if opts.cpus:
            try:
                cpus = float(opts.cpus)
            except ValueError:
                raise InvalidArgument(f"--cpus: invalid number {opts.cpus!r}") from None
            if cpus <= 0:
                raise InvalidArgument("--cpus must be positive")
            res["cpu"] = {"quota": int(cpus * 100000), "period": 100000}
        for section, value in checked["resources"].items():
            if isinstance(value, dict) and isinstance(res.get(section), dict):
                res[section] = {**res[section], **value}
            else:
                res[section] = value
        if opts.oom_kill_disable:
            if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                from .runlog import warn

                warn("--oom-kill-disable ignored: cgroup v2 has no such setting (as docker)")
            else:
                res.setdefault("memory", {})["disableOOMKiller"] = True
        linux["resources"] = res
        namespaces = [ns[kind] for kind in ("pid", "ipc", "uts") if ns[kind] is not None]
        namespaces.append({"type": "mount"})
        if isinstance(net, dict):  # container:NAME joins that container's netns
            namespaces.append({"type": "network", "path": self._netns_of(net)})
        elif net is not None:
            namespaces.append({"type": "network", "path": net.netns})
        linux["namespaces"] = namespaces
        if not opts.privileged and "linux.seccomp" not in UNSUPPORTED:
            profile = self._seccomp(security.seccomp, caps["bounding"])
            if profile:
                linux["seccomp"] = profile
        mounts = checked["mounts"]
        targets = {m["destination"].rstrip("/") for m in mounts}
        if ns["ipc"] is None:  # the host's IPC namespace: its /dev/shm too, as docker
            mounts = [{"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                       "options": ["rbind", "rprivate"]}] + mounts
            targets.add("/dev/shm")
        # a mount given for a default's destination replaces it (a pod's /dev/shm)
        cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] not in targets]
        cfg["mounts"] += [m for m in self._extra_mounts(cid, bundle, hostname, opts, net)
                          if m["destination"] not in targets]
        cfg["mounts"] += mounts
        if opts.shm_size:
            for m in cfg["mounts"]:
                if m["destination"] == "/dev/shm" and m["type"] == "tmpfs":
                    m["options"] = [o for o in m["options"] if not o.startswith("size=")] \
                        + [f"size={opts.shm_size}"]
        for m in cfg["mounts"]:
            if m.pop("chown", False):  # -v ...:U
                if opts.userns not in ("", "host"):
                    raise InvalidArgument(f"-v {m['source']}:{m['destination']}:U: not with "
                                          f"--userns {opts.userns} (the owner would be the "
                                          "container's id, not its host id)")
                _chown_tree(m["source"], user["uid"], user["gid"])
        from .runopts import rootfs_propagation

        propagation = rootfs_propagation([m for m in cfg["mounts"] if m.get("options")])
        if propagation:
            linux["rootfsPropagation"] = propagation
        cfg["annotations"] = {**opts.annotations, "io.minirun.id": cid}
        return cfg

    def _hostname(self, cid: str, opts: RunOptions, uts: dict | None) -> str:
        """The container's host name: --hostname, else in its own UTS namespace its
        short id; in the host's the host's; in a joined one (a pod's) the pod's file."""
        if opts.hostname:
            return opts.hostname
        if uts is None:
            return os.uname().nodename
        if uts != {"type": "uts"} and opts.pod_files:
            try:
                with open(os.path.join(opts.pod_files, "hostname")) as f:
                    return f.read().strip() or cid[:12]
            except FileNotFoundError:
                pass
        return cid[:12]

    def _process_user(self, opts: RunOptions, config: dict, rootfs: str) -> dict:
        """process.user: --user (else the image's), --group for its gid, --group-add."""
        spec = opts.user or config.get("User") or "0"
        if opts.group is not None and str(opts.group) != "":
            spec = f"{spec.partition(':')[0]}:{opts.group}"
        user = self._user(spec, rootfs)
        if opts.group_add:
            groups = _read_in_root(rootfs, "/etc/group")
            extra = [_group_id(str(g), groups) for g in opts.group_add]
            user["additionalGids"] = sorted(set(user["additionalGids"]) | set(extra))
        return user

    def _oom_score_adj(self, value: int | None) -> int | None:
        """A negative score needs CAP_SYS_RESOURCE, which some hosts withhold even from
        root (this VM, many CI runners): kubelet asks for -997 all the same, so the
        value is dropped with a warning rather than fail the container."""
        if value is not None and value < 0 and "CAP_SYS_RESOURCE" not in _bounding_set():
            from .runlog import warn

            warn(f"oom_score_adj {value} dropped: lowering the score needs "
                 "CAP_SYS_RESOURCE, which this host withholds")
            return None
        return value

    def _caps(self, opts: RunOptions, uid: int) -> dict:
        from .spec import CAPABILITIES

        caps = _bounding_set() if opts.privileged else list(DEFAULT_CAPS)
        for cap in opts.cap_add:
            cap = cap.upper() if cap.upper().startswith("CAP_") else "CAP_" + cap.upper()
            if cap == "CAP_ALL":
                caps = _bounding_set()
            elif cap not in CAPABILITIES:
                raise InvalidArgument(f"--cap-add: unknown capability {cap}")
            elif cap not in caps:
                caps.append(cap)
        for cap in opts.cap_drop:
            cap = cap.upper() if cap.upper().startswith("CAP_") else "CAP_" + cap.upper()
            if cap == "CAP_ALL":
                caps = []
            elif cap not in CAPABILITIES:
                raise InvalidArgument(f"--cap-drop: unknown capability {cap}")
            elif cap in caps:
                caps.remove(cap)
        # docker: a non-root user keeps only the bounding set
        effective = caps if uid == 0 else []
        return {"bounding": caps, "effective": effective, "permitted": effective,
                "inheritable": [], "ambient": []}

    def _seccomp(self, choice: str | None, caps: list[str]) -> dict | None:
        if choice == "unconfined":
            return None
        path = choice or SECCOMP_PROFILE
        try:
            with open(path) as f:
                profile = json.load(f)
        except FileNotFoundError:
            if path == SECCOMP_PROFILE:
                return None  # no containers-common profile on this host
            raise InvalidArgument(f"seccomp profile {path} not found") from None
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"seccomp profile {path}: {e}") from None
        return docker_profile_to_oci(profile, caps)

    def _extra_mounts(self, cid: str, bundle: str, hostname: str,
                      opts: RunOptions, net=None) -> list[dict]:
        mounts = []
        hosts = None if net is None or isinstance(net, (dict, JoinedNetns)) else \
            self.networks.hosts_text(cid)
        if hosts is None:
            hosts = (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                     f"127.0.1.1\t{hostname}\n")
            for entry in opts.add_host:
                host, _, addr = entry.partition(":")
                if not host or not addr:
                    raise InvalidArgument(f"--add-host {entry!r}: expected HOST:IP")
                hosts += f"{addr}\t{host}\n"
        files = {
            "hostname": f"{hostname}\n",
            "hosts": hosts,
            "resolv.conf": _resolv_conf(opts.dns, opts.dns_search, opts.dns_option),
        }
        for name, text in files.items():
            path = os.path.join(bundle, name)
            if opts.pod_files and os.path.exists(os.path.join(opts.pod_files, name)):
                path = os.path.join(opts.pod_files, name)  # the pod's, shared by its containers
            elif isinstance(net, dict) and name != "hostname":
                # docker: a container sharing another's network shares its hosts and DNS
                path = os.path.join(self.root, "containers", net["id"], name)
            else:
                with open(path, "w") as f:
                    f.write(text)
            mounts.append({"destination": f"/etc/{name}", "type": "bind", "source": path,
                           "options": ["rbind", "rprivate"]})
        for spec in opts.volumes:
            mounts.append(self._volume(spec))
        for spec in opts.tmpfs:
            dest, _, options = spec.partition(":")
            if not dest.startswith("/"):
                raise InvalidArgument(f"--tmpfs {spec!r}: the destination must be absolute")
            mounts.append({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "noexec"] +
                           ([o for o in options.split(",") if o] or ["size=65536k"])})
        if opts.init:
            mounts.append({"destination": "/sbin/minirun-init", "type": "bind", "source": TINI,
                           "options": ["bind", "ro"]})
        return mounts

    def _volume(self, spec: str) -> dict:
        """-v SOURCE:/DEST[:MODES] (a host path or a named volume); the modes as docker
        reads them without SELinux (runflags.parse_volume_modes)."""
        from .runflags import parse_volume_modes

        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise InvalidArgument(f"-v {spec!r}: expected SOURCE:/DEST[:OPTIONS]")
        source, dest = parts[0], parts[1]
        mode, propagation, chown = parse_volume_modes(spec, parts[2] if len(parts) == 3
                                                      else "")
        if not source.startswith("/"):
            if not source or not set(source) <= NAME_CHARS:
                raise InvalidArgument(f"-v {spec!r}: invalid volume name {source!r}")
            name, source = source, os.path.join(self.root, "volumes", source, "_data")
            if not os.path.isdir(source):  # made by its first use, as docker's
                os.makedirs(source, mode=0o755, exist_ok=True)
                self.record_object_event("volume", "create", name, driver="local")
        elif not os.path.exists(source):
            raise InvalidArgument(f"-v {spec!r}: {source} does not exist")
        elif chown and os.path.realpath(source) == "/":
            raise InvalidArgument(f"-v {spec!r}: U would chown the host's / ")
        if propagation not in (None, "rprivate", "private"):
            from . import mountinfo
            from .runopts import check_source_propagation

            check_source_propagation(dest, source, propagation, mountinfo.read())
        mount = {"destination": dest, "type": "bind", "source": source,
                 "options": ["rbind", mode, propagation or "rprivate"]}
        if chown:
            mount["chown"] = True
        return mount

    # --- user namespaces -------------------------------------------------------------------

    def _userns_idmap(self, opts: RunOptions):
        """--userns as the snapshot's IdMap (None: the host's user namespace): host, auto
        (alias private: a new namespace on the range of `userns_range`) or ns:PATH (join
        that namespace)."""
        from .image.store import IdMap, open_user_namespace

        mode = opts.userns or "host"
        if mode == "host":
            return None
        if opts.privileged:
            raise InvalidArgument(f"--privileged cannot be used with --userns {mode}: a "
                                  "privileged container runs in the host's user namespace")
        if mode in ("auto", "private"):
            uid_start, uid_size = userns_range("/etc/subuid")
            gid_start, gid_size = userns_range("/etc/subgid")
            idmap = IdMap(uid_mappings=({"containerID": 0, "hostID": uid_start,
                                         "size": uid_size},),
                          gid_mappings=({"containerID": 0, "hostID": gid_start,
                                         "size": gid_size},))
        elif mode.startswith("ns:") and os.path.isabs(mode[3:]):
            os.close(open_user_namespace(mode[3:]))
            idmap = IdMap(userns_path=mode[3:])
        else:
            raise InvalidArgument(f"invalid --userns mode {mode!r}: host, auto, private or "
                                  "ns:/PATH")
        # The container's root is an unprivileged host uid: it must search its way down
        # to the rootfs and the bundle's files.
        blocked = _unsearchable_dir(self.root)
        if blocked:
            raise InvalidArgument(f"--userns {mode}: the container's root cannot reach "
                                  f"{self.root}: {blocked} is not searchable by others "
                                  f"(chmod o+x {blocked})")
        return idmap

    def _apply_userns(self, cfg: dict, idmap, bundle: str, rootfs: str) -> None:
        """The user namespace in config.json, and the files the engine wrote in the bundle
        for the container (hostname, hosts, resolv.conf) given to its root, as docker's
        userns-remap does; the merged root is owned by that root as the host sees it."""
        if idmap is None:
            return
        linux = cfg["linux"]
        if idmap.userns_path is not None:
            linux["namespaces"].append({"type": "user", "path": idmap.userns_path})
        else:
            linux["namespaces"].append({"type": "user"})
            linux["uidMappings"] = [dict(m) for m in idmap.uid_mappings]
            linux["gidMappings"] = [dict(m) for m in idmap.gid_mappings]
        owner = os.stat(rootfs)
        for mount in cfg["mounts"]:
            source = mount.get("source") or ""
            if os.path.dirname(source) == bundle and os.path.isfile(source):
                os.chown(source, owner.st_uid, owner.st_gid)

    # --- run, stop, remove ---------------------------------------------------------------

    def run_detached(self, image_ref: str, opts: RunOptions) -> str:
        from .image.store import ImageStore

        check_run_options(opts)
        cid = self.prepare(image_ref, opts)
        try:
            self._start_in_daemon(cid)
        except BaseException:
            self._remove_everything(cid, ImageStore(self.root))
            raise
        return cid

    def _start_in_daemon(self, cid: str) -> None:
        from .daemon.server import request

        reply = request(self, {"op": "start", "id": cid})
        if "error" in reply:  # its kind: a missing program is 127 to `run -d`, as docker's
            from .daemon.proto import reply_error

            raise reply_error(reply)

    def _netns_of(self, rec: dict) -> str:
        ep = self.networks.endpoint(rec["id"])
        if ep is not None:
            return ep["netns"]
        opts = json.loads(rec["options"])
        if opts.get("network") == "host":
            raise InvalidArgument(f"container {rec['name']} uses the host's network: "
                                  "use --network host")
        if (opts.get("network") or "").startswith("ns:"):
            return opts["network"][3:]
        if not rec["pid"]:
            raise ContainerStateError(f"container {rec['name']} has no network namespace")
        return f"/proc/{rec['pid']}/ns/net"

    def start(self, name_or_id: str) -> str:
        rec = self.get(name_or_id)
        if rec["status"] == "running":
            return rec["id"]
        self.network_for_start(rec)
        self._update(rec["id"], user_stopped=0)
        self._start_in_daemon(rec["id"])
        return rec["id"]

    def network_for_start(self, rec: dict) -> None:
        """An exited container has no host network objects (the daemon released them):
        wire it again with its address. One that joins another's netns needs that one
        running: its netns is made again by the owner's start, and is the one joined."""
        mode = json.loads(rec["options"]).get("network") or ""
        if mode.startswith("container:"):
            try:
                owner = self.get(mode.split(":", 1)[1])
            except NotFound:
                raise NotFound(f"cannot start {rec['name']}: the container "
                               f"{mode.split(':', 1)[1]} whose network it joins is gone") \
                    from None
            if owner["status"] != "running":
                raise ContainerStateError(f"cannot start {rec['name']}: it joins the network "
                                          f"of {owner['name']}, which is not running")
        elif self._has_endpoint(rec["id"]):
            self.networks.ensure_wired(rec["id"])

    def attach(self, name_or_id: str, detach_keys: str = "ctrl-p,ctrl-q",
               stdin: bool = True) -> int:
        """The caller's terminal or stdio on a detached container's, through the daemon:
        the container's exit status, or 0 once the detach keys are typed."""
        from .daemon.server import STOPPED, open_attach
        from .terminal import AttachSession, parse_detach_keys

        keys = parse_detach_keys(detach_keys)
        rec = self.get(name_or_id)
        if rec["status"] != "running":
            raise ContainerStateError(STOPPED)
        sock, reply, input_fd = open_attach(self, rec["id"], stdin)
        return AttachSession(sock, reply["tty"], reply["stdin"], input_fd, keys).run()

    def kill(self, name_or_id: str, sig: str = "KILL") -> str:
        from . import container as ctr

        rec = self.get(name_or_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['name']} is not running")
        self._update(rec["id"], user_stopped=1)
        num = ctr.parse_signal(sig)
        ctr.kill(self.oci_root, rec["id"], num)
        self.record_object_event("container", "kill", rec["id"], signal=str(num))
        return rec["id"]

    def stop(self, name_or_id: str, timeout: float | None = None) -> str:
        """The stop signal (the image's StopSignal, else SIGTERM), then SIGKILL after
        `timeout` seconds (None: its stop_timeout, else 10); returns once the container
        has exited."""
        from . import container as ctr

        rec = self._stopped_by_user(self.get(name_or_id))
        if rec["status"] != "running":
            return rec["id"]
        if timeout is None:
            timeout = json.loads(rec["options"]).get("stop_timeout")
            timeout = 10.0 if timeout is None else timeout
        self._stop_signal(rec["id"], ctr.parse_signal(rec["stop_signal"] or "TERM"))
        if not self.wait_exit(rec["id"], timeout):
            self._stop_signal(rec["id"], 9, all_processes=True)
            self.wait_exit(rec["id"], 30)
        self.record_object_event("container", "stop", rec["id"])
        return rec["id"]

    def _stop_signal(self, cid: str, num: int, all_processes: bool = False) -> None:
        """A signal of `stop`, and its kill event (docker's stop: kill, die, stop)."""
        from . import container as ctr

        try:
            ctr.kill(self.oci_root, cid, num, all_processes=all_processes)
        except (ContainerStateError, NotFound):
            return
        self.record_object_event("container", "kill", cid, signal=str(num))

    def restart(self, name_or_id: str, timeout: float | None = None) -> str:
        """`restart`: stop (as `stop`), start, and the restart event."""
        cid = self.stop(name_or_id, timeout)
        self.start(cid)
        self.record_object_event("container", "restart", cid)
        return cid

    def _stopped_by_user(self, rec: dict) -> dict:
        """No restart policy applies from now on, and a pending restart is off: for a
        detached container the daemon does it, between its restarts (so a restart is
        either over, the container running, or will not happen); then the record again."""
        if json.loads(rec["options"]).get("detach"):
            from .daemon.server import request

            reply = request(self, {"op": "stop", "id": rec["id"]})
            if "error" in reply:
                raise MiniRunError(reply["error"])
        else:
            self._update(rec["id"], user_stopped=1)
        return self.get(rec["id"])

    def wait_exit(self, cid: str, timeout: float | None = None) -> bool:
        """Until the record says exited (the daemon writes it) or the runtime has no
        running container left and the keeper's status file is there."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.get(cid)["status"] == "exited":
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def should_restart(self, rec: dict, status: int) -> bool:
        opts = json.loads(rec["options"])
        policy, limit = parse_restart(opts.get("restart") or "no")
        try:
            fresh = self.get(rec["id"])
        except NotFound:  # removed meanwhile
            return False
        if fresh["user_stopped"]:
            return False
        count = fresh["restart_count"] or 0
        if policy == "always" or policy == "unless-stopped":
            return True
        if policy == "on-failure":
            return status != 0 and (limit is None or count < limit)
        return False

    def exec(self, name_or_id: str, command: list[str], tty: bool = False,
             env: list[str] | None = None, user: str | None = None,
             workdir: str | None = None, detach: bool = False) -> int:
        """A process in a running container, through minirun-oci's exec code; the
        caller's terminal or stdio is the process's."""
        from . import container as ctr
        from . import execproc

        rec = self.get(name_or_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['name']} is not running")
        c = ctr.Container.load(self.oci_root, rec["id"])
        uid_gid = None
        if user:
            rootfs = c.data.get("rootfs", "")
            u = self._user(user, rootfs)
            uid_gid = f"{u['uid']}:{u['gid']}"
        process = execproc.build_process(c, command, tty=tty, cwd=workdir, env=env,
                                         user=uid_gid)
        exec_id = os.urandom(32).hex()
        line = " ".join(command)
        self.record_object_event("container", "exec_create", rec["id"], execID=exec_id,
                                 command=line)
        self.record_object_event("container", "exec_start", rec["id"], execID=exec_id,
                                 command=line)
        status = execproc.exec_and_wait(self.oci_root, rec["id"], process,
                                        execproc.ExecOptions(detach=detach),
                                        terminal_proxy=tty and not detach)
        if not detach:
            self.record_object_event("container", "exec_die", rec["id"], execID=exec_id,
                                     exitCode=str(status))
        return status

    def update_resources(self, name_or_id: str, resources: dict) -> dict:
        """New limits for a running container, as `runc update`: `resources` by
        RunOptions' names (cpu_shares, cpu_quota, cpu_period, cpuset_cpus, cpuset_mems,
        memory_bytes, memory_swap, pids_limit, unified); None, "" or 0 leave one as it
        is. The record's options follow. Returns the OCI linux.resources now in force."""
        from . import ops, runopts

        rec = self.get(name_or_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['name']} is not running")
        doc = runopts.resources_doc(resources)
        in_force = ops.update(self.oci_root, rec["id"], doc)
        opts = json.loads(rec["options"])
        opts.update({k: v for k, v in resources.items() if v not in (None, "", 0, {})})
        self._update(rec["id"], options=json.dumps(opts))
        return in_force

    def reopen_log(self, name_or_id: str) -> None:
        """The daemon closes the container's log file and opens it again at its path
        (after kubelet renamed it away to rotate it)."""
        from .daemon.server import request

        rec = self.get(name_or_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['name']} is not running")
        reply = request(self, {"op": "reopen_log", "id": rec["id"]})
        if "error" in reply:
            from .daemon.proto import reply_error

            raise reply_error(reply)

    def top(self, name_or_id: str, ps_args: list[str]) -> list[str]:
        """The host's ps output, only the container's processes (as docker top)."""
        from . import ops

        rec = self.get(name_or_id)
        if rec["status"] != "running":
            raise ContainerStateError(f"container {rec['name']} is not running")
        pids = ops.container_pids(self.oci_root, rec["id"])
        return ops.filter_ps_output(ops.run_ps(ps_args or ["-ef"]), pids)

    def remove(self, name_or_id: str, force: bool = False) -> str:
        rec = self.get(name_or_id)
        if rec["status"] != "running" or force:
            rec = self._stopped_by_user(rec)  # a pending restart must not start it now
        if rec["status"] == "running" and not force:
            raise ContainerStateError(
                f"cannot remove container {rec['name']}: it is running (stop it or use -f)")
        from .image.store import ImageStore

        self._remove_everything(rec["id"], ImageStore(self.root))
        return rec["id"]

    def _remove_everything(self, cid: str, store) -> None:
        from . import container as ctr

        try:
            ctr.delete(self.oci_root, cid, force=True)
        except NotFound:
            pass
        if self._has_endpoint(cid):
            self.networks.detach(cid)
        store.release(cid)
        with self.db:  # the daemon's exit handling is before or after, never between
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT status, options, exit_code, reason, name, image"
                                  " FROM containers WHERE id = ?", (cid,)).fetchone()
            self.db.execute("DELETE FROM containers WHERE id = ?", (cid,))
            if row is not None and row[0] != "creating":  # a created event was written
                opts = json.loads(row[1])
                pod = opts.get("pod") or None
                last = self.db.execute(
                    "SELECT type FROM events WHERE container = ? AND type IN"
                    " ('started', 'stopped') ORDER BY seq DESC LIMIT 1", (cid,)).fetchone()
                if last is not None and last[0] == "started":
                    # removed before the daemon handled its exit: it will find no record
                    self.record_event("stopped", cid, pod, reason=row[3] or "",
                                      exit_code=137 if row[2] is None else row[2])
                # its name and image: `events` shows them once the record is gone
                self.record_event("deleted", cid, pod,
                                  **container_event_attrs(row[4], row[5], opts.get("labels")))

    def _has_endpoint(self, cid: str) -> bool:
        """Without importing the network code (25 ms) for containers that have none."""
        if self._networks is not None:
            return self._networks.endpoint(cid) is not None
        try:
            return self.db.execute("SELECT 1 FROM endpoints WHERE container = ?",
                                   (cid,)).fetchone() is not None
        except sqlite3.OperationalError:  # no network was ever used with this root
            return False

    def network_settings(self, rec: dict) -> dict:
        """docker inspect's NetworkSettings."""
        ep = self.networks.endpoint(rec["id"])
        mode = json.loads(rec["options"]).get("network") or "bridge"
        if ep is None:
            return {"Networks": {mode: {}}, "Ports": {}}
        ports: dict = {}
        for p in json.loads(ep["ports"]):
            ports.setdefault(f"{p['container_port']}/{p['proto']}", []).append(
                {"HostIp": p["host_ip"] or "0.0.0.0", "HostPort": str(p["host_port"])})
        from .network.manager import mac_for

        mac = ":".join(f"{b:02x}" for b in mac_for(ep["ip"])) \
            if ep["ip"] and not ep["network"].startswith("cni:") else ""
        return {"Networks": {ep["network"]: {"IPAddress": ep["ip"] or "",
                                             "IPPrefixLen": ep["prefixlen"] or 0,
                                             "Gateway": ep["gateway"] or "",
                                             "MacAddress": mac,
                                             "NetworkNamespace": ep["netns"]}},
                "IPAddress": ep["ip"] or "", "Gateway": ep["gateway"] or "", "Ports": ports,
                "SandboxKey": ep["netns"]}


def container_event_attrs(name: str, image: str, labels: dict | None) -> dict:
    """What the created and deleted events keep of a container for `minirun events`
    (docker's Actor.Attributes: name, image and its labels), read when the record is
    gone."""
    attrs = {"name": name, "image": image}
    if labels:
        attrs["labels"] = labels
    return attrs


def userns_range(subid_file: str) -> tuple[int, int]:
    """(first host id, how many) for --userns auto: MINIRUN_USERNS_RANGE (START:SIZE), else
    the `containers` user's range in `subid_file` (/etc/subuid or /etc/subgid), else
    100000:65536; at most 65536 ids."""
    text = os.environ.get(USERNS_RANGE_ENV)
    if text:
        start, size = _parse_id_range(text, USERNS_RANGE_ENV)
    else:
        start, size = _subid_range(subid_file, USERNS_SUBID_USER) or DEFAULT_USERNS_RANGE
    return start, min(size, USERNS_MAX_SIZE)


def _parse_id_range(text: str, what: str) -> tuple[int, int]:
    start, sep, size = text.strip().partition(":")
    if not sep or not start.isdigit() or not size.isdigit():
        raise InvalidArgument(f"{what}: want START:SIZE, got {text!r}")
    first, count = int(start), int(size)
    # host id 0 in the range would make the container's root the host's
    if first == 0 or count == 0 or first + count > 0xFFFFFFFF:
        raise InvalidArgument(f"{what}: {text!r} is not a range of host ids above 0")
    return first, count


def _subid_range(path: str, user: str) -> tuple[int, int] | None:
    """The first range of `user` (by name or uid) in a subuid/subgid file."""
    import pwd

    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InvalidArgument(f"{path}: {e.strerror}") from None
    try:
        names = {user, str(pwd.getpwnam(user).pw_uid)}
    except KeyError:
        names = {user}
    for line in lines:
        name, _, rest = line.strip().partition(":")
        if name in names:
            return _parse_id_range(rest, f"{path}: {user}")
    return None


def _unsearchable_dir(path: str) -> str | None:
    """The first directory on the way to `path` (itself included) that others may not
    search, or None."""
    current = "/"
    for part in os.path.realpath(path).split("/")[1:]:
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _bounding_set() -> list[str]:
    """The capabilities of this process's bounding set: what --privileged and --cap-add ALL
    give (as podman), since asking for one the host withholds (CAP_SYS_RESOURCE on many CI
    runners) would fail the container."""
    from .spec import CAPABILITIES

    with open("/proc/self/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return [name for name, num in CAPABILITIES.items() if mask & (1 << num)]


def _workdir(workdir: str | None, image_dir: str | None) -> str:
    """--workdir, a relative one under the image's WorkingDir (as docker); else the
    image's, else /."""
    base = image_dir or "/"
    if not workdir:
        return base
    return os.path.normpath(os.path.join(base, workdir))


def _chown_tree(top: str, uid: int, gid: int) -> None:
    """-v SRC:DST:U: SRC and what is below it to the container's user, never following
    a symlink (one is chowned itself) nor crossing into another mount."""
    dev = os.lstat(top).st_dev
    os.lchown(top, uid, gid)
    for parent, dirs, files in os.walk(top):
        for name in files + dirs:
            path = os.path.join(parent, name)
            if os.lstat(path).st_dev == dev:
                os.lchown(path, uid, gid)
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(parent, d)).st_dev == dev]


def _is_zombie(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:data.rindex(b")") + 3] == b"Z"


def _group_id(group: str, groups: str) -> int:
    """A gid, given as a number or as a name in the image's /etc/group text."""
    if group.isdigit():
        return int(group)
    for line in groups.splitlines():
        f = line.split(":")
        if len(f) >= 3 and f[0] == group and f[2].isdigit():
            return int(f[2])
    raise InvalidArgument(f"unable to find group {group}")


def _read_in_root(rootfs: str, path: str) -> str:
    from . import sys as _sys
    from .mounts import open_in_root

    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(rootfd, path, os.O_RDONLY)
    except _sys.SysError:
        return ""
    finally:
        os.close(rootfd)
    with os.fdopen(fd) as f:
        return f.read(1 << 20)


def _resolv_conf(dns: list[str] = (), search: list[str] = (),
                 options: list[str] = ()) -> str:
    """The host's resolv.conf without loopback resolvers, which mean nothing inside;
    --dns, --dns-search and --dns-option replace the host's lines of their kind."""
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    keep = []
    for line in lines:
        parts = line.split()
        if parts[:1] == ["nameserver"] and (dns or len(parts) > 1 and
                                            (parts[1].startswith("127.") or parts[1] == "::1")):
            continue
        if parts[:1] in (["search"], ["domain"]) and search:
            continue
        if parts[:1] == ["options"] and options:
            continue
        keep.append(line)
    for server in dns:
        if not _is_ip(server):
            raise InvalidArgument(f"--dns {server!r}: not an IP address")
        keep.append(f"nameserver {server}")
    if search:
        keep.append("search " + " ".join(search))
    if options:
        keep.append("options " + " ".join(options))
    return "\n".join(keep) + "\n"


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
