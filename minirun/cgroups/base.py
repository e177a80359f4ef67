"""The interface both drivers implement. The runtime only uses these methods."""

from __future__ import annotations

import _signal as signal  # not signal: its enums cost import time on every start
import errno
import os
import time
from abc import ABC, abstractmethod

from .. import runlog
from ..errors import InvalidArgument, KernelFeatureMissing, MiniRunError

# How long to wait for the kernel to finish an asynchronous cgroup operation. Freezing
# many tasks or reaping a killed container's last processes takes milliseconds usually;
# these bound a stuck kernel or an uninterruptible task so callers never hang.
FREEZE_TIMEOUT = 5.0
KILL_TIMEOUT = 2.0
RMDIR_TIMEOUT = 2.0


def write_file(path: str, data: str) -> None:
    """One write(2) per call: cgroup files parse each write on its own."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_keyed(path: str) -> dict[str, int]:
    """A flat keyed file ("key value" per line: memory.stat, cpu.stat, cgroup.events)."""
    out: dict[str, int] = {}
    for line in read_file(path).splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def read_int(path: str) -> int:
    """An integer file; "max" (v2 unlimited) reads as 2**64-1 the way runc reports it."""
    value = read_file(path).strip()
    if value == "max":
        return 2**64 - 1
    return int(value)


def read_int_or(path: str, default: int) -> int:
    try:
        return read_int(path)
    except (OSError, ValueError):
        return default


def check_usage_below(path: str, limit: int) -> None:
    """memory.checkBeforeUpdate: refuse a limit below what the cgroup already uses,
    rather than have the kernel reclaim or OOM-kill to meet it."""
    usage = read_int_or(path, 0)
    if usage > limit:
        raise MiniRunError(
            f"memory limit {limit} is below the current usage {usage} (checkBeforeUpdate)"
        )


def check_cgroup_path(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or not parts or any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"invalid cgroup path {path!r}: must be absolute, below the root")
    return "/" + "/".join(parts)


def warn(message: str) -> None:
    runlog.warn(message)


PARENT = "minirun"


class ParentVanished(Exception):
    """A parent level was removed between our mkdirs (a concurrent delete pruned it)."""


def retry_create(create):
    """Run a driver's create() again when a concurrent delete pruned a parent under it."""
    def wrapper(self) -> None:
        for _ in range(20):
            try:
                return create(self)
            except ParentVanished:
                continue
        raise MiniRunError(f"cannot create cgroup {self.path}: its parent keeps vanishing")
    return wrapper


def _single_threaded() -> bool:
    """Bypassing glibc's fork is only safe single-threaded (minirun.sys.fork_into_cgroup);
    without /proc, assume not."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class Cgroup(ABC):
    version: int  # 1 or 2

    def __init__(self, path: str, root: str, rootless: bool = False) -> None:
        self.path = check_cgroup_path(path)  # "/minirun/<id>", relative to the hierarchy root
        self.root = root
        self.rootless = rootless

    @abstractmethod
    def create(self) -> None:
        """mkdir the cgroup (in every v1 controller), parents included; idempotent.

        v1 cpuset: cpus and mems are copied down from the parent at each new level.
        Rootless without write access: a warning on stderr naming what cannot be done.
        """

    @abstractmethod
    def apply(self, resources: dict) -> None:
        """Write OCI linux.resources. Unknown keys or ones this host cannot honour raise
        InvalidSpec / KernelFeatureMissing naming the field. Rootless: warn per limit."""

    @abstractmethod
    def add_pid(self, pid: int) -> None:
        """Move a process (use 0 for the caller) into this cgroup, in every controller.
        For 0 in a child that fork() started in the cgroup2 directory, that one is
        skipped."""

    # True in a child that fork() started in cgroup2_dir()
    born_in_cgroup2 = False

    def cgroup2_dir(self) -> str | None:
        """This cgroup's directory in a cgroup2 hierarchy (v2, or a hybrid host's
        unified mount), if there is one."""
        return None

    def fork(self) -> int:
        """os.fork(), with the child started in cgroup2_dir() where the kernel allows it
        (clone3's CLONE_INTO_CGROUP, linux 5.7), so that add_pid(0) in the child skips
        that hierarchy. Moving a process in through cgroup.procs takes the kernel's
        cgroup_threadgroup_rwsem for writing, which waits out an RCU grace period:
        5 to 25 ms of every create on the development VM (hybrid, kernel 6.18), against
        0.5 ms for the fork here. Anything else (no cgroup2, an old kernel, no
        delegation, a threaded caller) falls back to os.fork() and add_pid's write."""
        directory = self.cgroup2_dir()
        if directory is None or not _single_threaded():
            return os.fork()
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return os.fork()
        from .. import sys as _sys  # ctypes: not for the light verbs that import cgroups

        try:
            pid = _sys.fork_into_cgroup(fd)
        except _sys.SysError:
            return os.fork()
        finally:
            os.close(fd)
        if pid == 0:
            self.born_in_cgroup2 = True
        return pid

    @abstractmethod
    def pids(self) -> list[int]:
        """Every process in this cgroup and below."""

    @abstractmethod
    def freeze(self) -> None: ...

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def is_frozen(self) -> bool: ...

    @abstractmethod
    def kill_all(self, sig: int) -> None:
        """Signal every process in the cgroup (cgroup.kill on v2 for SIGKILL)."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def destroy(self, keep: tuple[str, ...] = ()) -> None:
        """rmdir the cgroup (every controller), retrying briefly while it empties, then
        the levels above it under minirun's parent that are left empty (_prune_parents).
        Missing is not an error. Directories in `keep` (from dirs(): ones that existed
        before minirun's create) are someone else's and stay."""

    @abstractmethod
    def dirs(self) -> list[str]:
        """This cgroup's directory in each hierarchy (v1: per mount), existing or not."""

    @abstractmethod
    def sub_dirs(self, subs: dict[str, str]) -> list[str]:
        """exec --cgroup: the directories to join when `subs` maps a controller ("" for
        every one) to an existing sub-cgroup of this one. Raises naming what is wrong."""

    def _existing_subs(self, dirs: list[str]) -> list[str]:
        for d in dirs:
            if not os.path.isdir(d):
                raise InvalidArgument(f"--cgroup: sub-cgroup {d} does not exist")
        return dirs

    def add_pid_to_dirs(self, pid: int, dirs: list[str]) -> None:
        for d in dirs:
            self._add_pid_to(d, pid)

    def stats(self) -> dict:
        """runc `events --stats` shaped data: cpu, memory (usage, working set), pids,
        blkio. A controller that is not there (or a cgroup already gone) is left out."""
        out: dict = {}
        for name, collect in (("cpu", self._cpu_stats), ("memory", self._memory_stats),
                              ("pids", self._pids_stats), ("blkio", self._blkio_stats)):
            try:
                value = collect()
            except OSError:
                continue
            if value:
                out[name] = value
        return out

    @abstractmethod
    def mounts_for_container(self) -> list[tuple[str, str]]:
        """(host_dir, name) pairs to bind under the container's /sys/fs/cgroup when it
        has no cgroup namespace: for v1 one per controller mount, for v2 one ("" name)."""

    def oom_kill_count(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup (0 when the
        memory controller does not account this cgroup)."""
        raise NotImplementedError

    # Helpers shared by both drivers.

    def _write(self, directory: str, name: str, value: str, field: str) -> bool:
        """Write a cgroup file; False if skipped (rootless without delegation).

        `field` names the OCI setting ("memory.limit") in errors and warnings.
        """
        path = os.path.join(directory, name)
        try:
            write_file(path, value)
            return True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and self.rootless:
                warn(f"cannot apply {field} (no cgroup delegation): {path}: {e.strerror}")
                return False
            if e.errno == errno.ENOENT:
                if self.rootless:
                    # without delegation the cgroup, or the controller's files in it,
                    # were never made for us
                    warn(f"cannot apply {field} (no cgroup delegation): {path} does not exist")
                    return False
                if not os.path.isdir(directory):
                    raise MiniRunError(f"cannot set {field}: cgroup {directory} does not exist")
                raise KernelFeatureMissing(
                    f"linux.resources.{field}: {name} does not exist in {directory} "
                    "(kernel or controller lacks it)"
                ) from None
            raise MiniRunError(f"cannot write {value!r} to {path}: {e.strerror}") from None

    def _prune_parents(self, mountpoint: str) -> None:
        """After destroy: remove the now-empty levels between the container's cgroup and
        the hierarchy root, up to and including minirun's own parent, so that nothing
        named minirun stays behind. Only under that parent: someone else's parent
        (podman's, containerd's) is theirs to remove. A level still in use stays
        (EBUSY/ENOTEMPTY), and create() copes with a parent vanishing under it."""
        parts = self.path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != PARENT:
            return
        for depth in range(len(parts) - 1, 0, -1):
            try:
                os.rmdir(os.path.join(mountpoint, *parts[:depth]))
            except OSError:
                return

    def _mkdir(self, directory: str) -> bool:
        """mkdir one level; True if it was created now. Rootless without delegation warns.
        A parent removed meanwhile by another container's delete raises ParentVanished."""
        try:
            os.mkdir(directory, 0o755)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            raise ParentVanished(directory) from None
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and self.rootless:
                # one line per container, not one per v1 hierarchy
                if not getattr(self, "_create_warned", False):
                    self._create_warned = True
                    warn(f"cannot create cgroup {self.path} (no cgroup delegation): "
                         f"{e.strerror}; the container runs without its own cgroup")
                return False
            raise MiniRunError(f"cannot create cgroup {directory}: {e.strerror}") from None

    def _add_pid_to(self, directory: str, pid: int, procs_file: str = "cgroup.procs") -> None:
        try:
            write_file(os.path.join(directory, procs_file), str(pid))
        except OSError as e:
            if self.rootless and e.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS):
                warn(f"cannot move pid {pid} into {directory} (no cgroup delegation): "
                     f"{e.strerror}")
                return
            raise MiniRunError(f"cannot move pid {pid} into cgroup {directory}: "
                               f"{e.strerror}") from None

    @staticmethod
    def _pids_below(directory: str) -> list[int]:
        """cgroup.procs of `directory` and every cgroup below it."""
        out: list[int] = []
        stack = [directory]
        while stack:
            d = stack.pop()
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    out.extend(int(line) for line in f if line.strip())
                with os.scandir(d) as it:
                    stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
            except OSError as e:
                # removed while we walked (ENODEV: rmdir'ed between our open and read,
                # as when the daemon deletes an exited container a stop is killing)
                if e.errno not in (errno.ENOENT, errno.ENODEV):
                    raise
        return out

    def _signal_pids(self, sig: int) -> list[int]:
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def _kill_until_empty(self, first_pass_done: bool = False) -> None:
        """SIGKILL whatever is still listed until nothing is, or KILL_TIMEOUT.

        Killed tasks leave cgroup.procs as they exit (zombies are not listed). One that
        lingers past the deadline (uninterruptible sleep) shows up when destroy() fails
        with EBUSY, which names the cgroup, rather than as a hang here.
        """
        deadline = time.monotonic() + KILL_TIMEOUT
        delay = 0.001
        if not first_pass_done:
            self._signal_pids(signal.SIGKILL)
        while self.pids():
            if time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            self._signal_pids(signal.SIGKILL)

    def _rmdir_tree(self, directory: str) -> None:
        """rmdir `directory` and every cgroup below it, deepest first, retrying on EBUSY
        while the last tasks finish exiting."""
        if not os.path.isdir(directory):
            return
        dirs = []
        for top, _subdirs, _files in os.walk(directory, topdown=False):
            dirs.append(top)
        deadline = time.monotonic() + RMDIR_TIMEOUT
        for d in dirs:
            delay = 0.001
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                        continue
                    if self.rootless and e.errno in (errno.EACCES, errno.EPERM):
                        warn(f"cannot remove cgroup {d} (no cgroup delegation): {e.strerror}")
                        break
                    raise MiniRunError(f"cannot remove cgroup {d}: {e.strerror}") from None
