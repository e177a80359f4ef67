"""Named network namespaces, made in-process the way `ip netns add` makes them.

A container's netns is made before the container (podman does the same): the runtime joins
it by path (linux.namespaces[].path), so wiring it needs no step between create and start,
restarts keep their address, and `container:NAME` and CNI use the same path.
"""

from __future__ import annotations

import errno
import os

from .. import sys as _sys
from .netlink import Netlink

NETNS_DIR = "/run/netns"


def path_for(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def create(name: str) -> tuple[str, int, Netlink]:
    """A new netns bound at /run/netns/<name>: (path, an fd of it, a netlink socket in it,
    with lo already up). The caller closes the fd and the socket."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    path = path_for(name)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    inside = None
    try:
        _sys.unshare(_sys.CLONE_NEWNET)
        try:
            _sys.mount("/proc/thread-self/ns/net", path, None, _sys.MS_BIND)
            nsfd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            inside = Netlink()
        finally:
            _sys.setns(home, _sys.CLONE_NEWNET)
        inside.set_link(1, up=True, what="bring lo up")
        return path, nsfd, inside
    except BaseException:
        if inside is not None:
            inside.close()
        remove(path)
        raise
    finally:
        os.close(home)


def remove(path: str) -> None:
    """Unmount and delete a named netns; nothing if it is already gone."""
    try:
        _sys.umount2(path, _sys.MNT_DETACH)
    except _sys.SysError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_socket(path: str) -> Netlink:
    """A netlink socket inside the netns at path."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _sys.setns(target, _sys.CLONE_NEWNET)
        try:
            return Netlink()
        finally:
            _sys.setns(home, _sys.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)
