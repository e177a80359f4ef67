"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: what kubelet's
CRI stats provider reads (`kubectl top`, eviction, the summary API), from cgroups v1 or v2
through minirun/cgroups (the drivers' stats(), as `minirun-oci events --stats` reports).

A sample, per container and per pod:
  cpu      usage_core_nano_seconds: cpuacct.usage (v1) / cpu.stat usage_usec (v2);
           usage_nano_cores: the rate between this sample and the one before of the same
           container or pod, kept in memory (unset on the first sample, as kubelet then
           computes it from its own)
  memory   usage_bytes: usage_in_bytes / memory.current; working_set_bytes: usage minus
           inactive file pages (cAdvisor's and kubelet's definition); rss_bytes: total_rss
           (v1) / anon (v2); page_faults and major_page_faults from memory.stat;
           available_bytes: limit - working set, only with a limit
  swap     swap usage (memsw - usage on v1, memory.swap.current on v2) when accounted
  writable_layer   bytes and inodes of the container's overlay upper dir, fs_id the image
           store's root (the mountpoint ImageFsInfo names)
A pod: its cgroup_parent's cgroup (kubelet's pod cgroup: every container of the pod, and
its pid holder, in one hierarchy) when the pod has one of its own; with the default parent
(/minirun, shared by every pod) the sum of its containers. Process count from pids.current.
Network: net/dev read in the pod's pinned netns (the reading thread joins it and comes
back); eth0 is the default interface, as CNI names it; none for a pod on the host's
network.

Lists cover running containers (containerd reports those with a task) and ready pods.
"""

from __future__ import annotations

import json
import os
import threading
import time

from ..cgroups import open_cgroup
from ..errors import InvalidArgument, NotFound
from ..monitor.cgstats import cgroup_sample, container_sample, read_net_dev, tree_usage
from .api import api_pb2 as pb

DEFAULT_CGROUP_PARENT = "/minirun"
DEFAULT_INTERFACE = "eth0"


class StatsMixin:
    """Needs self.engine (minirun.engine.Engine) and self.pods (minirun.pods.Pods)."""

    _cpu_lock = threading.Lock()

    def _cpu_samples(self) -> dict[str, tuple[int, int]]:
        """The last cpu sample of each container ("c:<id>") and pod ("p:<id>"):
        (timestamp ns, cpu ns); the mixin has no __init__ of its own."""
        return self.__dict__.setdefault("_cpu_sample_map", {})

    # --- rpcs ------------------------------------------------------------------------------

    def ContainerStats(self, request, context):
        if not request.container_id:
            raise InvalidArgument("no container id given")
        rec = self.engine.get(request.container_id)
        return pb.ContainerStatsResponse(stats=self._container_stats(rec))

    def ListContainerStats(self, request, context):
        from .convert import labels_match

        f = request.filter
        out = []
        for rec in self.engine.records(all_containers=False):
            opts = json.loads(rec["options"])
            pod_id = opts.get("pod") or ""
            if not pod_id:
                continue  # not a CRI container (the CLI's, or a pod's pid holder)
            if f.id and not rec["id"].startswith(f.id):
                continue
            if f.pod_sandbox_id and not pod_id.startswith(f.pod_sandbox_id):
                continue
            if not labels_match(opts.get("labels") or {}, f.label_selector):
                continue
            out.append(self._container_stats(rec, opts))
        self._forget_samples({s.attributes.id for s in out}, prefix="c:")
        return pb.ListContainerStatsResponse(stats=out)

    def PodSandboxStats(self, request, context):
        pod = self.pods.get(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=self._pod_stats(pod))

    def ListPodSandboxStats(self, request, context):
        from .convert import labels_match

        f = request.filter
        out = []
        for pod in self.pods.list():
            if pod["state"] != "ready":
                continue
            if f.id and not pod["id"].startswith(f.id):
                continue
            if not labels_match(pod["labels"], f.label_selector):
                continue
            out.append(self._pod_stats(pod))
        self._forget_samples({s.attributes.id for s in out}, prefix="p:")
        return pb.ListPodSandboxStatsResponse(stats=out)

    # --- containers --------------------------------------------------------------------------

    def _container_stats(self, rec: dict, opts: dict | None = None) -> pb.ContainerStats:
        from .convert import parse_container_name

        opts = opts if opts is not None else json.loads(rec["options"])
        name, attempt = parse_container_name(rec["name"]) or (rec["name"], 0)
        stats = pb.ContainerStats(attributes=pb.ContainerAttributes(
            id=rec["id"], metadata=pb.ContainerMetadata(name=name, attempt=attempt),
            labels=opts.get("labels") or {}, annotations=opts.get("annotations") or {}))
        sample = container_sample(self.engine, rec) if rec["status"] == "running" else None
        if sample is not None:
            self._fill_usage(stats, "c:" + rec["id"], sample)
        stats.writable_layer.CopyFrom(self._writable_layer(rec["id"]))
        return stats

    def _writable_layer(self, cid: str) -> pb.FilesystemUsage:
        root = os.path.abspath(self.engine.root)
        used, inodes = tree_usage([os.path.join(root, "containers", cid, "upper")])
        return pb.FilesystemUsage(timestamp=time.time_ns(),
                                  fs_id=pb.FilesystemIdentifier(mountpoint=root),
                                  used_bytes=pb.UInt64Value(value=used),
                                  inodes_used=pb.UInt64Value(value=inodes))

    # --- pods --------------------------------------------------------------------------------

    def _pod_stats(self, pod: dict) -> pb.PodSandboxStats:
        stats = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
            id=pod["id"], metadata=pb.PodSandboxMetadata(
                name=pod["name"], uid=pod["uid"], namespace=pod["namespace"],
                attempt=pod["attempt"]),
            labels=pod["labels"], annotations=pod["annotations"]))
        linux = stats.linux
        running = []
        for cid in self.pods.containers(pod["id"]):
            try:
                rec = self.engine.get(cid)
            except NotFound:
                continue  # removed meanwhile
            if rec["status"] == "running":
                running.append(rec)
                linux.containers.append(self._container_stats(rec))
        sample = pod_sample(pod, running, self.engine)
        if sample is not None:
            self._fill_usage(linux, "p:" + pod["id"], sample)
            linux.process.timestamp = sample["timestamp"]
            linux.process.process_count.value = sample["pids"]
        if pod["spec"].get("network") == "pod" and pod.get("netns"):
            usage = network_usage(pod["netns"])
            if usage is not None:
                linux.network.CopyFrom(usage)
        return stats

    # --- samples -------------------------------------------------------------------------------

    def _fill_usage(self, msg, key: str, sample: dict) -> None:
        """cpu and memory (and swap, where the message has it) of `msg` from a sample."""
        ts = sample["timestamp"]
        msg.cpu.timestamp = ts
        msg.cpu.usage_core_nano_seconds.value = sample["cpu_ns"]
        cores = self._nano_cores(key, ts, sample["cpu_ns"])
        if cores is not None:
            msg.cpu.usage_nano_cores.value = cores
        mem = msg.memory
        mem.timestamp = ts
        mem.working_set_bytes.value = sample["working_set"]
        mem.usage_bytes.value = sample["usage"]
        mem.rss_bytes.value = sample["rss"]
        mem.page_faults.value = sample["pgfault"]
        mem.major_page_faults.value = sample["pgmajfault"]
        if sample["limit"] is not None:
            mem.available_bytes.value = max(0, sample["limit"] - sample["working_set"])
        if sample.get("swap") is not None and "swap" in msg.DESCRIPTOR.fields_by_name:
            msg.swap.timestamp = ts
            msg.swap.swap_usage_bytes.value = sample["swap"]
            if sample.get("swap_limit") is not None:
                msg.swap.swap_available_bytes.value = max(0, sample["swap_limit"] - sample["swap"])

    def _nano_cores(self, key: str, ts: int, cpu_ns: int) -> int | None:
        """CPU ns per second since the previous sample of `key`; None for the first."""
        with self._cpu_lock:
            samples = self._cpu_samples()
            prev = samples.get(key)
            samples[key] = (ts, cpu_ns)
        if prev is None or ts <= prev[0] or cpu_ns < prev[1]:
            return None
        return (cpu_ns - prev[1]) * 1_000_000_000 // (ts - prev[0])

    def _forget_samples(self, keep: set[str], prefix: str) -> None:
        """Drop the samples of containers or pods a full list no longer shows."""
        with self._cpu_lock:
            samples = self._cpu_samples()
            for key in [k for k in samples if k.startswith(prefix)]:
                if key[len(prefix):] not in keep:
                    del samples[key]


# --- reading cgroups -----------------------------------------------------------------------------

def pod_sample(pod: dict, running: list[dict], engine) -> dict | None:
    parent = pod.get("cgroup_parent") or DEFAULT_CGROUP_PARENT
    if parent.rstrip("/") != DEFAULT_CGROUP_PARENT:
        sample = cgroup_sample(open_cgroup(parent))
        if sample is not None:
            return sample
    samples = [s for s in (container_sample(engine, r) for r in running) if s is not None]
    if not samples:
        return None
    total = {key: sum(s[key] for s in samples)
             for key in ("cpu_ns", "usage", "working_set", "rss", "pgfault", "pgmajfault",
                         "pids")}
    total.update(timestamp=max(s["timestamp"] for s in samples), limit=None, swap=None)
    return total


def network_usage(netns: str) -> pb.NetworkUsage | None:
    """The interfaces of the pod's netns (lo left out); eth0 is the default one."""
    devs = read_net_dev(netns)
    if devs is None:
        return None
    usage = pb.NetworkUsage(timestamp=time.time_ns())
    for name in sorted(devs):
        if name == "lo":
            continue
        d = devs[name]
        iface = pb.NetworkInterfaceUsage(
            name=name, rx_bytes=pb.UInt64Value(value=d["rx_bytes"]),
            rx_errors=pb.UInt64Value(value=d["rx_errors"]),
            tx_bytes=pb.UInt64Value(value=d["tx_bytes"]),
            tx_errors=pb.UInt64Value(value=d["tx_errors"]))
        if name == DEFAULT_INTERFACE:
            usage.default_interface.CopyFrom(iface)
        else:
            usage.interfaces.append(iface)
    return usage
