"""GET /containers/{id}/stats: docker's stats JSON, one document a second (stream) or one
(stream=false: two samples a second apart, so that the CPU percentage has a base;
one-shot: one sample at once), from minirun/monitor/cgstats.py's samples of the
container's cgroup and its network namespace's net/dev. (minirun/monitor has no docker
stats document of its own yet: this one is built here from cgstats.)"""

from __future__ import annotations

import os
import time

from .server import Stream

INTERVAL = 1.0


def _system_cpu_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(x) for x in fields[:8]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _host_memory() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def _cpu_doc(sample: dict | None, system: int) -> dict:
    return {"cpu_usage": {"total_usage": (sample or {}).get("cpu_ns", 0),
                          "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "system_cpu_usage": system if sample else 0,
            "online_cpus": (os.cpu_count() or 1) if sample else 0,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def document(engine, rec: dict, sample: dict | None, system: int, prev: dict | None,
             prev_system: int, prev_read: str) -> dict:
    from ..dockerview import ZERO_TIME, rfc3339

    doc = {"read": rfc3339(sample["timestamp"] / 1e9) if sample else ZERO_TIME,
           "preread": prev_read, "name": "/" + rec["name"], "id": rec["id"],
           "num_procs": 0, "storage_stats": {},
           "pids_stats": {"current": sample["pids"]} if sample else {},
           "blkio_stats": {"io_service_bytes_recursive": [
               {"major": 0, "minor": 0, "op": "Read", "value": sample["blkio_read"]},
               {"major": 0, "minor": 0, "op": "Write", "value": sample["blkio_write"]}]
               if sample else None},
           "cpu_stats": _cpu_doc(sample, system),
           "precpu_stats": _cpu_doc(prev, prev_system),
           "memory_stats": {}}
    if sample:
        inactive = max(0, sample["usage"] - sample["working_set"])
        doc["memory_stats"] = {
            "usage": sample["usage"], "limit": sample["limit"] or _host_memory(),
            "stats": {"total_inactive_file": inactive, "inactive_file": inactive,
                      "rss": sample["rss"], "pgfault": sample["pgfault"],
                      "pgmajfault": sample["pgmajfault"]}}
        nets = _networks(engine, rec)
        if nets:
            doc["networks"] = nets
    return doc


def _networks(engine, rec: dict) -> dict | None:
    from ..errors import MiniRunError
    from ..monitor.cgstats import read_net_dev

    try:
        netns = engine._netns_of(rec)
    except MiniRunError:
        return None
    dev = read_net_dev(netns) or {}
    return {name: {"rx_bytes": v["rx_bytes"], "rx_packets": 0, "rx_errors": v["rx_errors"],
                   "rx_dropped": 0, "tx_bytes": v["tx_bytes"], "tx_packets": 0,
                   "tx_errors": v["tx_errors"], "tx_dropped": 0}
            for name, v in dev.items() if name != "lo"}


def stats_stream(req, rec: dict, stream: bool, one_shot: bool) -> Stream:
    import json

    from ..dockerview import ZERO_TIME, rfc3339
    from ..monitor.cgstats import container_sample

    engine = req.engine

    def take():
        fresh = engine.get(rec["id"])
        sample = container_sample(engine, fresh) if fresh["status"] == "running" else None
        return sample, _system_cpu_ns()

    def docs():
        prev, prev_system, prev_read = None, 0, ZERO_TIME
        sample, system = take()
        if not stream and not one_shot and sample is not None:
            time.sleep(INTERVAL)
            prev, prev_system, prev_read = sample, system, rfc3339(sample["timestamp"] / 1e9)
            sample, system = take()
        while True:
            yield json.dumps(document(engine, rec, sample, system, prev, prev_system,
                                      prev_read)).encode() + b"\n"
            if not stream or sample is None:
                return
            prev, prev_system = sample, system
            prev_read = rfc3339(sample["timestamp"] / 1e9)
            time.sleep(INTERVAL)
            if req.client_gone():
                return
            sample, system = take()

    return Stream(docs())
