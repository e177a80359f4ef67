"""tmpcopyup: fill a fresh tmpfs with what the directory beneath it held.

runc and crun extend OCI mounts with the ``tmpcopyup`` option (podman's ``--read-only``
and ``--tmpfs`` use it): after a tmpfs is mounted on a destination, the contents of the
directory that was there in the rootfs are copied into it, so /etc or /var keep their
files but become writable and private to the container.

Both sides are directory fds, the source opened before the mount (it still names the
directory underneath) and the target the new mount, each resolved inside the rootfs.
The walk goes by ``openat`` on names from those fds with O_NOFOLLOW: a symlink in the
image is copied as a symlink, never followed (CVE-2021-30465: it could point at the
host's files), and no path is ever joined as a host string.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import InvalidSpec

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 256


def copy_tree(src_fd: int, dst_fd: int, label: str) -> None:
    """Copy the entries of directory ``src_fd`` into directory ``dst_fd`` (files, dirs,
    symlinks, fifos, sockets and device nodes; owners, modes and times where the kernel
    lets us), then give ``dst_fd`` the source directory's owner, mode and times.
    ``label`` (the mount destination) names the place in errors."""
    _copy_dir(src_fd, dst_fd, label, 0)
    _copy_attrs(os.fstat(src_fd), dst_fd, None, label)


def _copy_dir(src_fd: int, dst_fd: int, label: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidSpec(f"tmpcopyup {label}: directories nested deeper than {_MAX_DEPTH}")
    for name in os.listdir(src_fd):
        path = f"{label}/{name}"
        try:
            st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            _copy_entry(src_fd, dst_fd, name, st, path, depth)
        except OSError as e:
            raise InvalidSpec(f"tmpcopyup {path}: {e.strerror}") from None


def _copy_entry(src_fd: int, dst_fd: int, name: str, st: os.stat_result, path: str,
                depth: int) -> None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=dst_fd)
        sub_src = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
        try:
            sub_dst = os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
            try:
                _copy_dir(sub_src, sub_dst, path, depth + 1)
                # after the entries: filling the directory changed its times
                _copy_attrs(st, sub_dst, None, path)
            finally:
                os.close(sub_dst)
        finally:
            os.close(sub_src)
    elif stat.S_ISREG(mode):
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o600, dir_fd=dst_fd)
            try:
                _copy_data(src, dst, st.st_size)
                _copy_attrs(st, dst, None, path)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dst_fd)
        _copy_attrs(st, dst_fd, name, path)
    else:  # fifo, socket, character or block device
        os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst_fd)
        _copy_attrs(st, dst_fd, name, path)


def _copy_data(src: int, dst: int, size: int) -> None:
    offset = 0
    while True:
        try:
            n = os.copy_file_range(src, dst, max(size - offset, 1 << 20))
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            break  # across filesystems on older kernels: plain reads and writes below
        if n == 0:
            return
        offset += n
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


def _copy_attrs(st: os.stat_result, fd: int, name: str | None, path: str) -> None:
    """Owner, then mode (chown clears set-id bits), then times, of ``fd`` itself or of
    ``name`` in directory ``fd`` (a symlink: its own, not its target's)."""
    target, kw = (fd, {}) if name is None else (name, {"dir_fd": fd, "follow_symlinks": False})
    try:
        os.chown(target, st.st_uid, st.st_gid, **kw)
    except OSError as e:
        # An owner outside the user namespace's map cannot be given: keep ours.
        if e.errno not in (errno.EINVAL, errno.EPERM):
            raise
    if not stat.S_ISLNK(st.st_mode):  # Linux has no lchmod; a fresh node, not a symlink
        os.chmod(target, stat.S_IMODE(st.st_mode), **({} if name is None else {"dir_fd": fd}))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), **kw)
