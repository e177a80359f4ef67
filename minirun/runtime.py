"""The OCI lifecycle: an OCI bundle in, a container out.

create forks a child (C) that joins the container's cgroup, joins or unshares its
namespaces and forks the container's init (I), pid 1 in the new pid namespace. I builds
the rootfs, pivots into it, applies the process settings and then blocks on the exec fifo
until `start` writes a byte to it; only then does it execve the user's program. C and I
talk to the parent (P) over a SOCK_SEQPACKET socketpair: JSON messages, every wait with a
timeout so that a stuck child is an error, never a hang.

  C -> P  {"userns": true}          P writes uid/gid maps, answers {"ok": true}
  C -> P  {"mount_sources": true}   with a user namespace: P opens the bind mounts'
                                     sources through /proc/C/root and answers
                                     {"sources": [index, ...]} with the fds (SCM_RIGHTS)
  C -> P  {"pid": N}                 I's pid, as P sees it
  I -> P  {"hooks": "createRuntime"} P runs prestart+createRuntime hooks, answers
  I -> P  {"seccompFd": true} + fd   a notifying seccomp filter is loaded: P hands
                                     the fd to the agent at listenerPath
  I -> P  {"ready": true}            I is set up and waits on the fifo
  * -> P  {"error": "..."}           setup failed; P cleans up

When tracing (minirun/monitor/trace.py), {"pid"} and {"ready"} also carry
"trace": the spans C and I finished, which P adopts.

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
import select
import stat
import sys

from . import OCI_VERSION
from . import jsonfast as json
from . import sys as _sys
from .cgroups import open_cgroup, resolve_path
from .runlog import warn
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
    check_pid_file,
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
    FIFO_ERROR,
    wait_init,
    wait_child,
)
from .errors import (AlreadyExists, ContainerStateError, ExecutableNotFound, HookError,
                     InvalidArgument, InvalidSpec, KernelFeatureMissing, MiniRunError,
                     NotExecutable, NotFound)
from .mounts import (RootfsBuilder, close_fds, count_mounts_at, is_bind, make_in_root,
                     open_bind_sources, setup_console_mount)
from .monitor import trace as spans
from .namespaces import NamespacePlan, write_id_maps
from . import security
from . import spec as _spec

SYNC_TIMEOUT = 60.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
def _send(sock: socket.socket, msg: dict) -> None:
    sock.send(json.dumps(msg).encode())


def _recv(sock: socket.socket, timeout: float | None = SYNC_TIMEOUT) -> dict:
    return _recv_fds(sock, timeout)[0]


def _recv_fds(sock: socket.socket, timeout: float | None = SYNC_TIMEOUT) -> tuple[dict, list]:
    """A message and the fds that came with it (close-on-exec)."""
    sock.settimeout(timeout)
    try:
        data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(4 * 253),
                                           socket.MSG_CMSG_CLOEXEC)
    except TimeoutError:
        raise MiniRunError("container setup timed out waiting for the child") from None
    fds = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                    for i in range(0, len(payload) - 3, 4)]
    if not data:
        for fd in fds:
            os.close(fd)
        raise MiniRunError("container init exited during setup")
    return json.loads(data), fds


def hand_to_agent(seccomp: dict, pid: int, state: dict, fds: list[int]) -> None:
    """P's side of {"seccompFd"}: the listener fd to the seccomp agent, then closed."""
    from .seccomp import send_to_agent

    try:
        if not fds:
            raise MiniRunError("seccomp: the container's process sent no listener fd")
        send_to_agent(seccomp, pid, state, fds[0])
    finally:
        for fd in fds:
            os.close(fd)


def explain_exit(seccomp_filter, pid: int, error: MiniRunError) -> MiniRunError:
    """`error` (the process left during setup), or, when a seccomp filter it had loaded
    is why, an error naming the step: a killed process says nothing itself."""
    if seccomp_filter is None or not pid:
        return error
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return error
    try:
        # it closed its end of the socket: it is exiting, give it a moment
        select.select([pidfd], [], [], 2.0)
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return error
    finally:
        os.close(pidfd)
    return (seccomp_filter.explain_exit(status) if got else None) or error


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
        # The rootfs is then set up in the caller's mount namespace (see RootfsBuilder):
        # masks cannot be kept from the container there (runc's rule), and a propagation
        # would apply to the host's "/" itself.
        for key in ("maskedPaths", "readonlyPaths", "rootfsPropagation"):
            if linux.get(key):
                raise InvalidSpec(f"config.json: linux.{key} needs a mount namespace")
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
    with spans.span("create", **{"container.id": container_id}):
        return _create(root, container_id, bundle, opts)


def _create(root: str, container_id: str, bundle: str, opts: CreateOptions) -> Container:
    validate_id(container_id)
    bundle = os.path.abspath(bundle)
    trace("create: begin")
    with spans.span("config load"):
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
    if opts.pid_file:
        check_pid_file(opts.pid_file)
    seccomp_filter = None
    if (cfg.get("linux") or {}).get("seccomp"):
        # Checked and compiled to BPF here, before anything exists: the init only loads
        # it. Imported here so that configs without a profile do not pay for the module.
        with spans.span("seccomp compile"):
            from . import seccomp

            seccomp_filter = seccomp.compile_profile(cfg["linux"]["seccomp"],
                                                     opts.seccomp_cache)
        if seccomp_filter is not None:
            # As runc's debug log: names libseccomp does not know here are skipped.
            trace(f"create: seccomp compiled, {len(seccomp_filter)} BPF instructions, "
                  f"unknown syscalls ignored: {' '.join(seccomp_filter.ignored) or 'none'}")

    linux = cfg.get("linux") or {}
    rootless = os.geteuid() != 0
    os.makedirs(root, mode=0o700, exist_ok=True)
    c = Container(root, container_id)
    if os.path.exists(c.dir):
        raise AlreadyExists(f"container with id {container_id!r} already exists")
    cgroup_span = spans.begin("cgroup")
    target = open_cgroup(resolve_path(linux.get("cgroupsPath"), container_id),
                         rootless=rootless)
    preexisting = _check_target_cgroup(target)
    try:
        os.mkdir(c.dir, 0o711)
    except FileExistsError:
        raise AlreadyExists(f"container with id {container_id!r} already exists") from None

    cg = None
    init_pid = 0
    console = None
    plan = None
    try:
        cg = target
        c.data = {
            "ociVersion": cfg.get("ociVersion", OCI_VERSION), "id": container_id,
            "bundle": bundle, "rootfs": rootfs, "pid": 0, "start_time": None,
            "created": _now(), "annotations": cfg.get("annotations") or {},
            "hooks": cfg.get("hooks") or {}, "cgroup_path": cg.path,
            "cgroup_driver": f"v{cg.version}", "cgroup_root": cg.root, "rootless": rootless,
            "ready": False, "config": cfg, "no_new_keyring": opts.no_new_keyring,
            "cgroup_preexisting": preexisting,
        }
        if not any(ns.get("type") == "mount" for ns in linux.get("namespaces") or []):
            # the mounts at the rootfs that are not ours: delete unmounts the rest
            c.data["host_rootfs_mounts"] = count_mounts_at(rootfs)
        # Saved at once, and again as soon as the init's pid is known: if this process is
        # killed mid-create, `delete --force` still finds the cgroup and the init.
        c.save()
        cg.create()
        if not preexisting and cg.is_frozen():
            # a new cgroup under a frozen ancestor is born frozen: the same hang
            raise ContainerStateError("container's cgroup unexpectedly frozen")
        resources = dict(linux.get("resources") or {})
        # runc applies its default device rules (deny all but the usual nodes) even when
        # the config lists none. Rootless there is no devices cgroup to write.
        if not rootless:
            resources.setdefault("devices", [])
        cg.apply(resources)
        spans.end(cgroup_span)
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
        c.update()
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


def _check_target_cgroup(cg) -> list[str]:
    """runc 1.1's checks of a cgroup that exists before create. A frozen one is
    refused: the child would stop in D state the moment it joins, and create would
    hang. One that holds processes gets a warning, and the container joins it anyway,
    as under runc; its directories are returned for delete to leave alone, with the
    processes that are not the container's. An empty one is the container's, as in runc."""
    existing = [d for d in cg.dirs() if os.path.isdir(d)]
    if not existing:
        return []
    if cg.is_frozen():
        raise ContainerStateError("container's cgroup unexpectedly frozen")
    found = len(cg.pids())
    if not found:
        return []
    warn(f"container's cgroup is not empty: {found} process(es) found")
    return existing


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
    fork = spans.begin("fork")
    pid = cg.fork()  # C starts in the cgroup2 hierarchy, if any, without a move
    if pid == 0:
        spans.child(fork)
        parent_sock.close()
        code = 1
        try:
            _first_child(c, cfg, rootfs, bundle, cg, plan, caps, rlimits, console, opts,
                         child_sock, seccomp_filter)
            code = 0
        except BaseException as e:
            _report_error(child_sock, e)
        os._exit(code)
    spans.forget(fork)
    child_sock.close()
    init_pid = 0
    listener = None
    # I writes on the socket it shares with C: a C descheduled right after its fork can
    # send I's pid after I's hooks request or even its ready (a state saved with pid 0
    # then: `start` took the init for dead). What needs the pid waits for C's word.
    hooks_asked = ready = False
    try:
        hooks = cfg.get("hooks") or {}
        while True:
            try:
                msg, passed = _recv_fds(parent_sock)
            except MiniRunError as e:
                raise explain_exit(seccomp_filter, init_pid, e) from None
            if "error" in msg:
                raise _rebuild_error(msg)
            if msg.get("userns"):
                write_id_maps(pid, linux.get("uidMappings") or [],
                              linux.get("gidMappings") or [])
                _send(parent_sock, {"ok": True})
            elif msg.get("mount_sources"):
                fds = open_bind_sources(cfg, bundle, f"/proc/{pid}/root")
                try:
                    parent_sock.sendmsg([json.dumps({"sources": list(fds)}).encode()],
                                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          b"".join(fd.to_bytes(4, sys.byteorder)
                                                   for fd in fds.values()))] if fds else [])
                finally:
                    close_fds(fds)
            elif "pid" in msg:
                spans.adopt(msg.get("trace"))
                init_pid = msg["pid"]
                c.data["pid"] = init_pid
                c.data["start_time"] = proc_start_time(init_pid)
                c.update()
                os.waitpid(pid, 0)  # C exits right after; I is now our child (subreaper)
                pid = 0
            elif msg.get("hooks"):
                hooks_asked = True
            elif "seccompFd" in msg:
                listener = passed
            elif msg.get("ready"):
                spans.adopt(msg.get("trace"))
                ready = True
            if not init_pid:
                continue
            if listener is not None:
                passed, listener = listener, None
                hand_to_agent(linux["seccomp"], init_pid, c.spec_state("creating"), passed)
            if hooks_asked:
                hooks_asked = False
                # runc runs them from the bundle (it chdirs there for create and run)
                run_hooks(hooks, ("prestart", "createRuntime"), c.hook_state("creating"),
                          cwd=bundle)
                _send(parent_sock, {"ok": True})
            if ready:
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
        for fd in listener or []:
            os.close(fd)


def _describe(e: BaseException) -> tuple[str, str]:
    """(kind, message) of an error raised in a child, for the parent to raise again."""
    kind = type(e).__name__ if isinstance(e, MiniRunError) else "MiniRunError"
    msg = str(e) if isinstance(e, MiniRunError) else f"{type(e).__name__}: {e}"
    if isinstance(e, OSError) and not isinstance(e, MiniRunError):
        msg = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return kind, msg


def _report_error(sock: socket.socket, e: BaseException) -> None:
    kind, msg = _describe(e)
    try:
        _send(sock, {"error": msg, "kind": kind})
    except OSError:
        # after "ready" the socket is closed: the container's stderr is left
        try:
            os.write(2, f"minirun: {msg}\n".encode())
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


def _wants_bind_source_fds(cfg: dict, plan: NamespacePlan, c: Container) -> bool:
    """In a user namespace the init may not reach a bind source the host's root can
    (under a 0700 directory): the parent opens them (open_bind_sources). Rootless, the
    parent may not open /proc/<child>/root, and reaches nothing more than the child."""
    return (plan.has("user") and not c.data.get("rootless")
            and any(is_bind(m) for m in cfg.get("mounts") or []))


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
        with spans.span("cgroup join"):
            cg.add_pid(0)
    trace("child: in cgroup")
    namespaces = spans.begin("namespaces")
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
        if flags & _sys.CLONE_NEWNET:
            # As runc (its "loopback" network for a netns it makes): lo is up, so that
            # services on 127.0.0.1 work in a container that has no other interface.
            _sys.link_up("lo")
    spans.end(namespaces)
    trace("child: namespaces entered")
    source_fds = {}
    if _wants_bind_source_fds(cfg, plan, c):
        _send(sock, {"mount_sources": True})
        msg, fds = _recv_fds(sock)
        source_fds = dict(zip(msg["sources"], fds))
    fork = spans.begin("fork init")
    pid = os.fork()
    if pid == 0:
        spans.child(fork)
        code = 1
        try:
            _init(c, cfg, rootfs, bundle, cg, plan, caps, rlimits, console, opts, sock,
                  fifo_fd, seccomp_filter, source_fds)
        except BaseException as e:
            _report_error(sock, seccomp_filter.blame(e) if seccomp_filter else e)
        os._exit(code)
    spans.forget(fork)
    close_fds(source_fds)
    _send(sock, {"pid": pid, "trace": spans.take()} if spans.ON else {"pid": pid})


def _init(c, cfg, rootfs, bundle, cg, plan: NamespacePlan, caps, rlimits, console, opts,
          sock, fifo_fd: int, seccomp_filter=None, source_fds: dict | None = None) -> None:
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
                            new_netns=bool(plan.new_flags & _sys.CLONE_NEWNET),
                            own_mountns=plan.has("mount"), source_fds=source_fds)
    if not opts.no_new_keyring:
        _sys.join_session_keyring(f"_ses.{c.id}")
    trace("init: forked")
    with spans.span("mounts"):
        builder.prepare()
    trace("init: mounts done")
    if hooks.get("prestart") or hooks.get("createRuntime"):
        _send(sock, {"hooks": "createRuntime"})
        _recv(sock, None)
    if hooks.get("createContainer"):
        # in the container's mount namespace, before pivot_root, from the rootfs: runc's
        # init is there when it runs them
        run_hooks(hooks, ("createContainer",), c.hook_state("created"), cwd=rootfs)
    pivot = spans.begin("pivot_root")
    builder.pivot(no_pivot=opts.no_pivot)
    # As runc: a missing cwd is made before the root turns read-only, and sysctls are
    # written before readonlyPaths (the default spec's included) make /proc/sys read-only.
    _make_cwd(process.get("cwd", "/"))
    for key, value in (linux.get("sysctl") or {}).items():
        _write_sysctl(key, value)
    # As runc: the console (a bind onto /dev/console) before finish() makes a "ro" /dev
    # or the root read-only.
    if process.get("terminal"):
        _setup_terminal(console, process.get("consoleSize"))
    if console is not None:
        console.close()
    builder.finish()
    spans.end(pivot)
    trace("init: pivoted, paths masked")

    if plan.has("uts"):
        if cfg.get("hostname"):
            _sys.sethostname(cfg["hostname"])
        if cfg.get("domainname"):
            _sys.setdomainname(cfg["domainname"])

    if linux.get("personality"):
        _sys.personality(linux["personality"]["domain"])
    # The seccomp filter is loaded in there, and from then on each step is named for it.
    with spans.span("process"):
        exe, env, user = prepare_process(process, caps, rlimits, seccomp_filter, sock)
    step = _step_recorder(seccomp_filter)

    trace("init: ready")
    step("sendto (the ready message)")
    _send(sock, {"ready": True, "trace": spans.take()} if spans.ON else {"ready": True})
    step("close")
    sock.close()
    # Blocks until `start` writes to the fifo (or forever, like runc, if nobody does).
    step("read (the exec fifo)")
    while True:
        try:
            if os.read(fifo_fd, 1):
                break
        except InterruptedError:
            continue
        except OSError as e:
            raise MiniRunError(f"reading exec fifo: {e.strerror}") from None
    # fifo_fd stays open (close-on-exec) until execve: `start` waits for it to close
    # before the poststart hooks, and reads from it why we failed if we do.
    try:
        if hooks.get("startContainer"):
            # In the container and under its filter, as runc.
            step("pipe2, clone, pidfd_open, wait4 (the startContainer hooks)")
            run_hooks(hooks, ("startContainer",), c.hook_state("running"))
        exec_user_program(exe, process["args"], env, user, opts.preserve_fds, seccomp_filter,
                          error_fd=fifo_fd)
    except BaseException as e:  # noqa: BLE001 - the init's last word, whatever it is
        _report_start_error(fifo_fd, seccomp_filter.blame(e) if seccomp_filter else e)
        os._exit(1)


def _report_start_error(fifo_fd: int, e: BaseException) -> None:
    """Tell `start` why the user's program did not start: the error's kind, a newline,
    its message. `start` raises the same kind (126/127 stay 126/127 for the engine) and
    is the one to say it."""
    kind, msg = _describe(e)
    try:
        os.write(fifo_fd, FIFO_ERROR + f"{kind}\n{msg}".encode())
    except OSError:
        pass


def _no_step(name: str) -> None:
    pass


def _step_recorder(seccomp_filter):
    return seccomp_filter.step if seccomp_filter is not None else _no_step


def load_seccomp(seccomp_filter, sock: socket.socket) -> None:
    """Load the filter; a notifying one's listener fd goes to P at once, since any call
    the filter sends to the agent waits until the agent has it."""
    with spans.span("seccomp"):
        listener = seccomp_filter.install()
    if listener is None:
        return
    seccomp_filter.step("sendmsg (the seccomp listener fd)")
    try:
        sock.sendmsg([b'{"seccompFd": true}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 listener.to_bytes(4, sys.byteorder))])
    finally:
        os.close(listener)


def prepare_process(process: dict, caps, rlimits, seccomp_filter=None,
                    sock: socket.socket | None = None) -> tuple[str, dict, dict]:
    """The process settings, in runc's order, for the container's init and for exec:
    rlimits, oom score, seccomp without no_new_privs, cwd (verified; again as the user
    if root was refused), bounding set, user, capabilities, the executable looked up in
    the container, no_new_privs, seccomp with it. A notifying filter's listener fd goes
    to P over `sock`. Returns
    (executable, env, user)."""
    security.apply_rlimits(rlimits)
    if "oomScoreAdj" in process:
        security.set_oom_score_adj(process["oomScoreAdj"])
    if seccomp_filter is not None and not process.get("noNewPrivileges"):
        # Without no_new_privs loading a filter needs CAP_SYS_ADMIN: before the
        # capabilities go, as runc (the rest of our setup then runs under it).
        load_seccomp(seccomp_filter, sock)
    step = _step_recorder(seccomp_filter)
    user = process.get("user") or {}
    step("openat (/proc/sys/kernel/cap_last_cap)")
    top = security.last_cap()
    # As runc: the cwd is entered while we are still root with every capability (so that
    # uid 0 without CAP_DAC_OVERRIDE gets into a 0700 home of another user), and once
    # more as the user when root was refused (a directory only the user may enter).
    cwd = process.get("cwd", "/")
    step("chdir (process.cwd)")
    entered = _enter_cwd(cwd, retry_as_user=True)
    if caps is not None:
        step("prctl(PR_CAPBSET_DROP)")
        security.drop_bounding(caps, top)
        step("prctl(PR_SET_KEEPCAPS)")
        _sys.prctl(_sys.PR_SET_KEEPCAPS, 1, name="prctl(PR_SET_KEEPCAPS)")
    step("fchown (the process's stdio)")
    security.give_stdio_to(user.get("uid", 0), bool(process.get("terminal")))
    step("openat (/proc/self/setgroups)")
    security.set_user(user, security.setgroups_allowed(), step)
    if not entered:
        step("chdir (process.cwd)")
        _enter_cwd(cwd)
    if caps is not None:
        step("prctl(PR_SET_KEEPCAPS)")
        _sys.prctl(_sys.PR_SET_KEEPCAPS, 0, name="prctl(PR_SET_KEEPCAPS)")
        step("capset")
        security.apply_caps(caps, top)
    env = _process_env(process, user)
    step("newfstatat, access (looking up the executable)")
    exe = _find_executable(process["args"][0], env)
    if process.get("noNewPrivileges"):
        _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1, name="prctl(PR_SET_NO_NEW_PRIVS)")
        if seccomp_filter is not None:
            # As runc: before the init waits on the exec fifo, so that the startContainer
            # hooks run under it and a listener fd reaches the agent before start.
            load_seccomp(seccomp_filter, sock)
    return exe, env, user


def exec_user_program(exe: str, args: list[str], env: dict, user: dict,
                      preserve_fds: int, seccomp_filter=None, error_fd: int = -1) -> None:
    """The last steps before the user's program: umask, fds, execve. Never returns. A
    failed execve goes to stderr and, for the init, to error_fd (the exec fifo, which
    `start` reads)."""
    step = _step_recorder(seccomp_filter)
    step("umask")
    os.umask(user["umask"] if user.get("umask") is not None else 0o022)
    step("close_range")
    _prepare_fds(preserve_fds)
    step("execve")
    try:
        os.execve(exe, args, env)
    except OSError as e:
        why = seccomp_filter.blame(e) if seccomp_filter else e
        cannot = e.errno in (errno.EACCES, errno.ENOEXEC)
        if why is e:
            why = (NotExecutable if cannot else ExecutableNotFound)(f"exec {exe}: {e.strerror}")
        if error_fd >= 0:
            _report_start_error(error_fd, why)  # `start` says it, once
        else:
            os.write(2, f"minirun: {why}\n".encode())
        os._exit(126 if cannot else 127)


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


def _enter_cwd(cwd: str, retry_as_user: bool = False) -> bool:
    """chdir and verify; False (not entered) on a refusal that the caller will retry
    as the process's user."""
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
    except PermissionError as e:
        if retry_as_user:
            return False
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
    return True


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
