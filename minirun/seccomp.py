"""linux.seccomp: an OCI seccomp profile compiled to a classic BPF program.

`compile_profile` runs in the runtime before it forks: it checks the profile (names of
actions, operators, architectures and flags, each error naming its JSON path), builds the
filter with libseccomp through ctypes, exports it as BPF and prepends runc's -ENOSYS stub.
The container's process then only makes one system call, seccomp(2) or prctl(2) through
minirun.sys: no libseccomp code runs after the fork, nothing is loaded from inside the
container's root, and the program the kernel gets is the one the parent checked (length
included).

Where it is loaded, as runc: before the capabilities go without no_new_privs (that needs
CAP_SYS_ADMIN), after no_new_privs otherwise; in both cases before the init waits on the
exec fifo, so that the startContainer hooks and the runtime's own last steps (the fifo,
closing fds, execve) run under it. A step the filter stops is named in the error
(`SeccompFilter.step`/`blame`), including when the filter kills the init outright.

Seccomp user notification (SCMP_ACT_NOTIFY): the filter is loaded with
SECCOMP_FILTER_FLAG_NEW_LISTENER, the process hands the listener fd to the runtime over
the sync socket (SCM_RIGHTS), and the runtime sends the runtime-spec "container process
state" with that fd to the agent at listenerPath (`send_to_agent`), then closes its copy.
exec'd processes do the same with their own filter.

Why export rather than seccomp_load() in the child: runc 1.1 exports and patches the
program too. libseccomp gives EPERM (or the default errno) for every syscall the profile
does not list, including those newer than the profile; runc prepends a stub that answers
-ENOSYS for syscall numbers above the highest one the profile names, per architecture, so
that libc falls back from e.g. clone3 to clone instead of failing. Matching runc there
needs the program in hand.

Behaviour matched to runc 1.1.5 (checked against the real one):
- syscall names libseccomp cannot resolve on this architecture are skipped silently (runc
  logs them at debug level only); an empty name is an error;
- a rule whose action is the default action is skipped;
- arguments naming the same index twice become one rule per argument (an OR), as runc;
- errnoRet only matters for SCMP_ACT_ERRNO and SCMP_ACT_TRACE (EPERM when absent);
- SCMP_ACT_KILL is SCMP_ACT_KILL_THREAD;
- more than 32 syscall rules turn on libseccomp's binary-tree optimization;
- defaultAction "" with no syscalls means no filter at all.
- SCMP_ACT_NOTIFY is refused as the default action, on `write` (runc's sync channel; ours
  is sendmsg, refused too) and without listenerPath; a listenerPath with no notify rule is
  ignored (runtime-spec).
Deliberate differences: runc 1.1.5 refuses every `flags` entry ("seccomp flags are not yet
supported by runc"); minirun applies SECCOMP_FILTER_FLAG_LOG, _SPEC_ALLOW and
_WAIT_KILLABLE_RECV and accepts SECCOMP_FILTER_FLAG_TSYNC as a no-op (the init has one
thread), as runc 1.2 does. listenerMetadata without listenerPath is refused (the spec's
MUST NOT; runc ignores it).

Only ctypes (already loaded by minirun.sys), errno, os, struct, sys, _signal, _socket and
jsonfast at import time (mmap, 0.2 ms, once a filter is built); libseccomp itself is
loaded on first use, so a config without seccomp pays nothing.
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import ctypes
import errno as _errno
import os
import struct
import sys

from . import OCI_VERSION, jsonfast
from . import sys as _sys

try:  # hashlib itself loads OpenSSL: 4 ms on the start path
    from _sha2 import sha256 as _sha256
except ImportError:
    from _sha256 import sha256 as _sha256
from .errors import InvalidSpec, KernelFeatureMissing, MiniRunError

# libseccomp action values (seccomp.h); ERRNO and TRACE carry their data in the low 16 bits.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_NOTIFY = 0x7FC00000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000

ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_NOTIFY": _ACT_NOTIFY,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
}
# Actions after which the process goes on as if nothing were filtered: runc adds no
# -ENOSYS stub under such a default (a tracer handles new syscalls itself).
_PERMISSIVE = frozenset({_ACT_ALLOW, _ACT_LOG, _ACT_TRACE})

OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

_64BIT = 0x80000000
_LE = 0x40000000
_MIPS_N32 = 0x20000000
# OCI name -> (libseccomp token, AUDIT_ARCH_* the kernel puts in seccomp_data.arch).
# They differ only for x32: libseccomp's token is made up, the kernel says x86_64 and
# sets bit 30 of the syscall number.
ARCHITECTURES: dict[str, tuple[int, int]] = {
    "SCMP_ARCH_X86": (3 | _LE, 3 | _LE),
    "SCMP_ARCH_X86_64": (62 | _64BIT | _LE, 62 | _64BIT | _LE),
    "SCMP_ARCH_X32": (62 | _LE, 62 | _64BIT | _LE),
    "SCMP_ARCH_ARM": (40 | _LE, 40 | _LE),
    "SCMP_ARCH_AARCH64": (183 | _64BIT | _LE, 183 | _64BIT | _LE),
    "SCMP_ARCH_MIPS": (8, 8),
    "SCMP_ARCH_MIPS64": (8 | _64BIT, 8 | _64BIT),
    "SCMP_ARCH_MIPS64N32": (8 | _64BIT | _MIPS_N32, 8 | _64BIT | _MIPS_N32),
    "SCMP_ARCH_MIPSEL": (8 | _LE, 8 | _LE),
    "SCMP_ARCH_MIPSEL64": (8 | _64BIT | _LE, 8 | _64BIT | _LE),
    "SCMP_ARCH_MIPSEL64N32": (8 | _64BIT | _LE | _MIPS_N32, 8 | _64BIT | _LE | _MIPS_N32),
    "SCMP_ARCH_PPC": (20, 20),
    "SCMP_ARCH_PPC64": (21 | _64BIT, 21 | _64BIT),
    "SCMP_ARCH_PPC64LE": (21 | _64BIT | _LE, 21 | _64BIT | _LE),
    "SCMP_ARCH_S390": (22, 22),
    "SCMP_ARCH_S390X": (22 | _64BIT, 22 | _64BIT),
    "SCMP_ARCH_PARISC": (15, 15),
    "SCMP_ARCH_PARISC64": (15 | _64BIT, 15 | _64BIT),
    "SCMP_ARCH_RISCV64": (243 | _64BIT | _LE, 243 | _64BIT | _LE),
}
_X86_64_AUDIT = ARCHITECTURES["SCMP_ARCH_X86_64"][1]
_X32_TOKEN = ARCHITECTURES["SCMP_ARCH_X32"][0]
_S390_TOKENS = (ARCHITECTURES["SCMP_ARCH_S390"][0], ARCHITECTURES["SCMP_ARCH_S390X"][0])
_X32_SYSCALL_BIT = 1 << 30

# seccomp(2) filter flags, with the libseccomp API level (seccomp_api_get) that says the
# kernel has them. TSYNC: accepted, nothing to do (runc ignores it too). WAIT_KILLABLE_RECV
# (Linux 5.19) is newer than libseccomp 2.5's levels: the kernel itself is asked.
SECCOMP_FILTER_FLAG_TSYNC = "SECCOMP_FILTER_FLAG_TSYNC"
_WAIT_KILLABLE_RECV = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
_NEW_LISTENER = 1 << 3
_PROBE_KERNEL = -1
FLAGS: dict[str, tuple[int, int]] = {
    SECCOMP_FILTER_FLAG_TSYNC: (0, 0),
    "SECCOMP_FILTER_FLAG_LOG": (1 << 1, 3),
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": (1 << 2, 4),
    _WAIT_KILLABLE_RECV: (1 << 5, _PROBE_KERNEL),
}
_NOTIFY_API_LEVEL = 6  # libseccomp >= 2.5 on Linux >= 5.0: SCMP_ACT_NOTIFY works
# runc's rule: the process must still be able to hand its listener fd over (runc writes
# it to a pipe, minirun sends it with sendmsg); a notify there would wait for an agent
# that cannot have the fd yet.
_NOT_NOTIFIABLE = ("write", "sendmsg")
_STEP_SIZE = 128

_CACHE_FORMAT = "2"  # a JSON head line, with the errnos
_AGENT_TIMEOUT = 10.0  # connecting to and writing to the agent's socket
_MAX_ARGS = 6  # a syscall has at most six arguments
_BPF_MAXINSNS = 4096  # the kernel refuses longer programs (EINVAL)
_OPTIMIZE_ABOVE = 32  # runc turns on the binary tree above 32 rules
_SCMP_FLTATR_CTL_OPTIMIZE = 8
_NR_SCMP_ERROR = -1

# classic BPF opcodes for the stub
_LD_W_ABS = 0x20
_JMP_JA = 0x05
_JMP_JEQ = 0x15
_JMP_JGT = 0x25
_JMP_JSET = 0x45
_RET_K = 0x06
_INSN = struct.Struct("=HBBI")  # struct sock_filter, in host byte order
_RET_ENOSYS = _ACT_ERRNO | _errno.ENOSYS


class SeccompFilter:
    """A checked, compiled filter: `install()` applies it to the calling thread."""

    def __init__(self, program: bytes, flags: int, ignored: tuple[str, ...],
                 stub_length: int = 0, errnos: dict[str, list[int]] | None = None) -> None:
        self.program = program
        self.flags = flags
        self.ignored = ignored  # syscall names libseccomp does not know here
        self.stub_length = stub_length  # instructions of the -ENOSYS stub, at the start
        # syscall name -> the errnos the filter can answer it with; "*": names the
        # profile does not list
        self.errnos = errnos or {}
        self.installed = False
        # Built now so that the child only makes the system call.
        self._prog = _sys.SockFprog.of(program)
        # The runtime's step under way once the filter is loaded, in a page shared with
        # the parent: it is all there is to go by when the filter kills the process.
        import mmap

        self._steps = mmap.mmap(-1, _STEP_SIZE)

    def __len__(self) -> int:
        return len(self.program) // _INSN.size

    @property
    def notifies(self) -> bool:
        """Whether loading it gives a listener fd for a seccomp agent."""
        return bool(self.flags & _NEW_LISTENER)

    def install(self) -> int | None:
        """Load the filter; returns the listener fd of a notifying one (close-on-exec)."""
        fd = _sys.seccomp_set_mode_filter(self._prog, self.flags)
        self.installed = True
        return fd if self.notifies else None

    def step(self, name: str) -> None:
        """Say which of the runtime's own steps runs next. Only once the filter is loaded,
        and only a write to memory: no system call for the filter to stop."""
        if self.installed:
            data = name.encode()[:_STEP_SIZE - 1] + b"\0"
            self._steps[:len(data)] = data

    def current_step(self) -> str:
        """The step recorded last, by this process or by a child forked after compile."""
        raw = self._steps[:]
        return raw[:raw.index(b"\0")].decode() if raw[0] else ""

    def blame(self, e: BaseException) -> BaseException:
        """The error to report for `e`, raised in the container's setup: one naming the
        runtime's step when the filter is loaded and can answer that step's syscall with
        `e`'s errno. (Argument conditions are not evaluated: a plain EPERM of a syscall
        the profile restricts is put on the filter too.)"""
        err = getattr(e, "errno", None) or getattr(e.__context__, "errno", None)
        step = getattr(e, "call", None) or self.current_step()
        if not self.installed or not step or not err:
            return e
        # "prctl(PR_SET_KEEPCAPS)", "newfstatat, access (what for)": the syscalls
        calls = [c.split("(")[0].strip() for c in step.split(" (")[0].split(",")]
        if not any(err in self.errnos.get(c, self.errnos.get("*", ())) for c in calls):
            return e
        return MiniRunError(f"seccomp: the filter blocks the runtime's own step: {step}: "
                            f"{os.strerror(err)}")

    def explain_exit(self, status: int) -> MiniRunError | None:
        """For the parent, when the process went away without a word after loading the
        filter: an error naming the step it was at, from its wait status."""
        step = self.current_step()
        if not step:
            return None
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            how = f"was killed by signal {sig} ({signal.strsignal(sig)})"
        else:
            how = f"exited with status {os.waitstatus_to_exitcode(status)}"
        return MiniRunError(f"seccomp: the filter blocks the runtime's own step: {step}: "
                            f"the process {how}")


def send_to_agent(seccomp: dict, pid: int, state: dict, listener: int) -> None:
    """Hand a listener fd to the seccomp agent at listenerPath, as the runtime-spec says:
    one connection, the container process state as JSON with the fd as SCM_RIGHTS, then
    close. The caller keeps (and closes) its copy of the fd."""
    path = seccomp["listenerPath"]
    # ociVersion: the spec this message follows, minirun's (the state keeps the config's)
    message = {"ociVersion": OCI_VERSION, "fds": ["seccompFd"], "pid": pid, "state": state}
    if seccomp.get("listenerMetadata"):  # runc omits it when empty
        message["metadata"] = seccomp["listenerMetadata"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_AGENT_TIMEOUT)
        sock.connect(path)
        sock.sendmsg([jsonfast.dumps(message).encode()],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                       listener.to_bytes(4, sys.byteorder))])
    except OSError as e:
        raise MiniRunError(f"seccomp agent at linux.seccomp.listenerPath {path}: "
                           f"{e.strerror or e}") from None
    finally:
        sock.close()


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError:
            raise KernelFeatureMissing("linux.seccomp needs libseccomp.so.2 "
                                       "(install libseccomp2)") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ScmpArgCmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_api_get.restype = ctypes.c_uint
        _lib = lib
    return _lib


def libseccomp_version() -> str | None:
    """"major.minor.micro" of the libseccomp this host has, None without one."""
    try:
        lib = _libseccomp()
    except KernelFeatureMissing:
        return None

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint),
                    ("micro", ctypes.c_uint)]

    get = lib.seccomp_version
    get.restype = ctypes.POINTER(Version)
    v = get().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def supported_flags() -> list[str]:
    """The flags of FLAGS that this kernel and libseccomp can apply."""
    try:
        level = _libseccomp().seccomp_api_get()
    except KernelFeatureMissing:
        return []
    return [name for name in FLAGS if _flag_supported(name, level)]


def notify_supported() -> bool:
    """Whether SCMP_ACT_NOTIFY works here (libseccomp's API level says the kernel's)."""
    try:
        return _libseccomp().seccomp_api_get() >= _NOTIFY_API_LEVEL
    except KernelFeatureMissing:
        return False


def _flag_supported(name: str, level: int) -> bool:
    bit, need = FLAGS[name]
    if need == _PROBE_KERNEL:
        # the flag is refused without NEW_LISTENER, so both are probed
        return _sys.seccomp_filter_flags_known(bit | _NEW_LISTENER)
    return level >= need


def _fail(path: str, message: str) -> None:
    raise InvalidSpec(f"config.json: {path}: {message}")


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _action(name: str, errno_ret: int | None, path: str) -> int:
    value = ACTIONS.get(name)
    if value is None:
        _fail(path, f"unknown seccomp action {_quote(name)} (known: "
                    f"{', '.join(sorted(ACTIONS))})")
    if value in (_ACT_ERRNO, _ACT_TRACE):
        value |= (_errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value


class _Rule:
    __slots__ = ("action", "args", "name", "path")

    def __init__(self, name: str, action: int, args: list[tuple[int, int, int, int]],
                 path: str) -> None:
        self.name = name
        self.action = action
        self.args = args  # (index, op, value, valueTwo)
        self.path = path


def _check(seccomp: dict) -> tuple[int, list[tuple[str, int, int]], int, list[_Rule]]:
    """Everything that does not need libseccomp: (default action, [(arch name, token,
    audit arch)], load flags, rules one per syscall name)."""
    base = "linux.seccomp"
    if seccomp.get("listenerMetadata") and not seccomp.get("listenerPath"):
        _fail(f"{base}.listenerMetadata", "set without listenerPath (the runtime-spec's "
                                          "MUST NOT)")
    default = _action(seccomp.get("defaultAction", ""), seccomp.get("defaultErrnoRet"),
                      f"{base}.defaultAction")
    if default == _ACT_NOTIFY:
        _fail(f"{base}.defaultAction", "SCMP_ACT_NOTIFY cannot be the default action (the "
                                       "runtime's own calls would wait for the agent)")

    arches = []
    for i, name in enumerate(seccomp.get("architectures") or []):
        if name not in ARCHITECTURES:
            _fail(f"{base}.architectures[{i}]", f"unknown architecture {_quote(name)} "
                                                f"(known: {', '.join(sorted(ARCHITECTURES))})")
        arches.append((name, *ARCHITECTURES[name]))

    flags = 0
    unsupported = ""
    for i, name in enumerate(seccomp.get("flags") or []):
        path = f"{base}.flags[{i}]"
        if name == "SECCOMP_FILTER_FLAG_NEW_LISTENER":
            _fail(path, f"{name} is not a profile flag: the runtime sets it itself when a "
                        "rule's action is SCMP_ACT_NOTIFY")
        if name not in FLAGS:
            _fail(path, f"unknown seccomp flag {_quote(name)} (known: {', '.join(FLAGS)})")
        flags |= FLAGS[name][0]
        if FLAGS[name][1] and not _flag_supported(name, _libseccomp().seccomp_api_get()):
            unsupported = unsupported or f"config.json: {path}: {name} is not supported by " \
                                         "this kernel or libseccomp"

    rules = []
    for i, call in enumerate(seccomp.get("syscalls") or []):
        path = f"{base}.syscalls[{i}]"
        action = _action(call.get("action", ""), call.get("errnoRet"), f"{path}.action")
        args = []
        for k, arg in enumerate(call.get("args") or []):
            op = OPERATORS.get(arg.get("op"))
            if op is None:
                _fail(f"{path}.args[{k}].op", f"unknown operator {_quote(arg.get('op'))} "
                                              f"(known: {', '.join(sorted(OPERATORS))})")
            if arg["index"] >= _MAX_ARGS:
                _fail(f"{path}.args[{k}].index", f"{arg['index']} is out of range: a syscall "
                                                 f"has at most {_MAX_ARGS} arguments (0-5)")
            args.append((arg["index"], op, arg["value"], arg.get("valueTwo", 0)))
        for j, name in enumerate(call.get("names") or []):
            if not name:
                _fail(f"{path}.names[{j}]", "an empty string is not a syscall name")
            if action == _ACT_NOTIFY and name in _NOT_NOTIFIABLE:
                _fail(f"{path}.names[{j}]", f"SCMP_ACT_NOTIFY cannot be used for {name}: the "
                                            "runtime needs it to hand the listener fd over")
            rules.append(_Rule(name, action, args, f"{path}.names[{j}]"))
    notify = [r.path for r in rules if r.action == _ACT_NOTIFY]
    if notify:
        if not seccomp.get("listenerPath"):
            _fail(notify[0].rsplit(".", 1)[0] + ".action",
                  "SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath (the seccomp agent's "
                  "socket)")
        if _libseccomp().seccomp_api_get() < _NOTIFY_API_LEVEL:
            raise KernelFeatureMissing(f"config.json: {notify[0].rsplit('.', 1)[0]}.action: "
                                       "SCMP_ACT_NOTIFY needs Linux >= 5.0 and libseccomp "
                                       f">= 2.5 (this libseccomp is {libseccomp_version()})")
        flags |= _NEW_LISTENER
    elif flags & FLAGS[_WAIT_KILLABLE_RECV][0]:
        _fail(f"{base}.flags", f"{_WAIT_KILLABLE_RECV} only applies with an SCMP_ACT_NOTIFY "
                               "rule")
    if unsupported:  # after the checks of the profile itself, which hold on any host
        raise KernelFeatureMissing(unsupported)
    return default, arches, flags, rules


def compile_profile(seccomp: dict | None, cache_dir: str | None = None) -> SeccompFilter | None:
    """Check and compile linux.seccomp, before the runtime forks. None: no filter (no
    profile, or runc's "seccomp disabled": an empty defaultAction and no syscalls).

    With cache_dir, a profile compiled before (same JSON, same libseccomp, same machine)
    is read back instead: docker's default profile takes ~30 ms to compile, a third of a
    container's start. The directory must be as private as the runtime's state."""
    if not seccomp or (not seccomp.get("defaultAction") and not seccomp.get("syscalls")):
        return None
    key = None
    if cache_dir:
        key = _sha256("\0".join((jsonfast.dumps(seccomp), libseccomp_version(),
                                 os.uname().machine, _CACHE_FORMAT)).encode()).hexdigest()
        cached = _cache_read(cache_dir, key)
        if cached is not None:
            return cached
    compiled = _compile(seccomp)
    if key:
        _cache_write(cache_dir, key, compiled)
    return compiled


def _cache_read(cache_dir: str, key: str) -> SeccompFilter | None:
    try:
        with open(os.path.join(cache_dir, key), "rb") as f:
            data = f.read()
        head, _, program = data.partition(b"\n")
        meta = jsonfast.loads(head)
        flags, stub, ignored, errnos = (int(meta["flags"]), int(meta["stub"]),
                                        tuple(meta["ignored"]), dict(meta["errnos"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not program or len(program) % _INSN.size:
        return None
    return SeccompFilter(program, flags, ignored, stub, errnos)


def _cache_write(cache_dir: str, key: str, f: SeccompFilter) -> None:
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(cache_dir, f".{key}.{os.getpid()}")
        with open(tmp, "wb") as out:
            head = {"flags": f.flags, "stub": f.stub_length, "ignored": list(f.ignored),
                    "errnos": f.errnos}
            out.write(jsonfast.dumps(head).encode() + b"\n" + f.program)
        os.rename(tmp, os.path.join(cache_dir, key))
    except OSError:
        pass  # a cache, nothing more


def _compile(seccomp: dict) -> SeccompFilter:
    default, arches, flags, rules = _check(seccomp)
    lib = _libseccomp()
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise InvalidSpec("config.json: linux.seccomp.defaultAction: libseccomp refused "
                          "the default action")
    try:
        for i, (name, token, _) in enumerate(arches):
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and rc != -_errno.EEXIST:  # the native one is already in
                why = os.strerror(-rc).lower()
                if rc == -_errno.EDOM:
                    why = "its byte order or word size cannot share a filter with this host's"
                _fail(f"linux.seccomp.architectures[{i}]",
                      f"libseccomp {libseccomp_version()} cannot add {name}: {why}")
        if len(rules) > _OPTIMIZE_ABOVE:
            lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)  # best effort, as runc
        ignored = []
        errnos = {"*": {_errno_of(default)}}
        for rule in rules:
            if rule.action == default:
                continue  # libseccomp refuses it (EACCES); runc skips it silently
            nr = lib.seccomp_syscall_resolve_name(rule.name.encode())
            if nr == _NR_SCMP_ERROR:
                ignored.append(rule.name)  # not on this architecture: runc ignores it
                continue
            _add_rule(lib, ctx, nr, rule)
            answers = errnos.setdefault(rule.name, set())
            answers.add(_errno_of(rule.action))
            if rule.args:  # when the arguments do not match, the default answers
                answers.add(_errno_of(default))
        program = _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)
    stub = b""
    if default not in _PERMISSIVE and default != _RET_ENOSYS:
        stub = _enosys_stub(lib, arches, rules)
        if stub:
            errnos["*"].add(_errno.ENOSYS)
    program = stub + program
    count = len(program) // _INSN.size
    if count > _BPF_MAXINSNS:
        raise InvalidSpec(f"config.json: linux.seccomp: the profile compiles to {count} BPF "
                          f"instructions, more than the kernel's limit of {_BPF_MAXINSNS}")
    return SeccompFilter(program, flags, tuple(ignored), len(stub) // _INSN.size,
                         {name: sorted(e for e in answers if e)
                          for name, answers in errnos.items()})


def _errno_of(action: int) -> int | None:
    """What a call this action stops fails with (TRACE with no tracer: ENOSYS)."""
    kind = action & 0xFFFF0000
    if kind == _ACT_ERRNO:
        return action & 0xFFFF
    return _errno.ENOSYS if kind == _ACT_TRACE else None


def _add_rule(lib: ctypes.CDLL, ctx: int, nr: int, rule: _Rule) -> None:
    indexes = [a[0] for a in rule.args]
    if len(set(indexes)) == len(indexes):
        groups = [rule.args]
    else:
        # Two conditions on one argument cannot be ANDed in libseccomp: runc adds one
        # rule per condition, so any one of them matches.
        groups = [[a] for a in rule.args]
    for group in groups:
        conds = (_ScmpArgCmp * max(1, len(group)))()
        for n, (index, op, a, b) in enumerate(group):
            conds[n] = _ScmpArgCmp(index, op, a, b)
        rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(group), conds)
        if rc < 0:
            _fail(rule.path, f"libseccomp refused the rule for {rule.name}: "
                             f"{os.strerror(-rc).lower()}")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    # A memfd rather than a pipe: a long program would fill a pipe we are not reading.
    fd = os.memfd_create("minirun-seccomp", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise MiniRunError(f"seccomp_export_bpf: {os.strerror(-rc).lower()}")
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


# --- runc's -ENOSYS stub ---------------------------------------------------------------

def _ja(skip: int) -> tuple[int, int, int, int]:
    return (_JMP_JA, 0, 0, skip)


def _jump(op: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (op, jt, jf, k)


def _last_syscalls(lib: ctypes.CDLL, arches: list[tuple[str, int, int]],
                   rules: list[_Rule]) -> dict[int, dict[int, int]]:
    """{audit arch: {libseccomp token: highest syscall number the profile names}}, for
    the listed architectures only (others get the filter's bad-arch action anyway)."""
    last: dict[int, dict[int, int]] = {}
    names = {r.name.encode() for r in rules}
    for _, token, audit in arches:
        per_arch = last.setdefault(audit, {})
        if token in per_arch:
            continue
        highest = max((lib.seccomp_syscall_resolve_name_arch(token, n) for n in names),
                      default=0)
        if highest > 0:
            per_arch[token] = highest
    return {audit: m for audit, m in last.items() if m}


def _enosys_stub(lib: ctypes.CDLL, arches: list[tuple[str, int, int]],
                 rules: list[_Rule]) -> bytes:
    """runc's patchbpf stub, instruction for instruction: for each listed architecture,
    a syscall number above the highest the profile names returns -ENOSYS; everything
    else falls through to libseccomp's program. Built from the end backwards, since
    BPF jumps only go forward and are counted from the instruction after the jump."""
    last = _last_syscalls(lib, arches, rules)
    if not last:
        return b""
    tail = [_ja(1), (_RET_K, 0, 0, _RET_ENOSYS)]
    jump_table = {}
    for audit, per_token in last.items():
        to_enosys = len(tail) - 1
        to_filter = to_enosys + 1
        section = [(_LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
        if len(per_token) == 1:
            (token, nr), = per_token.items()
            if token in _S390_TOKENS:
                # s390 multiplexes unknown large syscall numbers into 0 (setup(2), long
                # gone): that must be -ENOSYS too.
                section += [_jump(_JMP_JEQ, 0, jt=0, jf=1), (_RET_K, 0, 0, _RET_ENOSYS)]
            if to_enosys + 1 <= 255:
                sec_tail = [_jump(_JMP_JGT, nr, jt=to_enosys + 1), _ja(to_filter)]
            else:
                sec_tail = [_jump(_JMP_JGT, nr, jt=0, jf=1), (_RET_K, 0, 0, _RET_ENOSYS),
                            _ja(to_filter)]
            if audit == _X86_64_AUDIT:
                # x86_64 and x32 share the audit arch; bit 30 of the number tells them
                # apart. Skip the check in the other mode.
                if token == _X32_TOKEN:
                    sec_tail.insert(0, _jump(_JMP_JSET, _X32_SYSCALL_BIT, jt=0,
                                             jf=len(sec_tail) - 1))
                else:
                    sec_tail.insert(0, _jump(_JMP_JSET, _X32_SYSCALL_BIT,
                                             jt=len(sec_tail) - 1))
            section += sec_tail
        else:
            x32 = per_token[_X32_TOKEN]
            x86_64 = per_token[ARCHITECTURES["SCMP_ARCH_X86_64"][0]]
            if to_enosys + 2 <= 255:
                section += [_jump(_JMP_JSET, _X32_SYSCALL_BIT, jt=1),
                            _jump(_JMP_JGT, x86_64, jt=to_enosys + 2, jf=1),
                            _jump(_JMP_JGT, x32, jt=to_enosys + 1),
                            _ja(to_filter)]
            else:
                section += [_jump(_JMP_JSET, _X32_SYSCALL_BIT, jt=1),
                            _jump(_JMP_JGT, x86_64, jt=1, jf=2),
                            _jump(_JMP_JGT, x32, jt=0, jf=1),
                            (_RET_K, 0, 0, _RET_ENOSYS),
                            _ja(to_filter)]
        tail = section + tail
        jump_table[audit] = len(tail)
    tail.insert(0, _ja(len(tail)))  # an architecture not listed: straight to the filter
    for audit in last:
        jump = len(tail) - jump_table[audit]
        if jump <= 255:
            tail.insert(0, _jump(_JMP_JEQ, audit, jt=jump))
        else:
            tail[0:0] = [_jump(_JMP_JEQ, audit, jt=0, jf=1), _ja(jump)]
    tail.insert(0, (_LD_W_ABS, 0, 0, 4))  # seccomp_data.arch
    return b"".join(_INSN.pack(*insn) for insn in tail)


def disassemble(program: bytes) -> list[str]:
    """One line per instruction, in the notation of runc's --debug dump ("ld [4]",
    "jeq #3221225534,1", ...); for tests and debugging."""
    out = []
    for off in range(0, len(program), _INSN.size):
        code, jt, jf, k = _INSN.unpack_from(program, off)
        if code == _LD_W_ABS:
            out.append(f"ld [{k}]")
        elif code == _JMP_JA:
            out.append(f"ja {k}")
        elif code == _RET_K:
            out.append(f"ret #{k}")
        elif code in (_JMP_JEQ, _JMP_JGT, _JMP_JSET):
            op = {_JMP_JEQ: "jeq", _JMP_JGT: "jgt", _JMP_JSET: "jset"}[code]
            if jt and jf:
                out.append(f"{op} #{k},{jt},{jf}")
            elif jt:
                out.append(f"{op} #{k},{jt}")
            else:
                neg = {_JMP_JEQ: "jneq", _JMP_JGT: "jle", _JMP_JSET: "jset"}[code]
                out.append(f"{neg} #{k},{jf}" if code != _JMP_JSET else f"{op} #{k},0,{jf}")
        else:
            out.append(f"0x{code:02x} {jt} {jf} {k}")
    return out
