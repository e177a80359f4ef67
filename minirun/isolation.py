"""What isolates one running process (a container's pid 1), read from the kernel, not from
minirun's records: /proc/<pid>/ns/*, status, uid_map, mountinfo, and the cgroup files.
Used by `minirun inspect --isolation` and the limits lab (minirun.demo)."""

from __future__ import annotations

import os

NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
SOCKETS = ("docker.sock", "minirun.sock", "containerd.sock", "crio.sock", "podman.sock")
# filesystems that are not a host directory: a rw mount of one of them gives nothing away
PSEUDO_FS = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay",
             "shm", "devtmpfs", "binfmt_misc", "fusectl", "securityfs", "debugfs",
             "tracefs", "pstore", "bpf", "configfs", "hugetlbfs", "nsfs"}


class CgroupNotFound(Exception):
    """The process has no cgroup holding that controller on this host."""


def cgroup_dir(pid: int, controller: str = "pids") -> str:
    """The directory of a process's cgroup that holds `controller`'s files: the v1
    hierarchy with it if there is one (hybrid hosts), else the v2 one."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for hid, ctrls, path in lines:
        if hid != "0" and controller in ctrls.split(","):
            for m in mounts:
                sep = m.index("-")
                if m[sep + 1] == "cgroup" and controller in m[sep + 3].split(","):
                    return _under(m[4], m[3], path)
    for hid, _, path in lines:
        if hid == "0":
            for m in mounts:
                if m[m.index("-") + 1] == "cgroup2":
                    directory = _under(m[4], m[3], path)
                    if controller == "pids" or _has_controller(directory, controller):
                        return directory
    raise CgroupNotFound(f"no {controller} cgroup for pid {pid} on this host")


def _under(mount_point: str, mount_root: str, path: str) -> str:
    rel = path[len(mount_root):] if mount_root != "/" and path.startswith(mount_root) else path
    return mount_point.rstrip("/") + rel


def _has_controller(directory: str, controller: str) -> bool:
    try:
        with open(os.path.join(directory, "cgroup.controllers")) as f:
            return controller in f.read().split()
    except OSError:
        return False


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _ns(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def cap_names(mask_hex: str) -> list[str]:
    from .spec import CAPABILITIES

    mask = int(mask_hex, 16)
    return [name for name, num in sorted(CAPABILITIES.items(), key=lambda kv: kv[1])
            if mask & (1 << num)]


def _cap_count() -> int:
    """How many capabilities this kernel has."""
    try:
        return int(_read("/proc/sys/kernel/cap_last_cap") or "40") + 1
    except ValueError:
        return 41


def limits(pid: int) -> dict:
    """memory (bytes or "max"), pids ("max" or a number), cpu (CPUs or "max"), from the
    cgroup files; None for a controller this host does not give the process."""
    out: dict = {}
    try:
        d = cgroup_dir(pid, "memory")
        v = _read(os.path.join(d, "memory.max")) or _read(os.path.join(d, "memory.limit_in_bytes"))
        out["memory"] = "max" if v is None or v == "max" or int(v) >= 1 << 62 else int(v)
    except (CgroupNotFound, OSError, ValueError):
        out["memory"] = None
    try:
        v = _read(os.path.join(cgroup_dir(pid, "pids"), "pids.max"))
        out["pids"] = v if v in (None, "max") else int(v)
    except (CgroupNotFound, OSError, ValueError):
        out["pids"] = None
    try:
        d = cgroup_dir(pid, "cpu")
        v2 = _read(os.path.join(d, "cpu.max"))
        if v2 is not None:
            quota, period = v2.split()
        else:
            quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
            period = _read(os.path.join(d, "cpu.cfs_period_us"))
        out["cpu"] = "max" if quota in ("max", "-1", None) else round(int(quota) / int(period), 3)
    except (CgroupNotFound, OSError, ValueError):
        out["cpu"] = None
    return out


def report(pid: int, others: dict[str, int] | None = None, own_files: str = "") -> dict:
    """What isolates process `pid`. `others`: name -> pid of other containers, to say which
    namespaces are shared with which; "host" means the caller's own namespace. Mounts of
    files under `own_files` (the runtime's /etc/hosts and the like) are not listed."""
    namespaces = {}
    for kind in NAMESPACES:
        mine = _ns(pid, kind)
        if mine is None:
            continue
        if mine == _ns("self", kind):
            namespaces[kind] = "host"
        else:
            shared = sorted(n for n, p in (others or {}).items()
                            if p != pid and _ns(p, kind) == mine)
            namespaces[kind] = f"shared with {', '.join(shared)}" if shared else "private"
    status = _status(pid)
    caps = {"effective": cap_names(status.get("CapEff", "0")),
            "bounding": cap_names(status.get("CapBnd", "0")),
            "ambient": cap_names(status.get("CapAmb", "0"))}
    seccomp_mode = {"0": "disabled", "1": "strict", "2": "filter"}.get(status.get("Seccomp", ""),
                                                                       "unknown")
    uid_map = (_read(f"/proc/{pid}/uid_map") or "").split()
    gid_map = (_read(f"/proc/{pid}/gid_map") or "").split()
    mounts, proc_sys_ro, sockets = [], None, []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            m = line.split()
            sep = m.index("-")
            point, root, fstype, opts = m[4], m[3], m[sep + 1], m[5].split(",")
            if point == "/proc/sys":
                proc_sys_ro = "ro" in opts
            if any(point.endswith(s) or root.endswith(s) for s in SOCKETS):
                sockets.append(point)
            if own_files and root.startswith(own_files):
                continue
            if point != "/" and "rw" in opts and fstype not in PSEUDO_FS:
                mounts.append({"destination": point, "source": root, "type": fstype})
    uids = status.get("Uid", "").split()
    host_root = uids[:1] == ["0"] and uid_map[:2] == ["0", "0"]
    risks = []
    if "CAP_SYS_ADMIN" in caps["effective"] and seccomp_mode == "disabled":
        risks.append(f"privileged: CAP_SYS_ADMIN and no seccomp filter "
                     f"({len(caps['effective'])} of {_cap_count()} capabilities)")
    if namespaces.get("net") == "host":
        risks.append("host network")
    if namespaces.get("pid") == "host":
        risks.append("host pid namespace")
    for s in sockets:
        risks.append(f"runtime socket mounted at {s}")
    if proc_sys_ro is not True:
        risks.append("/proc/sys writable")
    if host_root:
        risks.append("running as the host's root (no user namespace)")
    return {
        "pid": pid, "namespaces": namespaces, "capabilities": caps,
        "seccomp": {"mode": seccomp_mode, "filters": int(status.get("Seccomp_filters", "0") or 0)},
        "no_new_privs": status.get("NoNewPrivs") == "1",
        "user_namespace": {"uid_map": " ".join(uid_map), "gid_map": " ".join(gid_map)},
        "limits": limits(pid), "writable_host_mounts": mounts, "risks": risks,
    }


def format_report(name: str, r: dict) -> str:
    lines = [f"{name} (host pid {r['pid']})", "namespaces:"]
    lines += [f"  {k:<7} {v}" for k, v in r["namespaces"].items()]
    for k, v in r["capabilities"].items():
        lines.append(f"capabilities {k}: {' '.join(c.removeprefix('CAP_') for c in v) or 'none'}")
    s = r["seccomp"]
    lines.append(f"seccomp: {s['mode']}, {s['filters']} filter(s); "
                 f"no_new_privs: {'yes' if r['no_new_privs'] else 'no'}")
    lines.append(f"user namespace map: uid {r['user_namespace']['uid_map']}, "
                 f"gid {r['user_namespace']['gid_map']}")
    lim = r["limits"]
    lines.append("limits: " + ", ".join(f"{k} {'unknown' if v is None else v}"
                                        for k, v in lim.items()))
    lines.append("writable host mounts: " + (", ".join(
        f"{m['destination']} ({m['type']} {m['source']})" for m in r["writable_host_mounts"])
        or "none"))
    lines.append("risks: " + ("; ".join(r["risks"]) or "none found"))
    return "\n".join(lines)
