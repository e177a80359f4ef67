"""A container's on-disk state, and the verbs that need nothing more: state, list, start,
kill, pause, resume, delete, and waiting for a container's process.

Kept apart from runtime.py (create and the setup inside the container) so that these
verbs, each its own short-lived process under podman or containerd, import neither
ctypes nor the mount and namespace code: a few milliseconds on every call.
"""

from __future__ import annotations

# _signal, not signal: the latter wraps constants in enums, whose import is most of the
# import time of a short command.
import _signal as signal
import errno
import fcntl
import os
import select
import sys
import time

from . import OCI_VERSION
from . import jsonfast as json
from .cgroups import open_cgroup
from .errors import (ContainerStateError, ExecutableNotFound, HookError, InvalidArgument,
                     MiniRunError, NotExecutable, NotFound)
from .runlog import warn

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


_TRACE = False


_T0 = time.monotonic()


def enable_trace() -> None:
    global _TRACE
    _TRACE = True


def trace(step: str) -> None:
    """--debug: milliseconds since start for each step of the start path, on stderr, as
    each happens (MINIRUN_TRACE=1 gives their durations: minirun.monitor.trace)."""
    if _TRACE:
        os.write(2, f"[{(time.monotonic() - _T0) * 1000:7.2f} ms {os.getpid()}] {step}\n".encode())


def _tracing():
    """minirun.monitor.trace when something loaded it (whatever turns tracing on has);
    not imported here, so that the light verbs do not pay its 0.4 ms."""
    return sys.modules.get("minirun.monitor.trace")


HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer",
              "poststart", "poststop")


def default_root() -> str:
    if os.geteuid() == 0:
        return "/run/minirun/oci"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/minirun-{os.geteuid()}"
    return os.path.join(runtime_dir, "minirun")


def validate_id(container_id: str) -> None:
    if not container_id or container_id in (".", "..") or \
            not set(container_id) <= _ID_CHARS or len(container_id) > 1024:
        raise InvalidArgument(f"invalid container id {container_id!r}: use letters, digits, "
                              "'_', '+', '-' and '.'")


# --- state --------------------------------------------------------------------------------


def proc_start_time(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/<pid>/stat; None if the process is gone or a zombie. `proc`: a
    fixture tree in doctor's tests."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class Container:
    """A container's on-disk state under <root>/<id>."""

    def __init__(self, root: str, container_id: str) -> None:
        validate_id(container_id)
        self.root = root
        self.id = container_id
        self.dir = os.path.join(root, container_id)
        self.state_file = os.path.join(self.dir, "state.json")
        self.fifo = os.path.join(self.dir, "exec.fifo")
        self.data: dict = {}

    # loading and saving

    @classmethod
    def load(cls, root: str, container_id: str) -> "Container":
        c = cls(root, container_id)
        try:
            with open(c.state_file) as f:
                c.data = json.loads(f.read())
        except FileNotFoundError:
            raise NotFound(f"container {container_id!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise MiniRunError(f"container {container_id!r}: unreadable state: {e}") from None
        return c

    def save(self) -> None:
        tmp = self.state_file + ".tmp"
        # write and rename: atomic, and no fsync, as runc: the state lives under /run
        # and does not outlive a reboot anyway
        with open(tmp, "w") as f:
            f.write(json.dumps(self.data))
        os.rename(tmp, self.state_file)

    def update(self) -> None:
        """save() for a create whose state is already on disk: under the lock, and only
        while state.json is there. delete holds the lock from its reading of the state to
        its removal: a delete that read a state without the init's pid (it then kills
        nothing) must not see create go on to bring up an init nobody lists; create fails
        instead, and kills what it made."""
        lock = self.lock()
        try:
            if not os.path.exists(self.state_file):
                raise NotFound(f"container {self.id!r} was deleted while being created")
            self.save()
        finally:
            os.close(lock)

    def lock(self) -> int:
        """An exclusive lock on the container's directory, held until the fd is closed."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    @property
    def pid(self) -> int:
        return self.data.get("pid", 0)

    def cgroup(self):
        d = self.data
        return open_cgroup(d["cgroup_path"], rootless=d.get("rootless", False),
                           driver=d.get("cgroup_driver"), root=d.get("cgroup_root"))

    def alive(self) -> bool:
        pid = self.pid
        return pid > 0 and proc_start_time(pid) == self.data.get("start_time")

    def status(self) -> str:
        if not self.alive():
            return "stopped"
        if not self.data.get("ready", True):
            return "creating"
        if os.path.exists(self.fifo):
            return "created"
        try:
            if self.cgroup().is_frozen():
                return "paused"
        except (OSError, MiniRunError):
            pass
        return "running"

    def oci_state(self) -> dict:
        status = self.status()
        d = self.data
        state = {
            "ociVersion": d.get("ociVersion", OCI_VERSION),
            "id": self.id,
            "pid": self.pid if status != "stopped" else 0,
            "status": status,
            "bundle": d.get("bundle", ""),
            "rootfs": d.get("rootfs", ""),
            "created": d.get("created", ""),
            "owner": "",
        }
        if d.get("annotations"):
            state["annotations"] = d["annotations"]
        return state

    def spec_state(self, status: str) -> dict:
        """The runtime-spec state, as hooks and seccomp agents get it."""
        d = self.data
        state = {"ociVersion": d.get("ociVersion", OCI_VERSION), "id": self.id,
                 "status": status, "pid": self.pid, "bundle": d.get("bundle", "")}
        if d.get("annotations"):
            state["annotations"] = d["annotations"]
        return state

    def hook_state(self, status: str) -> bytes:
        return json.dumps(self.spec_state(status)).encode()


def list_containers(root: str) -> list[Container]:
    out = []
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return out
    for name in names:
        try:
            out.append(Container.load(root, name))
        except MiniRunError:
            continue
    return out


# --- hooks --------------------------------------------------------------------------------


def run_hook(kind: str, hook: dict, state: bytes, cwd: str | None = None) -> None:
    """Run one OCI hook with the state on its stdin (in `cwd` if given); a failure or
    timeout raises."""
    path = hook["path"]
    args = hook.get("args") or [path]
    env = hook.get("env") or []
    timeout = hook.get("timeout")
    from . import sys as _sys  # ctypes: only when there are hooks to run

    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:
        try:
            # a hook must not outlive a runtime killed while waiting for it
            _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL, name="prctl(PR_SET_PDEATHSIG)")
            os.dup2(r, 0)
            if cwd:
                os.chdir(cwd)
            os.execve(path, args, dict(e.split("=", 1) for e in env if "=" in e))
        except BaseException as e:
            os.write(2, f"minirun: hook {path}: {e}\n".encode())
        os._exit(127)
    os.close(r)
    try:
        os.write(w, state)
    except OSError:
        pass
    os.close(w)
    deadline = time.monotonic() + timeout if timeout else None
    pidfd = os.pidfd_open(pid)
    try:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([pidfd], [], [], remaining)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise HookError(f"{kind} hook {path} timed out after {timeout}s")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise HookError(f"{kind} hook {path} failed with exit status {code}")


def run_hooks(cfg_hooks: dict, kinds: tuple[str, ...], state: bytes, warn_only=False,
              cwd: str | None = None) -> None:
    for kind in kinds:
        for hook in cfg_hooks.get(kind) or []:
            try:
                run_hook(kind, hook, state, cwd)
            except HookError as e:
                if not warn_only:
                    raise
                warn(str(e))


# --- create -------------------------------------------------------------------------------


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def check_pid_file(path: str) -> None:
    """Before anything starts: a pid file that cannot be written would otherwise be
    found out only once the process runs."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidArgument(f"pid file {path}: directory {directory} does not exist")


def _write_pid_file(path: str, pid: int) -> None:
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.rename(tmp, path)
    except OSError as e:
        raise MiniRunError(f"pid file {path}: {e.strerror}") from None


def _kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    select.select([pidfd], [], [], timeout)
    os.close(pidfd)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _cleanup(c: Container, cg) -> None:
    if "host_rootfs_mounts" in c.data:
        from .mounts import unmount_host_rootfs  # only configs without a mount namespace

        try:
            unmount_host_rootfs(c.data["rootfs"], c.data["host_rootfs_mounts"])
        except MiniRunError as e:
            warn(f"unmounting the rootfs: {e}")
    # A cgroup that existed before create (runc lets a container join one) keeps its
    # directories and its other processes: the container's own are gone by now.
    keep = tuple(c.data.get("cgroup_preexisting") or ())
    if cg is not None:
        try:
            if cg.exists():
                if not keep:
                    cg.kill_all(signal.SIGKILL)
                cg.destroy(keep)
        except (OSError, MiniRunError) as e:
            warn(f"cgroup cleanup: {e}")
    # state.json last: a delete killed before it is done is done again in full
    _unlink_in(c.dir, ("state.json.tmp", "exec.fifo", "state.json"))
    try:
        os.rmdir(c.dir)
    except FileNotFoundError:
        pass


def _unlink_in(directory: str, names: tuple[str, ...]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass


def _remove_remains(c: Container) -> None:
    """The directory of a delete killed after state.json went (nothing else of the
    container is left by then): without it the id would stay taken for good. One whose
    create is under way (it saves state.json right after its mkdir) loses the race and
    fails, as it would against a delete a moment later."""
    _unlink_in(c.dir, ("state.json.tmp", "exec.fifo"))
    try:
        os.rmdir(c.dir)
    except OSError:
        pass  # gone, or not only remains: left alone


def start(root: str, container_id: str) -> Container:
    c = Container.load(root, container_id)
    lock = c.lock()
    try:
        status = c.status()
        if status != "created":
            raise ContainerStateError(f"cannot start a container that is {status}"
                                      if status != "stopped" else
                                      "cannot start a container that has stopped")
        spans = _tracing()
        execve = spans.begin("execve", **{"container.id": container_id}) if spans else None
        watch = _release_init(c)
    finally:
        os.close(lock)
    try:
        _wait_for_execve(watch)
    finally:
        os.close(watch)
    if execve is not None:
        spans.end(execve)
    hooks = c.data.get("hooks") or {}
    if hooks.get("poststart"):
        run_hooks(hooks, ("poststart",), c.hook_state("running"), warn_only=True)
    return c


# The exec fifo, from start's side. The init holds it open read-write and close-on-exec,
# blocked in a read: start writes one byte, and the init's end closes when its execve
# succeeds (or it dies). A read end that start opened before a writer it made itself
# reports POLLHUP once no writer is left (pipe_poll's w_counter rule), so start knows the
# user's program runs before it calls the poststart hooks, as the runtime-spec asks.
# Whatever the init leaves in the fifo tells why it did not get there.
_FIFO_GO = b"0"
FIFO_ERROR = b"E"
_START_ERRORS = {cls.__name__: cls for cls in (MiniRunError, HookError, ExecutableNotFound,
                                               NotExecutable)}


def _release_init(c: Container) -> int:
    """Let the init go; return a read end of the fifo to wait on."""
    try:
        # no reader (ENXIO): the init that held the fifo is gone
        probe = os.open(c.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise ContainerStateError("cannot start a container that has stopped") from None
        raise
    try:
        watch = os.open(c.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            go = os.open(c.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.write(go, _FIFO_GO)
            finally:
                os.close(go)
            os.unlink(c.fifo)
        except BaseException:
            os.close(watch)
            raise
    finally:
        os.close(probe)
    return watch


def _wait_for_execve(watch: int) -> None:
    """Wait until the init's end of the fifo closes; raise if the init did not reach
    the user's program (its error, or the byte it never read)."""
    poller = select.poll()
    poller.register(watch, 0)  # POLLHUP only: the go byte stays for the init to read
    while not poller.poll():
        pass
    left = b""
    while True:
        try:
            chunk = os.read(watch, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        left += chunk
    if left.startswith(FIFO_ERROR):
        kind, _, msg = left[1:].decode(errors="replace").partition("\n")
        raise _START_ERRORS.get(kind, MiniRunError)(
            msg.strip() or "the container's process failed to start")
    if left:
        raise ContainerStateError("the container's init died before it could start")


SIGNALS = {name: getattr(signal, name) for name in dir(signal)
           if name.startswith("SIG") and not name.startswith("SIG_")
           and isinstance(getattr(signal, name), int)}


def parse_signal(text: str) -> int:
    """A signal name (KILL, SIGKILL) or number; 0 sends nothing and only checks that the
    init is alive, as kill(2) and runc's kill do."""
    text = text.strip()
    if text.isdigit():
        num = int(text)
        if 0 <= num < 65:
            return num
    else:
        name = text.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name in SIGNALS:
            return int(SIGNALS[name])
    raise InvalidArgument(f"unknown signal {text!r}")


def kill(root: str, container_id: str, sig: int, all_processes: bool = False) -> None:
    c = Container.load(root, container_id)
    status = c.status()
    if status == "stopped" and not all_processes:
        raise ContainerStateError("container not running")
    if all_processes:
        cg = c.cgroup()
        if cg.exists():
            cg.kill_all(sig)
        return
    try:
        pidfd = os.pidfd_open(c.pid)
    except OSError:
        raise ContainerStateError("container not running") from None
    try:
        # The pidfd pins the process: check it is still our init before signalling.
        if proc_start_time(c.pid) != c.data.get("start_time"):
            raise ContainerStateError("container not running")
        signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)


def delete(root: str, container_id: str, force: bool = False) -> None:
    try:
        c = Container.load(root, container_id)
    except NotFound:
        _remove_remains(Container(root, container_id))
        raise
    lock = c.lock()
    try:
        # read again under the lock: a create under way saves the init's pid under it
        c = Container.load(root, container_id)
        status = c.status()
        if status in ("running", "paused") and not force:
            raise ContainerStateError(
                f"cannot delete container {container_id} that is not stopped: {status}")
        cg = c.cgroup()
        if status != "stopped":
            if cg.exists():
                if not _init_takes_all(c):
                    cg.kill_all(signal.SIGKILL)
                if status == "paused":
                    cg.thaw()
            _kill_and_wait(c.pid)
        _cleanup(c, cg)
    finally:
        os.close(lock)
    hooks = c.data.get("hooks") or {}
    if hooks.get("poststop"):
        run_hooks(hooks, ("poststop",), c.hook_state("stopped"), warn_only=True)


def _init_takes_all(c: Container) -> bool:
    """In a cgroup that was not minirun's (it may hold others' processes), kill only the
    init when its pid namespace is the container's own: the kernel then kills the rest
    of the container, and nothing else. runc 1.1 does the same."""
    if not c.data.get("cgroup_preexisting"):
        return False
    namespaces = ((c.data.get("config") or {}).get("linux") or {}).get("namespaces") or []
    return any(ns.get("type") == "pid" and not ns.get("path") for ns in namespaces)


def pause(root: str, container_id: str) -> None:
    c = Container.load(root, container_id)
    status = c.status()
    if status != "running":
        raise ContainerStateError(f"container not running: {status}")
    c.cgroup().freeze()


def resume(root: str, container_id: str) -> None:
    c = Container.load(root, container_id)
    status = c.status()
    if status != "paused":
        raise ContainerStateError(f"container not paused: {status}")
    c.cgroup().thaw()


# --- run in the foreground ----------------------------------------------------------------


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


def wait_init(c: Container) -> int:
    return wait_child(c.pid)


def wait_child(pid: int) -> int:
    """Wait for a container's process (our child through the subreaper), forwarding
    signals to it. Returns the exit status in the shell's manner (128+N when killed by
    signal N)."""

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    handlers = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                got, status = os.waitpid(pid, 0)
            except ChildProcessError:
                return 0
            if got == pid:
                return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
                    else 128 + os.WTERMSIG(status)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
