#!/usr/bin/env python3
"""Pod and container start through the CRI: `minirun cri` against containerd 1.6 (Debian's,
with its CRI plugin and runc), both driven by the same gRPC client in one run.

    sudo .venv/bin/python bench/cri_bench.py [-n 20] [--warmup 2] [--pods 10]
                                             [--networks host,cni] [--runtimes containerd,minirun]
                                             [--json FILE|-]

It needs the checkout's venv (grpcio and the generated CRI modules), /usr/bin/containerd,
/usr/bin/ctr, runc, the CNI plugins in /usr/lib/cni (or /opt/cni/bin) and /bin/busybox.
Nothing leaves the machine: the images are built here.

Setup, all under one temporary directory:
- images: the busybox rootfs (rootfs/build.sh --tar) as one layer of two images in one
  docker-save archive: `minirun.local/pause:bench` (Entrypoint `sleep 86400`, the sandbox
  image: containerd's pause) and `minirun.local/busybox:bench`. containerd gets them with
  `ctr -n k8s.io images import` (its CRI plugin's namespace), minirun with `minirun load`.
- containerd: its own config.toml (root, state, gRPC and ttrpc sockets, opt dir, CNI conf
  dir under the temp dir, sandbox_image the pause image above, runc through the runc v2
  shim with cgroupfs), started by the bench and stopped by pid.
- minirun: `minirun cri --cri-socket SOCK` with MINIRUN_ROOT / MINIRUN_RUN_ROOT in the temp
  dir and MINIRUN_CNI_CONF_DIR its own conf dir.
- CNI: one conflist per runtime (bridge + host-local, dataDir in the temp dir, no masquerade,
  no port mapping), each with its own bridge (mrbcd0 10.91.1.0/24, mrbmr0 10.91.2.0/24) so the
  two never hand out the same address.
- every pod's cgroup_parent is /minirun/cri-bench/<runtime>-<n> (kubelet's cgroupfs form): no
  container cgroup lands anywhere else.

Each iteration, each runtime in turn (the order rotates) and each network (host: NODE
network namespace; cni: the pod network) runs the kubelet's start sequence and times each
call: RunPodSandbox, CreateContainer (busybox `sleep 3600`), StartContainer; then tears the
pod down (StopPodSandbox, RemovePodSandbox; untimed). Warm-up iterations are not counted.

Memory per running pod: with `--pods N` pods (each with its container running, host network)
up on one runtime at a time:
- containerd: the RSS of its shims (containerd-shim-runc-v2 processes started for this
  containerd's socket) divided by N; the shim is what a running pod costs next to the
  runtime's own daemon, which is there anyway;
- minirun: the growth of the RSS of its daemon, keeper and `minirun cri` between no pod and
  N pods, divided by N.

Everything is removed at the end, on errors and on Ctrl-C: pods, both runtimes (by pid),
their shims, the cgroups under /minirun/cri-bench, the bridges, and the temp dir (after
unmounting what is below it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # benchlib, when run by another path

from benchlib import (
    CHECKOUT,
    BenchError,
    add_iteration_args,
    add_output_args,
    catch_signals,
    checkout_state,
    describe_checkout,
    ignore_signals,
    loadavg,
    log_stream,
    machine_and_checkout,
    progress,
    remove_tree,
    rotated,
    summary,
    write_json,
)
from run_bench import remove_cgroup_tree
from supervise_bench import memory_kib, minirun_supervisors, stop_pid

if CHECKOUT not in sys.path:
    sys.path.insert(0, CHECKOUT)

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
RUNC = "/usr/sbin/runc"
PAUSE_IMAGE = "minirun.local/pause:bench"
BUSYBOX_IMAGE = "minirun.local/busybox:bench"
CGROUP_TOP = "/minirun/cri-bench"
RUNTIMES = ("containerd", "minirun")
NETWORKS = ("host", "cni")
STEPS = ("RunPodSandbox", "CreateContainer", "StartContainer")
GOAL = 0.5  # issue 11: pod + container start at most half of containerd's time
BRIDGES = {"containerd": ("mrbcd0", "10.91.1.0/24"), "minirun": ("mrbmr0", "10.91.2.0/24")}
CALL_TIMEOUT = 120.0


# --- images --------------------------------------------------------------------------------

def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
    tar.addfile(info, io.BytesIO(data))


def build_image_archive(rootfs_tar: str, dest: str) -> None:
    """A docker-save archive of two images sharing the busybox rootfs layer: the pause-like
    sandbox image and the container image."""
    with open(rootfs_tar, "rb") as f:
        layer = f.read()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_name = f"{diff_id[7:]}/layer.tar"
    manifest = []
    with tarfile.open(dest, "w") as tar:
        _tar_add(tar, layer_name, layer)
        for tag, config in ((PAUSE_IMAGE, {"Entrypoint": ["/bin/sleep", "86400"]}),
                            (BUSYBOX_IMAGE, {"Cmd": ["/bin/sh"]})):
            doc = {
                "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], **config},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": "rootfs/build.sh"}],
            }
            data = json.dumps(doc, sort_keys=True).encode()
            name = hashlib.sha256(data).hexdigest() + ".json"
            _tar_add(tar, name, data)
            manifest.append({"Config": name, "RepoTags": [tag], "Layers": [layer_name]})
        _tar_add(tar, "manifest.json", json.dumps(manifest).encode())


def write_conflist(conf_dir: str, runtime: str, data_dir: str) -> None:
    bridge, subnet = BRIDGES[runtime]
    os.makedirs(conf_dir, exist_ok=True)
    conf = {
        "cniVersion": "1.0.0",
        "name": f"minirun-bench-{runtime}",
        "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "dataDir": data_dir},
        }],
    }
    with open(os.path.join(conf_dir, "10-bench.conflist"), "w") as f:
        json.dump(conf, f)


def cni_bin_dir() -> str:
    for d in ("/opt/cni/bin", "/usr/lib/cni"):
        if os.path.exists(os.path.join(d, "bridge")):
            return d
    raise BenchError("no CNI plugins in /opt/cni/bin or /usr/lib/cni "
                     "(apt-get install containernetworking-plugins)")


def containerd_config(d: str, sock: str, conf_dir: str, sandbox_image: str,
                      extra_cri: str = "") -> str:
    """config.toml of a containerd 1.6 with everything in directory d: its CRI plugin
    with runc (cgroupfs), no SELinux or AppArmor, CNI from conf_dir; extra_cri is
    appended inside the CRI plugin's table (tests/critest_env.py adds registry mirrors)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [{cri}]
    sandbox_image = "{sandbox_image}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    [{cri}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [{cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [{cri}.containerd.runtimes.runc.options]
          BinaryName = "{RUNC}"
          SystemdCgroup = false
    [{cri}.cni]
      bin_dir = "{cni_bin_dir()}"
      conf_dir = "{conf_dir}"
      max_conf_num = 1
{extra_cri}"""


def shim_pids(sock: str) -> list[int]:
    """containerd-shim-runc-v2 processes serving the containerd on `sock` (the socket is
    on their command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and sock.encode() in argv:
            pids.append(int(entry))
    return pids


# --- the runtimes ----------------------------------------------------------------------------

def wait_for_socket(path: str, proc: subprocess.Popen, log: str, what: str,
                    timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited {proc.returncode}: {tail(log)}")
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not create {path} in {timeout:.0f}s: {tail(log)}")


def tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


class Containerd:
    name = "containerd"

    def __init__(self, tmp: str) -> None:
        self.dir = os.path.join(tmp, "containerd")
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.conf_dir = os.path.join(self.dir, "net.d")
        self.log = os.path.join(self.dir, "containerd.log")
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        return containerd_config(self.dir, self.sock, self.conf_dir, PAUSE_IMAGE)

    def start(self, archive: str) -> str:
        os.makedirs(self.dir, exist_ok=True)
        write_conflist(self.conf_dir, self.name, os.path.join(self.dir, "ipam"))
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(self.config())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([CONTAINERD, "--config", cfg], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        wait_for_socket(self.sock, self.proc, self.log, "containerd")
        result = subprocess.run([CTR, "-a", self.sock, "-n", "k8s.io", "images", "import",
                                 archive], check=False, capture_output=True, text=True,
                                 timeout=120)
        if result.returncode != 0:
            raise BenchError(f"ctr images import failed: {result.stderr.strip()}")
        return self.sock

    def supervisor_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def shim_pids(self) -> list[int]:
        return shim_pids(self.sock)

    def stop(self) -> list[str]:
        problems = []
        for pid in self.shim_pids():
            if not stop_pid(pid):
                problems.append(f"containerd shim {pid} did not exit")
        if self.proc is not None and self.proc.poll() is None:
            if not stop_pid(self.proc.pid):
                problems.append(f"containerd {self.proc.pid} did not exit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        return problems


class MiniRunCRI:
    name = "minirun"

    def __init__(self, tmp: str) -> None:
        self.dir = os.path.join(tmp, "minirun")
        self.root = os.path.join(self.dir, "root")
        self.run_root = os.path.join(self.dir, "run")
        self.sock = os.path.join(self.dir, "cri.sock")
        self.conf_dir = os.path.join(self.dir, "net.d")
        self.log = os.path.join(self.dir, "cri.log")
        self.env = dict(os.environ, MINIRUN_ROOT=self.root, MINIRUN_RUN_ROOT=self.run_root,
                        MINIRUN_CNI_CONF_DIR=self.conf_dir, MINIRUN_CRI_SOCKET=self.sock)
        self.minirun = os.path.join(CHECKOUT, ".venv", "bin", "minirun")
        self.proc: subprocess.Popen | None = None

    def start(self, archive: str) -> str:
        os.makedirs(self.dir, exist_ok=True)
        write_conflist(self.conf_dir, self.name, os.path.join(self.dir, "ipam"))
        result = subprocess.run([self.minirun, "load", "-i", archive], env=self.env, check=False,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise BenchError(f"minirun load failed: {result.stderr.strip()}")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.minirun, "cri", "--cri-socket", self.sock],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_socket(self.sock, self.proc, self.log, "minirun cri")
        return self.sock

    def supervisor_pids(self) -> list[int]:
        pids = list(minirun_supervisors(self.run_root).values())
        if self.proc is not None and self.proc.poll() is None:
            pids.append(self.proc.pid)
        return pids

    def shim_pids(self) -> list[int]:
        return []  # the daemon and keeper supervise every container themselves

    def stop(self) -> list[str]:
        problems = []
        pids = self.supervisor_pids()  # before the cri process goes
        if self.proc is not None and self.proc.poll() is None:
            if not stop_pid(self.proc.pid):
                problems.append(f"minirun cri {self.proc.pid} did not exit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        for pid in pids:
            if self.proc is not None and pid == self.proc.pid:
                continue
            if not stop_pid(pid):
                problems.append(f"minirun supervisor {pid} did not exit")
        return problems


# --- the client ----------------------------------------------------------------------------

class Client:
    """The kubelet's calls for one pod with one container, on one runtime's socket."""

    def __init__(self, runtime: str, sock: str) -> None:
        import grpc

        from minirun.cri.api import api_pb2 as pb
        from minirun.cri.api import api_pb2_grpc as pbg

        self.pb = pb
        self.runtime = runtime
        self.channel = grpc.insecure_channel(f"unix://{sock}")
        self.rt = pbg.RuntimeServiceStub(self.channel)
        self.images = pbg.ImageServiceStub(self.channel)
        self.count = 0
        self.pods: list[str] = []

    def close(self) -> None:
        self.channel.close()

    def version(self) -> str:
        import grpc

        try:
            v = self.rt.Version(self.pb.VersionRequest(version="v1"), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise BenchError(f"{self.runtime}: Version: {e.code().name}: {e.details()}") from None
        return f"{v.runtime_name} {v.runtime_version} (CRI {v.runtime_api_version})"

    def sandbox_config(self, network: str):
        pb = self.pb
        self.count += 1
        n = self.count
        uid = uuid.uuid4().hex
        ns = pb.NamespaceOption(network=pb.NODE if network == "host" else pb.POD,
                                pid=pb.CONTAINER, ipc=pb.POD)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"bench-{n}", uid=uid, namespace="bench",
                                           attempt=0),
            hostname="" if network == "host" else f"bench-{n}",  # as kubelet sends them
            log_directory=os.path.join(self.log_root, f"bench_bench-{n}_{uid}"),
            dns_config=pb.DNSConfig(servers=["10.96.0.10"], searches=["bench.svc"]),
            labels={"bench": "cri", "runtime": self.runtime},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"{CGROUP_TOP}/{self.runtime}-{n}",
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns)),
        )

    def container_config(self, sandbox):
        pb = self.pb
        ns = sandbox.linux.security_context.namespace_options
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="sleeper", attempt=0),
            image=pb.ImageSpec(image=BUSYBOX_IMAGE),
            command=["/bin/sleep"], args=["3600"],
            log_path="sleeper/0.log",
            labels={"bench": "cri"},
            linux=pb.LinuxContainerConfig(
                resources=pb.LinuxContainerResources(cpu_shares=2, oom_score_adj=1000),
                security_context=pb.LinuxContainerSecurityContext(namespace_options=ns)),
        )

    def start_pod(self, network: str, times: dict[str, list[float]] | None = None) -> str:
        """RunPodSandbox, CreateContainer, StartContainer; each call's seconds appended to
        `times`."""
        import grpc

        try:
            return self._start_pod(network, times)
        except grpc.RpcError as e:
            raise BenchError(f"{self.runtime}, {network} network, pod {self.count}: "
                             f"{e.code().name}: {e.details()}") from None

    def _start_pod(self, network: str, times: dict[str, list[float]] | None) -> str:
        pb = self.pb
        sandbox = self.sandbox_config(network)
        os.makedirs(sandbox.log_directory, exist_ok=True)
        t0 = time.perf_counter()
        pod = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox),
                                    timeout=CALL_TIMEOUT).pod_sandbox_id
        t1 = time.perf_counter()
        self.pods.append(pod)
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=self.container_config(sandbox), sandbox_config=sandbox),
            timeout=CALL_TIMEOUT).container_id
        t2 = time.perf_counter()
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)
        t3 = time.perf_counter()
        if times is not None:
            for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2)):
                times.setdefault(step, []).append(dt)
            times.setdefault("pod+container start", []).append(t3 - t0)
        return pod

    def remove_pod(self, pod: str) -> None:
        pb = self.pb
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT)
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                 timeout=CALL_TIMEOUT)
        with contextlib.suppress(ValueError):
            self.pods.remove(pod)

    def remove_all(self) -> list[str]:
        problems = []
        for pod in list(self.pods):
            try:
                self.remove_pod(pod)
            except Exception as e:  # noqa: BLE001 - cleanup goes on and reports
                problems.append(f"{self.runtime}: removing pod {pod[:12]}: {e}")
        return problems


# --- measurements ----------------------------------------------------------------------------

def memory_kib_sum(pids: list[int]) -> tuple[int, int]:
    """Summed VmRSS and Pss in KiB (a process gone meanwhile counts 0)."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            r, p = memory_kib(pid)
            rss += r
            pss += p or 0
    return rss, pss


def memory_per_pod(runtime, client: Client, n: int, log) -> dict:
    """KiB per running pod, RSS and Pss: containerd's shims / n (containerd itself grows
    too, and that growth is added); minirun's growth of daemon + keeper + cri / n."""
    time.sleep(1.0)
    supervisors = runtime.supervisor_pids()
    before = memory_kib_sum(supervisors)
    pods = [client.start_pod("host") for _ in range(n)]
    time.sleep(2.0)  # let lazily started helpers settle
    after = memory_kib_sum(runtime.supervisor_pids())
    shims = runtime.shim_pids()
    shim = memory_kib_sum(shims)
    print(f"  {runtime.name}: {n} pods: {len(supervisors)} supervisors RSS {before[0]} -> "
          f"{after[0]} KiB, "
          f"{len(shims)} shims RSS {shim[0]} KiB Pss {shim[1]} KiB", file=log)
    for pod in pods:
        client.remove_pod(pod)
    return {"pods": n, "supervisors_before_kib": before[0], "supervisors_after_kib": after[0],
            "supervisors_pss_before_kib": before[1], "supervisors_pss_after_kib": after[1],
            "shims": len(shims), "shims_rss_kib": shim[0], "shims_pss_kib": shim[1],
            "per_pod_rss_kib": (shim[0] + max(0, after[0] - before[0])) / n,
            "per_pod_pss_kib": (shim[1] + max(0, after[1] - before[1])) / n}


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_iteration_args(p, 20, 2)
    p.add_argument("--pods", type=int, default=10, help="running pods for the memory figure "
                   "(0: skip it)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    add_output_args(p)
    args = p.parse_args(argv)
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.networks = [n for n in args.networks.split(",") if n]
    for r in args.runtimes:
        if r not in RUNTIMES:
            p.error(f"unknown runtime {r!r}: choose from {', '.join(RUNTIMES)}")
    for n in args.networks:
        if n not in NETWORKS:
            p.error(f"unknown network {n!r}: choose from {', '.join(NETWORKS)}")
    return args


def fmt_ms(s: float) -> str:
    return f"{s * 1000:8.1f}"


def print_report(result: dict, log) -> None:
    runtimes = result["runtimes"]
    for network, per_rt in result["latency"].items():
        print(f"\n{network} network: p50 / p90 in ms (n={result['iterations']})", file=log)
        header = f"{'step':<22}" + "".join(f"{rt:>22}" for rt in runtimes)
        if len(runtimes) == 2:
            header += f"{'minirun/containerd':>22}"
        print(header, file=log)
        for step in (*STEPS, "pod+container start"):
            row = f"{step:<22}"
            for rt in runtimes:
                s = per_rt[rt][step]
                row += f"{fmt_ms(s['median'])} /{fmt_ms(s['p90'])}   "
            if len(runtimes) == 2:
                r = result["ratios"][network][step]
                row += f"{r['median']:>11.2f} / {r['p90']:.2f}"
            print(row, file=log)
    if result.get("memory"):
        print("\nmemory per running pod (host network)", file=log)
        for rt, m in result["memory"].items():
            print(f"  {rt:<12} RSS {m['per_pod_rss_kib'] / 1024:6.2f} MiB, "
                  f"Pss {m['per_pod_pss_kib'] / 1024:6.2f} MiB  ({m['pods']} pods; "
                  f"shims {m['shims_rss_kib']} KiB, supervisors {m['supervisors_before_kib']}"
                  f" -> {m['supervisors_after_kib']} KiB)", file=log)
    if "goal" in result:
        print(f"\ngoal (issue 11): pod + container start <= {GOAL}x containerd: "
              + ", ".join(f"{net} {g['ratio']:.2f}x {'met' if g['met'] else 'NOT met'}"
                          for net, g in result["goal"].items()), file=log)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("cri_bench.py: run as root", file=sys.stderr)
        return 1
    log = log_stream(args.json)
    state = checkout_state()
    load_before = loadavg()
    print(describe_checkout(state, load_before), file=log)
    tmp = tempfile.mkdtemp(prefix="minirun-cri-bench-", dir=args.tmpdir)
    os.chmod(tmp, 0o755)
    runtimes: dict = {}
    clients: dict[str, Client] = {}
    problems: list[str] = []
    catch_signals()
    try:
        for tool in (CONTAINERD, CTR, RUNC, "/bin/busybox"):
            if not os.path.exists(tool):
                raise BenchError(f"{tool} is missing")
        rootfs_tar = os.path.join(tmp, "rootfs.tar")
        subprocess.run([os.path.join(CHECKOUT, "rootfs", "build.sh"), "--tar", rootfs_tar],
                       check=True, capture_output=True, timeout=300)
        archive = os.path.join(tmp, "images.tar")
        build_image_archive(rootfs_tar, archive)
        for name in args.runtimes:
            runtime = Containerd(tmp) if name == "containerd" else MiniRunCRI(tmp)
            runtimes[name] = runtime
            sock = runtime.start(archive)
            client = Client(name, sock)
            client.log_root = os.path.join(tmp, "pods", name)
            clients[name] = client
            print(f"{name}: {client.version()}", file=log)
        samples = {net: {rt: {} for rt in args.runtimes} for net in args.networks}
        total = args.warmup + args.iterations
        for i in range(total):
            for name in rotated(args.runtimes, i):
                for net in args.networks:
                    times = samples[net][name] if i >= args.warmup else None
                    pod = clients[name].start_pod(net, times)
                    clients[name].remove_pod(pod)
            progress(i, total, log)
        result = {"iterations": args.iterations, "runtimes": args.runtimes, "latency": {},
                  "ratios": {}, "memory": {}}
        for net in args.networks:
            result["latency"][net] = {rt: {step: summary(v) for step, v in s.items()}
                                      for rt, s in samples[net].items()}
            if len(args.runtimes) == 2:
                mr, cd = (result["latency"][net][rt] for rt in ("minirun", "containerd"))
                result["ratios"][net] = {step: {k: mr[step][k] / cd[step][k]
                                                for k in ("median", "p90")}
                                         for step in (*STEPS, "pod+container start")}
        if len(args.runtimes) == 2:
            result["goal"] = {net: {"ratio": r["pod+container start"]["median"],
                                    "met": r["pod+container start"]["median"] <= GOAL}
                              for net, r in result["ratios"].items()}
        if args.pods:
            for name in args.runtimes:
                result["memory"][name] = memory_per_pod(runtimes[name], clients[name],
                                                        args.pods, log)
        result["machine"] = machine_and_checkout(state, load_before)
        result["raw"] = samples
        print_report(result, log)
        write_json(result, args.json)
        return 0
    except BenchError as e:
        print(f"cri_bench.py: {e}", file=sys.stderr)
        return 1
    finally:
        ignore_signals()
        for client in clients.values():
            problems += client.remove_all()
            client.close()
        for runtime in runtimes.values():
            problems += runtime.stop()
        problems += [f"left {p}" for p in remove_cgroup_tree(CGROUP_TOP)]
        for bridge, _subnet in BRIDGES.values():
            if os.path.exists(f"/sys/class/net/{bridge}"):
                subprocess.run(["ip", "link", "del", bridge], check=False)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            problems += remove_tree(tmp)
        for p in problems:
            print(f"cri_bench.py: cleanup: {p}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
