"""The OCI runtime-spec config.json model: load, validate, defaults and features.

The runtime reads the configuration as the plain dict that ``json`` returns: this module
only checks its shape (types, required fields, known names) and reports the fields that
minirun does not implement yet, so the runtime refuses them instead of ignoring them.
It is on the container start path, so it imports nothing beyond os and minirun.jsonfast
(json's own import, through re and enum, costs more than loading and checking a config).

Every validation error is an ``InvalidSpec`` whose message starts with
``config.json: <json path>:``, for example
``config.json: linux.namespaces[2].type: unknown namespace type "foo"``.
"""

import os

from minirun import OCI_VERSION, __version__
from minirun import jsonfast as json
from minirun.errors import AlreadyExists, InvalidSpec, NotFound

CONFIG_NAME = "config.json"

# What `runc spec` of runc 1.1.5 writes; kept so default_spec() is byte-identical to it.
RUNC_SPEC_OCI_VERSION = "1.0.2-dev"

_SEMVER_EXTRA = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-")


# minirun.OCI_VERSION: the newest runtime-spec whose fields minirun knows (UNSUPPORTED
# lists the ones it refuses by name).
OCI_VERSION_MAX = OCI_VERSION


def _parse_version(version: str) -> tuple[int, int] | None:
    """(major, minor) of a semver string with optional -prerelease and +build parts, or
    None when it is not one (no re: its import costs more than the rest of validation)."""
    core, plus, build = version.partition("+")
    core, dash, pre = core.partition("-")
    parts = core.split(".")
    if len(parts) != 3:
        return None
    for part in parts:
        if not part.isascii() or not part.isdigit() or (len(part) > 1 and part[0] == "0"):
            return None
    for extra, present in ((pre, dash), (build, plus)):
        if present and (not extra or not set(extra) <= _SEMVER_EXTRA):
            return None
    return int(parts[0]), int(parts[1])


CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

HOOK_NAMES = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

# Top-level keys: the sections for other platforms are ignored on Linux, as runc does.
TOP_LEVEL_KEYS = frozenset(
    {
        "ociVersion",
        "process",
        "root",
        "hostname",
        "domainname",
        "mounts",
        "hooks",
        "annotations",
        "linux",
        "solaris",
        "windows",
        "vm",
        "zos",
        "freebsd",
    }
)

RLIMIT_TYPES = frozenset(
    "RLIMIT_" + name
    for name in (
        "AS",
        "CORE",
        "CPU",
        "DATA",
        "FSIZE",
        "LOCKS",
        "MEMLOCK",
        "MSGQUEUE",
        "NICE",
        "NOFILE",
        "NPROC",
        "RSS",
        "RTPRIO",
        "RTTIME",
        "SIGPENDING",
        "STACK",
    )
)

# mount(2) flags, from <linux/mount.h>.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_POSIXACL = 0x10000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_I_VERSION = 0x800000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

# mount_setattr(2) attributes, for the recursive "r*" options.
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000

# option -> (set: True sets the flag, False clears it; flag); the same table as runc's.
MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    "acl": (True, MS_POSIXACL),
    "async": (False, MS_SYNCHRONOUS),
    "atime": (False, MS_NOATIME),
    "bind": (True, MS_BIND),
    "defaults": (True, 0),
    "dev": (False, MS_NODEV),
    "diratime": (False, MS_NODIRATIME),
    "dirsync": (True, MS_DIRSYNC),
    "exec": (False, MS_NOEXEC),
    "iversion": (True, MS_I_VERSION),
    "lazytime": (True, MS_LAZYTIME),
    "loud": (False, MS_SILENT),
    "mand": (True, MS_MANDLOCK),
    "noacl": (False, MS_POSIXACL),
    "noatime": (True, MS_NOATIME),
    "nodev": (True, MS_NODEV),
    "nodiratime": (True, MS_NODIRATIME),
    "noexec": (True, MS_NOEXEC),
    "noiversion": (False, MS_I_VERSION),
    "nolazytime": (False, MS_LAZYTIME),
    "nomand": (False, MS_MANDLOCK),
    "norelatime": (False, MS_RELATIME),
    "nostrictatime": (False, MS_STRICTATIME),
    "nosuid": (True, MS_NOSUID),
    "nosymfollow": (True, MS_NOSYMFOLLOW),
    "rbind": (True, MS_BIND | MS_REC),
    "relatime": (True, MS_RELATIME),
    "remount": (True, MS_REMOUNT),
    "ro": (True, MS_RDONLY),
    "rw": (False, MS_RDONLY),
    "silent": (True, MS_SILENT),
    "strictatime": (True, MS_STRICTATIME),
    "suid": (False, MS_NOSUID),
    "symfollow": (False, MS_NOSYMFOLLOW),
    "sync": (True, MS_SYNCHRONOUS),
}

# Each is applied by its own mount(2) call, in order: the kernel takes one type per call.
PROPAGATION_FLAGS: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

# Recursive options, applied with mount_setattr(AT_RECURSIVE): option -> (set, MOUNT_ATTR_*).
RECURSIVE_MOUNT_ATTRS: dict[str, tuple[bool, int]] = {
    "rro": (True, MOUNT_ATTR_RDONLY),
    "rrw": (False, MOUNT_ATTR_RDONLY),
    "rnosuid": (True, MOUNT_ATTR_NOSUID),
    "rsuid": (False, MOUNT_ATTR_NOSUID),
    "rnodev": (True, MOUNT_ATTR_NODEV),
    "rdev": (False, MOUNT_ATTR_NODEV),
    "rnoexec": (True, MOUNT_ATTR_NOEXEC),
    "rexec": (False, MOUNT_ATTR_NOEXEC),
    "rnodiratime": (True, MOUNT_ATTR_NODIRATIME),
    "rdiratime": (False, MOUNT_ATTR_NODIRATIME),
    "rrelatime": (True, MOUNT_ATTR_RELATIME),
    "rnorelatime": (False, MOUNT_ATTR_RELATIME),
    "rnoatime": (True, MOUNT_ATTR_NOATIME),
    "ratime": (False, MOUNT_ATTR_NOATIME),
    "rstrictatime": (True, MOUNT_ATTR_STRICTATIME),
    "rnostrictatime": (False, MOUNT_ATTR_STRICTATIME),
    "rnosymfollow": (True, MOUNT_ATTR_NOSYMFOLLOW),
    "rsymfollow": (False, MOUNT_ATTR_NOSYMFOLLOW),
}

# Mount options that ask for something minirun does not do yet (runc/crun extensions).
UNSUPPORTED_MOUNT_OPTIONS = frozenset({"idmap", "ridmap"})

# runc's extension: fill a tmpfs with what the directory beneath it held (minirun.copyup).
TMPCOPYUP = "tmpcopyup"

ROOTFS_PROPAGATIONS = frozenset(PROPAGATION_FLAGS)

# Keys the runtime-spec defines in "process" and "linux" (up to 1.3). Keys outside these
# sets are reported by unsupported(): they may change isolation and we cannot tell how.
SPEC_PROCESS_KEYS = frozenset(
    {
        "terminal",
        "consoleSize",
        "user",
        "args",
        "commandLine",
        "env",
        "cwd",
        "capabilities",
        "rlimits",
        "noNewPrivileges",
        "apparmorProfile",
        "oomScoreAdj",
        "scheduler",
        "selinuxLabel",
        "ioPriority",
        "execCPUAffinity",
    }
)
SPEC_LINUX_KEYS = frozenset(
    {
        "uidMappings",
        "gidMappings",
        "sysctl",
        "resources",
        "cgroupsPath",
        "namespaces",
        "devices",
        "netDevices",
        "seccomp",
        "rootfsPropagation",
        "maskedPaths",
        "readonlyPaths",
        "mountLabel",
        "intelRdt",
        "personality",
        "timeOffsets",
        "memoryPolicy",
    }
)

# Fields of the spec that minirun does not implement yet; the runtime refuses a config
# that sets any of them. Remove an entry when its feature lands.
UNSUPPORTED: tuple[str, ...] = (
    "process.apparmorProfile",
    "process.selinuxLabel",
    "process.ioPriority",
    "process.scheduler",
    "process.execCPUAffinity",
    "linux.intelRdt",
    "linux.timeOffsets",
    "linux.mountLabel",
    "linux.netDevices",
    "linux.memoryPolicy",
    "linux.resources.rdma",
    "mounts[].uidMappings",
    "mounts[].gidMappings",
)


# ---------------------------------------------------------------------------------------
# loading


def load_config(bundle: str, warn: bool = True) -> dict:
    """Read and validate ``<bundle>/config.json``; with ``warn``, say so on stderr (and
    in the --log file) when its ociVersion is newer than minirun knows."""
    path = os.path.join(bundle, CONFIG_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NotFound(f"config.json not found in bundle {bundle}") from None
    except IsADirectoryError:
        raise InvalidSpec(f"config.json: {path} is a directory") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidSpec(f"config.json: not valid utf-8 at byte {e.start}") from None
    try:
        cfg = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:  # json.JSONDecodeError
        raise InvalidSpec(
            f"config.json: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    validate(cfg)
    if warn:
        message = newer_version_warning(cfg)
        if message:
            from minirun.runlog import warn as log_warning

            log_warning(message)
    return cfg


def _refuse_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; Go's (so runc's) does not.
    raise InvalidSpec(f"config.json: invalid JSON: {name} is not a JSON value")


# ---------------------------------------------------------------------------------------
# shape checkers: each takes (value, json path) and raises InvalidSpec


def _fail(path: str, message: str) -> None:
    raise InvalidSpec(f"config.json: {path}: {message}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _expected(path: str, what: str, value: object) -> None:
    _fail(path, f"expected {what}, got {_json_type(value)}")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _map_key(path: str, key: str) -> str:
    return f"{path}[{json.dumps(key)}]"


def _check_str(value: object, path: str) -> None:
    if not isinstance(value, str):
        _expected(path, "a string", value)


def _check_bool(value: object, path: str) -> None:
    if not isinstance(value, bool):
        _expected(path, "a boolean", value)


def _int_range(low: int, high: int):
    def check(value: object, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            _expected(path, "an integer", value)
        if not low <= value <= high:
            _fail(path, f"{value} is out of range ({low} to {high})")

    return check


_U16 = _int_range(0, 2**16 - 1)
_U32 = _int_range(0, 2**32 - 1)
_U64 = _int_range(0, 2**64 - 1)
_I32 = _int_range(-(2**31), 2**31 - 1)
_I64 = _int_range(-(2**63), 2**63 - 1)


def _check_abs_path(value: object, path: str) -> None:
    _check_str(value, path)
    if not value.startswith("/"):
        _fail(path, f"{json.dumps(value)} is not an absolute path")


def _list_of(check_item):
    def check(value: object, path: str) -> None:
        if not isinstance(value, list):
            _expected(path, "an array", value)
        for i, item in enumerate(value):
            check_item(item, f"{path}[{i}]")

    return check


def _map_of(check_value):
    def check(value: object, path: str) -> None:
        if not isinstance(value, dict):
            _expected(path, "an object", value)
        for k, v in value.items():
            check_value(v, _map_key(path, k))

    return check


def _check_object(value: object, path: str) -> dict:
    if not isinstance(value, dict):
        _expected(path, "an object", value)
    return value


def _fields(fields: dict, required: tuple = ()):
    """A checker for an object: ``fields`` maps key -> checker; null means absent."""

    def check(value: object, path: str) -> None:
        _check_object(value, path)
        json.fold_keys(value, fields)
        for key in required:
            if value.get(key) is None:
                _fail(_key(path, key), "required field is missing")
        for key, check_field in fields.items():
            field = value.get(key)
            if field is not None:
                check_field(field, _key(path, key))

    return check


def _one_of(names, what: str):
    def check(value: object, path: str) -> None:
        _check_str(value, path)
        if value not in names:
            _fail(path, f"unknown {what} {json.dumps(value)}")

    return check


_STRINGS = _list_of(_check_str)
_ABS_PATHS = _list_of(_check_abs_path)
_STRING_MAP = _map_of(_check_str)

_ID_MAPPINGS = _list_of(
    _fields(
        {"containerID": _U32, "hostID": _U32, "size": _U32},
        required=("containerID", "hostID", "size"),
    )
)


# ---------------------------------------------------------------------------------------
# validation


def validate(cfg: dict) -> None:
    """Check the structure of a config against the runtime-spec; raise InvalidSpec."""
    if not isinstance(cfg, dict):
        raise InvalidSpec(
            f"config.json: expected an object at the top level, got {_json_type(cfg)}"
        )
    json.fold_keys(cfg, TOP_LEVEL_KEYS)
    _check_oci_version(cfg.get("ociVersion"))
    _check_root(cfg.get("root"))
    _check_process(cfg.get("process"))
    for key in ("hostname", "domainname"):
        if cfg.get(key) is not None:
            _check_str(cfg[key], key)
    if cfg.get("mounts") is not None:
        _check_mounts(cfg["mounts"])
    if cfg.get("hooks") is not None:
        _check_hooks(cfg["hooks"])
    if cfg.get("annotations") is not None:
        _check_annotations(cfg["annotations"])
    linux = cfg.get("linux")
    if linux is not None:
        _check_linux(linux)
    _check_namespace_consistency(cfg)


def _check_oci_version(version: object) -> None:
    if version is None:
        _fail("ociVersion", "required field is missing")
    _check_str(version, "ociVersion")
    parsed = _parse_version(version)
    if parsed is None:
        _fail("ociVersion", f"{json.dumps(version)} is not a version like 1.2.0")
    if parsed[0] != 1:
        _fail("ociVersion", f"unsupported version {json.dumps(version)} (minirun reads 1.x)")


def newer_version_warning(cfg: dict) -> str | None:
    """A warning for a (valid) config whose ociVersion is a 1.x minor newer than minirun
    knows: its new fields are refused as unknown keys, the rest still reads as before."""
    parsed = _parse_version(cfg["ociVersion"])
    if parsed is not None and parsed > _parse_version(OCI_VERSION_MAX):
        return (f"config.json: ociVersion {cfg['ociVersion']} is newer than minirun knows "
                f"({OCI_VERSION_MAX}); fields it does not know are refused")
    return None


def _check_root(root: object) -> None:
    if root is None:
        _fail("root", "required field is missing")
    _fields({"path": _check_str, "readonly": _check_bool}, required=("path",))(root, "root")
    if root["path"] == "":
        _fail("root.path", "must not be empty")


def _check_env(value: object, path: str) -> None:
    _check_str(value, path)
    name, sep, _ = value.partition("=")
    if not sep or not name:
        _fail(path, f"{json.dumps(value)} is not of the form NAME=VALUE")
    if "\0" in value:
        _fail(path, "contains a nul byte")


def _check_args(value: object, path: str) -> None:
    _STRINGS(value, path)
    if not value:
        _fail(path, "must not be empty")
    if value[0] == "":
        _fail(f"{path}[0]", "must not be empty")
    for i, arg in enumerate(value):
        if "\0" in arg:
            _fail(f"{path}[{i}]", "contains a nul byte")


def _check_rlimits(value: object, path: str) -> None:
    _list_of(
        _fields(
            {"type": _one_of(RLIMIT_TYPES, "rlimit type"), "hard": _U64, "soft": _U64},
            required=("type", "hard", "soft"),
        )
    )(value, path)
    seen = set()
    for i, rlimit in enumerate(value):
        if rlimit["type"] in seen:
            _fail(f"{path}[{i}].type", f"duplicate rlimit {json.dumps(rlimit['type'])}")
        seen.add(rlimit["type"])
        if rlimit["soft"] > rlimit["hard"]:
            _fail(
                f"{path}[{i}]", f"soft limit {rlimit['soft']} exceeds hard limit {rlimit['hard']}"
            )


# Capability names are checked only for type: runc 1.1 warns about unknown names and
# ignores them, so we do the same (see unknown_capabilities()).
_check_capabilities = _fields({name: _STRINGS for name in CAPABILITY_SETS})

_check_process_fields = _fields(
    {
        "terminal": _check_bool,
        "consoleSize": _fields({"height": _U32, "width": _U32}, required=("height", "width")),
        "user": _fields(
            {
                "uid": _U32,
                "gid": _U32,
                "umask": _U32,
                "additionalGids": _list_of(_U32),
                "username": _check_str,
            },
            required=("uid", "gid"),
        ),
        "args": _check_args,
        "commandLine": _check_str,
        "env": _list_of(_check_env),
        "cwd": _check_abs_path,
        "capabilities": _check_capabilities,
        "rlimits": _check_rlimits,
        "noNewPrivileges": _check_bool,
        "apparmorProfile": _check_str,
        "oomScoreAdj": _int_range(-1000, 1000),
        "scheduler": _fields(
            {
                "policy": _check_str,
                "nice": _I32,
                "priority": _I32,
                "flags": _STRINGS,
                "runtime": _U64,
                "deadline": _U64,
                "period": _U64,
            },
            required=("policy",),
        ),
        "selinuxLabel": _check_str,
        "ioPriority": _fields(
            {
                "class": _one_of(
                    ("IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"), "io priority class"
                ),
                "priority": _I32,
            },
            required=("class",),
        ),
        "execCPUAffinity": _fields({"initial": _check_str, "final": _check_str}),
    },
    # runc needs a process to create or run a container; the spec requires user and cwd.
    required=("args", "cwd", "user"),
)


def _check_process(process: object) -> None:
    if process is None:
        _fail("process", "required field is missing")
    _check_process_fields(process, "process")


def _check_mounts(mounts: object) -> None:
    _list_of(
        _fields(
            {
                "destination": _check_abs_path,
                "type": _check_str,
                "source": _check_str,
                "options": _STRINGS,
                "uidMappings": _ID_MAPPINGS,
                "gidMappings": _ID_MAPPINGS,
            },
            required=("destination",),
        )
    )(mounts, "mounts")


def _check_hook_timeout(value: object, path: str) -> None:
    _I64(value, path)
    if value <= 0:
        _fail(path, f"timeout must be greater than zero, got {value}")


_check_hook_list = _list_of(
    _fields(
        {
            "path": _check_abs_path,
            "args": _STRINGS,
            "env": _list_of(_check_env),
            "timeout": _check_hook_timeout,
        },
        required=("path",),
    )
)


def _check_hooks(hooks: object) -> None:
    _check_object(hooks, "hooks")
    json.fold_keys(hooks, HOOK_NAMES)
    for name, entries in hooks.items():
        if entries is not None:
            _check_hook_list(entries, _key("hooks", name))


def _check_annotations(annotations: object) -> None:
    _STRING_MAP(annotations, "annotations")
    if "" in annotations:
        _fail("annotations", "keys must not be empty")


def _check_namespaces(value: object, path: str) -> None:
    _list_of(
        _fields(
            {"type": _one_of(NAMESPACE_TYPES, "namespace type"), "path": _check_abs_path},
            required=("type",),
        )
    )(value, path)
    seen = set()
    for i, ns in enumerate(value):
        if ns["type"] in seen:
            _fail(f"{path}[{i}].type", f"duplicate namespace type {json.dumps(ns['type'])}")
        seen.add(ns["type"])


def _check_device(value: object, path: str) -> None:
    _fields(
        {
            "path": _check_abs_path,
            "type": _one_of(("c", "b", "u", "p"), "device type"),
            "major": _I64,
            "minor": _I64,
            "fileMode": _U32,
            "uid": _U32,
            "gid": _U32,
        },
        required=("path", "type"),
    )(value, path)
    if value["type"] != "p":
        for key in ("major", "minor"):
            if value.get(key) is None:
                _fail(_key(path, key), f"required for device type {json.dumps(value['type'])}")


_check_device_cgroup = _fields(
    {"allow": _check_bool, "type": _check_str, "major": _I64, "minor": _I64, "access": _check_str},
    required=("allow",),
)
_check_blkio_device = _fields(
    {"major": _I64, "minor": _I64, "weight": _U16, "leafWeight": _U16},
    required=("major", "minor"),
)
_check_throttle_device = _fields(
    {"major": _I64, "minor": _I64, "rate": _U64}, required=("major", "minor", "rate")
)

# Structure only: which values the kernel accepts is the cgroup driver's business.
_check_resources = _fields(
    {
        "devices": _list_of(_check_device_cgroup),
        "memory": _fields(
            {
                "limit": _I64,
                "reservation": _I64,
                "swap": _I64,
                "kernel": _I64,
                "kernelTCP": _I64,
                "swappiness": _U64,
                "disableOOMKiller": _check_bool,
                "useHierarchy": _check_bool,
                "checkBeforeUpdate": _check_bool,
            }
        ),
        "cpu": _fields(
            {
                "shares": _U64,
                "quota": _I64,
                "burst": _U64,
                "period": _U64,
                "realtimeRuntime": _I64,
                "realtimePeriod": _U64,
                "cpus": _check_str,
                "mems": _check_str,
                "idle": _I64,
            }
        ),
        "pids": _fields({"limit": _I64}),
        "blockIO": _fields(
            {
                "weight": _U16,
                "leafWeight": _U16,
                "weightDevice": _list_of(_check_blkio_device),
                "throttleReadBpsDevice": _list_of(_check_throttle_device),
                "throttleWriteBpsDevice": _list_of(_check_throttle_device),
                "throttleReadIOPSDevice": _list_of(_check_throttle_device),
                "throttleWriteIOPSDevice": _list_of(_check_throttle_device),
            }
        ),
        "hugepageLimits": _list_of(
            _fields({"pageSize": _check_str, "limit": _U64}, required=("pageSize", "limit"))
        ),
        "network": _fields(
            {
                "classID": _U32,
                "priorities": _list_of(
                    _fields({"name": _check_str, "priority": _U32}, required=("name", "priority"))
                ),
            }
        ),
        "rdma": _map_of(_fields({"hcaHandles": _U32, "hcaObjects": _U32})),
        "unified": _STRING_MAP,
    }
)

_check_seccomp = _fields(
    {
        "defaultAction": _check_str,
        "defaultErrnoRet": _U32,
        "architectures": _STRINGS,
        "flags": _STRINGS,
        "listenerPath": _check_abs_path,
        "listenerMetadata": _check_str,
        "syscalls": _list_of(
            _fields(
                {
                    "names": _STRINGS,
                    "action": _check_str,
                    "errnoRet": _U32,
                    "args": _list_of(
                        _fields(
                            {"index": _U32, "value": _U64, "valueTwo": _U64, "op": _check_str},
                            required=("index", "value", "op"),
                        )
                    ),
                },
                required=("names", "action"),
            )
        ),
    },
    required=("defaultAction",),
)


def _check_rootfs_propagation(value: object, path: str) -> None:
    _check_str(value, path)
    # runc treats "" as "not set".
    if value and value not in ROOTFS_PROPAGATIONS:
        _fail(path, f"unknown propagation {json.dumps(value)}")


_check_linux_fields = _fields(
    {
        "namespaces": _check_namespaces,
        "uidMappings": _ID_MAPPINGS,
        "gidMappings": _ID_MAPPINGS,
        "sysctl": _STRING_MAP,
        "resources": _check_resources,
        "cgroupsPath": _check_str,
        "devices": _list_of(_check_device),
        "netDevices": _map_of(_fields({"name": _check_str})),
        "seccomp": _check_seccomp,
        "rootfsPropagation": _check_rootfs_propagation,
        "maskedPaths": _ABS_PATHS,
        "readonlyPaths": _ABS_PATHS,
        "mountLabel": _check_str,
        "intelRdt": _fields(
            {
                "closID": _check_str,
                "l3CacheSchema": _check_str,
                "memBwSchema": _check_str,
                "schemata": _STRINGS,
                "enableCMT": _check_bool,
                "enableMBM": _check_bool,
                "enableMonitoring": _check_bool,
            }
        ),
        "personality": _fields(
            {"domain": _one_of(("LINUX", "LINUX32"), "personality domain"), "flags": _STRINGS},
            required=("domain",),
        ),
        "timeOffsets": _map_of(_fields({"secs": _I64, "nanosecs": _U32})),
        "memoryPolicy": _check_object,
    }
)


def _check_linux(linux: object) -> None:
    _check_linux_fields(linux, "linux")
    offsets = linux.get("timeOffsets") or {}
    for clock in offsets:
        if clock not in ("boottime", "monotonic"):
            _fail(_map_key("linux.timeOffsets", clock), f"unknown clock {json.dumps(clock)}")


def _check_namespace_consistency(cfg: dict) -> None:
    # The same cross-checks runc makes at create, so the error comes before any fork.
    linux = cfg.get("linux") or {}
    namespaces = {ns["type"]: ns for ns in linux.get("namespaces") or ()}
    if cfg.get("hostname") and "uts" not in namespaces:
        _fail("hostname", "setting a hostname requires a uts namespace")
    if cfg.get("domainname") and "uts" not in namespaces:
        _fail("domainname", "setting a domainname requires a uts namespace")
    has_mappings = linux.get("uidMappings") is not None or linux.get("gidMappings") is not None
    if "user" in namespaces:
        if not namespaces["user"].get("path") and not has_mappings:
            _fail("linux.namespaces", "a new user namespace needs uidMappings and gidMappings")
    elif has_mappings:
        _fail("linux.uidMappings", "id mappings need a user namespace")


# ---------------------------------------------------------------------------------------
# what minirun does not implement


def _is_set(value: object) -> bool:
    # An empty profile, label or object asks for nothing, so it is not a request to refuse.
    return value not in (None, "", {}, [])


def _extension_key(key: str) -> bool:
    return key.startswith("x-")


def unsupported(cfg: dict) -> list[str]:
    """JSON paths of the fields in a (validated) config that minirun does not implement.

    The runtime refuses such a config rather than run a container that is less isolated
    than asked: the fields in UNSUPPORTED, hooks beyond the six known ones, keys in
    "process" or "linux" the spec does not define (except "x-" extension keys), and mount
    options minirun cannot honour.
    """
    found = []
    sections = {"process": cfg.get("process") or {}, "linux": cfg.get("linux") or {}}
    mounts = cfg.get("mounts") or []
    for field in UNSUPPORTED:
        head, _, rest = field.partition(".")
        if head == "mounts[]":
            for i, mount in enumerate(mounts):
                if _is_set(mount.get(rest)):
                    found.append(f"mounts[{i}].{rest}")
            continue
        value = sections.get(head, {})
        for part in rest.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if _is_set(value):
            found.append(field)
    for section, known in (("process", SPEC_PROCESS_KEYS), ("linux", SPEC_LINUX_KEYS)):
        for key, value in sections[section].items():
            if key not in known and not _extension_key(key) and value is not None:
                found.append(f"{section}.{key}")
    for name, entries in (cfg.get("hooks") or {}).items():
        if name not in HOOK_NAMES and _is_set(entries):
            found.append(_key("hooks", name))
    for i, mount in enumerate(mounts):
        for j, option in enumerate(mount.get("options") or ()):
            if option in UNSUPPORTED_MOUNT_OPTIONS:
                found.append(f"mounts[{i}].options[{j}] {json.dumps(option)}")
    return found


def unknown_capabilities(cfg: dict, last_cap: int | None = None) -> list[str]:
    """Capability names in process.capabilities that are unknown or above ``last_cap``.

    runc 1.1 does not fail on these: it logs a warning
    ``ignoring unknown or unavailable capabilities: [NAME ...]`` and leaves them out.
    The runtime does the same with this list (sorted, each name once).
    """
    caps = (cfg.get("process") or {}).get("capabilities") or {}
    unknown = set()
    for name in CAPABILITY_SETS:
        for cap in caps.get(name) or ():
            number = CAPABILITIES.get(cap)
            if number is None or (last_cap is not None and number > last_cap):
                unknown.add(cap)
    return sorted(unknown)


# ---------------------------------------------------------------------------------------
# mount options


def parse_mount_options(options: list[str]) -> tuple[int, list[int], str, dict]:
    """Split OCI mount options the way runc does.

    Returns ``(flags, propagation_flags, data, extra)``: the MS_* flags for mount(2), the
    propagation changes to apply one by one after it, the comma-joined filesystem data
    (options that are not flags, such as ``mode=755``), and ``extra``:
    ``{"bind": bool, "recursive_bind": bool, "attr_set": int, "attr_clr": int,
    "copyup": bool, "unsupported": [option, ...]}`` where attr_set/attr_clr are MOUNT_ATTR_* for
    mount_setattr(AT_RECURSIVE) from the "r*" options. Later options win over earlier ones.
    """
    flags = 0
    propagation = []
    data = []
    extra = {
        "bind": False,
        "recursive_bind": False,
        "attr_set": 0,
        "attr_clr": 0,
        "copyup": False,
        "unsupported": [],
    }
    for option in options:
        if option in MOUNT_FLAGS:
            sets, flag = MOUNT_FLAGS[option]
            if sets:
                flags |= flag
            else:
                flags &= ~flag
            if option == "bind":
                extra["bind"] = True
            elif option == "rbind":
                extra["bind"] = extra["recursive_bind"] = True
        elif option in PROPAGATION_FLAGS:
            propagation.append(PROPAGATION_FLAGS[option])
        elif option in RECURSIVE_MOUNT_ATTRS:
            sets, attr = RECURSIVE_MOUNT_ATTRS[option]
            if sets:
                extra["attr_set"] |= attr
                extra["attr_clr"] &= ~attr
                # mount_setattr(2): an access-time mode in attr_set needs MOUNT_ATTR__ATIME
                # in attr_clr, and MOUNT_ATTR_RELATIME is 0.
                if attr & MOUNT_ATTR__ATIME == attr:
                    extra["attr_clr"] |= MOUNT_ATTR__ATIME
            else:
                extra["attr_clr"] |= attr
                extra["attr_set"] &= ~attr
        elif option == TMPCOPYUP:
            extra["copyup"] = True
        elif option in UNSUPPORTED_MOUNT_OPTIONS:
            extra["unsupported"].append(option)
        else:
            data.append(option)
    return flags, propagation, ",".join(data), extra


# ---------------------------------------------------------------------------------------
# defaults and features


_DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

_MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]

_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_spec(rootless: bool = False) -> dict:
    """The config that ``runc spec`` (``runc spec --rootless``) of runc 1.1.5 writes.

    Keys are in runc's order so that json.dumps of it matches runc's file byte for byte.
    The rootless variant maps the caller's effective uid and gid to root, as runc does.
    """
    devpts_options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not rootless:
        devpts_options.append("gid=5")
    if rootless:
        sys_mount = {
            "destination": "/sys",
            "type": "none",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        }
    else:
        sys_mount = {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        }
    linux: dict = {}
    if rootless:
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        linux["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")]
    else:
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
        linux["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    linux["maskedPaths"] = list(_MASKED_PATHS)
    linux["readonlyPaths"] = list(_READONLY_PATHS)
    return {
        "ociVersion": RUNC_SPEC_OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {
                name: list(_DEFAULT_CAPS)
                for name in ("bounding", "effective", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": devpts_options,
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            sys_mount,
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": linux,
    }


def dumps_spec(cfg: dict) -> str:
    """Serialise a config the way runc does (tab indent, no trailing newline)."""
    import json as json_module

    return json_module.dumps(cfg, indent="\t", ensure_ascii=False)


def write_default_spec(bundle: str, rootless: bool = False) -> str:
    """Write the default config.json into ``bundle``, as ``runc spec`` does; return its path."""
    path = os.path.join(bundle, CONFIG_NAME)
    data = dumps_spec(default_spec(rootless)).encode()
    try:
        # O_EXCL: never overwrite a config someone wrote between a check and the write.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        raise AlreadyExists("File config.json exists. Remove it first") from None
    except FileNotFoundError:
        raise NotFound(f"bundle directory {bundle} not found") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _seccomp_features() -> dict:
    # Imported here: features is not on the start path, and only this asks libseccomp.
    from minirun import seccomp

    return {
        "enabled": seccomp.libseccomp_version() is not None,
        # SCMP_ACT_NOTIFY only where the kernel and libseccomp can deliver it
        "actions": sorted(a for a in seccomp.ACTIONS
                          if a != "SCMP_ACT_NOTIFY" or seccomp.notify_supported()),
        "operators": sorted(seccomp.OPERATORS),
        "archs": sorted(seccomp.ARCHITECTURES),
        "knownFlags": list(seccomp.FLAGS),
        "supportedFlags": seccomp.supported_flags(),
    }


def features() -> dict:
    """The runtime-spec features document (``minirun-oci features``)."""
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": list(HOOK_NAMES),
        "mountOptions": sorted(
            {*MOUNT_FLAGS, *PROPAGATION_FLAGS, *RECURSIVE_MOUNT_ATTRS, TMPCOPYUP}
        ),
        "linux": {
            "namespaces": sorted(NAMESPACE_TYPES),
            "capabilities": list(CAPABILITIES),
            "cgroup": {
                "v1": True,
                "v2": True,
                "systemd": False,
                "systemdUser": False,
                "rdma": False,
            },
            "seccomp": _seccomp_features(),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": _feature_annotations(),
    }


def _feature_annotations() -> dict:
    from minirun import seccomp

    out = {"io.github.minirun.version": __version__}
    version = seccomp.libseccomp_version()
    if version:
        out["io.github.seccomp.libseccomp.version"] = version  # runc's key
    return out
