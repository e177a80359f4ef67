"""What this host offers minirun: kernel, cgroups, namespaces and the kernel features the
runtime relies on, each with a one-line reason when it is missing.

Where a listing in /proc could claim support that a sysctl, an LSM or a seccomp filter then
refuses, the probe tries the real thing (unshare, mount, the syscall) in a throwaway child
process, so that nothing it changes can outlive the probe.

The probes carry their own small ctypes calls instead of using minirun.sys: `info` is the
tool to run when something in the runtime does not work, so it depends on as little as
possible.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field

from . import OCI_VERSION, __version__, mountinfo
from .cgroups import DEFAULT_ROOT, detect_mode
from .errors import MiniRunError

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
SYS_OPENAT2 = 437  # the same number on every architecture (allocated after the unification)
RESOLVE_IN_ROOT = 0x10
CAP_SYS_ADMIN = 21
PROBE_TIMEOUT = 5.0

# The kernel option behind each namespace, to say what is missing when one is absent.
NAMESPACE_CONFIG = {
    "cgroup": "CONFIG_CGROUPS (cgroup namespaces need 4.6)",
    "ipc": "CONFIG_IPC_NS",
    "mnt": "mount namespaces (always built in)",
    "net": "CONFIG_NET_NS",
    "pid": "CONFIG_PID_NS",
    "time": "CONFIG_TIME_NS (time namespaces need 5.6)",
    "user": "CONFIG_USER_NS",
    "uts": "CONFIG_UTS_NS",
}


@dataclass
class Feature:
    available: bool
    detail: str = ""
    reason: str | None = None


@dataclass
class CgroupInfo:
    mode: str | None
    root: str
    driver: str | None
    v1_controllers: dict[str, str] = field(default_factory=dict)
    v2_mount: str | None = None
    v2_controllers: list[str] = field(default_factory=list)
    unusable_controllers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


@dataclass
class Runtime:
    path: str | None
    version: str | None


@dataclass
class HostInfo:
    version: str
    oci_version: str
    kernel: str
    euid: int
    capabilities: str
    cgroup: CgroupInfo
    namespaces: list[str]
    missing_namespaces: dict[str, str]
    features: dict[str, Feature]
    runtimes: dict[str, Runtime]

    def to_dict(self) -> dict:
        return asdict(self)


def collect(proc: str = "/proc") -> HostInfo:
    """Probe the host. Needs no privileges, but as non-root some probes run in a user
    namespace and report what an unprivileged user gets."""
    namespaces, missing = _namespaces(proc)
    return HostInfo(
        version=__version__,
        oci_version=OCI_VERSION,
        kernel=os.uname().release,
        euid=os.geteuid(),
        capabilities=_capabilities(proc),
        cgroup=_cgroups(proc),
        namespaces=namespaces,
        missing_namespaces=missing,
        features={
            "seccomp": _seccomp(proc),
            "user_namespaces": _user_namespaces(proc),
            "overlayfs": _overlayfs(proc),
            "pidfd": _pidfd(),
            "openat2": _openat2(),
        },
        runtimes={name: _runtime(name) for name in ("runc", "crun")},
    )


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _status_field(proc: str, name: str) -> str | None:
    for line in (_read(f"{proc}/self/status") or "").splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def _capabilities(proc: str) -> str:
    eff = _status_field(proc, "CapEff")
    last = _read(f"{proc}/sys/kernel/cap_last_cap")
    if eff is None or last is None:
        return "unknown"
    mask = int(eff, 16)
    total = int(last) + 1
    held = (mask & ((1 << total) - 1)).bit_count()
    admin = "with" if mask >> CAP_SYS_ADMIN & 1 else "without"
    return f"{held} of {total} effective, {admin} CAP_SYS_ADMIN"


def _namespaces(proc: str) -> tuple[list[str], dict[str, str]]:
    try:
        present = {n for n in os.listdir(f"{proc}/self/ns") if not n.endswith("_for_children")}
    except OSError as e:
        return [], {"all": f"cannot list {proc}/self/ns: {e.strerror.lower()}"}
    missing = {
        name: f"no {proc}/self/ns/{name}: kernel without {config}"
        for name, config in NAMESPACE_CONFIG.items()
        if name not in present
    }
    return sorted(present), missing


def _cgroup_tables(proc: str) -> tuple[dict[str, tuple[int, bool]], list[tuple[str, str, str]]]:
    """/proc/cgroups as {controller: (hierarchy id, enabled)} and the cgroup mounts as
    (mount point, fstype, super options)."""
    controllers = {}
    for line in (_read(f"{proc}/cgroups") or "").splitlines():
        if line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) == 4:
            controllers[fields[0]] = (int(fields[1]), fields[3] == "1")
    mounts = [(m.mountpoint, m.fstype, m.super_options)
              for m in mountinfo.parse(_read(f"{proc}/self/mountinfo") or "")
              if m.fstype in ("cgroup", "cgroup2")]
    return controllers, mounts


def _cgroups(proc: str) -> CgroupInfo:
    root = os.environ.get("MINIRUN_CGROUP_ROOT", DEFAULT_ROOT)
    try:
        mode = detect_mode(root)
    except MiniRunError as e:
        return CgroupInfo(mode=None, root=root, driver=None, reason=str(e))
    driver = os.environ.get("MINIRUN_CGROUP_DRIVER") or ("v2" if mode == "v2" else "v1")
    info = CgroupInfo(mode=mode, root=root, driver=driver)
    controllers, mounts = _cgroup_tables(proc)

    if mode == "v2":
        info.v2_mount = root
    elif mode == "hybrid":
        info.v2_mount = os.path.join(root, "unified")
    if info.v2_mount:
        text = _read(os.path.join(info.v2_mount, "cgroup.controllers")) or ""
        info.v2_controllers = sorted(text.split())

    for mountpoint, fstype, options in mounts:
        if fstype != "cgroup":
            continue
        for option in options.split(","):
            if option in controllers:
                info.v1_controllers.setdefault(option, mountpoint)
    info.v1_controllers = dict(sorted(info.v1_controllers.items()))

    for name, (hierarchy, enabled) in sorted(controllers.items()):
        if name in info.v1_controllers or name in info.v2_controllers:
            continue
        if not enabled:
            info.unusable_controllers[name] = "disabled on the kernel command line"
        elif mode == "v2" and hierarchy != 0:
            info.unusable_controllers[name] = "bound to a v1 hierarchy mounted elsewhere"
        elif mode == "v2":
            info.unusable_controllers[name] = "v1 only, or not enabled in the root cgroup"
        elif hierarchy == 0:
            info.unusable_controllers[name] = "enabled in the kernel but not mounted"
        else:
            info.unusable_controllers[name] = "mounted, but not in this mount namespace"
    return info


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _run_in_child(probe, timeout: float = PROBE_TIMEOUT) -> int:
    """Run probe() in a forked child; 0 if it returned, else the errno it failed with.

    The child only ever leaves through os._exit, so it cannot run the caller's code or
    flush the caller's buffers twice. Whatever it unshared or mounted dies with it.
    """
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            probe()
            code = 0
        except OSError as e:
            code = e.errno if e.errno and 0 < e.errno < 255 else 255
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 255
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return errno.ETIMEDOUT
        time.sleep(0.001)


def _check(rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _strerror(code: int) -> str:
    if code == 255:
        return "the probe failed unexpectedly"
    return os.strerror(code).lower()


def _seccomp(proc: str) -> Feature:
    mode = _status_field(proc, "Seccomp")
    if mode is None:
        return Feature(
            False, reason="kernel without CONFIG_SECCOMP (no Seccomp in /proc/self/status)"
        )
    actions = _read(f"{proc}/sys/kernel/seccomp/actions_avail")
    if actions is None:
        return Feature(
            False, reason="kernel without CONFIG_SECCOMP_FILTER (no seccomp/actions_avail)"
        )
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return Feature(False, reason="libseccomp.so.2 not found (install libseccomp2)")
    detail = f"libseccomp {_libseccomp_version(lib)}, actions: {actions.strip()}"
    if mode != "0":
        detail += f"; this process is already under seccomp mode {mode}"
    return Feature(True, detail=detail)


def _libseccomp_version(lib: ctypes.CDLL) -> str:
    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    try:
        get = lib.seccomp_version
    except AttributeError:
        return "(version unknown, older than 2.3)"
    get.restype = ctypes.POINTER(Version)
    v = get().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def _user_namespaces(proc: str) -> Feature:
    max_text = _read(f"{proc}/sys/user/max_user_namespaces")
    if max_text is None and not os.path.exists(f"{proc}/self/ns/user"):
        return Feature(False, reason="kernel without CONFIG_USER_NS")
    limit = int(max_text) if max_text else None
    if limit == 0:
        return Feature(False, reason="user.max_user_namespaces is 0 (raise it with sysctl)")
    libc = _libc()

    def probe() -> None:
        _check(libc.unshare(CLONE_NEWUSER))

    code = _run_in_child(probe)
    if code != 0:
        return Feature(False, reason=f"unshare(CLONE_NEWUSER) failed: {_strerror(code)}")
    notes = [f"max {limit}" if limit is not None else "no max_user_namespaces sysctl"]
    # Distribution switches that only restrict unprivileged users; root is not affected.
    if _read(f"{proc}/sys/kernel/unprivileged_userns_clone") == "0\n":
        notes.append("unprivileged users blocked by kernel.unprivileged_userns_clone=0")
    if _read(f"{proc}/sys/kernel/apparmor_restrict_unprivileged_userns") == "1\n":
        notes.append("unprivileged users restricted by AppArmor")
    return Feature(True, detail=", ".join(notes))


def _overlayfs(proc: str) -> Feature:
    listed = any(
        line.split()[-1] == "overlay"
        for line in (_read(f"{proc}/filesystems") or "").splitlines()
        if line.strip()
    )
    libc = _libc()
    tmp = tempfile.mkdtemp(prefix="minirun-info-")
    dirs = {name: os.path.join(tmp, name) for name in ("lower", "upper", "work", "merged")}
    for path in dirs.values():
        os.mkdir(path)
    with open(os.path.join(dirs["lower"], "probe"), "w"):
        pass
    options = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
    # As non-root, overlay can only be mounted inside a user namespace (kernel 5.11+).
    rootless = os.geteuid() != 0
    uid, gid = os.geteuid(), os.getegid()

    def probe() -> None:
        if rootless:
            _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
            # Unmapped, the caller could not even look into its own probe directories.
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"0 {uid} 1"),
                ("gid_map", f"0 {gid} 1"),
            ):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        else:
            _check(libc.unshare(CLONE_NEWNS))
        # Private first, so the overlay cannot propagate back to the host's namespace.
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
        _check(libc.mount(b"overlay", dirs["merged"].encode(), b"overlay", 0, options.encode()))
        if not os.path.exists(os.path.join(dirs["merged"], "probe")):
            raise OSError(errno.EIO, "lower layer not visible")

    try:
        code = _run_in_child(probe)
    finally:
        _remove_probe_dir(tmp, dirs["merged"])
    where = " in a user namespace" if rootless else ""
    if code == 0:
        return Feature(True, detail=f"mounted a test overlay{where}")
    if code == errno.ENODEV:
        return Feature(
            False, reason="kernel without overlayfs (CONFIG_OVERLAY_FS; modprobe overlay)"
        )
    hint = "" if listed else " (overlay is not in /proc/filesystems)"
    return Feature(False, reason=f"mount -t overlay{where} failed: {_strerror(code)}{hint}")


def _remove_probe_dir(tmp: str, merged: str) -> None:
    # The overlay lived in the child's mount namespace only; never delete through a
    # mount if one is visible here after all.
    if os.path.ismount(merged):
        return
    # overlayfs leaves work/work with mode 000; as non-root rmtree could not list it.
    for dirpath, dirnames, _ in os.walk(tmp):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    shutil.rmtree(tmp, ignore_errors=True)


def _pidfd() -> Feature:
    try:
        fd = os.pidfd_open(os.getpid())
    except AttributeError:
        return Feature(False, reason="this python has no os.pidfd_open")
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return Feature(False, reason="kernel older than 5.3 (no pidfd_open)")
        return Feature(False, reason=f"pidfd_open failed: {e.strerror.lower()}")
    try:
        signal.pidfd_send_signal(fd, 0)
    except OSError as e:
        return Feature(False, reason=f"pidfd_send_signal failed: {e.strerror.lower()}")
    finally:
        os.close(fd)
    return Feature(True, detail="pidfd_open, pidfd_send_signal")


def _openat2() -> Feature:
    class OpenHow(ctypes.Structure):
        _fields_ = [
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        ]

    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    how = OpenHow(flags=os.O_PATH | os.O_CLOEXEC, mode=0, resolve=RESOLVE_IN_ROOT)
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(root),
            ctypes.c_char_p(b"/"),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                return Feature(
                    False, reason="kernel older than 5.6, or a seccomp filter blocks openat2"
                )
            return Feature(False, reason=f"openat2(RESOLVE_IN_ROOT) failed: {_strerror(err)}")
        try:
            got, want = os.fstat(fd), os.fstat(root)
        finally:
            os.close(fd)
    finally:
        os.close(root)
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
        return Feature(False, reason="openat2(RESOLVE_IN_ROOT) resolved '/' outside the root")
    return Feature(True, detail="RESOLVE_IN_ROOT")


def _runtime(name: str) -> Runtime:
    path = shutil.which(name)
    if path is None:
        return Runtime(path=None, version=None)
    try:
        out = subprocess.run(
            [path, "--version"], check=False, capture_output=True, text=True, timeout=PROBE_TIMEOUT
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    lines = out.splitlines()
    return Runtime(path=path, version=lines[0].strip() if lines else None)
