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


# strconv.ParseBool's words, as docker reads no-new-privileges=VALUE
_BOOLS = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
          "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}
SECURITY_OPT_FORMS = ("no-new-privileges[=true|false], seccomp=unconfined|PROFILE, "
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
            out.seccomp = value
        elif key == "apparmor" and value:
            if value != "unconfined":  # nothing to confine with, so only "unconfined" is true
                raise InvalidArgument(f"--security-opt {opt}: minirun has no AppArmor "
                                      "support; only apparmor=unconfined is accepted")
        elif key == "label" and value:
            if value != "disable":
                raise InvalidArgument(f"--security-opt {opt}: minirun has no SELinux "
                                      "support; only label=disable is accepted")
        else:
            raise InvalidArgument(f"unknown --security-opt {opt!r}: use {SECURITY_OPT_FORMS}")
    return out


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
                stop_signal TEXT DEFAULT '', user_stopped INTEGER DEFAULT 0)""")
            self._db = db
        return self._db

    @property
    def networks(self):
        if self._networks is None:
            from .network.manager import Networks

            self._networks = Networks(self.db, self.root)
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

    def _update(self, cid: str, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE containers SET {sets} WHERE id = ?", (*fields.values(), cid))

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
            rec["status"] = "exited"
            rec["exit_code"] = kept if kept is not None else (
                rec["exit_code"] if rec["exit_code"] is not None else -1)
            self._update(rec["id"], status="exited", exit_code=rec["exit_code"],
                         finished=time.time())

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
        store = ImageStore(self.root)
        image = store.get(image_ref)
        cid = os.urandom(32).hex()  # secrets would import hashlib and OpenSSL: 6 ms
        name = opts.name or f"minirun_{cid[:12]}"
        if not set(name) <= NAME_CHARS or not name[0].isalnum():
            raise InvalidArgument(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]")
        config = image.config.get("config") or {}
        args = self._command(config, opts)
        idmap = self._userns_idmap(opts)
        self._insert(cid, name, image_ref, image.id, args, opts)
        try:
            rootfs = store.snapshot(image, cid, idmap=idmap)
            bundle = os.path.join(self.root, "containers", cid)
            net = self._network(cid, name, config, opts)
            cfg = self._oci_config(cid, config, args, rootfs, bundle, opts, security, net)
            self._apply_userns(cfg, idmap, bundle, rootfs)
            with open(os.path.join(bundle, "config.json"), "w") as f:
                f.write(json.dumps(cfg))  # dumps is C; dump the pure-Python encoder: 2 ms
            self._update(cid, status="created", stop_signal=config.get("StopSignal") or "")
        except BaseException:
            self._remove_everything(cid, store)
            raise
        return cid

    def _network(self, cid: str, name: str, config: dict, opts: RunOptions):
        """The container's network: an Attachment (its own netns, wired, or holding only
        lo for none), the record of the container whose netns it shares, or None (host)."""
        mode = opts.network or "bridge"
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
            if group.isdigit():
                gid = int(group)
            else:
                for line in groups.splitlines():
                    f = line.split(":")
                    if len(f) >= 3 and f[0] == group:
                        gid = int(f[2])
                        break
                else:
                    raise InvalidArgument(f"unable to find group {group}")
        extra = []
        name = next((ln.split(":")[0] for ln in passwd.splitlines()
                     if ln.split(":")[2:3] == [str(uid)]), None)
        for line in groups.splitlines():
            f = line.split(":")
            if len(f) >= 4 and name and name in f[3].split(",") and f[2].isdigit():
                extra.append(int(f[2]))
        return {"uid": uid, "gid": gid or 0, "additionalGids": sorted(set(extra))}

    def _oci_config(self, cid: str, config: dict, args: list[str], rootfs: str, bundle: str,
                    opts: RunOptions, security: SecurityOptions, net=None) -> dict:
        from .spec import UNSUPPORTED, default_spec

        hostname = opts.hostname or cid[:12]
        cfg = default_spec()
        cfg["root"] = {"path": rootfs, "readonly": opts.read_only}
        cfg["hostname"] = hostname
        user = self._user(opts.user or config.get("User") or "0", rootfs)
        caps = self._caps(opts, user["uid"])
        process = cfg["process"]
        process.update(terminal=opts.tty, args=args, env=self._env(config, opts, hostname),
                       cwd=opts.workdir or config.get("WorkingDir") or "/", user=user,
                       capabilities=caps, rlimits=[],
                       noNewPrivileges=security.no_new_privileges)
        linux = cfg["linux"]
        linux["maskedPaths"] = [] if opts.privileged else list(MASKED_PATHS)
        linux["readonlyPaths"] = [] if opts.privileged else list(READONLY_PATHS)
        linux["cgroupsPath"] = f"/minirun/{cid}"
        res = {"devices": [{"allow": opts.privileged, "access": "rwm"}],
               "pids": {"limit": opts.pids_limit if opts.pids_limit is not None
                        else DEFAULT_PIDS_LIMIT}}
        if opts.memory:
            res["memory"] = {"limit": parse_size(opts.memory, "--memory")}
        if opts.cpus:
            try:
                cpus = float(opts.cpus)
            except ValueError:
                raise InvalidArgument(f"--cpus: invalid number {opts.cpus!r}") from None
            if cpus <= 0:
                raise InvalidArgument("--cpus must be positive")
            res["cpu"] = {"quota": int(cpus * 100000), "period": 100000}
        linux["resources"] = res
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        if isinstance(net, dict):  # container:NAME joins that container's netns
            namespaces.append({"type": "network", "path": self._netns_of(net)})
        elif net is not None:
            namespaces.append({"type": "network", "path": net.netns})
        linux["namespaces"] = namespaces
        if not opts.privileged and "linux.seccomp" not in UNSUPPORTED:
            profile = self._seccomp(security.seccomp, caps["bounding"])
            if profile:
                linux["seccomp"] = profile
        cfg["mounts"] += self._extra_mounts(cid, bundle, hostname, opts, net)
        cfg["annotations"] = {"io.minirun.id": cid}
        return cfg

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
        hosts = None if net is None or isinstance(net, dict) else \
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
            if isinstance(net, dict) and name != "hostname":
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
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise InvalidArgument(f"-v {spec!r}: expected SOURCE:/DEST[:ro|rw]")
        source, dest = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise InvalidArgument(f"-v {spec!r}: mode must be ro or rw")
        if not source.startswith("/"):
            if not source or not set(source) <= NAME_CHARS:
                raise InvalidArgument(f"-v {spec!r}: invalid volume name {source!r}")
            source = os.path.join(self.root, "volumes", source, "_data")
            os.makedirs(source, mode=0o755, exist_ok=True)
        elif not os.path.exists(source):
            raise InvalidArgument(f"-v {spec!r}: {source} does not exist")
        return {"destination": dest, "type": "bind", "source": source,
                "options": ["rbind", mode, "rprivate"]}

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
        if "error" in reply:
            raise MiniRunError(reply["error"])

    def _netns_of(self, rec: dict) -> str:
        ep = self.networks.endpoint(rec["id"])
        if ep is not None:
            return ep["netns"]
        opts = json.loads(rec["options"])
        if opts.get("network") == "host":
            raise InvalidArgument(f"container {rec['name']} uses the host's network: "
                                  "use --network host")
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
        ctr.kill(self.oci_root, rec["id"], ctr.parse_signal(sig))
        return rec["id"]

    def stop(self, name_or_id: str, timeout: float = 10.0) -> str:
        """The stop signal (the image's StopSignal, else SIGTERM), then SIGKILL after
        `timeout` seconds; returns once the container has exited."""
        from . import container as ctr

        rec = self._stopped_by_user(self.get(name_or_id))
        if rec["status"] != "running":
            return rec["id"]
        try:
            ctr.kill(self.oci_root, rec["id"], ctr.parse_signal(rec["stop_signal"] or "TERM"))
        except (ContainerStateError, NotFound):
            pass
        if not self.wait_exit(rec["id"], timeout):
            try:
                ctr.kill(self.oci_root, rec["id"], ctr.parse_signal("KILL"), all_processes=True)
            except (ContainerStateError, NotFound):
                pass
            self.wait_exit(rec["id"], 30)
        return rec["id"]

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
        return execproc.exec_and_wait(self.oci_root, rec["id"], process,
                                      execproc.ExecOptions(detach=detach),
                                      terminal_proxy=tty and not detach)

    def top(self, name_or_id: str, ps_args: list[str]) -> list[str]:
        """The host's ps output, only the container's processes (as docker top)."""
        from . import ops

        rec = self.get(name_or_id)
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
        self.db.execute("DELETE FROM containers WHERE id = ?", (cid,))

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


def _is_zombie(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:data.rindex(b")") + 3] == b"Z"


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
