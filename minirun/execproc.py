"""exec: run a new process inside a container that is created or running.

The same shape as create: a first child (C) joins the container's cgroup and then, with
setns, every namespace of the container's init that differs from ours (the user
namespace first, the mount namespace last), and forks the process (I) so that it is inside
the pid namespace too. I applies the process settings with the init's code
(runtime.prepare_process) and execs. C and I are non-dumpable until then and never run
the runtime or the interpreter from inside the container (CVE-2019-5736).
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import os

from . import seccomp as _seccomp
from . import security
from . import spec as _spec
from . import sys as _sys
from .errors import ContainerStateError, InvalidArgument, InvalidSpec, MiniRunError
from .namespaces import NAMESPACES, join_namespaces
from .runtime import (Container, _check_cwd, _kill_and_wait, _rebuild_error, _recv_fds,
                      _report_error, _reset_signals, _send, _setup_terminal, _write_pid_file,
                      check_pid_file, exec_user_program, explain_exit, hand_to_agent,
                      prepare_process, proc_start_time, trace)

# setns order: the user namespace owns the others; the mount namespace goes last since
# joining it changes our root and the /proc paths of the others would no longer resolve.
_JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


class ExecOptions:
    def __init__(self, console_socket: str | None = None, pid_file: str | None = None,
                 detach: bool = False, preserve_fds: int = 0, console_fd=None,
                 ignore_paused: bool = False, cgroups: list[str] | None = None,
                 seccomp_cache: str | None = None) -> None:
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds
        self.console_fd = console_fd
        self.ignore_paused = ignore_paused
        self.sub_cgroups = parse_sub_cgroups(cgroups or [])
        self.seccomp_cache = seccomp_cache  # compiled profiles (the engine's cache)


def parse_sub_cgroups(args: list[str]) -> dict[str, str]:
    """exec --cgroup, runc's forms: one "sub" for every controller, or any number of
    "ctrl[,ctrl...]:sub". Maps a controller ("" for all) to a path below the
    container's cgroup."""
    subs: dict[str, str] = {}
    for arg in args:
        ctrls, sep, sub = arg.rpartition(":") if ":" in arg else ("", "", arg)
        if arg.count(":") > 1:
            raise InvalidArgument(f"invalid --cgroup argument: {arg}")
        if not sep and len(args) != 1:
            raise InvalidArgument(f"invalid --cgroup argument: {arg} "
                                  "(missing <controller>: prefix)")
        parts = [p for p in sub.split("/") if p]
        # a sub-cgroup of the container's own, never a way out of it
        if not parts or any(p in (".", "..") for p in parts):
            raise InvalidArgument(f"invalid --cgroup argument: {arg}")
        for ctrl in ctrls.split(",") if sep else [""]:
            subs[ctrl] = "/".join(parts)
    return subs


def build_process(c: Container, args: list[str], process_file: str | None = None,
                  tty: bool = False, cwd: str | None = None, env: list[str] | None = None,
                  user: str | None = None, additional_gids: list[str] | None = None,
                  caps: list[str] | None = None, no_new_privs: bool = False) -> dict:
    """The process to run, as runc builds it: `-p process.json` as given, or the
    container's own process with the command and the flags laid over it."""
    if process_file:
        try:
            with open(process_file) as f:
                text = f.read()
        except OSError as e:
            raise InvalidArgument(f"process file {process_file}: {e.strerror}") from None
        from . import jsonfast

        try:
            process = jsonfast.loads(text)
        except ValueError as e:
            raise InvalidSpec(f"process file {process_file}: invalid JSON: {e}") from None
        if isinstance(process, dict) and not any(k.lower() == "user" for k in process):
            process["user"] = {"uid": 0, "gid": 0}  # runc: no user is uid 0, gid 0
        return process
    if not args:
        raise InvalidArgument("exec needs a command (or -p process.json)")
    base = dict((c.data.get("config") or {}).get("process") or {})
    process = dict(base, args=list(args), terminal=tty)
    process["env"] = list(base.get("env") or []) + list(env or [])
    if cwd:
        process["cwd"] = cwd
    if user:
        uid, _, gid = user.partition(":")
        try:
            process["user"] = {"uid": int(uid), "gid": int(gid) if gid else 0}
        except ValueError:
            raise InvalidArgument(f"--user {user!r}: expected uid[:gid] as numbers") from None
    if additional_gids:
        try:
            gids = [int(g) for g in additional_gids]
        except ValueError:
            raise InvalidArgument("--additional-gids takes numbers") from None
        process["user"] = dict(process.get("user") or {}, additionalGids=gids)
    if caps:
        merged = {k: list(v) for k, v in (base.get("capabilities") or {}).items()}
        for key in ("bounding", "effective", "permitted", "ambient"):
            merged.setdefault(key, [])
            merged[key] += [cap for cap in caps if cap not in merged[key]]
        process["capabilities"] = merged
    if no_new_privs:
        process["noNewPrivileges"] = True
    return process


def exec_and_wait(root: str, container_id: str, process: dict, opts: ExecOptions,
                  terminal_proxy: bool = False) -> int:
    """exec, then wait for the process and return its status (0 at once with
    opts.detach). With terminal_proxy the caller's terminal is the process's, through a
    pty whose master comes back on a console socket."""
    proxy = None
    if terminal_proxy:
        from .terminal import TerminalProxy

        proxy = TerminalProxy()
        opts.console_fd = proxy.container_end
    try:
        pid = exec_process(root, container_id, process, opts)
        if opts.detach:
            return 0
        if proxy:
            proxy.receive_master()
            return proxy.run_until_exit(pid)
        from .container import wait_child

        return wait_child(pid)
    finally:
        if proxy:
            proxy.close()


def exec_process(root: str, container_id: str, process: dict, opts: ExecOptions) -> int:
    """Start `process` in the container. Detached: returns 0 once it runs; otherwise
    waits and returns its status (128+N when killed by signal N)."""
    c = Container.load(root, container_id)
    status = c.status()
    if status == "paused" and not opts.ignore_paused:
        raise ContainerStateError("cannot exec in a paused container "
                                  "(use --ignore-paused to override)")
    if status not in ("created", "running", "paused"):
        raise ContainerStateError(f"cannot exec in a {status} container")
    cg = c.cgroup()
    # the cgroup dirs to join, checked here so that a bad --cgroup starts nothing
    cg_dirs = cg.sub_dirs(opts.sub_cgroups) if opts.sub_cgroups else None
    cfg = dict(c.data.get("config") or {})
    cfg["process"] = process
    _spec.validate(cfg)
    if not process.get("args"):
        raise InvalidSpec("process.args must not be empty")
    caps = security.capability_plan(process.get("capabilities"), _spec.CAPABILITIES,
                                    security.last_cap())
    rlimits = security.rlimit_plan(process.get("rlimits"))
    _check_cwd(process.get("cwd", "/"))
    if opts.pid_file:
        check_pid_file(opts.pid_file)
    if process.get("terminal") and not (opts.console_socket or opts.console_fd):
        raise InvalidArgument("cannot allocate a tty without --console-socket")
    # The container's profile applies to every process in it, as under runc.
    seccomp_filter = _seccomp.compile_profile((cfg.get("linux") or {}).get("seccomp"),
                                              opts.seccomp_cache)

    ns_fds = _open_namespaces(c)
    console = opts.console_fd
    try:
        if opts.console_socket:
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                console.connect(opts.console_socket)
            except OSError as e:
                raise MiniRunError(f"console socket {opts.console_socket}: {e.strerror}") \
                    from None
        pid = _spawn(c, cg, cg_dirs, process, caps, rlimits, ns_fds, console, opts,
                     seccomp_filter)
    finally:
        for _, fd in ns_fds:
            os.close(fd)
        if console is not None and opts.console_socket:
            console.close()
    if opts.pid_file:
        try:
            _write_pid_file(opts.pid_file, pid)
        except MiniRunError:
            _kill_and_wait(pid)  # nobody would know its pid: it must not run on
            raise
    return pid


def _open_namespaces(c: Container) -> list[tuple[str, int]]:
    """fds of the init's namespaces that are not ours, opened while we can check the
    init is still the process the state names."""
    pid = c.pid
    fds = []
    try:
        for kind in _JOIN_ORDER:
            name = NAMESPACES[kind][1]
            theirs = f"/proc/{pid}/ns/{name}"
            try:
                if os.readlink(theirs) == os.readlink(f"/proc/self/ns/{name}"):
                    continue
                fds.append((kind, os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)))
            except FileNotFoundError:
                if kind == "time":
                    continue  # a kernel without time namespaces
                raise
        if proc_start_time(pid) != c.data.get("start_time"):
            raise ContainerStateError("cannot exec in a stopped container")
    except BaseException:
        for _, fd in fds:
            os.close(fd)
        raise
    return fds


def _spawn(c: Container, cg, cg_dirs, process: dict, caps, rlimits, ns_fds, console,
           opts: ExecOptions, seccomp_filter=None) -> int:
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _sys.prctl(_sys.PR_SET_CHILD_SUBREAPER, 1, name="prctl(PR_SET_CHILD_SUBREAPER)")
    # starts in the cgroup2 hierarchy, if any, without a move; with --cgroup the child
    # joins the sub-cgroups itself
    first = os.fork() if cg_dirs is not None else cg.fork()
    if first == 0:
        parent_sock.close()
        code = 1
        try:
            _first_child(c, process, caps, rlimits, ns_fds, console, opts, cg, cg_dirs,
                         child_sock, seccomp_filter)
            code = 0
        except BaseException as e:
            _report_error(child_sock, e)
        os._exit(code)
    child_sock.close()
    pid = 0
    ready = False
    listener = None
    try:
        while True:
            if opts.ignore_paused:
                _wait_for_thaw(parent_sock, cg)
            try:
                msg, passed = _recv_fds(parent_sock)
            except MiniRunError as e:
                raise explain_exit(seccomp_filter, pid, e) from None
            if "error" in msg:
                raise _rebuild_error(msg)
            if "pid" in msg:
                pid = msg["pid"]
                os.waitpid(first, 0)
                first = 0
            elif "seccompFd" in msg:
                listener = passed
            elif msg.get("ready"):
                # the process's "ready" may overtake its parent's "pid" (that one was
                # descheduled right after its fork): both are needed
                ready = True
            if listener is not None and pid:  # as runc: this pid, the container's state
                passed, listener = listener, None
                hand_to_agent(c.data["config"]["linux"]["seccomp"], pid,
                              c.spec_state(c.status()), passed)
            if ready and pid:
                trace("exec: process ready")
                return pid
    except BaseException:
        if first:
            _kill_and_wait(first)
            try:
                os.waitpid(first, 0)
            except ChildProcessError:
                pass
        if pid:
            _kill_and_wait(pid)
        raise
    finally:
        parent_sock.close()
        for fd in listener or []:
            os.close(fd)


def _wait_for_thaw(sock: socket.socket, cg) -> None:
    """--ignore-paused: our children freeze as they join the paused container's cgroup
    and go on when it is resumed, as under runc; the sync timeout counts from then."""
    import select

    while cg.is_frozen():
        if select.select([sock], [], [], 0.5)[0]:
            return


def _first_child(c, process, caps, rlimits, ns_fds, console, opts, cg, cg_dirs, sock,
                 seccomp_filter=None) -> None:
    _reset_signals()
    # CVE-2019-5736: processes of the container must not reach our /proc/<pid>/exe (the
    # host's python) once we are in their namespaces.
    _sys.prctl(_sys.PR_SET_DUMPABLE, 0, name="prctl(PR_SET_DUMPABLE)")
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL, name="prctl(PR_SET_PDEATHSIG)")
    if cg_dirs is not None:
        cg.add_pid_to_dirs(0, cg_dirs)
    elif cg.exists():
        cg.add_pid(0)
    join_namespaces(ns_fds, " of the container")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _exec_child(c, process, caps, rlimits, console, opts, sock, seccomp_filter)
        except BaseException as e:
            _report_error(sock, seccomp_filter.blame(e) if seccomp_filter else e)
        os._exit(code)
    _send(sock, {"pid": pid})


def _exec_child(c, process, caps, rlimits, console, opts, sock, seccomp_filter=None) -> None:
    os.setsid()
    if not c.data.get("no_new_keyring"):
        _sys.join_session_keyring(f"_ses.{c.id}")
    if process.get("terminal"):
        _setup_terminal(console, process.get("consoleSize"), console_mount=False)
    if console is not None:
        console.close()
    exe, env, user = prepare_process(process, caps, rlimits, seccomp_filter, sock)
    if seccomp_filter is not None:
        seccomp_filter.step("sendto (the ready message)")
    _send(sock, {"ready": True})
    sock.close()
    exec_user_program(exe, process["args"], env, user, opts.preserve_fds, seccomp_filter)
