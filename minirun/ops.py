"""ps, update and events: the verbs that look at or adjust a container while it runs.

Each follows runc 1.1's behaviour and output, checked against runc 1.1.5:

- ps: the host pids in the container's cgroup, as JSON (`null` when there are none, as
  Go encodes an empty slice) or as the host's `ps` output filtered on its PID column.
- update: runc's flags and values (memory sizes through go-units' RAMInBytes, zero meaning
  "leave as is"), or a linux.resources document with -r. Everything is validated before
  anything is written; a write the kernel refuses is rolled back to the recorded values,
  as runc sets back its old config. The merged resources are kept in the state.
- events: runc's event JSON lines: `{"type":"stats",...}` every interval (or once with
  --stats) with runc's field layout, and `{"type":"oom",...}` when the cgroup's OOM
  killer fires (an eventfd on memory.oom_control on v1, a kernfs poll on memory.events
  on v2). The stream ends when the container's init exits.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from .cgroups.base import warn, write_file
from .cgroups.convert import check_resources
from .container import Container, proc_start_time
from .errors import ContainerStateError, InvalidArgument, InvalidSpec, MiniRunError, NotFound

# runc prints its JSON with Go's encoder: no spaces.
_COMPACT = (",", ":")


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=_COMPACT)


# --- ps -----------------------------------------------------------------------------------

def container_pids(root: str, container_id: str) -> list[int]:
    """Host pids of every process in the container's cgroup (none once it has stopped)."""
    c = Container.load(root, container_id)
    cg = c.cgroup()
    if not cg.exists():
        return []
    try:
        return cg.pids()
    except OSError as e:
        raise MiniRunError(f"cannot list the processes of {container_id}: {e.strerror}") \
            from None


def filter_ps_output(output: str, pids: list[int]) -> list[str]:
    """The header of `ps` output and its lines whose PID column is one of `pids`, as runc
    keeps them (the PID column found by name in the header)."""
    lines = output.split("\n")
    titles = lines[0].split()
    if "PID" not in titles:
        raise MiniRunError("couldn't find PID field in ps output")
    index = titles.index("PID")
    wanted = set(pids)
    kept = [lines[0]]
    for line in lines[1:]:
        if not line:
            continue
        fields = line.split()
        try:
            pid = int(fields[index])
        except (IndexError, ValueError):
            raise MiniRunError(f"unable to parse pid from ps output line {line!r}") from None
        if pid in wanted:
            kept.append(line)
    return kept


def run_ps(ps_args: list[str]) -> str:
    """The host's `ps` with these arguments (runc's default: -ef), stdout and stderr."""
    try:
        proc = subprocess.run(["ps", *(ps_args or ["-ef"])], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                              check=False)
    except FileNotFoundError:
        raise NotFound('exec: "ps": executable file not found in $PATH') from None
    if proc.returncode != 0:
        first = next((line for line in proc.stdout.splitlines() if line.strip()), "")
        raise MiniRunError(f"ps {' '.join(ps_args)}: exit status {proc.returncode}: {first}")
    return proc.stdout


def split_format(fmt: str, ps_args: list[str]) -> tuple[str, list[str]]:
    """`ps ID -f json`: runc takes flags only before the id and would hand "-f json" to
    ps, which refuses it; a leading -f/--format table|json after the id is taken as the
    format. ps's own -f (full format) without such a value goes to ps unchanged."""
    if len(ps_args) >= 2 and ps_args[0] in ("-f", "--format", "-format") and \
            ps_args[1] in ("table", "json"):
        fmt, ps_args = ps_args[1], ps_args[2:]
    elif ps_args and ps_args[0].partition("=")[0] in ("-f", "--format", "-format") and \
            ps_args[0].partition("=")[2] in ("table", "json"):
        fmt, ps_args = ps_args[0].partition("=")[2], ps_args[1:]
    if ps_args and ps_args[0] == "--":
        ps_args = ps_args[1:]
    return fmt, ps_args


def cli_ps(root: str, args) -> int:
    fmt, ps_args = split_format(args.format, list(args.ps_args))
    pids = container_pids(root, args.id)
    if fmt == "json":
        print(_dumps(pids) if pids else "null")
        return 0
    for line in filter_ps_output(run_ps(ps_args), pids):
        print(line)
    return 0


# --- update -------------------------------------------------------------------------------

# go-units v0.4.0 (the one runc 1.1.5 is built with): RAMInBytes, binary multiples.
_SIZE = re.compile(r"^([0-9]+(\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_BINARY = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def parse_ram(text: str) -> int:
    """A memory size as runc's update reads it: "-1" (unlimited), or bytes with an
    optional k/m/g/t/p binary suffix ("512m", "1g", "1.5m", "100MiB")."""
    if text == "-1":
        return -1
    m = _SIZE.match(text)
    if not m:
        raise InvalidArgument(f"invalid size: {text!r}")
    if m.group(2) and m.group(1).count(".") > 1:
        raise InvalidArgument(f"invalid size: {text!r}: {m.group(1)!r} is not a number")
    size = float(m.group(1)) * _BINARY.get((m.group(3) or "").lower(), 1)
    if size > INT64_MAX:
        raise InvalidArgument(f"invalid size: {text!r} is too large")
    return int(size)


def _parse_uint(text: str) -> int:
    if not (text.isdigit() and text.isascii()) or int(text) > UINT64_MAX:
        raise InvalidArgument(f"{text!r} is not an unsigned integer")
    return int(text)


def _parse_int(text: str) -> int:
    body = text[1:] if text[:1] in "+-" else text
    if not (body.isdigit() and body.isascii()) or not -2**63 <= int(text) <= INT64_MAX:
        raise InvalidArgument(f"{text!r} is not an integer")
    return int(text)


# runc update's flags: flag -> (section, key, parser)
UPDATE_FLAGS: dict[str, tuple[str, str, Callable[[str], int | str]]] = {
    "memory": ("memory", "limit", parse_ram),
    "memory-reservation": ("memory", "reservation", parse_ram),
    "memory-swap": ("memory", "swap", parse_ram),
    "kernel-memory": ("memory", "kernel", parse_ram),
    "kernel-memory-tcp": ("memory", "kernelTCP", parse_ram),
    "cpu-share": ("cpu", "shares", _parse_uint),
    "cpu-period": ("cpu", "period", _parse_uint),
    "cpu-quota": ("cpu", "quota", _parse_int),
    "cpu-rt-period": ("cpu", "realtimePeriod", _parse_uint),
    "cpu-rt-runtime": ("cpu", "realtimeRuntime", _parse_int),
    "cpuset-cpus": ("cpu", "cpus", str),
    "cpuset-mems": ("cpu", "mems", str),
    "pids-limit": ("pids", "limit", _parse_int),
    "blkio-weight": ("blockIO", "weight", _parse_int),
}

# What runc 1.1's update changes; the rest of linux.resources it reads and drops.
UPDATABLE = {
    "memory": ("limit", "reservation", "swap", "kernel", "kernelTCP", "checkBeforeUpdate"),
    "cpu": ("shares", "quota", "period", "realtimeRuntime", "realtimePeriod", "cpus", "mems"),
    "blockIO": ("weight",),
    "pids": ("limit",),
}


def resources_from_flags(values: dict[str, str | None]) -> dict:
    """A linux.resources document from update's flags ({flag: text or None}). An empty
    value is not given, as with runc; a malformed one raises, naming the flag."""
    doc: dict = {}
    for flag, text in values.items():
        if text is None or text == "":
            continue
        section, key, parse = UPDATE_FLAGS[flag]
        try:
            value = parse(text)
        except InvalidArgument as e:
            raise InvalidArgument(f"invalid value for --{flag}: {e}") from None
        doc.setdefault(section, {})[key] = value
    return doc


def read_resources_document(path: str) -> dict:
    """update -r: a JSON linux.resources document from a file, or stdin for "-"."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path) as f:
                text = f.read()
    except OSError as e:
        raise InvalidArgument(f"--resources {path}: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidSpec(f"--resources {path}: invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidSpec(f"--resources {path}: must be a JSON object (linux.resources)")
    return doc


def _set(value: object) -> bool:
    # runc update's convention: zero or empty leaves the setting as it is
    return value not in (None, 0, "", False)


def updates_to_apply(doc: dict) -> dict:
    """The part of a validated resources document that update writes: runc's updatable
    fields with a value that is set. Kernel memory is dropped with runc's warning; the
    other fields runc ignores are named in a warning rather than dropped silently."""
    res = check_resources(doc)
    out: dict = {}
    ignored = []
    kernel_memory = False
    for section, fields in res.items():
        if section == "unified":
            if fields:
                out["unified"] = dict(fields)
            continue
        if section not in UPDATABLE:
            ignored.append(section)
            continue
        for key, value in fields.items():
            if key not in UPDATABLE[section]:
                ignored.append(f"{section}.{key}")
            elif key in ("kernel", "kernelTCP"):
                kernel_memory = kernel_memory or bool(value)
            elif _set(value):
                out.setdefault(section, {})[key] = value
    if kernel_memory:
        warn("kernel memory settings are ignored and will be removed (as runc)")
    if ignored:
        warn(f"update does not change linux.resources {', '.join(ignored)} (as runc): "
             "ignored")
    # pids.limit 0 is "not given" here but "unlimited" to the drivers, so it never gets
    # this far; a negative one is unlimited to both (runc writes "max").
    return out


def recorded_resources(c: Container) -> dict:
    """The resources in force: what earlier updates recorded in the state, else what
    the bundle's config.json asked for at create."""
    if isinstance(c.data.get("resources"), dict):
        return c.data["resources"]
    try:
        with open(os.path.join(c.data.get("bundle", ""), "config.json")) as f:
            cfg = json.load(f)
        res = (cfg.get("linux") or {}).get("resources") or {}
        return {k: v for k, v in res.items() if k in UPDATABLE or k == "unified"}
    except (OSError, ValueError, AttributeError):
        return {}


def merge_resources(old: dict, new: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in old.items()}
    for section, fields in new.items():
        if isinstance(fields, dict):
            out.setdefault(section, {}).update(fields)
    return out


def _with_cpu_pair(update: dict, old: dict) -> dict:
    """Quota without period or period without quota: keep the other at its recorded
    value (runc does, and cgroup v2 writes both in one cpu.max)."""
    cpu = update.get("cpu")
    if not cpu or ("quota" in cpu) == ("period" in cpu):
        return update
    recorded = old.get("cpu") or {}
    other = "period" if "quota" in cpu else "quota"
    if _set(recorded.get(other)):
        update = {**update, "cpu": {**cpu, other: recorded[other]}}
    return update


# When an update that failed half-way touched a field the container never had a value
# for, its kernel default (unlimited) is what rolling back restores.
_UNSET_DEFAULTS = {("memory", "limit"): -1, ("memory", "swap"): -1,
                   ("memory", "reservation"): -1, ("cpu", "quota"): -1,
                   ("cpu", "period"): 100000, ("pids", "limit"): -1}


def _rollback_document(update: dict, old: dict) -> dict:
    doc: dict = {}
    for section, fields in update.items():
        if section == "unified" or not isinstance(fields, dict):
            continue
        for key in fields:
            value = (old.get(section) or {}).get(key)
            if not _set(value):
                value = _UNSET_DEFAULTS.get((section, key))
            if value is not None:
                doc.setdefault(section, {})[key] = value
    return doc


def update(root: str, container_id: str, doc: dict) -> dict:
    """Apply a linux.resources update to a created, running or paused container and
    record it. Returns the resources now in force."""
    c = Container.load(root, container_id)
    # Validation first: a bad value must leave the container as it was.
    changes = updates_to_apply(doc)
    lock = c.lock()
    try:
        c = Container.load(root, container_id)  # what others saved before we got the lock
        if c.status() == "stopped":
            raise ContainerStateError("container not running")
        old = recorded_resources(c)
        changes = _with_cpu_pair(changes, old)
        if not changes:
            return old
        cg = c.cgroup()
        try:
            cg.apply(changes)
        except MiniRunError:
            rollback = _rollback_document(changes, old)
            try:
                cg.apply(rollback)
            except (MiniRunError, OSError) as e:
                warn(f"setting back the old cgroup values failed ({e}); the cgroup and the "
                     "recorded resources may differ")
            raise
        merged = merge_resources(old, changes)
        c.data["resources"] = merged
        c.save()
        return merged
    finally:
        os.close(lock)


def cli_update(root: str, args) -> int:
    for flag in ("l3-cache-schema", "mem-bw-schema"):
        if getattr(args, flag.replace("-", "_"), None):
            raise InvalidArgument(f"--{flag}: intel rdt is not supported by minirun")
    values = {flag: getattr(args, flag.replace("-", "_")) for flag in UPDATE_FLAGS}
    if args.resources:
        given = [f"--{flag}" for flag, v in values.items() if v]
        if given:
            warn(f"{', '.join(given)} ignored: --resources replaces the other flags (as runc)")
        doc = read_resources_document(args.resources)
    else:
        doc = resources_from_flags(values)
    update(root, args.id, doc)
    return 0


# --- events -------------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
                   "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def parse_duration(text: str) -> float:
    """A Go duration ("5s", "500ms", "1m30s", "1.5h") in seconds, as runc's --interval."""
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise InvalidArgument(f"time: invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        number, unit = m.group(1), m.group(2)
        if number in ("", "."):
            raise InvalidArgument(f"time: invalid duration {text!r}")
        if not unit:
            raise InvalidArgument(f"time: missing unit in duration {text!r}")
        if unit not in _DURATION_UNITS:
            raise InvalidArgument(f"time: unknown unit {unit!r} in duration {text!r}")
        total += float(number) * _DURATION_UNITS[unit]
        pos = m.end()
    return sign * total


def _omit_zero(d: dict, *keys: str) -> dict:
    """Go's omitempty: drop these keys when zero or empty."""
    return {k: v for k, v in d.items() if not (k in keys and not v)}


def _memory_entry(entry: dict | None) -> dict:
    entry = entry or {}
    return _omit_zero({"limit": entry.get("limit", 0), "usage": entry.get("usage", 0),
                       "max": entry.get("max", 0), "failcnt": entry.get("failcnt", 0)},
                      "usage", "max")


def _blkio_entries(entries: list | None) -> list[dict]:
    return [_omit_zero({"major": e.get("major", 0), "minor": e.get("minor", 0),
                        "op": e.get("op", ""), "value": e.get("value", 0)},
                       "major", "minor", "op", "value") for e in entries or ()]


def runc_stats(stats: dict) -> dict:
    """A cgroup's stats() in the layout of runc's `events` data (runc's types.Stats,
    Go's omitempty included), plus memory.working_set (usage - inactive_file).

    Not reported: cpuset and per-cpu kernel/user time (the drivers do not read them
    yet) and hugetlb usage (an empty map, as runc prints without the controller)."""
    cpu = stats.get("cpu") or {}
    usage = cpu.get("usage") or {}
    throttling = cpu.get("throttling") or {}
    memory = stats.get("memory") or {}
    pids = stats.get("pids") or {}
    blkio = stats.get("blkio") or {}
    mem_out = _omit_zero({
        "cache": memory.get("cache", 0),
        "usage": _memory_entry(memory.get("usage")),
        "swap": _memory_entry(memory.get("swap")),
        "kernel": _memory_entry(memory.get("kernel")),
        "kernelTCP": _memory_entry(memory.get("kernelTCP")),
        "raw": dict(sorted((memory.get("raw") or {}).items())),  # Go sorts map keys
    }, "cache", "raw")
    if "working_set" in memory:
        mem_out["working_set"] = memory["working_set"]
    return {
        "cpu": {
            "usage": _omit_zero({
                "total": usage.get("total", 0),
                "percpu": usage.get("percpu") or [],
                "percpu_kernel": usage.get("percpu_kernel") or [],
                "percpu_user": usage.get("percpu_user") or [],
                "kernel": usage.get("kernel", 0),
                "user": usage.get("user", 0),
            }, "total", "percpu", "percpu_kernel", "percpu_user"),
            "throttling": _omit_zero({
                "periods": throttling.get("periods", 0),
                "throttledPeriods": throttling.get("throttled_periods", 0),
                "throttledTime": throttling.get("throttled_time", 0),
            }, "periods", "throttledPeriods", "throttledTime"),
        },
        "memory": mem_out,
        "pids": _omit_zero({"current": pids.get("current", 0), "limit": pids.get("limit", 0)},
                           "current", "limit"),
        "blkio": _omit_zero({
            "ioServiceBytesRecursive": _blkio_entries(blkio.get("ioServiceBytesRecursive")),
            "ioServicedRecursive": _blkio_entries(blkio.get("ioServicedRecursive")),
        }, "ioServiceBytesRecursive", "ioServicedRecursive"),
        "hugetlb": {},
        "intel_rdt": {},
        "network_interfaces": None,
    }


def stats_event(container_id: str, cg) -> dict:
    return {"type": "stats", "id": container_id, "data": runc_stats(cg.stats())}


class OomWatcher:
    """Tells a poll loop when the container's cgroup records a new OOM kill.

    v1: an eventfd registered on memory.oom_control through cgroup.event_control, as
    runc does. The kernel signals it on entering OOM, before the victim is killed and
    counted, and once more when the cgroup is removed; so a notification opens a short
    window in which oom_kill is re-read until it moves. v2: memory.events is a kernfs
    file that raises POLLPRI when it changes. When neither can be set up, oom_kill is
    polled. One event per kill either way, however notifications coalesce.
    """

    POLL_FALLBACK = 0.25
    KILL_WINDOW = 0.5  # v1: how long after a notification the kill may take to count
    KILL_POLL = 0.01

    def __init__(self, cg) -> None:
        self.cg = cg
        self.fd: int | None = None
        self.events = 0
        self.gone = False  # v1: the cgroup was removed
        self._control: str | None = None
        self._window_end = 0.0
        self._keep: list[int] = []
        self.count = self._count(0)
        try:
            if cg.version == 1:
                self._watch_v1()
            else:
                self._watch_v2()
        except OSError:
            self.close()  # the count is polled instead

    def _count(self, default: int) -> int:
        try:
            return self.cg.oom_kill_count()
        except (OSError, ValueError):
            return default

    def _watch_v1(self) -> None:
        directory = self.cg.controller_dir("memory")
        if directory is None:
            raise FileNotFoundError("no memory controller")
        control = os.open(os.path.join(directory, "memory.oom_control"),
                          os.O_RDONLY | os.O_CLOEXEC)
        self._keep.append(control)
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._keep.append(efd)
        self._control = os.path.join(directory, "cgroup.event_control")
        write_file(self._control, f"{efd} {control}")
        self.fd, self.events = efd, select.POLLIN

    def _watch_v2(self) -> None:
        fd = os.open(os.path.join(self.cg.dir, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
        self._keep.append(fd)
        os.read(fd, 4096)  # the next POLLPRI is measured from what has been read
        self.fd, self.events = fd, select.POLLPRI

    def timeout(self, wanted: float) -> float:
        """The poll timeout to use instead of `wanted` seconds."""
        if self.fd is None:
            return min(wanted, self.POLL_FALLBACK)
        if self._window_end > time.monotonic():
            return min(wanted, self.KILL_POLL)
        return wanted

    def new_kills(self, notified: bool) -> int:
        """Kills since the last call; `notified`: poll said our fd is ready."""
        if notified:
            try:
                if self._control is not None:
                    os.read(self.fd, 8)
                    if not os.path.exists(self._control):
                        self.gone = True
                    self._window_end = time.monotonic() + self.KILL_WINDOW
                else:
                    os.lseek(self.fd, 0, os.SEEK_SET)
                    os.read(self.fd, 4096)
            except BlockingIOError:
                pass
        count = self._count(self.count)
        new, self.count = max(0, count - self.count), max(count, self.count)
        if new:
            self._window_end = 0.0
        return new

    def close(self) -> None:
        for fd in self._keep:
            try:
                os.close(fd)
            except OSError:
                pass
        self._keep, self.fd, self._control = [], None, None


def _init_pidfd(c: Container) -> int | None:
    """A pidfd on the container's init, or None if it has exited already."""
    try:
        pidfd = os.pidfd_open(c.pid)
    except OSError:
        return None
    # the pidfd pins the process: only now is the start-time check race-free
    if proc_start_time(c.pid) != c.data.get("start_time"):
        os.close(pidfd)
        return None
    return pidfd


def event_stream(c: Container, interval: float) -> Iterator[dict]:
    """runc's events stream: stats every `interval` seconds (the first after one
    interval, as runc's ticker), oom events, until the container's init exits."""
    cg = c.cgroup()
    pidfd = _init_pidfd(c)
    if pidfd is None:
        return
    watcher = OomWatcher(cg)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if watcher.fd is not None:
        poller.register(watcher.fd, watcher.events)
    try:
        next_tick = time.monotonic() + interval
        while True:
            timeout = watcher.timeout(max(0.0, next_tick - time.monotonic()))
            ready = dict(poller.poll(timeout * 1000))
            for _ in range(watcher.new_kills(watcher.fd in ready)):
                yield {"type": "oom", "id": c.id}
            if pidfd in ready or watcher.gone:
                return
            now = time.monotonic()
            if now >= next_tick:
                if cg.exists():
                    yield stats_event(c.id, cg)
                next_tick += interval
                if next_tick <= now:  # a slow reader skips ticks rather than bursting
                    next_tick = now + interval
    finally:
        watcher.close()
        os.close(pidfd)


def _emit(event: dict) -> None:
    sys.stdout.write(_dumps(event) + "\n")
    sys.stdout.flush()


def cli_events(root: str, args) -> int:
    try:
        interval = parse_duration(args.interval)
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid value {args.interval!r} for --interval: {e}") from None
    if interval <= 0:
        raise InvalidArgument("duration interval must be greater than 0")
    c = Container.load(root, args.id)
    if c.status() == "stopped":
        raise ContainerStateError(f"container with id {args.id} is not running")
    try:
        if args.stats:
            _emit(stats_event(c.id, c.cgroup()))
            return 0
        for event in event_stream(c, interval):
            _emit(event)
    except BrokenPipeError:
        # the reader went away: nothing left to tell anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
