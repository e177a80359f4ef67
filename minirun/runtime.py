"""The OCI lifecycle: an OCI bundle in, a container out.

create forks a child (C) that joins the container's cgroup, joins or unshares its
namespaces and forks the container's init (I), pid 1 in the new pid namespace. I builds
the rootfs, pivots into it, applies the process settings and then blocks on the exec fifo
until `start` writes a byte to it; only then does it execve the user's program. C and I
talk to the parent (P) over a SOCK_SEQPACKET socketpair: JSON messages, every wait with a
timeout so that a stuck child is an error, never a hang.

  C -> P  {"userns": true}          P writes uid/gid maps, answers {"ok": true}
  C -> P  {"pid": N}                 I's pid, as P sees it
  I -> P  {"hooks": "createRuntime"} P runs prestart+createRuntime hooks, answers
  I -> P  {"ready": true}            I is set up and waits on the fifo
  * -> P  {"error": "..."}           setup failed; P cleans up

Everything the children need is imported at module load: after pivot_root the host's
files are gone, and the children never re-execute the runtime or the interpreter
(CVE-2019-5736).
"""

from __future__ import annotations

# _signal and _socket, not signal and socket: those wrap constants in enums, and enum
# (with re, which json would import) is most of the import time of a container start.
import _signal as signal
import _socket as socket
import errno
import fcntl
import os
import stat
import sys

from . import OCI_VERSION
from . import jsonfast as json
from . import sys as _sys
from .cgroups import open_cgroup, resolve_path
from .container import (  # noqa: F401 - re-exported: runtime is the lifecycle's API
    enable_trace,
    trace,
    HOOK_KINDS,
    default_root,
    validate_id,
    proc_start_time,
    Container,
    list_containers,
    run_hook,
    run_hooks,
    _now,
    _write_pid_file,
    _kill_and_wait,
    _cleanup,
    start,
    SIGNALS,
    parse_signal,
    kill,
    delete,
    pause,
    resume,
    FORWARDED_SIGNALS,
    wait_init,
    wait_child,
)
from .errors import (AlreadyExists, ContainerStateError, ExecutableNotFound, HookError,
                     InvalidArgument, InvalidSpec, KernelFeatureMissing, MiniRunError,
                     NotExecutable, NotFound)
from .mounts import RootfsBuilder, make_in_root, setup_console_mount
from .namespaces import NamespacePlan, write_id_maps
from . import security
from . import spec as _spec

SYNC_TIMEOUT = 60.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
def _send(sock: socket.socket, msg: dict) -> None:
    sock.send(json.dumps(msg).encode())


def _recv(sock: socket.socket, timeout: float | None = SYNC_TIMEOUT) -> dict:
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        raise MiniRunError("container setup timed out waiting for the child") from None
    if not data:
        raise MiniRunError("container init exited during setup")
    return json.loads(data)


class CreateOptions:
    def __init__(self, console_socket: str | None = None, pid_file: str | None = None,
                 no_pivot: bool = False, no_new_keyring: bool = False,
                 preserve_fds: int = 0, console_fd: socket.socket | None = None,
                 seccomp_cache: str | None = None) -> None:
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.preserve_fds = preserve_fds
        self.console_fd = console_fd  # an already-connected console socket (run -t)
        self.seccomp_cache = seccomp_cache  # where compiled profiles are kept (the engine's)


def _check_supported(cfg: dict) -> None:
    unsupported = _spec.unsupported(cfg)
    if unsupported:
        raise InvalidSpec(f"config.json: {unsupported[0]}: not supported by minirun yet")
    linux = cfg.get("linux") or {}
    types = {ns.get("type") for ns in linux.get("namespaces") or []}
    if "mount" not in types:
        raise InvalidSpec("config.json: linux.namespaces: a mount namespace is required")
    if (linux.get("uidMappings") or linux.get("gidMappings")) and "user" not in types:
        raise InvalidSpec("config.json: linux.uidMappings given without a user namespace")
    for key in linux.get("sysctl") or {}:
        _check_sysctl(key, types)


_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


def _check_sysctl(key: str, types: set) -> None:
    """Only namespaced sysctls, and only with their namespace (runc's rules)."""
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        if "ipc" in types:
            return
        raise InvalidSpec(f"sysctl {key!r} needs a new ipc namespace")
    if key.startswith("net."):
        if "network" in types:
            return
        raise InvalidSpec(f"sysctl {key!r} needs a new network namespace")
    if key in ("kernel.hostname", "kernel.domainname"):
        raise InvalidSpec(f"sysctl {key!r} is not allowed: use hostname/domainname")
    raise InvalidSpec(f"sysctl {key!r} is not namespaced and cannot be set in a container")


def create(root: str, container_id: str, bundle: str, opts: CreateOptions) -> Container:
    """Create a container and leave its init blocked before execve. Returns its state."""
    validate_id(container_id)
    bundle = os.path.abspath(bundle)
    trace("create: begin")
    cfg = _spec.load_config(bundle)
    _check_supported(cfg)
    trace("create: config loaded")
    if not cfg.get("process"):
        raise InvalidSpec("config.json: process is required to create a container")
    root_path = cfg["root"]["path"]
    rootfs = root_path if os.path.isabs(root_path) else os.path.join(bundle, root_path)
    rootfs = os.path.realpath(rootfs)
    if not os.path.isdir(rootfs):
        raise NotFound(f"rootfs {rootfs} does not exist")
    process = cfg["process"]
    if process.get("terminal") and not (opts.console_socket or opts.console_fd):
        raise InvalidArgument("cannot allocate a tty without --console-socket")
    caps = security.capability_plan(process.get("capabilities"), _spec.CAPABILITIES,
                                    security.last_cap())
    rlimits = security.rlimit_plan(process.get("rlimits"))
    _check_cwd(process.get("cwd", "/"))
    seccomp_filter = None
    if (cfg.get("linux") or {}).get("seccomp"):
        # Checked and compiled to BPF here, before anything exists: the init only loads
        # it. Imported here so that configs without a profile do not pay for the module.
        from . import seccomp

        seccomp_filter = seccomp.compile_profile(cfg["linux"]["seccomp"], opts.seccomp_cache)
        if seccomp_filter is not None:
            # As runc's debug log: names libseccomp does not know here are skipped.
            trace(f"create: seccomp compiled, {len(seccomp_filter)} BPF instructions, "
                  f"unknown syscalls ignored: {' '.join(seccomp_filter.ignored) or 'none'}")

    os.makedirs(root, mode=0o700, exist_ok=True)
    c = Container(root, container_id)
    try:
        os.mkdir(c.dir, 0o711)
    except FileExistsError:
        raise AlreadyExists(f"container with id {container_id!r} already exists") from None

    linux = cfg.get("linux") or {}
    rootless = os.geteuid() != 0
    cg = None
    init_pid = 0
    console = None
    plan = None
    try:
        cg = open_cgroup(resolve_path(linux.get("cgroupsPath"), container_id), rootless=rootless)
        c.data = {
            "ociVersion": cfg.get("ociVersion", OCI_VERSION), "id": container_id,
            "bundle": bundle, "rootfs": rootfs, "pid": 0, "start_time": None,
            "created": _now(), "annotations": cfg.get("annotations") or {},
            "hooks": cfg.get("hooks") or {}, "cgroup_path": cg.path,
            "cgroup_driver": f"v{cg.version}", "cgroup_root": cg.root, "rootless": rootless,
            "ready": False, "config": cfg, "no_new_keyring": opts.no_new_keyring,
        }
        # Saved at once, and again as soon as the init's pid is known: if this process is
        # killed mid-create, `delete --force` still finds the cgroup and the init.
        c.save()
        cg.create()
        resources = dict(linux.get("resources") or {})
        # runc applies its default device rules (deny all but the usual nodes) even when
        # the config lists none. Rootless there is no devices cgroup to write.
        if not rootless:
            resources.setdefault("devices", [])
        cg.apply(resources)
        trace("create: cgroup ready")
        plan = NamespacePlan(linux.get("namespaces") or [])
        os.mkfifo(c.fifo, 0o600)
        console = opts.console_fd
        if opts.console_socket:
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                console.connect(opts.console_socket)
            except OSError as e:
                raise MiniRunError(f"console socket {opts.console_socket}: {e.strerror}") from None
        init_pid = _spawn(c, cfg, rootfs, bundle, cg, plan, caps, rlimits, console, opts,
                          seccomp_filter)
        c.data["pid"] = init_pid
        c.data["start_time"] = proc_start_time(init_pid)
        c.data["ready"] = True
        c.save()
        if opts.pid_file:
            _write_pid_file(opts.pid_file, init_pid)
    except BaseException:
        if init_pid:
            _kill_and_wait(init_pid)
        _cleanup(c, cg)
        raise
    finally:
        if plan is not None:
            plan.close()
        if console is not None and opts.console_socket:
            console.close()
    return c


def _check_cwd(cwd: str) -> None:
    if not os.path.isabs(cwd):
        raise InvalidSpec(f"process.cwd {cwd!r} must be an absolute path")
    # CVE-2024-21626: a cwd through /proc/self/fd/N could name a leaked host directory.
    parts = os.path.normpath(cwd).split("/")
    if len(parts) >= 4 and parts[1] == "proc" and parts[3] == "fd" and \
            (parts[2] in ("self", "thread-self") or parts[2].isdigit()):
        raise InvalidSpec(f"process.cwd {cwd!r} points into /proc/*/fd: refused")


def _spawn(c: Container, cfg: dict, rootfs: str, bundle: str, cg, plan: NamespacePlan,
           caps, rlimits, console, opts: CreateOptions, seccomp_filter=None) -> int:
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _sys.prctl(_sys.PR_SET_CHILD_SUBREAPER, 1, name="prctl(PR_SET_CHILD_SUBREAPER)")
    linux = cfg.get("linux") or {}
    pid = cg.fork()  # C starts in the cgroup2 hierarchy, if any, without a move
    if pid == 0:
        parent_sock.close()
        code = 1
        try:
            _first_child(c, cfg, rootfs, bundle, cg, plan, caps, rlimits, console, opts,
                         child_sock, seccomp_filter)
            code = 0
        except BaseException as e:
            _report_error(child_sock, e)
        os._exit(code)
    child_sock.close()
    init_pid = 0
    try:
        hooks = cfg.get("hooks") or {}
        while True:
            msg = _recv(parent_sock)
            if "error" in msg:
                raise _rebuild_error(msg)
            if msg.get("userns"):
                write_id_maps(pid, linux.get("uidMappings") or [],
                              linux.get("gidMappings") or [])
                _send(parent_sock, {"ok": True})
            elif "pid" in msg:
                init_pid = msg["pid"]
                c.data["pid"] = init_pid
                c.data["start_time"] = proc_start_time(init_pid)
                c.save()
                os.waitpid(pid, 0)  # C exits right after; I is now our child (subreaper)
                pid = 0
            elif msg.get("hooks"):
                run_hooks(hooks, ("prestart", "createRuntime"), c.hook_state("creating"))
                _send(parent_sock, {"ok": True})
            elif msg.get("ready"):
                trace("create: init ready")
                return init_pid
    except BaseException:
        if pid:
            _kill_and_wait(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if init_pid:
            _kill_and_wait(init_pid)
        raise
    finally:
        parent_sock.close()


def _report_error(sock: socket.socket, e: BaseException) -> None:
    kind = type(e).__name__ if isinstance(e, MiniRunError) else "MiniRunError"
    msg = str(e) if isinstance(e, MiniRunError) else f"{type(e).__name__}: {e}"
    if isinstance(e, OSError) and not isinstance(e, MiniRunError):
        msg = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    try:
        _send(sock, {"error": msg, "kind": kind})
    except OSError:
        pass


_ERROR_KINDS = {cls.__name__: cls for cls in
                (MiniRunError, NotFound, InvalidSpec, InvalidArgument, KernelFeatureMissing,
                 HookError, ContainerStateError, ExecutableNotFound, NotExecutable)}


def _rebuild_error(msg: dict) -> MiniRunError:
    if msg.get("kind") == "SysError":
        return MiniRunError(msg["error"])
    return _ERROR_KINDS.get(msg.get("kind"), MiniRunError)(msg["error"])


def _reset_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE,
                signal.SIGXFSZ, signal.SIGCHLD, signal.SIGWINCH, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _first_child(c, cfg, rootfs, bundle, cg, plan: NamespacePlan, caps, rlimits, console,
                 opts, sock, seccomp_filter=None) -> None:
    """C: join the cgroup and namespaces, fork the init, report its pid, exit."""
    trace("child: forked")
    _reset_signals()
    # CVE-2019-5736: nothing in the container may open our /proc/<pid>/exe (the host's
    # python) while we are not yet the user's program.
    _sys.prctl(_sys.PR_SET_DUMPABLE, 0, name="prctl(PR_SET_DUMPABLE)")
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL, name="prctl(PR_SET_PDEATHSIG)")
    if not c.data.get("rootless") or cg.exists():
        cg.add_pid(0)
    trace("child: in cgroup")
    plan.join_all()
    # Opened while we are still the host's root (a user namespace would lock us out of
    # the state dir); read-write so that the open does not block and `start` can tell
    # the init is waiting (ENXIO once it is gone).
    fifo_fd = os.open(c.fifo, os.O_RDWR | os.O_CLOEXEC)
    flags = plan.new_flags
    if plan.new_user:
        _sys.unshare(_sys.CLONE_NEWUSER)
        # An unprivileged parent can only write our uid_map and setgroups while we are
        # dumpable; we are not yet in the container's mounts, so this opens nothing.
        if c.data.get("rootless"):
            _sys.prctl(_sys.PR_SET_DUMPABLE, 1, name="prctl(PR_SET_DUMPABLE)")
        _send(sock, {"userns": True})
        _recv(sock)
        _sys.prctl(_sys.PR_SET_DUMPABLE, 0, name="prctl(PR_SET_DUMPABLE)")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        flags &= ~_sys.CLONE_NEWUSER
    elif plan.has("user"):
        # A joined user namespace: become its root, as runc does. Until then we are the
        # host's uid 0, which it does not map: whatever we create would fail (EOVERFLOW).
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    if flags:
        _sys.unshare(flags)
    trace("child: namespaces entered")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _init(c, cfg, rootfs, bundle, cg, plan, caps, rlimits, console, opts, sock,
                  fifo_fd, seccomp_filter)
        except BaseException as e:
            _report_error(sock, e)
        os._exit(code)
    _send(sock, {"pid": pid})


def _init(c, cfg, rootfs, bundle, cg, plan: NamespacePlan, caps, rlimits, console, opts,
          sock, fifo_fd: int, seccomp_filter=None) -> None:
    """I: pid 1 of the container. Returns only by raising; on success it execs."""
    os.setsid()
    # Our pid as the host sees it: /proc is still the host's until pivot_root.
    c.data["pid"] = int(os.readlink("/proc/self"))
    process = cfg["process"]
    linux = cfg.get("linux") or {}
    hooks = cfg.get("hooks") or {}

    builder = RootfsBuilder(cfg, rootfs, bundle, cg, new_userns=plan.has("user"),
                            new_cgroupns=bool(plan.new_flags & _sys.CLONE_NEWCGROUP),
                            # only a netns made after the userns is owned by it
                            new_netns=bool(plan.new_flags & _sys.CLONE_NEWNET))
    if not opts.no_new_keyring:
        _sys.join_session_keyring(f"_ses.{c.id}")
    trace("init: forked")
    builder.prepare()
    trace("init: mounts done")
    if hooks.get("prestart") or hooks.get("createRuntime"):
        _send(sock, {"hooks": "createRuntime"})
        _recv(sock, None)
    if hooks.get("createContainer"):
        run_hooks(hooks, ("createContainer",), c.hook_state("created"))
    builder.pivot(no_pivot=opts.no_pivot)
    # As runc: a missing cwd is made before the root turns read-only, and sysctls are
    # written before readonlyPaths (the default spec's included) make /proc/sys read-only.
    _make_cwd(process.get("cwd", "/"))
    for key, value in (linux.get("sysctl") or {}).items():
        _write_sysctl(key, value)
    builder.finish()
    trace("init: pivoted, paths masked")

    if plan.has("uts"):
        if cfg.get("hostname"):
            _sys.sethostname(cfg["hostname"])
        if cfg.get("domainname"):
            _sys.setdomainname(cfg["domainname"])

    if process.get("terminal"):
        _setup_terminal(console, process.get("consoleSize"))
    if console is not None:
        console.close()

    if linux.get("personality"):
        _sys.personality(linux["personality"]["domain"])
    exe, env, user = prepare_process(process, caps, rlimits, seccomp_filter)

    trace("init: ready")
    _send(sock, {"ready": True})
    sock.close()
    # Blocks until `start` writes to the fifo (or forever, like runc, if nobody does).
    while True:
        try:
            if os.read(fifo_fd, 1):
                break
        except InterruptedError:
            continue
        except OSError as e:
            raise MiniRunError(f"reading exec fifo: {e.strerror}") from None
    os.close(fifo_fd)
    if hooks.get("startContainer"):
        run_hooks(hooks, ("startContainer",), c.hook_state("running"))
    exec_user_program(exe, process["args"], env, user, opts.preserve_fds, seccomp_filter)


def prepare_process(process: dict, caps, rlimits,
                    seccomp_filter=None) -> tuple[str, dict, dict]:
    """The process settings, in runc's order, for the container's init and for exec:
    rlimits, oom score, seccomp without no_new_privs, bounding set, user, capabilities,
    cwd (verified), the executable looked up in the container, no_new_privs. Returns
    (executable, env, user)."""
    security.apply_rlimits(rlimits)
    if "oomScoreAdj" in process:
        security.set_oom_score_adj(process["oomScoreAdj"])
    if seccomp_filter is not None and not process.get("noNewPrivileges"):
        # Without no_new_privs loading a filter needs CAP_SYS_ADMIN: before the
        # capabilities go, as runc (the rest of our setup then runs under it).
        seccomp_filter.install()
    user = process.get("user") or {}
    top = security.last_cap()
    if caps is not None:
        security.drop_bounding(caps, top)
        _sys.prctl(_sys.PR_SET_KEEPCAPS, 1, name="prctl(PR_SET_KEEPCAPS)")
    security.set_user(user, security.setgroups_allowed())
    if caps is not None:
        _sys.prctl(_sys.PR_SET_KEEPCAPS, 0, name="prctl(PR_SET_KEEPCAPS)")
        security.apply_caps(caps, top)
    env = _process_env(process, user)
    _enter_cwd(process.get("cwd", "/"))
    exe = _find_executable(process["args"][0], env)
    if process.get("noNewPrivileges"):
        _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1, name="prctl(PR_SET_NO_NEW_PRIVS)")
    return exe, env, user


def exec_user_program(exe: str, args: list[str], env: dict, user: dict,
                      preserve_fds: int, seccomp_filter=None) -> None:
    """The last steps before the user's program: umask, fds, seccomp (with
    no_new_privs), execve. Never returns."""
    os.umask(user["umask"] if user.get("umask") is not None else 0o022)
    _prepare_fds(preserve_fds)
    if seccomp_filter is not None and not seccomp_filter.installed:
        # With no_new_privs: as late as can be, so that the fifo, the startContainer
        # hooks and our own exit path stay out of the profile; only execve is left.
        # (runc loads it before waiting on the fifo, for its notify fd.)
        try:
            seccomp_filter.install()
        except MiniRunError as e:
            os.write(2, f"minirun: {e}\n".encode())
            os._exit(1)
    try:
        os.execve(exe, args, env)
    except OSError as e:
        os.write(2, f"minirun: exec {exe}: {e.strerror}\n".encode())
        os._exit(126 if e.errno in (errno.EACCES, errno.ENOEXEC) else 127)


def _process_env(process: dict, user: dict) -> dict:
    env = {}
    for item in process.get("env") or []:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    if "HOME" not in env:
        env["HOME"] = security.home_for(user.get("uid", 0))
    return env


def _make_cwd(cwd: str) -> None:
    # After pivot_root, resolved inside the root with no magic links (securejoin in
    # runc): a cwd through /proc/*/task/*/fd/N or a rootfs symlink to /proc/self/fd/N
    # would otherwise mkdir in a leaked host directory (CVE-2024-21626).
    rootfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(make_in_root(rootfd, cwd, True))
    except OSError as e:
        raise InvalidSpec(f"process.cwd {cwd}: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(rootfd)


def _enter_cwd(cwd: str) -> None:
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        # runc creates a missing cwd; do it inside the new root, never through a magic
        # link (exec's cwd is not made by the init).
        _make_cwd(cwd)
        try:
            os.chdir(cwd)
        except OSError as e:
            raise InvalidSpec(f"process.cwd {cwd}: {e.strerror}") from None
    except OSError as e:
        raise InvalidSpec(f"process.cwd {cwd}: {e.strerror}") from None
    # CVE-2024-21626: the directory we are in must be inside the container's root; a
    # leaked host fd would leave getcwd() with "(unreachable)".
    try:
        here = os.getcwd()
    except FileNotFoundError:
        here = ""  # glibc's getcwd fails with ENOENT on an unreachable directory
    if not here.startswith("/") or "(unreachable)" in here:
        raise MiniRunError(f"process.cwd {cwd} resolves outside the container")


def _find_executable(name: str, env: dict) -> str:
    if "/" in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        if not os.path.exists(name):
            raise ExecutableNotFound(f'exec: "{name}": stat {name}: no such file or directory')
        raise NotExecutable(f'exec: "{name}": permission denied')
    for d in env.get("PATH", DEFAULT_PATH).split(":"):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ExecutableNotFound(f'exec: "{name}": executable file not found in $PATH')


def _write_sysctl(key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise _sys.SysError("write sysctl", key, e.errno or 0) from None


def _prepare_fds(preserve: int) -> None:
    # CVE-2024-21626: no host fd may reach the user's program. Python opens its fds
    # close-on-exec already; this catches anything inherited from our caller too.
    first = 3 + preserve
    try:
        _sys.close_range(first, 0xFFFFFFFF, _sys.CLOSE_RANGE_CLOEXEC)
    except _sys.SysError as e:
        # Refused by a seccomp profile without close_range (loaded earlier when
        # no_new_privs is off), or a kernel older than 5.11: mark each fd instead.
        try:
            names = os.listdir("/proc/self/fd")
        except OSError:
            raise e from None
        for name in names:
            if int(name) >= first:
                try:
                    fcntl.fcntl(int(name), fcntl.F_SETFD, fcntl.FD_CLOEXEC)
                except OSError:
                    pass
    for fd in range(3 + preserve):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass


def _winsize(rows: int, cols: int) -> bytes:
    """struct winsize {rows, cols, xpixel, ypixel} of unsigned shorts."""
    return b"".join(v.to_bytes(2, sys.byteorder) for v in (rows, cols, 0, 0))


def _setup_terminal(console: socket.socket | None, size: dict | None,
                    console_mount: bool = True) -> None:
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _sys.ioctl_int(master, _sys.TIOCSPTLCK, 0, "ioctl(TIOCSPTLCK)")
        n = _sys.ioctl_get_int(master, _sys.TIOCGPTN, "ioctl(TIOCGPTN)")
        slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW |
                        os.O_CLOEXEC)
        st = os.fstat(slave)
        if not stat.S_ISCHR(st.st_mode):
            raise MiniRunError(f"/dev/pts/{n} is not a terminal")
        if size:
            fcntl.ioctl(slave, _sys.TIOCSWINSZ,
                        _winsize(size.get("height", 0), size.get("width", 0)))
        if console_mount:  # the init's pty becomes /dev/console; an exec's does not
            setup_console_mount(slave)
        console.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          master.to_bytes(4, sys.byteorder))])
    finally:
        os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    _sys.ioctl_tty(0, _sys.TIOCSCTTY, 0, "ioctl(TIOCSCTTY)")


# --- start, kill, delete ----------------------------------------------------------------
