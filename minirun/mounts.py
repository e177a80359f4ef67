"""The container's root filesystem: mounts, devices, pivot_root, masked and read-only paths.

Runs inside the container's init, in its new mount namespace, before the user's program.
Every path inside the container is resolved as a file descriptor from the rootfs with
openat2(RESOLVE_IN_ROOT), never as a joined host string, and mounts land on
/proc/self/fd/N of that descriptor.
"""

from __future__ import annotations

import errno
import os
import stat

from . import mountinfo
from .copyup import copy_tree
from . import sys as _sys
from .errors import InvalidSpec, MiniRunError
from .spec import parse_mount_options

_RESOLVE = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS

# runc creates these when /dev is not bind-mounted from the host, in this order (visible
# in mountinfo when a user namespace makes them bind mounts).
DEFAULT_DEVICES = [
    {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
    {"path": "/dev/random", "type": "c", "major": 1, "minor": 8},
    {"path": "/dev/full", "type": "c", "major": 1, "minor": 7},
    {"path": "/dev/tty", "type": "c", "major": 5, "minor": 0},
    {"path": "/dev/zero", "type": "c", "major": 1, "minor": 5},
    {"path": "/dev/urandom", "type": "c", "major": 1, "minor": 9},
]
DEV_SYMLINKS = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
]
_DEVICE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def open_in_root(rootfd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open `path` as seen from inside the rootfs: symlinks, absolute ones included, and
    ".." resolve inside it (CVE-2021-30465: a destination that is a symlink never
    reaches the host)."""
    return _sys.openat2(rootfd, path.lstrip("/") or ".", flags, 0, _RESOLVE)


def make_in_root(rootfd: int, path: str, is_dir: bool, mode: int = 0o755,
                 _depth: int = 0) -> int:
    """Create `path` (and its parents) inside the rootfs if missing; an O_PATH fd to it.

    A dangling symlink on the way is followed inside the rootfs, and its target created
    there, as runc's securejoin does: never outside."""
    if _depth > 40:
        raise InvalidSpec(f"too many levels of symbolic links creating {path}")
    try:
        return open_in_root(rootfd, path)
    except _sys.SysError as e:
        if e.errno != 2:  # ENOENT
            raise
    parent, name = os.path.split(path.rstrip("/"))
    if name == ".." and parent.strip("/"):
        # "missing/..", as a relative symlink's target joined to its directory gives
        # (runc accepts it): make the missing directory, then ".." resolves in the root.
        os.close(make_in_root(rootfd, parent, True, _depth=_depth + 1))
        return open_in_root(rootfd, path)
    if name in ("", ".", ".."):
        raise InvalidSpec(f"invalid path {path!r} inside the container")
    parent = parent or "/"
    pfd = make_in_root(rootfd, parent, True, _depth=_depth + 1)
    try:
        try:
            target = os.readlink(name, dir_fd=pfd)
        except OSError:
            target = None
        if target is not None:
            os.close(pfd)
            pfd = -1
            return make_in_root(rootfd, os.path.join(parent, target), is_dir, mode, _depth + 1)
        if is_dir:
            try:
                os.mkdir(name, mode, dir_fd=pfd)
            except FileExistsError:
                pass
        else:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=pfd)
            os.close(fd)
    except OSError as e:
        raise _sys.SysError("mkdir" if is_dir else "create", path, e.errno or 0) from None
    finally:
        if pfd >= 0:
            os.close(pfd)
    return open_in_root(rootfd, path)


def bind_source(m: dict, bundle: str) -> str:
    source = m.get("source") or ""
    return source if os.path.isabs(source) else os.path.join(bundle, source)


def is_bind(m: dict) -> bool:
    return m.get("type") == "bind" or bool({"bind", "rbind"} & set(m.get("options") or []))


def open_bind_sources(cfg: dict, bundle: str, via_root: str) -> dict[int, int]:
    """O_PATH fds of the bind mounts' sources, opened by the runtime (the host's root)
    through `via_root`, the /proc/<pid>/root of a process already in the container's
    mount namespace: once in the container's user namespace its root may not even reach
    a source under a 0700 directory. runc passes such mount sources as fds for the same
    reason. The fds name mounts of the container's namespace (a bind from another one
    is refused), whose flags the kernel locked when the namespace was copied: a bind of
    them keeps the host's ro, nosuid and nodev. {index in mounts: fd}."""
    fds: dict[int, int] = {}
    try:
        for i, m in enumerate(cfg.get("mounts") or []):
            if not is_bind(m):
                continue
            source = bind_source(m, bundle)
            try:
                fds[i] = os.open(via_root + source, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                raise InvalidSpec(f"mount source {source} for {m.get('destination')}: "
                                  f"{e.strerror}") from None
    except BaseException:
        close_fds(fds)
        raise
    return fds


def close_fds(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class RootfsBuilder:
    """Sets up the rootfs in the order runc does; one instance per container init."""

    def __init__(self, cfg: dict, rootfs: str, bundle: str, cgroup, new_userns: bool,
                 new_cgroupns: bool, new_netns: bool, own_mountns: bool = True,
                 source_fds: dict[int, int] | None = None) -> None:
        self.cfg = cfg
        self.linux = cfg.get("linux") or {}
        self.rootfs = rootfs
        self.bundle = bundle
        self.cgroup = cgroup
        self.new_userns = new_userns
        self.new_cgroupns = new_cgroupns
        self.new_netns = new_netns
        # False: no mount namespace, the rootfs is set up in the caller's (runc's chroot
        # mode); nothing may then touch the propagation of the host's mounts.
        self.own_mountns = own_mountns
        # mounts' index -> an O_PATH fd of their bind source (open_bind_sources)
        self.source_fds = source_fds or {}
        self.rootfd = -1
        # tmpfs (and /dev) mounts asked read-only: (destination, flags), made read-only
        # in finish() so that mount points and devices can be created in them first
        self.deferred_readonly: list[tuple[str, int]] = []
        self.dev_bound = any(m.get("destination", "").rstrip("/") == "/dev" and is_bind(m)
                             for m in cfg.get("mounts") or [])

    # --- before pivot_root -------------------------------------------------------------

    def prepare(self) -> None:
        """Everything up to (not including) pivot_root."""
        if self.own_mountns:
            prop = self.linux.get("rootfsPropagation")
            flags = _sys.MS_SLAVE | _sys.MS_REC
            if prop:
                flags = parse_mount_options([prop])[1][-1]
            _sys.mount(None, "/", None, flags)
            make_parent_mount_private(self.rootfs)
        # Without a mount namespace this bind is on the host: delete unmounts it, and with
        # it every mount below (see unmount_host_rootfs).
        _sys.mount(self.rootfs, self.rootfs, "bind", _sys.MS_BIND | _sys.MS_REC)
        self.rootfd = os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for i, m in enumerate(self.cfg.get("mounts") or []):
            self.mount_one(m, self.source_fds.pop(i, -1))
        if not self.dev_bound:
            self.create_devices()

    def mount_one(self, m: dict, source_fd: int = -1) -> None:
        dest = m["destination"]
        kind = m.get("type") or ""
        options = m.get("options") or []
        flags, pflags, data, extra = parse_mount_options(options)
        data = data or None
        if extra["unsupported"]:
            raise InvalidSpec(f"mount {dest}: option {extra['unsupported'][0]!r} is not "
                              "supported")
        if kind == "bind" or extra["bind"]:
            self._bind(m, dest, flags, pflags, extra["recursive_bind"], source_fd)
        elif kind == "cgroup":
            self._mount_cgroup(dest, flags)
        else:
            self._mount_fs(m, dest, kind, flags, pflags, data,
                           copyup=extra["copyup"] and kind == "tmpfs")
        if extra["attr_set"] or extra["attr_clr"]:
            fd = open_in_root(self.rootfd, dest)
            try:
                _sys.mount_setattr(fd, extra["attr_set"], extra["attr_clr"], label=dest)
            finally:
                os.close(fd)

    def _mount_fs(self, m: dict, dest: str, kind: str, flags: int, pflags: list[int],
                  data: str | None, copyup: bool = False) -> None:
        if kind in ("proc", "sysfs"):
            self._check_plain_directory(dest, kind)
        fd = make_in_root(self.rootfd, dest, True)
        below = -1
        try:
            if copyup:  # opened before the mount: it keeps naming the directory beneath
                below = os.open(fd_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if kind == "sysfs" and self.new_userns and not self.new_netns:
                # sysfs cannot be mounted in a user namespace without its own netns:
                # bind the host's, read-only, as runc does.
                _sys.mount("/sys", fd_path(fd), None, _sys.MS_BIND | _sys.MS_REC, label=dest)
                # _on_mount opens the new mount: `fd` still names the directory beneath
                # it, and remounting that failed with EINVAL.
                self._on_mount(dest, None, _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_RDONLY |
                               flags, locked=True)
            else:
                if flags & _sys.MS_RDONLY and (kind == "tmpfs" or dest.rstrip("/") == "/dev"):
                    flags &= ~_sys.MS_RDONLY
                    self.deferred_readonly.append((dest, flags))
                src = m.get("source") or kind
                _sys.mount(src, fd_path(fd), kind, flags, data, label=dest)
            if copyup:
                self._copy_up(below, dest)
        finally:
            os.close(fd)
            if below >= 0:
                os.close(below)
        for pflag in pflags:
            self._on_mount(dest, None, pflag)

    def _copy_up(self, below: int, dest: str) -> None:
        top = open_in_root(self.rootfd, dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            copy_tree(below, top, dest)
        finally:
            os.close(top)

    def _check_plain_directory(self, dest: str, kind: str) -> None:
        """CVE-2019-19921, CVE-2023-27561, CVE-2023-28642: a rootfs whose /proc or /sys is
        a symlink (to another directory of the rootfs, or crafted to point where a host
        path would be) has procfs or sysfs land somewhere the masked and read-only paths
        do not cover, or lets a racing container swap the target. As runc: refused unless
        the destination is missing or an ordinary directory."""
        parent, name = os.path.split(dest.rstrip("/"))
        if not name:
            raise InvalidSpec(f"mount {kind} on {dest!r}: not a valid destination")
        pfd = make_in_root(self.rootfd, parent or "/", True)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        finally:
            os.close(pfd)
        if not stat.S_ISDIR(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise InvalidSpec(f"mount {kind} on {dest}: the destination is {what} in the "
                              "rootfs; it must be an ordinary directory")

    def _bind(self, m: dict, dest: str, flags: int, pflags: list[int], recursive: bool,
              source_fd: int = -1) -> None:
        # an fd the runtime opened for us (open_bind_sources), else the host's path
        source = fd_path(source_fd) if source_fd >= 0 else bind_source(m, self.bundle)
        try:
            try:
                st = os.stat(source)
            except OSError as e:
                raise InvalidSpec(f"mount source {bind_source(m, self.bundle)} for {dest}: "
                                  f"{e.strerror}") from None
            fd = make_in_root(self.rootfd, dest, stat.S_ISDIR(st.st_mode))
            try:
                bflags = _sys.MS_BIND | (_sys.MS_REC if recursive else 0)
                _sys.mount(source, fd_path(fd), None, bflags, label=dest)
            finally:
                os.close(fd)
        finally:
            if source_fd >= 0:
                os.close(source_fd)
        # Flags on a bind mount only take effect with a remount of it.
        extra = flags & ~(_sys.MS_BIND | _sys.MS_REC)
        if extra:
            self._on_mount(dest, None, _sys.MS_BIND | _sys.MS_REMOUNT | extra, locked=True)
        for pflag in pflags:
            self._on_mount(dest, None, pflag)

    def _on_mount(self, dest: str, data: str | None, flags: int, locked: bool = False) -> None:
        """A mount(2) call on the mount now at `dest` (a fresh fd: one opened before the
        mount still names the directory underneath it)."""
        fd = open_in_root(self.rootfd, dest)
        try:
            if locked:
                flags |= self._locked_flags(fd)
            _sys.mount(None, fd_path(fd), None, flags, data, label=dest)
        finally:
            os.close(fd)

    def _locked_flags(self, fd: int) -> int:
        """Flags a remount inside a user namespace must keep (the kernel locks them)."""
        if not self.new_userns:
            return 0
        st = os.statvfs(fd_path(fd))
        keep = 0
        for vfs, ms in ((os.ST_NOSUID, _sys.MS_NOSUID), (os.ST_NODEV, _sys.MS_NODEV),
                        (os.ST_NOEXEC, _sys.MS_NOEXEC), (os.ST_RDONLY, _sys.MS_RDONLY)):
            if st.f_flag & vfs:
                keep |= ms
        return keep

    def _mount_cgroup(self, dest: str, flags: int) -> None:
        fd = make_in_root(self.rootfd, dest, True)
        try:
            target = fd_path(fd)
            if self.cgroup.version == 2:
                if self.new_cgroupns:
                    _sys.mount("cgroup2", target, "cgroup2", flags, label=dest)
                else:
                    (host_dir, _), = self.cgroup.mounts_for_container()
                    if self.cgroup.rootless and not os.path.isdir(host_dir):
                        return
                    _sys.mount(host_dir, target, None, _sys.MS_BIND | _sys.MS_REC, label=dest)
                    self._on_mount(dest, None, _sys.MS_BIND | _sys.MS_REMOUNT | flags,
                                   locked=True)
                return
            # v1: a tmpfs holding one directory per controller hierarchy
            _sys.mount("tmpfs", target, "tmpfs", flags & ~_sys.MS_RDONLY, "mode=755", label=dest)
            for host_dir, name in self.cgroup.mounts_for_container():
                if self.cgroup.rootless and not os.path.isdir(host_dir):
                    continue  # no delegation: there is no cgroup of ours to show
                sub = make_in_root(self.rootfd, os.path.join(dest, name), True)
                try:
                    if self.new_cgroupns:
                        opts = name if not name.startswith("name=") else name
                        source = "cgroup"
                        if name == "systemd":
                            opts = "none,name=systemd"
                            source = "systemd"  # as runc names it in mountinfo
                        _sys.mount(source, fd_path(sub), "cgroup", flags, opts,
                                   label=f"{dest}/{name}")
                    else:
                        _sys.mount(host_dir, fd_path(sub), None, _sys.MS_BIND | _sys.MS_REC,
                                   label=f"{dest}/{name}")
                finally:
                    os.close(sub)
                if not self.new_cgroupns:
                    self._on_mount(os.path.join(dest, name), None,
                                   _sys.MS_BIND | _sys.MS_REMOUNT | flags, locked=True)
        finally:
            os.close(fd)

    def create_devices(self) -> None:
        devfd = make_in_root(self.rootfd, "/dev", True)
        try:
            old = os.umask(0)
            try:
                wanted = list(DEFAULT_DEVICES)
                asked = {d["path"] for d in self.linux.get("devices") or []}
                wanted = [d for d in wanted if d["path"] not in asked]
                for dev in wanted + list(self.linux.get("devices") or []):
                    self._create_device(dev)
                for target, name in DEV_SYMLINKS:
                    try:
                        os.symlink(target, name, dir_fd=devfd)
                    except FileExistsError:
                        pass
                if os.path.exists("/proc/kcore"):
                    try:
                        os.symlink("/proc/kcore", "core", dir_fd=devfd)
                    except FileExistsError:
                        pass
            finally:
                os.umask(old)
        finally:
            os.close(devfd)

    def _create_device(self, dev: dict) -> None:
        path = dev["path"]
        kind = dev.get("type", "c")
        if kind not in _DEVICE_TYPES:
            raise InvalidSpec(f"linux.devices: {path}: unknown device type {kind!r}")
        mode = dev.get("fileMode", 0o666) & 0o7777
        parent, name = os.path.split(path)
        pfd = make_in_root(self.rootfd, parent, True)
        try:
            if self.new_userns:
                # mknod is not allowed in a user namespace: bind the host's node.
                fd = make_in_root(self.rootfd, path, False)
                try:
                    _sys.mount(path, fd_path(fd), None, _sys.MS_BIND, label=path)
                finally:
                    os.close(fd)
                return
            try:
                os.unlink(name, dir_fd=pfd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise InvalidSpec(f"linux.devices: {path} is a directory in the rootfs") from None
            devnum = os.makedev(dev.get("major", 0), dev.get("minor", 0)) if kind != "p" else 0
            try:
                os.mknod(name, _DEVICE_TYPES[kind] | mode, devnum, dir_fd=pfd)
                os.chown(name, dev.get("uid", 0), dev.get("gid", 0), dir_fd=pfd,
                         follow_symlinks=False)
            except OSError as e:
                raise _sys.SysError("mknod", path, e.errno or 0) from None
        finally:
            os.close(pfd)

    # --- pivot_root and after ------------------------------------------------------------

    def pivot(self, no_pivot: bool = False) -> None:
        if not self.own_mountns:
            # The caller's mount namespace: neither pivot_root nor a move of its "/" (as
            # runc). A plain chroot, which the container's root can leave: without a
            # mount namespace it is the host's root.
            os.chdir(self.rootfs)
            os.chroot(".")
            os.chdir("/")
        elif no_pivot:
            hide_host_proc_and_sys(self.rootfs)
            os.chdir(self.rootfs)
            _sys.mount(self.rootfs, "/", None, _sys.MS_MOVE)
            os.chroot(".")
            os.chdir("/")
        else:
            oldroot = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
            newroot = os.open(self.rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fchdir(newroot)
                # pivot_root(".", ".") stacks the old root on top of the new one; it is then
                # detached without ever needing a directory for it inside the rootfs.
                _sys.pivot_root(".", ".")
                os.fchdir(oldroot)
                _sys.mount(None, ".", None, _sys.MS_SLAVE | _sys.MS_REC)
                _sys.umount2(".", _sys.MNT_DETACH)
                os.chdir("/")
            finally:
                os.close(oldroot)
                os.close(newroot)
        os.close(self.rootfd)
        self.rootfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def finish(self) -> None:
        """After pivot_root: read-only root, masked and read-only paths, propagation."""
        linux = self.linux
        # As runc's finalizeRootfs: a read-only tmpfs is a read-only bind of a read-write
        # one, so that mounts nested in it could be made.
        for dest, flags in self.deferred_readonly:
            self._on_mount(dest, None, _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_RDONLY | flags,
                           locked=True)
        if (self.cfg.get("root") or {}).get("readonly"):
            rfd = os.open("/", os.O_PATH | os.O_CLOEXEC)
            try:
                _sys.mount(None, "/", None, _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_RDONLY |
                           self._locked_flags(rfd), label="/ (readonly root)")
            finally:
                os.close(rfd)
        for path in linux.get("readonlyPaths") or []:
            self.make_readonly(path)
        for path in linux.get("maskedPaths") or []:
            self.mask(path)
        # rootfsPropagation was applied in prepare(), as runc does: applying it again
        # here, recursively, would undo the propagation each mount asked for.
        os.close(self.rootfd)
        self.rootfd = -1

    def _dev_null(self) -> int:
        # A /dev/null that is a symlink or anything but the real char device 1:3 is
        # refused: masking with it would bind an attacker's file (CVE-2021-30465 family).
        fd = os.open("/dev/null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
            os.close(fd)
            raise MiniRunError("/dev/null in the container is not the null device; refusing to mask")
        return fd

    def mask(self, path: str) -> None:
        try:
            fd = open_in_root(self.rootfd, path)
        except _sys.SysError as e:
            if e.errno == 2:
                return
            raise
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                _sys.mount("tmpfs", fd_path(fd), "tmpfs", _sys.MS_RDONLY, label=path)
            else:
                null = self._dev_null()
                try:
                    _sys.mount(fd_path(null), fd_path(fd), None, _sys.MS_BIND, label=path)
                finally:
                    os.close(null)
        finally:
            os.close(fd)

    def make_readonly(self, path: str) -> None:
        try:
            fd = open_in_root(self.rootfd, path)
        except _sys.SysError as e:
            if e.errno == 2:
                return
            raise
        try:
            _sys.mount(fd_path(fd), fd_path(fd), None, _sys.MS_BIND | _sys.MS_REC, label=path)
        finally:
            os.close(fd)
        fd = open_in_root(self.rootfd, path)
        try:
            # As runc's readonlyPath: keep nosuid/nodev/noexec of the mount (a read-only
            # /dev/shm must stay nosuid), not only the flags a user namespace locks.
            st = os.statvfs(fd_path(fd))
            kept = 0
            for vfs, ms in ((os.ST_NOSUID, _sys.MS_NOSUID), (os.ST_NODEV, _sys.MS_NODEV),
                            (os.ST_NOEXEC, _sys.MS_NOEXEC)):
                if st.f_flag & vfs:
                    kept |= ms
            _sys.mount(None, fd_path(fd), None,
                       _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_RDONLY | _sys.MS_REC | kept |
                       self._locked_flags(fd), label=path)
        finally:
            os.close(fd)


def hide_host_proc_and_sys(rootfs: str) -> None:
    """Before --no-pivot's move and chroot: the host's procfs and sysfs stay in our mount
    namespace under the moved rootfs, and the kernel lets a nested user namespace mount
    a fresh, unmasked procfs or sysfs when a fully visible one exists in the namespace
    (mount_too_revealing). Unmount them (or cover them where that is refused), as runc
    1.1.5's msMoveRoot does, so that only the container's masked /proc remains."""
    prefix = rootfs.rstrip("/") + "/"
    targets = [m.mountpoint for m in mountinfo.read()
               if m.root == "/" and m.fstype in ("proc", "sysfs")
               and m.mountpoint != rootfs and not m.mountpoint.startswith(prefix)]
    for point in targets:
        try:
            # never let the unmount propagate back to the host
            _sys.mount(None, point, None, _sys.MS_SLAVE | _sys.MS_REC, label=point)
        except _sys.SysError as e:
            if e.errno == errno.ENOENT:
                continue  # under a mount already detached
            raise
        try:
            _sys.umount2(point, _sys.MNT_DETACH)
        except _sys.SysError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            _sys.mount("tmpfs", point, "tmpfs", 0, label=point)


def make_parent_mount_private(path: str) -> None:
    """Make the mount holding `path` private if it is shared (runc's
    rootfsParentMountPrivate): pivot_root refuses a new root whose parent mount is
    shared, and the rootfs bind would otherwise propagate to the host."""
    best, shared = "", False
    for m in mountinfo.read():
        point = m.mountpoint
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        # >=: of several mounts on one point, the last one listed is on top
        if inside and len(point) >= len(best):
            best = point
            shared = any(opt.startswith("shared:") for opt in m.optional)
    if shared:
        _sys.mount(None, best, None, _sys.MS_PRIVATE, label=best)


def setup_console_mount(slave_fd: int) -> None:
    """Bind the pty's slave onto /dev/console, as runc does for terminal containers."""
    rootfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = make_in_root(rootfd, "/dev/console", False)
        try:
            _sys.mount(fd_path(slave_fd), fd_path(fd), None, _sys.MS_BIND, label="/dev/console")
        finally:
            os.close(fd)
    finally:
        os.close(rootfd)


def count_mounts_at(path: str) -> int:
    return sum(1 for m in mountinfo.read() if m.mountpoint == path)


def unmount_host_rootfs(rootfs: str, base: int) -> None:
    """A container without a mount namespace made its mounts on the host, all below its
    bind of the rootfs onto itself: detach that bind (and so every mount below it) until
    only the `base` mounts found at the rootfs before create remain. runc 1.1.5 leaves
    them all mounted after delete."""
    while count_mounts_at(rootfs) > base:
        _sys.umount2(rootfs, _sys.MNT_DETACH)
