"""The interface both drivers implement. The runtime only uses these methods."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Cgroup(ABC):
    version: int  # 1 or 2

    def __init__(self, path: str, root: str, rootless: bool = False) -> None:
        self.path = path  # "/minirun/<id>", relative to the hierarchy root
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
        """Move a process (use 0 for the caller) into this cgroup, in every controller."""

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
    def destroy(self) -> None:
        """rmdir the cgroup (every controller), retrying briefly while it empties.
        Never removes the shared parents. Missing is not an error."""

    @abstractmethod
    def stats(self) -> dict:
        """runc `events --stats` shaped data: cpu, memory (usage, working set), pids, blkio."""

    @abstractmethod
    def mounts_for_container(self) -> list[tuple[str, str]]:
        """(host_dir, name) pairs to bind under the container's /sys/fs/cgroup when it
        has no cgroup namespace: for v1 one per controller mount, for v2 one ("" name)."""
