"""The container options the CLI and the CRI share beyond docker's everyday flags, checked
and turned into OCI config.json pieces: namespace modes, mounts with propagation,
devices, resources, rlimits, the cgroup parent. Pure functions of the options and the
host (stat, namespace ioctls); nothing here creates anything, so the engine checks every
value before it makes a record, a snapshot or a cgroup.
"""

from __future__ import annotations

import os
import stat

from .errors import InvalidArgument, InvalidSpec

# ioctl(2) on an nsfs file: which kind of namespace it is (linux/nsfs.h)
NS_GET_NSTYPE = 0xB703
NS_CLONE_FLAGS = {"network": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000,
                  "pid": 0x20000000}
PROC_NS_NAMES = {"network": "net", "ipc": "ipc", "uts": "uts", "pid": "pid"}
PROPAGATIONS = ("rprivate", "private", "rslave", "slave", "rshared", "shared")
# the engine's own files in /etc, which pod_files or a mount of the same destination replace
ETC_FILES = ("hostname", "hosts", "resolv.conf")
# docker's --ulimit names
ULIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue",
                "nice", "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


def namespace_path(kind: str, path: str, what: str) -> str:
    """`path` if it is a namespace file of `kind` (a /proc/PID/ns file or a pinned nsfs
    bind mount), else InvalidArgument naming it: joining the wrong kind would otherwise
    fail inside the runtime, after the container's snapshot and cgroup exist."""
    import fcntl

    if not os.path.isabs(path):
        raise InvalidArgument(f"{what} ns:{path}: the namespace path must be absolute")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(f"{what}: the namespace {path} does not exist") from None
    except OSError as e:
        raise InvalidArgument(f"{what}: cannot open the namespace {path}: {e.strerror}") \
            from None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        raise InvalidArgument(f"{what}: {path} is not a namespace") from None
    finally:
        os.close(fd)
    if nstype != NS_CLONE_FLAGS[kind]:
        raise InvalidArgument(f"{what}: {path} is not a {kind} namespace")
    return path


def split_ns_mode(kind: str, mode: str) -> tuple[str, str]:
    """A pid/ipc/uts mode as (how, what): ("", "") a new namespace, ("host", ""),
    ("ns", PATH) or ("container", NAME)."""
    what = {"pid": "--pid", "ipc": "--ipc", "uts": "--uts"}[kind]
    if not mode or mode == "private":
        return "", ""
    if mode == "host":
        return "host", ""
    if mode.startswith("ns:"):
        return "ns", namespace_path(kind, mode[3:], what)
    if mode.startswith("container:") and mode[len("container:"):]:
        return "container", mode[len("container:"):]
    raise InvalidArgument(f"invalid {what} mode {mode!r}: \"\", host, ns:PATH or "
                          "container:NAME")


def check_mounts(mounts: list) -> list[dict]:
    """OCI mount dicts as given, checked: an absolute destination, a source that exists
    for a bind, at most one propagation, and rprivate added to a bind that has none (a
    bind must not inherit the host's shared propagation by accident)."""
    out = []
    host_mounts = None
    for m in mounts or []:
        if not isinstance(m, dict):
            raise InvalidArgument(f"mount {m!r}: want a mount object (destination, type, "
                                  "source, options)")
        dest = m.get("destination") or ""
        if not isinstance(dest, str) or not os.path.isabs(dest):
            raise InvalidArgument(f"mount {dest!r}: the destination must be absolute")
        options = list(m.get("options") or [])
        if not all(isinstance(o, str) for o in options):
            raise InvalidArgument(f"mount {dest}: options must be strings")
        kind = m.get("type") or ("bind" if {"bind", "rbind"} & set(options) else "")
        if not kind:
            raise InvalidArgument(f"mount {dest}: no type")
        source = m.get("source") or ""
        props = [o for o in options if o in PROPAGATIONS]
        if len(props) > 1:
            raise InvalidArgument(f"mount {dest}: more than one propagation "
                                  f"({', '.join(props)})")
        if kind == "bind":
            if not os.path.isabs(source):
                raise InvalidArgument(f"mount {dest}: the bind source {source!r} must be "
                                      "absolute")
            if not os.path.exists(source):
                raise InvalidArgument(f"mount {dest}: the host path {source} does not exist")
            if not {"bind", "rbind"} & set(options):
                options.insert(0, "rbind")
            if not props:
                options.append("rprivate")
            elif props[0] not in ("rprivate", "private"):
                if host_mounts is None:
                    from . import mountinfo

                    host_mounts = mountinfo.read()
                check_source_propagation(dest, source, props[0], host_mounts)
        out.append({"destination": dest, "type": kind, "source": source or kind,
                    "options": options})
    return out


def check_source_propagation(dest: str, source: str, propagation: str, host_mounts) -> None:
    """As containerd: a slave mount receives nothing from a private host mount, a shared
    one exchanges nothing, so the host mount holding `source` must be shared (for
    rshared) or shared or a slave (for rslave); otherwise say which mount to change."""
    path = os.path.realpath(source)
    holder = None
    for m in host_mounts:  # the deepest mount point above the path; the last one wins
        point = m.mountpoint.rstrip("/") + "/"
        if (path + "/").startswith(point) and (
                holder is None or len(m.mountpoint) >= len(holder.mountpoint)):
            holder = m
    if holder is None:
        return
    shared = any(o.startswith("shared:") for o in holder.optional)
    slave = any(o.startswith("master:") for o in holder.optional)
    if propagation in ("rshared", "shared") and not shared:
        raise InvalidArgument(f"mount {dest}: {propagation} needs {source} on a shared "
                              f"mount, and {holder.mountpoint} is not (mount "
                              f"--make-rshared {holder.mountpoint})")
    if propagation in ("rslave", "slave") and not (shared or slave):
        raise InvalidArgument(f"mount {dest}: {propagation} needs {source} on a shared or "
                              f"slave mount, and {holder.mountpoint} is private (mount "
                              f"--make-rshared {holder.mountpoint})")


def rootfs_propagation(mounts: list[dict]) -> str | None:
    """As containerd: a shared mount needs the container's root mount shared too (its
    mounts then reach the host), a slave one needs it slave (the default here)."""
    options = {o for m in mounts for o in m["options"]}
    return "rshared" if {"rshared", "shared"} & options else None


def device_entries(devices: list) -> tuple[list[dict], list[dict]]:
    """[{"host", "container", "permissions"}] as (linux.devices, resources.devices
    allow rules), from the host nodes' type and numbers. A host directory (/dev/snd)
    gives every device node below it, at the same place under `container` (as
    containerd and docker do)."""
    nodes, rules = [], []
    for d in devices or []:
        if not isinstance(d, dict) or not d.get("host"):
            raise InvalidArgument(f"device {d!r}: want host, container and permissions")
        host = d["host"]
        container = d.get("container") or host
        perms = d.get("permissions") or "rwm"
        if not os.path.isabs(container):
            raise InvalidArgument(f"device {host}: the container path {container!r} must "
                                  "be absolute")
        if not perms or set(perms) - set("rwm"):
            raise InvalidArgument(f"device {host}: permissions {perms!r}: some of r, w, m")
        try:
            st = os.stat(host)
        except FileNotFoundError:
            raise InvalidArgument(f"device {host} does not exist on the host") from None
        except OSError as e:
            raise InvalidArgument(f"device {host}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            found = [(os.path.join(top, name), os.path.join(
                container, os.path.relpath(os.path.join(top, name), host)))
                for top, _, files in os.walk(host) for name in sorted(files)]
        else:
            found = [(host, container)]
        for path, inside in found:
            st = os.stat(path)
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            elif path == host:
                raise InvalidArgument(f"device {host} is not a device node")
            else:
                continue
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            nodes.append({"path": inside, "type": kind, "major": major, "minor": minor,
                          "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                          "gid": st.st_gid})
            rules.append({"allow": True, "type": kind, "major": major, "minor": minor,
                          "access": perms})
    return nodes, rules


def parse_ulimits(ulimits: list) -> list[dict]:
    """docker's --ulimit NAME=SOFT[:HARD] (-1: unlimited) or dicts {type, soft, hard} (type
    RLIMIT_NOFILE or nofile) as OCI process.rlimits."""
    out: dict[str, dict] = {}
    for u in ulimits or []:
        if isinstance(u, dict):
            name = str(u.get("type") or u.get("name") or "")
            soft, hard = u.get("soft"), u.get("hard", u.get("soft"))
        elif isinstance(u, str):
            name, eq, values = u.partition("=")
            if not eq:
                raise InvalidArgument(f"--ulimit {u!r}: want NAME=SOFT[:HARD]")
            soft, _, hard = values.partition(":")
            hard = hard or soft
        else:
            raise InvalidArgument(f"--ulimit {u!r}: want NAME=SOFT[:HARD] or an object")
        short = name.lower().removeprefix("rlimit_")
        if short not in ULIMIT_NAMES:
            raise InvalidArgument(f"--ulimit {name!r}: unknown ({', '.join(ULIMIT_NAMES)})")
        values = []
        for v in (soft, hard):
            try:
                n = int(v)
            except (TypeError, ValueError):
                raise InvalidArgument(f"--ulimit {u!r}: {v!r} is not a number") from None
            if n < -1:
                raise InvalidArgument(f"--ulimit {u!r}: {n} is negative")
            values.append(2 ** 64 - 1 if n == -1 else n)
        if values[0] > values[1]:
            raise InvalidArgument(f"--ulimit {u!r}: the soft limit exceeds the hard limit")
        out["RLIMIT_" + short.upper()] = {"type": "RLIMIT_" + short.upper(),
                                          "soft": values[0], "hard": values[1]}
    return list(out.values())


# RunOptions' resource fields -> (linux.resources section, key)
RESOURCE_FIELDS = {
    "cpu_shares": ("cpu", "shares"), "cpu_quota": ("cpu", "quota"),
    "cpu_period": ("cpu", "period"), "cpuset_cpus": ("cpu", "cpus"),
    "cpuset_mems": ("cpu", "mems"), "memory_bytes": ("memory", "limit"),
    "memory_swap": ("memory", "swap"), "pids_limit": ("pids", "limit"),
    "memory_reservation": ("memory", "reservation"),
}


def resources_doc(values: dict) -> dict:
    """OCI linux.resources from RunOptions-named values (cpu_shares, cpu_quota,
    cpu_period, cpuset_cpus, cpuset_mems, memory_bytes, memory_swap, pids_limit,
    hugepage_limits {page size: bytes}, unified {file: value}); a value that is None,
    "" or 0 is not set. Checked as config.json's are: InvalidArgument names the field."""
    doc: dict = {}
    for name, value in values.items():
        if name not in RESOURCE_FIELDS and name not in ("hugepage_limits", "unified"):
            raise InvalidArgument(f"unknown resource {name!r}")
        if value is None or value == "" or value == 0 or value == {}:
            continue
        if name == "hugepage_limits":
            doc["hugepageLimits"] = [{"pageSize": str(k), "limit": v}
                                     for k, v in dict(value).items()]
        elif name == "unified":
            for key in value:
                # a cgroup file of the container's own directory, never a path out of it
                if "/" in str(key) or "." not in str(key).strip("."):
                    raise InvalidArgument(f"unified: {key!r} is not a cgroup file name")
            doc["unified"] = {str(k): str(v) for k, v in dict(value).items()}
        else:
            section, key = RESOURCE_FIELDS[name]
            if isinstance(value, bool) or not isinstance(value, int if key not in (
                    "cpus", "mems") else str):
                raise InvalidArgument(f"{name}: invalid value {value!r}")
            doc.setdefault(section, {})[key] = value
    if not doc:
        return doc
    from .cgroups.convert import check_resources

    try:
        check_resources(doc)
    except InvalidSpec as e:
        raise InvalidArgument(str(e)) from None
    return doc


def cgroup_parent_path(parent: str) -> str:
    """The cgroup under which a container's own goes: absolute as given (kubelet's
    cgroupfs paths), relative under /minirun, empty: /minirun."""
    from .cgroups import resolve_path

    if not parent:
        return "/minirun"
    try:
        return resolve_path(parent, "")
    except InvalidArgument as e:
        raise InvalidArgument(f"--cgroup-parent: {e}") from None

