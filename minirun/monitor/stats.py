"""`docker stats`: the Docker Engine API's stats document of a container, and the columns
the docker CLI computes from it.

The document is `GET /containers/{id}/stats` of API 1.41 as dockerd builds it on Linux
(moby daemon/stats_unix.go), from a cgstats sample of the container's cgroup (v1 or v2)
and its network namespace's net/dev:

  read, preread          RFC 3339 times of this sample and of the previous one
  pids_stats             {current, limit (when set)}
  blkio_stats            io_service_bytes_recursive / io_serviced_recursive: one entry per
                         device and op ("Read", "Write", ... on v1; "read", "write" on v2)
  cpu_stats              {cpu_usage {total_usage, percpu_usage (v1), usage_in_kernelmode,
                         usage_in_usermode}, system_cpu_usage, online_cpus, throttling_data}
  precpu_stats           the previous sample's cpu_stats (zeros when there is none)
  memory_stats           {usage, max_usage and failcnt (v1), stats (memory.stat: cache,
                         total_inactive_file, ... on v1; anon, file, inactive_file, ... on
                         v2), limit (the host's memory when the container has no limit)}
  networks               {eth0: {rx_bytes, rx_packets, rx_errors, rx_dropped, tx_...}}:
                         every interface of its netns but lo; absent with the host's network
  name, id               "/name" and the full id

A container that is not running gets dockerd's empty document (name and id, zeros).
container_stats() makes one document; stats_stream() the sequence dockerd answers with
(stream, or stream=false, which primes precpu with a sample taken a second before, or
one-shot). The docker CLI's arithmetic over a document is entry_of(); format_entry()
prints its columns with docker's units. Nothing here is imported on the start path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from .cgstats import NO_LIMIT

API_VERSION = "1.41"
RUNNING = ("running", "paused")  # dockerd's IsRunning(): a paused container has stats
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as dockerd marshals it

HEADERS = {"Container": "CONTAINER", "Name": "NAME", "ID": "CONTAINER ID",
           "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %",
           "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}
TABLE = "{{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t" \
    "{{.BlockIO}}\t{{.PIDs}}"


# --- the host ------------------------------------------------------------------------------

def system_cpu_ns(proc: str = "/proc") -> int:
    """The host's cpu time in ns as dockerd counts it: /proc/stat's first line, user to
    softirq (seven fields), in clock ticks."""
    with open(os.path.join(proc, "stat")) as f:
        fields = f.readline().split()
    ticks = sum(int(v) for v in fields[1:8])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def host_memory(proc: str = "/proc") -> int:
    """MemTotal in bytes."""
    with open(os.path.join(proc, "meminfo")) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def online_cpus() -> int:
    return os.sysconf("SC_NPROCESSORS_ONLN")


def rfc3339nano(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


# --- the document --------------------------------------------------------------------------

def _cpu_stats(cpu: dict, system_ns: int, cpus: int, version: int) -> dict:
    usage = cpu.get("usage") or {}
    cpu_usage = {"total_usage": usage.get("total", 0)}
    if version == 1 and usage.get("percpu"):
        cpu_usage["percpu_usage"] = usage["percpu"]
    cpu_usage["usage_in_kernelmode"] = usage.get("kernel", 0)
    cpu_usage["usage_in_usermode"] = usage.get("user", 0)
    throttling = cpu.get("throttling") or {}
    return {"cpu_usage": cpu_usage, "system_cpu_usage": system_ns, "online_cpus": cpus,
            "throttling_data": {"periods": throttling.get("periods", 0),
                                "throttled_periods": throttling.get("throttled_periods", 0),
                                "throttled_time": throttling.get("throttled_time", 0)}}


def _memory_stats(memory: dict, version: int, host_mem: int) -> dict:
    entry = memory.get("usage") or {}
    limit = entry.get("limit", 0)
    # dockerd: "if the container does not set memory limit, use the machineMemory"
    if host_mem and (not limit or limit >= NO_LIMIT or limit > host_mem):
        limit = host_mem
    out = {"usage": entry.get("usage", 0)}
    if version == 1:
        out["max_usage"] = entry.get("max", 0)
    out["stats"] = dict(memory.get("raw") or {})
    if version == 1:
        out["failcnt"] = entry.get("failcnt", 0)
    out["limit"] = limit
    return out


def _blkio_stats(blkio: dict, version: int) -> dict:
    def entries(key: str) -> list[dict]:
        out = []
        for e in blkio.get(key) or ():
            op = str(e.get("op", ""))
            # dockerd's v2 entries come from io.stat: "read" and "write", lower case
            out.append({"major": e.get("major", 0), "minor": e.get("minor", 0),
                        "op": op.lower() if version == 2 else op, "value": e.get("value", 0)})
        return out

    doc = {"io_service_bytes_recursive": entries("ioServiceBytesRecursive"),
           "io_serviced_recursive": entries("ioServicedRecursive")}
    for key in ("io_queue_recursive", "io_service_time_recursive", "io_wait_time_recursive",
                "io_merged_recursive", "io_time_recursive", "sectors_recursive"):
        doc[key] = [] if version == 1 else None
    return doc


def empty_cpu_stats() -> dict:
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def empty_document(name: str, cid: str) -> dict:
    """dockerd's answer for a container that is not running: its name and id, zeros."""
    blkio = dict.fromkeys(("io_service_bytes_recursive", "io_serviced_recursive",
                           "io_queue_recursive", "io_service_time_recursive",
                           "io_wait_time_recursive", "io_merged_recursive",
                           "io_time_recursive", "sectors_recursive"))
    return {"read": ZERO_TIME, "preread": ZERO_TIME, "pids_stats": {}, "blkio_stats": blkio,
            "num_procs": 0, "storage_stats": {}, "cpu_stats": empty_cpu_stats(),
            "precpu_stats": empty_cpu_stats(), "memory_stats": {},
            "name": "/" + name, "id": cid}


def stats_document(sample: dict | None, net: dict[str, dict] | None, name: str, cid: str,
                   proc: str = "/proc") -> dict:
    """The stats document of one sample (a cgstats.cgroup_sample, None when the cgroup is
    gone: the empty document) and net/dev of the container's netns (None: no networks
    key, as for the host's network). precpu is empty: see with_previous()."""
    if sample is None:
        return empty_document(name, cid)
    version = sample.get("version") or 1
    doc = {"read": rfc3339nano(sample["timestamp"]), "preread": ZERO_TIME}
    pids = {"current": sample.get("pids", 0)}
    if sample.get("pids_limit"):
        pids["limit"] = sample["pids_limit"]
    doc["pids_stats"] = pids
    doc["blkio_stats"] = _blkio_stats(sample.get("blkio") or {}, version)
    doc["num_procs"] = 0
    doc["storage_stats"] = {}
    doc["cpu_stats"] = _cpu_stats(sample.get("cpu") or {}, system_cpu_ns(proc), online_cpus(),
                                  version)
    doc["precpu_stats"] = empty_cpu_stats()
    doc["memory_stats"] = _memory_stats(sample.get("memory") or {}, version, host_memory(proc))
    doc["name"] = "/" + name
    doc["id"] = cid
    if net is not None:
        doc["networks"] = {dev: counters for dev, counters in sorted(net.items())
                           if dev != "lo"}
    return doc


def with_previous(doc: dict, previous: dict | None) -> dict:
    """`doc` with precpu_stats and preread from an earlier document of the container."""
    if previous is not None and previous.get("read", ZERO_TIME) != ZERO_TIME:
        doc["precpu_stats"] = previous["cpu_stats"]
        doc["preread"] = previous["read"]
    return doc


def container_netns(engine, rec: dict) -> str | None:
    """The path of a running container's network namespace; None for the host's network
    (docker shows 0B / 0B) or when it has none now."""
    from ..errors import MiniRunError

    try:
        return engine._netns_of(rec)
    except MiniRunError:
        return None


def container_stats(engine, rec: dict, previous: dict | None = None) -> dict:
    """The stats document of an engine container (a record from engine.get()/records())
    now, with precpu from `previous` (the document before, or None)."""
    from .cgstats import container_sample, read_net_dev

    if rec.get("status") not in RUNNING:
        return empty_document(rec["name"], rec["id"])
    sample = container_sample(engine, rec)
    net = None
    if sample is not None:
        netns = container_netns(engine, rec)
        net = read_net_dev(netns) if netns else None
    return with_previous(stats_document(sample, net, rec["name"], rec["id"]), previous)


def stats_stream(engine, rec: dict, stream: bool = True, one_shot: bool = False,
                 interval: float = 1.0) -> Iterator[dict]:
    """What dockerd answers to /containers/{id}/stats: with stream, a document each
    interval, each with the one before as precpu (the first has none: its CPU % is 0);
    without stream, one document primed with a sample taken `interval` before, so its
    CPU % is real; one_shot (stream=false only): one document at once, without precpu.
    A container that is not running gives its empty document once."""
    if rec.get("status") not in RUNNING:
        yield empty_document(rec["name"], rec["id"])
        return
    previous = None
    if not stream and not one_shot:
        previous = container_stats(engine, rec)
        time.sleep(interval)
    while True:
        doc = container_stats(engine, rec, previous)
        yield doc
        if not stream or doc["read"] == ZERO_TIME:  # its cgroup is gone: it stopped
            return
        previous = doc
        time.sleep(interval)


# --- the docker CLI's columns --------------------------------------------------------------

def entry_of(doc: dict) -> dict:
    """docker CLI's StatsEntry of a document (stats_helpers.go): cpu %, memory without
    the inactive file cache, network and block totals."""
    cpu, precpu = doc.get("cpu_stats") or {}, doc.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - \
        (precpu.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - precpu.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ())
    cpu_percent = cpu_delta / system_delta * cpus * 100.0 \
        if system_delta > 0 and cpu_delta > 0 else 0.0
    mem = doc.get("memory_stats") or {}
    usage, raw = mem.get("usage", 0), mem.get("stats") or {}
    if "total_inactive_file" in raw and raw["total_inactive_file"] < usage:  # v1
        used = usage - raw["total_inactive_file"]
    elif raw.get("inactive_file", 0) < usage:  # v2
        used = usage - raw.get("inactive_file", 0)
    else:
        used = usage
    limit = mem.get("limit", 0)
    read = write = 0
    for e in (doc.get("blkio_stats") or {}).get("io_service_bytes_recursive") or ():
        op = (e.get("op") or " ")[0]
        if op in "rR":
            read += e.get("value", 0)
        elif op in "wW":
            write += e.get("value", 0)
    nets = (doc.get("networks") or {}).values()
    return {"Name": doc.get("name", ""), "ID": doc.get("id", ""), "CPUPercentage": cpu_percent,
            "Memory": used, "MemoryLimit": limit,
            "MemoryPercentage": used / limit * 100.0 if limit else 0.0,
            "NetworkRx": sum(n.get("rx_bytes", 0) for n in nets),
            "NetworkTx": sum(n.get("tx_bytes", 0) for n in nets),
            "BlockRead": read, "BlockWrite": write,
            "PidsCurrent": (doc.get("pids_stats") or {}).get("current", 0)}


def _units(size: float, base: float, names: tuple[str, ...], digits: int) -> str:
    """go-units' sizes: divide by `base` while it is reached, `digits` significant."""
    i = 0
    while size >= base and i < len(names) - 1:
        size /= base
        i += 1
    return f"{size:.{digits}g}{names[i]}"


def decimal_size(size: float) -> str:
    """go-units HumanSizeWithPrecision(size, 3): "1.23kB", "648B"."""
    return _units(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"), 3)


def binary_size(size: float) -> str:
    """go-units BytesSize: "1.5MiB", "23.43GiB"."""
    return _units(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"), 4)


def format_entry(entry: dict, container: str, trunc: bool = True,
                 invalid: bool = False) -> dict:
    """docker's stats context (formatter_stats.go): the columns as strings, keys sorted
    as its `--format json` prints them. `container`: what the user named it by (or its
    id); invalid: docker's "--" for a container whose stats could not be read."""
    name = entry["Name"]
    return {
        "BlockIO": "--" if invalid else
        f"{decimal_size(entry['BlockRead'])} / {decimal_size(entry['BlockWrite'])}",
        "CPUPerc": "--" if invalid else f"{entry['CPUPercentage']:.2f}%",
        "Container": container,
        "ID": entry["ID"][:12] if trunc else entry["ID"],
        "MemPerc": "--" if invalid else f"{entry['MemoryPercentage']:.2f}%",
        "MemUsage": "-- / --" if invalid else
        f"{binary_size(entry['Memory'])} / {binary_size(entry['MemoryLimit'])}",
        "Name": name[1:] if len(name) > 1 else "--",
        "NetIO": "--" if invalid else
        f"{decimal_size(entry['NetworkRx'])} / {decimal_size(entry['NetworkTx'])}",
        "PIDs": "--" if invalid else str(entry["PidsCurrent"]),
    }
