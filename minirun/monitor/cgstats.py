"""One container's resource numbers, read from the kernel: its cgroup (v1 or v2, through
the drivers' stats(), as `minirun-oci events --stats` reports them) and its network
namespace's net/dev. Shared by the CRI's stats (minirun/cri/stats.py), `minirun stats` and
the daemon's Prometheus metrics; imports neither grpc nor anything of the CRI.

A sample (cgroup_sample) is a dict:
  timestamp    time.time_ns() when read
  cpu_ns       cpu time used: cpuacct.usage (v1) / cpu.stat usage_usec * 1000 (v2)
  usage        memory.usage_in_bytes (v1) / memory.current (v2)
  working_set  usage minus inactive file pages (cAdvisor's, kubelet's and docker's figure)
  rss          total_rss (v1) / anon (v2); pgfault, pgmajfault from memory.stat
  limit        the memory limit in bytes, None when unlimited
  swap, swap_limit   swap usage and limit when accounted (else None)
  pids         pids.current
  blkio_read, blkio_write   bytes read and written (io_service_bytes / io.stat)
  blkio_devices   the same per device: {(major, minor): (read, write)}
and, for the Docker Engine API's stats document (minirun/monitor/stats.py):
  version      the cgroup version, 1 or 2
  cpu          the driver's cpu stats (usage total/kernel/user, percpu on v1, throttling)
  memory       the driver's memory stats: usage {usage, max, limit, failcnt}, raw
               (memory.stat as read)
  pids_limit   pids.max, 0 when unlimited
  blkio        io service bytes and ios per device and op, as the driver reports them
"""

from __future__ import annotations

import os
import time

from ..errors import MiniRunError

# a memory limit at or above this is "no limit" (v1 writes 2**63 rounded to pages, v2 max)
NO_LIMIT = 1 << 62


def container_sample(engine, rec: dict) -> dict | None:
    """The sample of a running engine container's cgroup; None when it is gone."""
    from ..container import Container

    try:
        cg = Container.load(engine.oci_root, rec["id"]).cgroup()
    except MiniRunError:
        return None
    return cgroup_sample(cg)


def cgroup_sample(cg) -> dict | None:
    """cpu, memory and pids numbers of a cgroup from its driver's stats(); None when the
    cgroup does not exist."""
    try:
        if not cg.exists():
            return None
        stats = cg.stats()
    except (OSError, MiniRunError):
        return None
    ts = time.time_ns()
    memory = stats.get("memory") or {}
    raw = memory.get("raw") or {}
    usage_entry = memory.get("usage") or {}
    usage = usage_entry.get("usage", 0)
    limit = usage_entry.get("limit")
    v1 = "total_rss" in raw or "total_cache" in raw
    swap = swap_limit = None
    swap_entry = memory.get("swap")
    if swap_entry:
        # both drivers report swap as memory+swap (v1's memsw; runc adds them up on v2)
        swap = max(0, swap_entry.get("usage", 0) - usage)
        if swap_entry.get("limit", NO_LIMIT) < NO_LIMIT and limit is not None \
                and limit < NO_LIMIT:
            swap_limit = max(0, swap_entry["limit"] - limit)
    return {
        "timestamp": ts,
        "cpu_ns": ((stats.get("cpu") or {}).get("usage") or {}).get("total", 0),
        "usage": usage,
        "working_set": memory.get("working_set", usage),
        "rss": raw.get("total_rss", raw.get("rss", 0)) if v1 else raw.get("anon", 0),
        "pgfault": raw.get("total_pgfault", raw.get("pgfault", 0)),
        "pgmajfault": raw.get("total_pgmajfault", raw.get("pgmajfault", 0)),
        "limit": limit if limit is not None and 0 < limit < NO_LIMIT else None,
        "swap": swap,
        "swap_limit": swap_limit,
        "pids": (stats.get("pids") or {}).get("current", 0),
        "blkio_read": _blkio_total(stats, "read"),
        "blkio_write": _blkio_total(stats, "write"),
        "blkio_devices": _blkio_devices(stats),
        "version": getattr(cg, "version", 0),
        "cpu": stats.get("cpu") or {},
        "memory": memory,
        "pids_limit": (stats.get("pids") or {}).get("limit", 0),
        "blkio": stats.get("blkio") or {},
    }


def _blkio_total(stats: dict, op: str) -> int:
    """Bytes read or written by the cgroup, summed over its devices."""
    entries = (stats.get("blkio") or {}).get("ioServiceBytesRecursive") or ()
    return sum(e.get("value", 0) for e in entries if str(e.get("op", "")).lower() == op)


def _blkio_devices(stats: dict) -> dict[tuple[int, int], tuple[int, int]]:
    """(bytes read, bytes written) by the cgroup per (major, minor) device."""
    out: dict[tuple[int, int], list[int]] = {}
    for e in (stats.get("blkio") or {}).get("ioServiceBytesRecursive") or ():
        op = str(e.get("op", "")).lower()
        if op in ("read", "write"):
            counts = out.setdefault((e["major"], e["minor"]), [0, 0])
            counts[op == "write"] += e.get("value", 0)
    return {dev: (r, w) for dev, (r, w) in out.items()}


def read_net_dev(netns: str) -> dict[str, dict[str, int]] | None:
    """Per interface rx/tx bytes, packets, errors and drops in the netns at `netns`, from
    net/dev as this thread sees it after joining that netns (and coming back, as
    minirun/network/netns.py does); None when the netns is gone."""
    from .. import sys as msys

    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        msys.setns(target, msys.CLONE_NEWNET)
        try:
            with open("/proc/thread-self/net/dev") as f:
                lines = f.read().splitlines()[2:]
        finally:
            msys.setns(home, msys.CLONE_NEWNET)
    except msys.SysError:
        return None
    finally:
        os.close(target)
        os.close(home)
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) < 16:
            continue
        out[name.strip()] = parse_net_dev_fields(fields)
    return out


def parse_net_dev_fields(fields: list[str]) -> dict[str, int]:
    """One interface's counters from the 16 numbers of its net/dev line (rx: bytes
    packets errs drop fifo frame compressed multicast, then tx: bytes packets errs drop
    fifo colls carrier compressed), under the Docker API's names."""
    return {"rx_bytes": int(fields[0]), "rx_packets": int(fields[1]),
            "rx_errors": int(fields[2]), "rx_dropped": int(fields[3]),
            "tx_bytes": int(fields[8]), "tx_packets": int(fields[9]),
            "tx_errors": int(fields[10]), "tx_dropped": int(fields[11])}


def tree_usage(paths: list[str]) -> tuple[int, int]:
    """(bytes allocated, inodes) under these directories, each inode counted once (hard
    links) and never crossing into another file system."""
    seen: set[tuple[int, int]] = set()
    used = 0
    for top in paths:
        try:
            top_dev = os.lstat(top).st_dev
        except FileNotFoundError:
            continue
        stack = [top]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_dev != top_dev or key in seen:
                    continue
                seen.add(key)
                used += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return used, len(seen)
