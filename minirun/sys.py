"""Raw system calls the standard library lacks, through ctypes.

Each wrapper raises `SysError`, which names the call and the path or object it acted on,
so a failure deep in container setup still reads as one useful line. Only stdlib imports:
this module is on the container start path.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from .errors import MiniRunError

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_ARCH = os.uname().machine
# Numbers that glibc has no wrapper for. openat2 and close_range share one number on
# every architecture (added after the syscall tables were unified).
_NR = {
    "x86_64": {"pivot_root": 155, "capget": 125, "capset": 126, "keyctl": 250, "seccomp": 317},
    "aarch64": {"pivot_root": 41, "capget": 90, "capset": 91, "keyctl": 219, "seccomp": 277},
}.get(_ARCH, {})
NR_OPENAT2 = 437
NR_CLOSE_RANGE = 436
NR_PIDFD_SEND_SIGNAL = 424
NR_MOUNT_SETATTR = 442
NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
NS_GET_NSTYPE = 0xB703

# clone/unshare flags
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_FORCE = 1
MNT_DETACH = 2

# openat2 resolve flags
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

CLOSE_RANGE_CLOEXEC = 1 << 2

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


class SysError(MiniRunError, OSError):
    """A system call failed: names the call, what it acted on and the errno."""

    def __init__(self, call: str, target: str | None, err: int) -> None:
        self.call = call
        self.target = target
        self.errno = err
        what = f"{call} {target}" if target else call
        MiniRunError.__init__(self, f"{what}: {os.strerror(err)}")

    def __str__(self) -> str:
        return self.args[0]


def _check(ret: int, call: str, target: str | None = None) -> int:
    if ret < 0:
        raise SysError(call, target, ctypes.get_errno())
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return s if isinstance(s, bytes) else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None, label: str | None = None) -> None:
    """mount(2). `label` replaces the target in error messages (e.g. the container path
    when the target is a /proc/self/fd/N handle)."""
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    if ret < 0:
        err = ctypes.get_errno()
        desc = f"{source or fstype or 'none'} on {label or target}"
        raise SysError("mount", desc, err)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root", new_root)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare", hex(flags))


def setns(fd: int, nstype: int, label: str | None = None) -> None:
    _check(_libc.setns(fd, nstype), "setns", label)


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname", name)


def setdomainname(name: str) -> None:
    data = name.encode()
    _check(_libc.setdomainname(data, len(data)), "setdomainname", name)


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ_SIZE = 40  # struct ifreq: char ifr_name[16], then a 24-byte union (ifr_flags first)


def link_up(name: str) -> None:
    """Set IFF_UP on an interface of this network namespace with two ioctls on a UDP
    socket, through libc: the socket module and netlink cost imports on the start path."""
    fd = _check(_libc.socket(2, 2 | 0o2000000, 0), "socket", name)  # AF_INET, DGRAM|CLOEXEC
    try:
        req = ctypes.create_string_buffer(name.encode(), _IFREQ_SIZE)
        _check(_libc.ioctl(fd, ctypes.c_ulong(SIOCGIFFLAGS), req), "ioctl(SIOCGIFFLAGS)", name)
        ctypes.c_short.from_buffer(req, 16).value |= IFF_UP
        _check(_libc.ioctl(fd, ctypes.c_ulong(SIOCSIFFLAGS), req), "ioctl(SIOCSIFFLAGS)", name)
    finally:
        os.close(fd)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2); the returned fd is close-on-exec."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = _syscall(NR_OPENAT2, dirfd, _b(path), ctypes.byref(how), ctypes.sizeof(how))
    return _check(ret, "openat2", path)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(fd: int, attr_set: int, attr_clr: int, label: str | None = None,
                  userns_fd: int = 0, recursive: bool = True) -> None:
    """Mount attributes on the mount at fd: recursive for the "rro", "rnosuid", ... options;
    MOUNT_ATTR_IDMAP with `userns_fd` maps a detached mount's ids as that namespace does."""
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    ret = _syscall(NR_MOUNT_SETATTR, fd, b"", ctypes.c_uint(flags), ctypes.byref(attr),
                   ctypes.sizeof(attr))
    _check(ret, "mount_setattr", label)


def open_tree(path: str, flags: int, dirfd: int = AT_FDCWD) -> int:
    """open_tree(2): with OPEN_TREE_CLONE, a detached copy of the mount at `path` (a
    directory inside a mount is cloned as a bind mount of it); the fd is close-on-exec."""
    ret = _syscall(NR_OPEN_TREE, dirfd, _b(path), ctypes.c_uint(flags | os.O_CLOEXEC))
    return _check(ret, "open_tree", path)


def move_mount(fd: int, target: str, label: str | None = None) -> None:
    """move_mount(2): attach the (detached) mount at fd on `target`."""
    ret = _syscall(NR_MOVE_MOUNT, fd, b"", AT_FDCWD, _b(target),
                   ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
    _check(ret, "move_mount", label or target)


def ns_get_nstype(fd: int, label: str | None = None) -> int:
    """The CLONE_NEW* type of the namespace file open at fd (ioctl NS_GET_NSTYPE)."""
    return _check(_libc.ioctl(fd, ctypes.c_ulong(NS_GET_NSTYPE)), "ioctl(NS_GET_NSTYPE)",
                  label)


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(_syscall(NR_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last),
                    ctypes.c_uint(flags)), "close_range")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0,
          name: str = "prctl") -> int:
    ret = _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                      ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))
    return _check(ret, name)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i, shift in enumerate((0, 32)):
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_syscall(_NR["capset"], ctypes.byref(hdr), data), "capset")


PERSONALITIES = {"LINUX": 0x0000, "LINUX32": 0x0008}


def personality(domain: str) -> None:
    _libc.personality.restype = ctypes.c_int
    if _libc.personality(ctypes.c_ulong(PERSONALITIES[domain])) < 0:
        raise SysError("personality", domain, ctypes.get_errno())


KEYCTL_JOIN_SESSION_KEYRING = 1


def join_session_keyring(name: str) -> None:
    """A new session keyring for the container, so that it does not share the host's."""
    ret = _syscall(_NR["keyctl"], KEYCTL_JOIN_SESSION_KEYRING, _b(name))
    if ret < 0:
        err = ctypes.get_errno()
        if err != _errno.ENOSYS:  # no keyring support in this kernel: nothing to share
            raise SysError("keyctl(JOIN_SESSION_KEYRING)", name, err)


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1


class SockFprog(ctypes.Structure):
    """struct sock_fprog: a classic BPF program (8-byte struct sock_filter each)."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    @classmethod
    def of(cls, program: bytes) -> SockFprog:
        buf = ctypes.create_string_buffer(program, len(program))
        prog = cls(len(program) // 8, ctypes.addressof(buf))
        prog._buf = buf  # the instructions live as long as the struct
        return prog


def seccomp_set_mode_filter(prog: SockFprog, flags: int = 0) -> int:
    """Install a seccomp filter on the calling thread: prctl(PR_SET_SECCOMP) without
    flags (as runc), seccomp(SECCOMP_SET_MODE_FILTER, flags) with them. Returns what the
    kernel returns: the listener fd with SECCOMP_FILTER_FLAG_NEW_LISTENER, else 0."""
    if flags:
        ret = _syscall(_NR["seccomp"], SECCOMP_SET_MODE_FILTER, ctypes.c_uint(flags),
                       ctypes.byref(prog))
        return _check(ret, "seccomp(SECCOMP_SET_MODE_FILTER)")
    ret = _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER),
                      ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0))
    return _check(ret, "prctl(PR_SET_SECCOMP)")


def seccomp_filter_flags_known(flags: int) -> bool:
    """Whether this kernel knows these SECCOMP_SET_MODE_FILTER flags: as libseccomp
    probes, a NULL program is EFAULT past the flag check and EINVAL before it."""
    ret = _syscall(_NR["seccomp"], SECCOMP_SET_MODE_FILTER, ctypes.c_uint(flags), None)
    return ret < 0 and ctypes.get_errno() == _errno.EFAULT


def ioctl_int(fd: int, request: int, value: int, name: str) -> None:
    arg = ctypes.c_int(value)
    _check(_libc.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(arg)), name)


def ioctl_get_int(fd: int, request: int, name: str) -> int:
    arg = ctypes.c_uint(0)
    _check(_libc.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(arg)), name)
    return arg.value


def ioctl_tty(fd: int, request: int, arg: int, name: str) -> None:
    _check(_libc.ioctl(fd, ctypes.c_ulong(request), ctypes.c_ulong(arg)), name)


def errno_name(err: int) -> str:
    return _errno.errorcode.get(err, str(err))


NR_CLONE3 = 435  # one number on every architecture
CLONE_INTO_CGROUP = 0x200000000
_CLONE_ARGS_WORDS = 11  # struct clone_args up to .cgroup (CLONE_ARGS_SIZE_VER2)


def fork_into_cgroup(cgroup_fd: int) -> int:
    """os.fork(), except that the child starts in the cgroup2 directory open at
    `cgroup_fd`: clone3 with CLONE_INTO_CGROUP (linux 5.7). Returns 0 in the child and
    the child's pid in the parent, as os.fork does.

    The caller must be single-threaded: this bypasses glibc's fork(), which takes its
    own locks (malloc, stdio) around the clone for the sake of other threads. Around
    the syscall it does what os.fork does for the interpreter (PyOS_BeforeFork and
    PyOS_AfterFork_*), holding the GIL throughout (a PyDLL call). glibc's cached thread
    id stays the parent's in the child: harmless for a child that forks, execs or exits
    but never signals its own threads (pthread_kill, raise)."""
    import _signal

    api = ctypes.PyDLL(None, use_errno=True)
    api.syscall.restype = ctypes.c_long
    args = (ctypes.c_uint64 * _CLONE_ARGS_WORDS)()
    args[0] = CLONE_INTO_CGROUP  # .flags
    args[4] = _signal.SIGCHLD  # .exit_signal, as fork's
    args[10] = cgroup_fd  # .cgroup
    api.PyOS_BeforeFork()
    pid = api.syscall(ctypes.c_long(NR_CLONE3), ctypes.byref(args),
                      ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise SysError("clone3", "CLONE_INTO_CGROUP", err)
    return pid
