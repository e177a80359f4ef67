"""cgroup v1 driver: one directory per controller hierarchy.

The hierarchies come from /proc/self/mountinfo (fstype "cgroup"), so co-mounts such as
"cpu,cpuacct" and named hierarchies such as name=systemd are found wherever the host put
them. Named hierarchies carry no limits; they are joined for placement only, as runc does.
"""

from __future__ import annotations

import errno
import os
import _signal as signal  # not signal: its enums cost import time on every start
import time

from .. import mountinfo
from ..errors import InvalidArgument, KernelFeatureMissing, MiniRunError
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
    write_file,
)
from .convert import (
    DEFAULT_ALLOWED_DEVICES,
    THROTTLE_FIELDS,
    check_resources,
    device_rule,
    pids_max,
    rdma_line,
    wanted_controllers,
    warn_kernel_memory,
)

# Super options of a v1 cgroup mount that are not controller names.
_NON_CONTROLLER_OPTIONS = frozenset(
    {"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods",
     "nofavordynmods", "none", "all"}
)
_MEMSW = "memory.memsw.limit_in_bytes"
_THROTTLE_FILES = dict(
    zip(
        THROTTLE_FIELDS,
        ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
         "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"),
    )
)
# The hierarchy whose cgroup.procs answers pids(): every one holds the same processes,
# the freezer is the one kill_all and freeze work through.
_PRIMARY_ORDER = ("freezer", "pids", "memory", "cpu", "cpuacct", "devices", "blkio", "cpuset")


UNIFIED = "unified"


class Hierarchy:
    """One mounted v1 hierarchy: its mount point, controllers and mount name."""

    __slots__ = ("controllers", "mountpoint", "name")

    def __init__(self, mountpoint: str, controllers: tuple[str, ...], name: str) -> None:
        self.mountpoint = mountpoint
        self.controllers = controllers  # () for a named hierarchy such as name=systemd
        self.name = name  # "cpu,cpuacct", "memory", "systemd"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and (
            (self.mountpoint, self.controllers, self.name)
            == (other.mountpoint, other.controllers, other.name)
        )

    def __repr__(self) -> str:
        return f"Hierarchy({self.mountpoint!r}, {self.controllers!r}, {self.name!r})"


def parse_mountinfo(text: str, root: str | None = None) -> list[Hierarchy]:
    """The v1 hierarchies in a mountinfo text, one per hierarchy.

    A hierarchy mounted more than once (bind mounts) is listed once, preferring a mount
    point directly in `root`, then one showing the hierarchy's root ("/"). On a hybrid
    host the cgroup2 mount at <root>/unified comes last as "unified": runc places the
    container there too (placement only, no limits), so /proc/self/cgroup's 0:: line
    names the container's cgroup.
    """
    best: dict[str, tuple[tuple[bool, bool], int, Hierarchy]] = {}
    unified = None
    for index, m in enumerate(mountinfo.parse(text)):
        if m.fstype == "cgroup2" and root is not None and \
                m.mountpoint == os.path.join(root, "unified"):
            unified = Hierarchy(m.mountpoint, (), UNIFIED)
            continue
        if m.fstype != "cgroup":
            continue
        options = m.super_options.split(",")
        controllers = tuple(o for o in options if o not in _NON_CONTROLLER_OPTIONS and "=" not in o)
        names = [o[len("name="):] for o in options if o.startswith("name=")]
        if controllers:
            name = ",".join(controllers)
        elif names:
            name = names[0]
        else:
            continue
        score = (root is not None and os.path.dirname(m.mountpoint) == root, m.root == "/")
        if name not in best or score > best[name][0]:
            keep_index = best[name][1] if name in best else index
            best[name] = (score, keep_index, Hierarchy(m.mountpoint, controllers, name))
    found = [h for _score, _index, h in sorted(best.values(), key=lambda item: item[1])]
    if found and unified is not None:
        found.append(unified)
    return found


def find_hierarchies(root: str = DEFAULT_ROOT, text: str | None = None) -> list[Hierarchy]:
    """The v1 hierarchies mounted here; `text`: /proc/self/mountinfo already read."""
    if text is None:
        try:
            text = mountinfo.read_text()
        except OSError as e:
            raise KernelFeatureMissing(
                f"cannot read /proc/self/mountinfo: {e.strerror}") from None
    hierarchies = parse_mountinfo(text, os.path.realpath(root))
    if not hierarchies:
        raise KernelFeatureMissing("no cgroup v1 hierarchy is mounted")
    return hierarchies


class CgroupV1(Cgroup):
    version = 1

    def __init__(
        self,
        path: str,
        root: str = DEFAULT_ROOT,
        rootless: bool = False,
        *,
        hierarchies: list[Hierarchy] | None = None,
    ) -> None:
        super().__init__(path, root, rootless)
        self.hierarchies = list(hierarchies) if hierarchies is not None else find_hierarchies(root)
        self._dirs: dict[str, str] = {}
        for h in self.hierarchies:
            for controller in h.controllers:
                self._dirs.setdefault(controller, self._dir_of(h))

    def _dir_of(self, h: Hierarchy) -> str:
        return h.mountpoint + self.path

    def controller_dir(self, controller: str) -> str | None:
        """This cgroup's directory in the hierarchy holding `controller`, if mounted."""
        return self._dirs.get(controller)

    def _primary_dir(self) -> str:
        for controller in _PRIMARY_ORDER:
            if controller in self._dirs:
                return self._dirs[controller]
        return self._dir_of(self.hierarchies[0])

    # Placement and lifecycle

    @retry_create
    def create(self) -> None:
        parts = self.path.strip("/").split("/")
        for h in self.hierarchies:
            directory = h.mountpoint
            for part in parts:
                parent, directory = directory, os.path.join(directory, part)
                self._mkdir(directory)
                if not os.path.isdir(directory):
                    break  # rootless without delegation: warned already
                if "cpuset" in h.controllers:
                    self._inherit_cpuset(parent, directory)

    def _inherit_cpuset(self, parent: str, directory: str) -> None:
        # A new cpuset cgroup starts with no cpus and no mems, and a task cannot join
        # it until both are set: copy them down at each level (empty ones only, so a
        # level someone configured keeps its values).
        for name in ("cpuset.cpus", "cpuset.mems"):
            try:
                if read_file(os.path.join(directory, name)).strip():
                    continue
                value = read_file(os.path.join(parent, name)).strip()
            except OSError as e:
                raise MiniRunError(f"cannot read {name} in {directory}: {e.strerror}") from None
            self._write(directory, name, value, f"cpu.{name.split('.')[1]}")

    def add_pid(self, pid: int) -> None:
        # pid 0 is the calling thread. minirun's forked children are single-threaded, so
        # moving the thread through `tasks` moves the whole process, and it skips the
        # cgroup.procs path whose first write waits out an RCU grace period (~7 ms on
        # every container start). cgroup2 (a hybrid host's unified mount) has no `tasks`.
        for h in self.hierarchies:
            use_tasks = pid == 0 and h.name != UNIFIED
            if pid == 0 and h.name == UNIFIED and self.born_in_cgroup2:
                continue
            self._add_pid_to(self._dir_of(h), pid, "tasks" if use_tasks else "cgroup.procs")

    def cgroup2_dir(self) -> str | None:
        for h in self.hierarchies:
            if h.name == UNIFIED:
                return self._dir_of(h)
        return None

    def pids(self) -> list[int]:
        return self._pids_below(self._primary_dir())

    def exists(self) -> bool:
        return any(os.path.isdir(self._dir_of(h)) for h in self.hierarchies)

    def destroy(self, keep: tuple[str, ...] = ()) -> None:
        for h in self.hierarchies:
            if self._dir_of(h) in keep:
                continue
            self._rmdir_tree(self._dir_of(h))
            self._prune_parents(h.mountpoint)

    def dirs(self) -> list[str]:
        return [self._dir_of(h) for h in self.hierarchies]

    def sub_dirs(self, subs: dict[str, str]) -> list[str]:
        # as runc: "sub" for every hierarchy, "memory:sub" (or "cpu,cpuacct:sub",
        # "name=systemd:sub") for some, the others staying in the container's cgroup
        known = {""}
        for h in self.hierarchies:
            known.update(h.controllers)
            if not h.controllers:
                known.update((h.name, f"name={h.name}"))
        unknown = sorted(set(subs) - known)
        if unknown:
            raise InvalidArgument(f"--cgroup: unknown controller {unknown[0]!r}")
        out = []
        for h in self.hierarchies:
            sub = subs.get("", "")
            for key in (*h.controllers, h.name, f"name={h.name}"):
                sub = subs.get(key, sub)
            out.append(os.path.join(self._dir_of(h), sub) if sub else self._dir_of(h))
        return self._existing_subs(out)

    def mounts_for_container(self) -> list[tuple[str, str]]:
        # as runc: the v1 hierarchies only, not a hybrid host's unified mount
        return [(self._dir_of(h), h.name) for h in self.hierarchies if h.name != UNIFIED]

    # Freezer and signals

    def _freezer_dir(self) -> str:
        directory = self._dirs.get("freezer")
        if directory is None:
            raise KernelFeatureMissing("cannot freeze: the freezer cgroup controller is not mounted")
        return directory

    def _set_freezer(self, directory: str, state: str) -> None:
        path = os.path.join(directory, "freezer.state")
        try:
            write_file(path, state)
        except OSError as e:
            raise MiniRunError(f"cannot write {state} to {path}: {e.strerror}") from None

    def freeze(self) -> None:
        directory = self._freezer_dir()
        self._set_freezer(directory, "FROZEN")
        deadline = time.monotonic() + FREEZE_TIMEOUT
        delay, attempts = 0.0005, 0
        while True:
            state = read_file(os.path.join(directory, "freezer.state")).strip()
            if state == "FROZEN":
                return
            if time.monotonic() > deadline:
                self._set_freezer(directory, "THAWED")
                raise MiniRunError(
                    f"cannot freeze cgroup {directory}: still {state} after {FREEZE_TIMEOUT:g}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            attempts += 1
            if attempts % 8 == 0:
                # tasks forking while the freeze runs can stall it in FREEZING; writing
                # FROZEN again restarts the walk over the cgroup's tasks (runc does this)
                self._set_freezer(directory, "FROZEN")

    def thaw(self) -> None:
        self._set_freezer(self._freezer_dir(), "THAWED")

    def is_frozen(self) -> bool:
        directory = self._dirs.get("freezer")
        if directory is None:
            return False
        try:
            return read_file(os.path.join(directory, "freezer.state")).strip() == "FROZEN"
        except FileNotFoundError:
            return False

    def kill_all(self, sig: int) -> None:
        if sig != signal.SIGKILL:
            self._signal_pids(sig)
            return
        if not self.pids():
            # Nothing can join an empty cgroup but through a fork inside it: no need for
            # the freezer's two writes (0.3 ms of every delete of a stopped container).
            return
        # Frozen, the tasks cannot fork new ones between our reading cgroup.procs and
        # the signal; thawed again, the SIGKILLs pending on them take effect.
        directory = self._dirs.get("freezer")
        frozen = False
        if directory is not None and os.path.isdir(directory):
            try:
                write_file(os.path.join(directory, "freezer.state"), "FROZEN")
                frozen = True
            except OSError:
                pass  # best effort: the loop below catches late forks anyway
        self._signal_pids(signal.SIGKILL)
        if frozen:
            try:
                self._set_freezer(directory, "THAWED")
            except MiniRunError:
                # killed, its tasks can be gone and the cgroup removed (the daemon's
                # delete of the exited container) before the thaw: nothing left to thaw
                # (a CRI StopPodSandbox failed UNKNOWN with ENOENT here)
                if os.path.isdir(directory):
                    raise
        self._kill_until_empty(first_pass_done=True)

    # Limits

    def apply(self, resources: dict) -> None:
        res = check_resources(resources)
        if res.get("unified"):
            raise KernelFeatureMissing(
                "linux.resources.unified: needs cgroup v2, this host runs cgroup v1"
            )
        for controller, field in wanted_controllers(res).items():
            if controller not in self._dirs:
                raise KernelFeatureMissing(
                    f"linux.resources.{field}: the {controller} cgroup controller is not "
                    "mounted on this host"
                )
        if "memory" in res:
            warn_kernel_memory(res["memory"])
            self._apply_memory(res["memory"])
        if "cpu" in res:
            self._apply_cpu(res["cpu"])
        if "limit" in res.get("pids", {}):
            self._write(self._dirs["pids"], "pids.max", pids_max(res["pids"]["limit"]),
                        "pids.limit")
        if "blockIO" in res:
            self._apply_block_io(res["blockIO"])
        for i, limit in enumerate(res.get("hugepageLimits", ())):
            self._write(self._dirs["hugetlb"], f"hugetlb.{limit['pageSize']}.limit_in_bytes",
                        str(limit["limit"]), f"hugepageLimits[{i}]")
        network = res.get("network", {})
        if "classID" in network:
            self._write(self._dirs["net_cls"], "net_cls.classid", str(network["classID"]),
                        "network.classID")
        for prio in network.get("priorities", ()):
            self._write(self._dirs["net_prio"], "net_prio.ifpriomap",
                        f"{prio['name']} {prio['priority']}", "network.priorities")
        for device, limits in res.get("rdma", {}).items():
            self._write(self._dirs["rdma"], "rdma.max", rdma_line(device, limits), "rdma")
        if "devices" in res:
            self._apply_devices(res["devices"])

    def _apply_memory(self, mem: dict) -> None:
        directory = self._dirs.get("memory")
        if directory is None:
            return  # only `kernel` or checkBeforeUpdate: nothing to write
        has_memsw = os.path.exists(os.path.join(directory, _MEMSW))
        limit, swap = mem.get("limit", 0), mem.get("swap", 0)
        if limit == -1 and swap == 0 and has_memsw:
            swap = -1  # unlimited memory, swap not mentioned: unlimited swap (runc)
        if swap and not has_memsw:
            raise KernelFeatureMissing(
                "linux.resources.memory.swap: swap accounting is off on this host "
                f"(no {_MEMSW}; boot with swapaccount=1)"
            )
        if mem.get("checkBeforeUpdate") and limit > 0:
            check_usage_below(os.path.join(directory, "memory.usage_in_bytes"), limit)
        writes = []
        if limit:
            writes.append(("memory.limit_in_bytes", limit, "memory.limit"))
        if swap:
            memsw = (_MEMSW, swap, "memory.swap")
            # memsw may never go below the memory limit: when raising, raise memsw
            # first; when lowering, lower the memory limit first (runc's order)
            current = read_int_or(os.path.join(directory, "memory.limit_in_bytes"), 0)
            if limit and (swap == -1 or current < swap):
                writes.insert(0, memsw)
            else:
                writes.append(memsw)
        if mem.get("reservation"):
            writes.append(("memory.soft_limit_in_bytes", mem["reservation"], "memory.reservation"))
        if mem.get("kernelTCP"):
            writes.append(("memory.kmem.tcp.limit_in_bytes", mem["kernelTCP"], "memory.kernelTCP"))
        if "swappiness" in mem:
            writes.append(("memory.swappiness", mem["swappiness"], "memory.swappiness"))
        if mem.get("disableOOMKiller"):
            writes.append(("memory.oom_control", 1, "memory.disableOOMKiller"))
        for name, value, field in writes:
            self._write(directory, name, str(value), field)
        if "useHierarchy" in mem:
            want = "1" if mem["useHierarchy"] else "0"
            # kernels since 5.16 are always hierarchical and refuse even a no-op write
            if _read_or(os.path.join(directory, "memory.use_hierarchy"), "") != want:
                self._write(directory, "memory.use_hierarchy", want, "memory.useHierarchy")

    def _apply_cpu(self, cpu: dict) -> None:
        directory = self._dirs.get("cpu")
        if cpu.get("shares"):
            self._write(directory, "cpu.shares", str(cpu["shares"]), "cpu.shares")
        period, quota = cpu.get("period", 0), cpu.get("quota", 0)
        period_pending = False
        if period:
            try:
                write_file(os.path.join(directory, "cpu.cfs_period_us"), str(period))
            except OSError as e:
                # Shortening the period can be refused while old_quota/new_period exceeds
                # the parent's quota; with a new quota coming, retry after writing it.
                if e.errno == errno.EINVAL and quota:
                    period_pending = True
                else:  # again, through _write, for its error message and rootless warning
                    self._write(directory, "cpu.cfs_period_us", str(period), "cpu.period")
        if quota:
            self._write(directory, "cpu.cfs_quota_us", str(quota), "cpu.quota")
            if period_pending:
                self._write(directory, "cpu.cfs_period_us", str(period), "cpu.period")
        if "burst" in cpu:
            self._write(directory, "cpu.cfs_burst_us", str(cpu["burst"]), "cpu.burst")
        # The rt period first: a runtime larger than the current period is refused.
        if cpu.get("realtimePeriod"):
            self._write(directory, "cpu.rt_period_us", str(cpu["realtimePeriod"]),
                        "cpu.realtimePeriod")
        if cpu.get("realtimeRuntime"):
            self._write(directory, "cpu.rt_runtime_us", str(cpu["realtimeRuntime"]),
                        "cpu.realtimeRuntime")
        if "idle" in cpu:
            self._write(directory, "cpu.idle", str(cpu["idle"]), "cpu.idle")
        for key in ("cpus", "mems"):
            if cpu.get(key):
                self._write(self._dirs["cpuset"], f"cpuset.{key}", cpu[key], f"cpu.{key}")

    def _apply_block_io(self, blkio: dict) -> None:
        directory = self._dirs.get("blkio")
        if directory is None:
            return  # nothing but zeros in it
        # blkio.weight is CFQ's (gone since 5.0), blkio.bfq.weight BFQ's
        weight_file = _first_existing(directory, "blkio.weight", "blkio.bfq.weight")
        if blkio.get("weight"):
            if weight_file is None:
                raise KernelFeatureMissing(
                    "linux.resources.blockIO.weight: neither blkio.weight nor blkio.bfq.weight "
                    "exists (no CFQ or BFQ I/O scheduler)"
                )
            self._write(directory, weight_file, str(blkio["weight"]), "blockIO.weight")
        if blkio.get("leafWeight"):
            self._write(directory, "blkio.leaf_weight", str(blkio["leafWeight"]),
                        "blockIO.leafWeight")
        for i, dev in enumerate(blkio.get("weightDevice", ())):
            number = f"{dev['major']}:{dev['minor']}"
            if dev.get("weight"):
                name = (weight_file or "blkio.weight") + "_device"
                self._write(directory, name, f"{number} {dev['weight']}",
                            f"blockIO.weightDevice[{i}]")
            if dev.get("leafWeight"):
                self._write(directory, "blkio.leaf_weight_device",
                            f"{number} {dev['leafWeight']}", f"blockIO.weightDevice[{i}]")
        for field, name in _THROTTLE_FILES.items():
            for i, dev in enumerate(blkio.get(field, ())):
                self._write(directory, name, f"{dev['major']}:{dev['minor']} {dev['rate']}",
                            f"blockIO.{field}[{i}]")

    def _apply_devices(self, rules: list[tuple[bool, str, int, int, str]]) -> None:
        # runc's semantics: start from deny-all, apply the rules in order, then allow
        # runc's default devices whatever the rules said.
        directory = self._dirs["devices"]
        writes = [("devices.deny", "a *:* rwm")]
        for allow, kind, major, minor, access in rules:
            writes.append(
                ("devices.allow" if allow else "devices.deny",
                 device_rule(kind, major, minor, access))
            )
        writes.extend(("devices.allow", device_rule(*rule)) for rule in DEFAULT_ALLOWED_DEVICES)
        for name, rule in writes:
            if not self._write(directory, name, rule, "devices"):
                return  # rootless: warned once, the rest would fail the same way

    # Reading back

    def oom_kill_count(self) -> int:
        directory = self._dirs.get("memory")
        if directory is None:
            return 0
        try:
            return read_keyed(os.path.join(directory, "memory.oom_control")).get("oom_kill", 0)
        except FileNotFoundError:
            return 0

    def _cpu_stats(self) -> dict:
        out: dict = {}
        acct = self._dirs.get("cpuacct")
        if acct is not None:
            usage = {
                "total": read_int(os.path.join(acct, "cpuacct.usage")),
                "percpu": [int(v) for v in read_file(os.path.join(acct, "cpuacct.usage_percpu")).split()],
            }
            try:
                usage["kernel"] = read_int(os.path.join(acct, "cpuacct.usage_sys"))
                usage["user"] = read_int(os.path.join(acct, "cpuacct.usage_user"))
            except FileNotFoundError:
                ticks = read_keyed(os.path.join(acct, "cpuacct.stat"))
                hz = os.sysconf("SC_CLK_TCK")
                usage["kernel"] = ticks.get("system", 0) * 1_000_000_000 // hz
                usage["user"] = ticks.get("user", 0) * 1_000_000_000 // hz
            out["usage"] = usage
        cpu = self._dirs.get("cpu")
        if cpu is not None:
            stat = read_keyed(os.path.join(cpu, "cpu.stat"))
            out["throttling"] = {
                "periods": stat.get("nr_periods", 0),
                "throttled_periods": stat.get("nr_throttled", 0),
                "throttled_time": stat.get("throttled_time", 0),
            }
        return out

    def _memory_stats(self) -> dict:
        directory = self._dirs.get("memory")
        if directory is None:
            return {}

        def entry(prefix: str) -> dict:
            return {
                "usage": read_int(os.path.join(directory, f"{prefix}.usage_in_bytes")),
                "max": read_int(os.path.join(directory, f"{prefix}.max_usage_in_bytes")),
                "limit": read_int(os.path.join(directory, f"{prefix}.limit_in_bytes")),
                "failcnt": read_int(os.path.join(directory, f"{prefix}.failcnt")),
            }

        raw = read_keyed(os.path.join(directory, "memory.stat"))
        usage = entry("memory")
        out = {
            "cache": raw.get("total_cache", raw.get("cache", 0)),
            "usage": usage,
            # what the kernel cannot reclaim easily: kubelet's and cAdvisor's definition
            "working_set": max(0, usage["usage"] - raw.get("total_inactive_file", 0)),
            "raw": raw,
            "stats": raw,  # the same map under the name minirun's own tools read
        }
        for key, prefix in (("swap", "memory.memsw"), ("kernel", "memory.kmem"),
                            ("kernelTCP", "memory.kmem.tcp")):
            try:
                out[key] = entry(prefix)
            except FileNotFoundError:
                pass
        return out

    def _pids_stats(self) -> dict:
        directory = self._dirs.get("pids")
        if directory is None:
            return {}
        limit = read_file(os.path.join(directory, "pids.max")).strip()
        return {
            "current": read_int(os.path.join(directory, "pids.current")),
            "limit": 0 if limit == "max" else int(limit),  # runc reports no limit as 0
        }

    def _blkio_stats(self) -> dict:
        directory = self._dirs.get("blkio")
        if directory is None:
            return {}
        # The first family with device lines: BFQ's, CFQ's, then the throttle layer's
        # (which counts every bio, whatever the scheduler).
        for prefix in ("blkio.bfq.", "blkio.", "blkio.throttle."):
            try:
                service_bytes = _blkio_entries(
                    os.path.join(directory, f"{prefix}io_service_bytes_recursive"))
                serviced = _blkio_entries(
                    os.path.join(directory, f"{prefix}io_serviced_recursive"))
            except FileNotFoundError:
                continue
            if service_bytes or serviced or prefix == "blkio.throttle.":
                return {"ioServiceBytesRecursive": service_bytes,
                        "ioServicedRecursive": serviced}
        return {}


def _blkio_entries(path: str) -> list[dict]:
    out = []
    for line in read_file(path).splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue  # the "Total N" summary line
        major, _, minor = fields[0].partition(":")
        out.append({"major": int(major), "minor": int(minor), "op": fields[1],
                    "value": int(fields[2])})
    return out



def _first_existing(directory: str, *names: str) -> str | None:
    for name in names:
        if os.path.exists(os.path.join(directory, name)):
            return name
    return None


def _read_or(path: str, default: str) -> str:
    try:
        return read_file(path).strip()
    except OSError:
        return default


