"""cgroup v2 driver: one unified hierarchy.

A controller only shows its files in a cgroup once every ancestor enables it in its
cgroup.subtree_control. create() passes down, best effort, whatever the root already
delegates, so stats work for a container without limits; apply() enables what the
resources need from the hierarchy root down to this cgroup's parent, and fails naming
the field if it cannot. The hierarchy root itself is only written by apply(), and only
on a pure v2 host: on a hybrid host (v1 controllers plus a cgroup2 mount, like this VM's
/sys/fs/cgroup/unified) the root belongs to the host.

Device rules are not enforced on v2: that needs an eBPF program attached to the cgroup,
which minirun does not load yet. The runtime still creates only the listed device nodes.
"""

from __future__ import annotations

import os
import _signal as signal  # not signal: its enums cost import time on every start
import time

from ..errors import InvalidArgument, InvalidSpec, KernelFeatureMissing, MiniRunError
from . import DEFAULT_ROOT
from .base import (
    FREEZE_TIMEOUT,
    Cgroup,
    check_usage_below,
    read_file,
    read_int,
    read_int_or,
    read_keyed,
    retry_create,
    warn,
    write_file,
)
from .convert import (
    THROTTLE_FIELDS,
    blkio_weight_to_io_weight,
    check_resources,
    cpu_max,
    limit_value,
    pids_max,
    rdma_line,
    shares_to_weight,
    swap_to_v2,
    wanted_controllers,
    warn_kernel_memory,
)

_IO_MAX_KEYS = dict(zip(THROTTLE_FIELDS, ("rbps", "wbps", "riops", "wiops")))
_MAX = 2**64 - 1


def host_has_v1_hierarchies(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True on a hybrid host, where cgroup v1 hierarchies are mounted next to cgroup2."""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if "-" in fields and fields[fields.index("-") + 1] == "cgroup":
                    return True
    except OSError:
        pass
    return False


class CgroupV2(Cgroup):
    version = 2

    def __init__(
        self,
        path: str,
        root: str = DEFAULT_ROOT,
        rootless: bool = False,
        *,
        own_root: bool | None = None,
    ) -> None:
        super().__init__(path, root, rootless)
        self.dir = os.path.join(root, self.path.lstrip("/"))
        # None: decided on first need (a mountinfo read), so a start that enables
        # nothing never pays for it
        self._own_root = own_root

    def _owns_root(self) -> bool:
        if self._own_root is None:
            self._own_root = not host_has_v1_hierarchies()
        return self._own_root

    # Placement and lifecycle

    def _levels(self) -> list[str]:
        """The hierarchy root, then each ancestor of this cgroup, parent last."""
        levels = [self.root]
        for part in self.path.strip("/").split("/")[:-1]:
            levels.append(os.path.join(levels[-1], part))
        return levels

    @retry_create
    def create(self) -> None:
        directory = self.root
        for part in self.path.strip("/").split("/"):
            directory = os.path.join(directory, part)
            self._mkdir(directory)
            if not os.path.isdir(directory):
                return  # rootless without delegation: warned already
        self._pass_down_controllers()

    def _pass_down_controllers(self) -> None:
        # Without this a container with no limits would have no memory.current or
        # pids.current to report. Below the root only, and best effort: the root is the
        # host's, and an ancestor holding processes of its own refuses (EBUSY), which
        # costs only stats, while apply() reports what the resources need.
        for level in self._levels()[1:]:
            try:
                available = read_file(os.path.join(level, "cgroup.controllers")).split()
                enabled = read_file(os.path.join(level, "cgroup.subtree_control")).split()
            except OSError:
                return
            for controller in available:
                if controller not in enabled:
                    try:
                        write_file(os.path.join(level, "cgroup.subtree_control"), f"+{controller}")
                    except OSError:
                        pass

    def add_pid(self, pid: int) -> None:
        if pid == 0 and self.born_in_cgroup2:
            return
        self._add_pid_to(self.dir, pid)

    def cgroup2_dir(self) -> str | None:
        return self.dir

    def pids(self) -> list[int]:
        return self._pids_below(self.dir)

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def destroy(self, keep: tuple[str, ...] = ()) -> None:
        if self.dir in keep:
            return
        self._rmdir_tree(self.dir)
        self._prune_parents(self.root)

    def dirs(self) -> list[str]:
        return [self.dir]

    def sub_dirs(self, subs: dict[str, str]) -> list[str]:
        # one hierarchy: whatever the controllers named, one sub-cgroup
        paths = set(subs.values())
        if len(paths) != 1:
            raise InvalidArgument("--cgroup: cgroup v2 has one hierarchy, give one sub-cgroup")
        return self._existing_subs([os.path.join(self.dir, paths.pop())])

    def mounts_for_container(self) -> list[tuple[str, str]]:
        return [(self.dir, "")]

    # Freezer and signals

    def _events(self) -> dict[str, int]:
        return read_keyed(os.path.join(self.dir, "cgroup.events"))

    def _set_freeze(self, value: str) -> None:
        path = os.path.join(self.dir, "cgroup.freeze")
        try:
            write_file(path, value)
        except FileNotFoundError:
            if not os.path.isdir(self.dir):
                raise MiniRunError(f"cgroup {self.dir} does not exist") from None
            raise KernelFeatureMissing(
                f"cannot freeze: {path} does not exist (the cgroup v2 freezer needs linux 5.2)"
            ) from None
        except OSError as e:
            raise MiniRunError(f"cannot write {value} to {path}: {e.strerror}") from None

    def _wait_frozen(self, want: int, action: str) -> None:
        deadline = time.monotonic() + FREEZE_TIMEOUT
        delay = 0.0005
        while self._events().get("frozen", 0) != want:
            if time.monotonic() > deadline:
                raise MiniRunError(
                    f"cannot {action} cgroup {self.dir}: cgroup.events still says "
                    f"frozen {1 - want} after {FREEZE_TIMEOUT:g}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def freeze(self) -> None:
        self._set_freeze("1")
        try:
            self._wait_frozen(1, "freeze")
        except MiniRunError:
            self._set_freeze("0")
            raise

    def thaw(self) -> None:
        self._set_freeze("0")
        # stays frozen while an ancestor is frozen: better an error than a silent no-op
        self._wait_frozen(0, "thaw")

    def is_frozen(self) -> bool:
        try:
            return self._events().get("frozen", 0) == 1
        except FileNotFoundError:
            return False

    def kill_all(self, sig: int) -> None:
        if sig != signal.SIGKILL:
            self._signal_pids(sig)
            return
        kill_file = os.path.join(self.dir, "cgroup.kill")
        try:
            # the kernel kills the whole subtree at once, forks racing it included
            write_file(kill_file, "1")
        except FileNotFoundError:
            if not os.path.isdir(self.dir):
                return  # no cgroup, no processes
            self._kill_frozen()  # before linux 5.14
        except OSError as e:
            raise MiniRunError(f"cannot write 1 to {kill_file}: {e.strerror}") from None
        self._kill_until_empty(first_pass_done=True)

    def _kill_frozen(self) -> None:
        # Frozen, the tasks cannot fork between our reading cgroup.procs and the signal;
        # a v2 frozen task still dies of SIGKILL, thawing just lets it exit promptly.
        freeze = os.path.join(self.dir, "cgroup.freeze")
        was_frozen = self.is_frozen()
        try:
            write_file(freeze, "1")
        except OSError:
            pass  # best effort: the caller's loop catches late forks anyway
        self._signal_pids(signal.SIGKILL)
        if not was_frozen:
            try:
                write_file(freeze, "0")
            except OSError:
                pass

    # Limits

    def apply(self, resources: dict) -> None:
        res = check_resources(resources)
        _refuse_v1_only(res)
        needed = self._needed_controllers(res)
        self._enable(needed)
        if "memory" in res:
            warn_kernel_memory(res["memory"])
            self._apply_memory(res["memory"])
        if "cpu" in res:
            self._apply_cpu(res["cpu"])
        if "limit" in res.get("pids", {}):
            self._write(self.dir, "pids.max", pids_max(res["pids"]["limit"]), "pids.limit")
        if "blockIO" in res:
            self._apply_io(res["blockIO"])
        for i, limit in enumerate(res.get("hugepageLimits", ())):
            self._write(self.dir, f"hugetlb.{limit['pageSize']}.max", str(limit["limit"]),
                        f"hugepageLimits[{i}]")
        for device, limits in res.get("rdma", {}).items():
            self._write(self.dir, "rdma.max", rdma_line(device, limits), "rdma")
        for key, value in res.get("unified", {}).items():
            self._write(self.dir, key, value, f"unified.{key}")
        if res.get("devices"):
            warn("device rules (linux.resources.devices) are not enforced on cgroup v2; "
                 "only the listed device nodes are created")

    def _available_controllers(self) -> set[str]:
        try:
            return set(read_file(os.path.join(self.root, "cgroup.controllers")).split())
        except OSError as e:
            raise KernelFeatureMissing(
                f"cannot read {self.root}/cgroup.controllers: {e.strerror}"
            ) from None

    def _needed_controllers(self, res: dict) -> dict[str, str]:
        """{v2 controller: OCI field} for what `res` sets."""
        needed = {}
        for controller, field in wanted_controllers(res).items():
            if controller == "devices":
                continue  # no controller on v2: see the module docstring
            needed[{"blkio": "io"}.get(controller, controller)] = field
        unified = res.get("unified", {})
        if unified:
            available = self._available_controllers()
            for key in unified:
                if not key or "/" in key or ".." in key:
                    raise InvalidSpec(f"linux.resources.unified: invalid file name {key!r}")
                controller = key.split(".", 1)[0]
                if controller in available:
                    needed.setdefault(controller, f"unified.{key}")
        return needed

    def _enable(self, needed: dict[str, str]) -> None:
        if not needed:
            return
        available = self._available_controllers()
        for controller, field in needed.items():
            if controller not in available:
                raise KernelFeatureMissing(
                    f"linux.resources.{field}: the {controller} controller is not available "
                    f"in the cgroup v2 hierarchy at {self.root}"
                )
        for depth, level in enumerate(self._levels()):
            try:
                enabled = set(read_file(os.path.join(level, "cgroup.subtree_control")).split())
            except FileNotFoundError:
                enabled = set()  # the write below reports the missing cgroup
            for controller, field in needed.items():
                if controller in enabled:
                    continue
                if depth == 0 and not self._owns_root():
                    raise KernelFeatureMissing(
                        f"linux.resources.{field}: the {controller} controller is not enabled "
                        f"in {self.root}/cgroup.subtree_control, and on a hybrid cgroup host "
                        "that root belongs to the host"
                    )
                self._write(level, "cgroup.subtree_control", f"+{controller}", field)

    def _apply_memory(self, mem: dict) -> None:
        limit, swap = mem.get("limit", 0), mem.get("swap", 0)
        if mem.get("checkBeforeUpdate") and limit > 0:
            check_usage_below(os.path.join(self.dir, "memory.current"), limit)
        if swap or limit == -1:
            swap_max = limit_value(swap_to_v2(swap, limit))
            if os.path.exists(os.path.join(self.dir, "memory.swap.max")):
                self._write(self.dir, "memory.swap.max", swap_max, "memory.swap")
            elif swap_max not in ("max", "0"):
                # without swap accounting "no swap limit" and "no swap" need no file
                raise KernelFeatureMissing(
                    "linux.resources.memory.swap: memory.swap.max does not exist "
                    "(swap accounting is off on this host)"
                )
        if limit:
            self._write(self.dir, "memory.max", limit_value(limit), "memory.limit")
        if mem.get("reservation"):
            self._write(self.dir, "memory.low", limit_value(mem["reservation"]),
                        "memory.reservation")

    def _apply_cpu(self, cpu: dict) -> None:
        if cpu.get("shares"):
            self._write(self.dir, "cpu.weight", str(shares_to_weight(cpu["shares"])),
                        "cpu.shares")
        quota, period = cpu.get("quota", 0), cpu.get("period", 0)
        if quota or period:
            self._write(self.dir, "cpu.max", cpu_max(quota, period), "cpu.quota")
        if "burst" in cpu:
            self._write(self.dir, "cpu.max.burst", str(cpu["burst"]), "cpu.burst")
        if "idle" in cpu:
            self._write(self.dir, "cpu.idle", str(cpu["idle"]), "cpu.idle")
        for key in ("cpus", "mems"):
            if cpu.get(key):
                self._write(self.dir, f"cpuset.{key}", cpu[key], f"cpu.{key}")

    def _apply_io(self, blkio: dict) -> None:
        # BFQ takes blkio's own 10..1000 scale; io.weight (iocost) needs the conversion
        bfq = os.path.exists(os.path.join(self.dir, "io.bfq.weight"))
        if blkio.get("weight"):
            if bfq:
                self._write(self.dir, "io.bfq.weight", str(blkio["weight"]), "blockIO.weight")
            else:
                self._write(self.dir, "io.weight",
                            str(blkio_weight_to_io_weight(blkio["weight"])), "blockIO.weight")
        for i, dev in enumerate(blkio.get("weightDevice", ())):
            if dev.get("weight"):
                weight = dev["weight"] if bfq else blkio_weight_to_io_weight(dev["weight"])
                self._write(self.dir, "io.bfq.weight" if bfq else "io.weight",
                            f"{dev['major']}:{dev['minor']} {weight}",
                            f"blockIO.weightDevice[{i}]")
        for field, key in _IO_MAX_KEYS.items():
            for i, dev in enumerate(blkio.get(field, ())):
                self._write(self.dir, "io.max", f"{dev['major']}:{dev['minor']} {key}={dev['rate']}",
                            f"blockIO.{field}[{i}]")

    # Reading back

    def oom_kill_count(self) -> int:
        try:
            return read_keyed(os.path.join(self.dir, "memory.events")).get("oom_kill", 0)
        except FileNotFoundError:
            return 0  # the memory controller is not enabled for this cgroup

    def _cpu_stats(self) -> dict:
        stat = read_keyed(os.path.join(self.dir, "cpu.stat"))
        out: dict = {
            "usage": {
                "total": stat.get("usage_usec", 0) * 1000,
                "kernel": stat.get("system_usec", 0) * 1000,
                "user": stat.get("user_usec", 0) * 1000,
            }
        }
        if "nr_periods" in stat:  # only with the cpu controller enabled
            out["throttling"] = {
                "periods": stat["nr_periods"],
                "throttled_periods": stat.get("nr_throttled", 0),
                "throttled_time": stat.get("throttled_usec", 0) * 1000,
            }
        return out

    def _memory_stats(self) -> dict:
        d = self.dir
        usage = read_int(os.path.join(d, "memory.current"))
        limit = read_int(os.path.join(d, "memory.max"))
        raw = read_keyed(os.path.join(d, "memory.stat"))
        out = {
            "cache": raw.get("file", 0),
            "usage": {
                "usage": usage,
                "max": read_int_or(os.path.join(d, "memory.peak"), 0),
                "limit": limit,
                "failcnt": _read_keyed_or(os.path.join(d, "memory.events")).get("max", 0),
            },
            # what the kernel cannot reclaim easily: kubelet's and cAdvisor's definition
            "working_set": max(0, usage - raw.get("inactive_file", 0)),
            "raw": raw,
            "stats": raw,  # the same map under the name minirun's own tools read
        }
        try:
            swap_usage = read_int(os.path.join(d, "memory.swap.current"))
            swap_limit = read_int(os.path.join(d, "memory.swap.max"))
        except FileNotFoundError:
            return out
        # v1 reports swap as memory+swap; runc adds them up on v2 to match, and so do we
        out["swap"] = {
            "usage": swap_usage + usage,
            "max": 0,  # a peak of the sum cannot be derived from the two peaks
            "limit": swap_limit if _MAX in (swap_limit, limit) else swap_limit + limit,
            "failcnt": _read_keyed_or(os.path.join(d, "memory.swap.events")).get("max", 0),
        }
        return out

    def _pids_stats(self) -> dict:
        limit = read_file(os.path.join(self.dir, "pids.max")).strip()
        return {
            "current": read_int(os.path.join(self.dir, "pids.current")),
            "limit": 0 if limit == "max" else int(limit),  # runc reports no limit as 0
        }

    def _blkio_stats(self) -> dict:
        service_bytes, serviced = [], []
        for line in read_file(os.path.join(self.dir, "io.stat")).splitlines():
            number, *pairs = line.split()
            major, _, minor = number.partition(":")
            values = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
            for op, nbytes, nios in (("Read", "rbytes", "rios"), ("Write", "wbytes", "wios")):
                base = {"major": int(major), "minor": int(minor), "op": op}
                service_bytes.append({**base, "value": int(values.get(nbytes, 0))})
                serviced.append({**base, "value": int(values.get(nios, 0))})
        return {"ioServiceBytesRecursive": service_bytes, "ioServicedRecursive": serviced}


def _refuse_v1_only(res: dict) -> None:
    """Settings with no cgroup v2 equivalent: refuse them before writing anything."""
    memory, cpu, blkio = res.get("memory", {}), res.get("cpu", {}), res.get("blockIO", {})
    refused = []
    if memory.get("kernelTCP"):
        refused.append(("memory.kernelTCP", "kernel TCP memory has no cgroup v2 limit"))
    if "swappiness" in memory:
        refused.append(("memory.swappiness", "cgroup v2 has no per-cgroup swappiness"))
    if memory.get("disableOOMKiller"):
        refused.append(("memory.disableOOMKiller", "cgroup v2 cannot disable the OOM killer"))
    if memory.get("useHierarchy") is False:
        refused.append(("memory.useHierarchy", "cgroup v2 is always hierarchical"))
    for key in ("realtimeRuntime", "realtimePeriod"):
        if cpu.get(key):
            refused.append((f"cpu.{key}", "cgroup v2 has no realtime cpu controller"))
    if blkio.get("leafWeight") or any(d.get("leafWeight") for d in blkio.get("weightDevice", ())):
        refused.append(("blockIO.leafWeight", "cgroup v2 has no leaf weights"))
    network = res.get("network", {})
    if "classID" in network or network.get("priorities"):
        refused.append(("network", "net_cls and net_prio do not exist on cgroup v2"))
    if refused:
        field, why = refused[0]
        raise KernelFeatureMissing(f"linux.resources.{field}: {why}")



def _read_keyed_or(path: str) -> dict[str, int]:
    try:
        return read_keyed(path)
    except OSError:
        return {}

