"""cgroups: one interface, a v1 driver and a v2 driver.

The runtime builds a `Cgroup` in the parent before it forks, creates it and applies the
OCI `linux.resources` there, and the container's first child writes its own pid into it
before it unshares anything. Keep this package free of heavy imports: it is on the
container start path.

Paths are cgroup paths relative to the hierarchy root ("/minirun/<id>"), never relative
to the caller's own cgroup (on this VM the caller sits in the machine's own cgroup).

Environment overrides (tests use them to drive the v2 driver on a hybrid host):
  MINIRUN_CGROUP_DRIVER   "v1" | "v2" | unset (auto)
  MINIRUN_CGROUP_ROOT     mount point of the hierarchy for v2 (default /sys/fs/cgroup),
                          or the parent dir of the per-controller mounts for v1
"""

from __future__ import annotations

import os

from ..errors import InvalidArgument, KernelFeatureMissing
from .. import mountinfo
from ..mountinfo import Mount, fstype_at
from .base import PARENT
DEFAULT_ROOT = "/sys/fs/cgroup"


def detect_mode(root: str = DEFAULT_ROOT, mounts: list[Mount] | None = None) -> str:
    """'v2' (unified), 'hybrid' (v1 controllers plus a cgroup2 mount) or 'v1'. `mounts`:
    /proc/self/mountinfo already parsed (read here otherwise)."""
    if mounts is None:
        try:
            mounts = mountinfo.read()
        except OSError:
            mounts = []  # as fstype_at: no mount known
    fstype = _fstype(root, mounts)
    if fstype == "cgroup2":
        return "v2"
    if fstype is None and not os.path.isdir(root):
        raise KernelFeatureMissing(f"no cgroup hierarchy mounted at {root}")
    if _fstype(os.path.join(root, "unified"), mounts) == "cgroup2":
        return "hybrid"
    return "v1"


def _fstype(path: str, mounts: list[Mount] | None = None) -> str | None:
    return fstype_at(os.path.realpath(path), mounts)


def resolve_path(cgroups_path: str | None, container_id: str) -> str:
    """The cgroup path for a container.

    None or empty: /minirun/<id>. Absolute: taken as is (podman and containerd pass
    their own). Relative: under /minirun, never under the caller's own cgroup.
    """
    if not cgroups_path:
        return f"/{PARENT}/{container_id}"
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        raise InvalidArgument(
            f"cgroupsPath {cgroups_path!r} looks like a systemd slice:scope path; "
            "systemd cgroups are not supported"
        )
    parts = [p for p in cgroups_path.split("/") if p]
    if any(p in (".", "..") for p in parts) or not parts:
        raise InvalidArgument(f"invalid cgroupsPath {cgroups_path!r}")
    if cgroups_path.startswith("/"):
        return "/" + "/".join(parts)
    return f"/{PARENT}/" + "/".join(parts)


# The v1 hierarchies by root, read once per process: `ps` opens every container's cgroup
# (is it frozen?) and each read of mountinfo walks every mount, of which each container
# adds a few, so with a read per container `ps` grew with the square of their number
# (bench/supervise_bench.py: 565 ms at 200 containers). Hierarchies are mounted at boot.
_V1_HIERARCHIES: dict[str, list] = {}


def open_cgroup(path: str, rootless: bool = False, driver: str | None = None,
                root: str | None = None):
    """The driver for this host, bound to cgroup `path` (not created yet). `driver` and
    `root` pin what an earlier call chose (a container's state records them)."""
    driver = driver or os.environ.get("MINIRUN_CGROUP_DRIVER")
    root = root or os.environ.get("MINIRUN_CGROUP_ROOT", DEFAULT_ROOT)
    # One read of mountinfo for the mode and the v1 hierarchies: each read costs the
    # kernel a walk of every mount (show_mountinfo was ~2% of a `run`'s CPU under perf,
    # with three reads in create).
    text = None
    if driver is None:
        try:
            text = mountinfo.read_text()
        except OSError:
            text = ""
        driver = "v2" if detect_mode(root, mountinfo.parse(text)) == "v2" else "v1"
    if driver == "v2":
        from .v2 import CgroupV2

        return CgroupV2(path, root=root, rootless=rootless)
    if driver == "v1":
        from .v1 import CgroupV1, find_hierarchies

        hierarchies = _V1_HIERARCHIES.get(root)
        if hierarchies is None:
            hierarchies = _V1_HIERARCHIES[root] = find_hierarchies(root, text or None)
        return CgroupV1(path, root=root, rootless=rootless, hierarchies=hierarchies)
    raise InvalidArgument(f"unknown cgroup driver {driver!r} (MINIRUN_CGROUP_DRIVER)")
