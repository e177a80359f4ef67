"""Namespaces: OCI names to clone flags, joining by path, and uid/gid maps."""

from __future__ import annotations

import errno
import os

from . import sys as _sys
from .errors import InvalidSpec, NotFound

# OCI namespace type -> (clone flag, name under /proc/<pid>/ns)
NAMESPACES = {
    "pid": (_sys.CLONE_NEWPID, "pid"),
    "network": (_sys.CLONE_NEWNET, "net"),
    "mount": (_sys.CLONE_NEWNS, "mnt"),
    "ipc": (_sys.CLONE_NEWIPC, "ipc"),
    "uts": (_sys.CLONE_NEWUTS, "uts"),
    "user": (_sys.CLONE_NEWUSER, "user"),
    "cgroup": (_sys.CLONE_NEWCGROUP, "cgroup"),
    "time": (_sys.CLONE_NEWTIME, "time"),
}

# setns order: the user namespace first (it owns the others), mount last so that the
# other /proc/.../ns paths are still reachable while we join.
JOIN_ORDER = ["user", "pid", "network", "ipc", "uts", "cgroup", "time", "mount"]


class NamespacePlan:
    """What the container's first child must do: namespaces to join, flags to unshare."""

    def __init__(self, namespaces: list[dict]) -> None:
        self.join: list[tuple[str, int]] = []  # (type, fd), in JOIN_ORDER
        self.new_flags = 0
        self.types = set()
        fds = {}
        try:
            for ns in namespaces:
                kind = ns["type"]
                if kind not in NAMESPACES:
                    raise InvalidSpec(f"unknown namespace type {kind!r}")
                self.types.add(kind)
                path = ns.get("path")
                if path:
                    try:
                        fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        raise NotFound(f"{kind} namespace path {path} does not exist") from None
                    except OSError as e:
                        raise InvalidSpec(f"cannot open {kind} namespace {path}: {e.strerror}") from None
                else:
                    self.new_flags |= NAMESPACES[kind][0]
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        self.join = [(k, fds[k]) for k in JOIN_ORDER if k in fds]

    @property
    def new_user(self) -> bool:
        return bool(self.new_flags & _sys.CLONE_NEWUSER)

    def has(self, kind: str) -> bool:
        return kind in self.types

    def close(self) -> None:
        for _, fd in self.join:
            try:
                os.close(fd)
            except OSError:
                pass
        self.join = []

    def join_all(self) -> None:
        try:
            join_namespaces(self.join)
        finally:
            for _, fd in self.join:
                os.close(fd)
            self.join = []


def join_namespaces(ns_fds: list[tuple[str, int]], label: str = "") -> None:
    """setns in two passes, as runc does: a namespace the user namespace being joined does
    not own (a netns made before the container, as the engine makes them) can only be
    joined before entering that user namespace; one it owns, by an unprivileged caller,
    only after. The mount namespace goes last (its root changes our /proc)."""
    def join(kind: str, fd: int) -> None:
        _sys.setns(fd, NAMESPACES[kind][0], label=f"{kind} namespace{label}")

    if not any(kind == "user" for kind, _ in ns_fds):
        for kind, fd in ns_fds:
            join(kind, fd)
        return
    later = []
    for kind, fd in ns_fds:
        if kind in ("user", "mount"):
            continue
        try:
            join(kind, fd)
        except _sys.SysError as e:
            if e.errno != errno.EPERM:
                raise
            later.append((kind, fd))
    for kind, fd in ns_fds:
        if kind == "user":
            join(kind, fd)
    for kind, fd in later + [(k, f) for k, f in ns_fds if k == "mount"]:
        join(kind, fd)


def format_id_map(mappings: list[dict]) -> str:
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)


def write_id_maps(pid: int, uid_maps: list[dict], gid_maps: list[dict]) -> None:
    """Write uid/gid maps of a child that has just unshared its user namespace.

    Root writes them directly. An unprivileged caller can map only its own ids, after
    writing "deny" to setgroups; with several ranges it needs newuidmap/newgidmap.
    """
    rootless = os.geteuid() != 0
    if rootless and (len(uid_maps) > 1 or len(gid_maps) > 1 or
                     any(m["size"] > 1 for m in uid_maps + gid_maps)):
        _run_helper_map("newuidmap", pid, uid_maps)
        _run_helper_map("newgidmap", pid, gid_maps)
        return
    if rootless:
        _write(f"/proc/{pid}/setgroups", "deny")
    if uid_maps:
        _write(f"/proc/{pid}/uid_map", format_id_map(uid_maps))
    if gid_maps:
        _write(f"/proc/{pid}/gid_map", format_id_map(gid_maps))


def _write(path: str, data: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(data)
    except OSError as e:
        raise _sys.SysError("write", path, e.errno or 0) from None


def _run_helper_map(tool: str, pid: int, mappings: list[dict]) -> None:
    import shutil
    import subprocess

    exe = shutil.which(tool)
    if not exe:
        raise InvalidSpec(f"mapping more than one id without root needs {tool} (package uidmap)")
    args = [exe, str(pid)]
    for m in mappings:
        args += [str(m["containerID"]), str(m["hostID"]), str(m["size"])]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InvalidSpec(f"{tool} failed: {proc.stderr.strip() or proc.returncode}")
