#!/usr/bin/env python3
"""Bridge networking of minirun: the cost of attaching a container, and its throughput.

    sudo .venv/bin/python bench/net_bench.py [--iterations 30] [--warmup 3]
         [--iperf-time 5] [--iperf-runs 3] [--no-pyroute2] [--no-iperf] [--json FILE|-]

Run as root, with the venv's python (pyroute2 is only needed for its own rows).

1. Attach. minirun's engine root is a temp dir, so its bridge is mr<hash>b0 and its
   nftables table minirun_<hash>. One long-lived container stays attached during the loop,
   so the bridge and the table are up and each sample is the per-container cost. Each
   iteration, in rotating order:
     (a) minirun's wiring alone (Networks._wire: netns, veth, address, route);
     (b) Networks.attach: the same plus the SQLite lease and the host-wide lock;
     (c) the CNI bridge plugin (/usr/lib/cni/bridge, host-local IPAM with its dataDir in
         the temp dir, ipMasq false) through minirun.network.cni.add, on a netns made the
         same way; its own bridge, mrbench<hex>;
     (d) pyroute2 the way its docs show: IPRoute(netns=...) makes the netns;
     (e) pyroute2's messages on a netns made by minirun's netns.create;
   each followed by its detach, timed too. Inside (a) and (b) some of minirun's steps are
   timed by wrappers put around them from outside (lock, lease, netns, veth). The first
   container (bridge, table, ip_forward) and the last detach are measured apart.
   pyroute2's import time is measured in fresh interpreters, next to minirun's modules.
2. Throughput: iperf3 between two minirun containers on minirun's bridge, between two
   netns on a bridge made with `ip`, and over the host's loopback; rotating order, median.

Traffic stays between the namespaces this bench makes and on loopback. Everything is
undone at the end, on error and on Ctrl-C. Then the bench looks for any link, netns or
table it made, and compares the host's links, netns, nftables tables and ip_forward with
what they were before (other work on the machine shows up there too).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # benchlib, when run by another path

from benchlib import (
    CHECKOUT,
    BenchError,
    add_iteration_args,
    add_output_args,
    catch_signals,
    checkout_commit,
    free_port,
    ignore_signals,
    loadavg,
    log_stream,
    mountinfo,
    progress,
    read_ip_forward,
    remove_tree,
    rotated,
    stats_header,
    stats_row,
    summary,
    write_json,
)

sys.path.insert(0, CHECKOUT)  # measure this checkout's minirun, whatever is installed

from minirun import sys as msys
from minirun.engine import Engine
from minirun.errors import MiniRunError
from minirun.network import cni, manager, netns
from minirun.network.manager import HOST_STATE, Networks, _host_mtu
from minirun.network.netlink import Netlink, ipv4_routes

VENV_PYTHON = os.path.join(CHECKOUT, ".venv", "bin", "python")
CNI_PLUGIN_DIR = "/usr/lib/cni"
ATTACH_GOAL_MS = 7.0
THROUGHPUT_GOAL = 0.95
IPERF_PORT = 5201
STATS = ("median", "p90", "min", "max")

_MAIN_PID = os.getpid()


def _interrupt(signum, _frame):
    if os.getpid() != _MAIN_PID:
        # a child forked by pyroute2 (IPRoute(netns=...)) is stopped with SIGTERM: it must
        # die as with the default action, not unwind into the bench's cleanup
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def filesystem_type(path: str) -> str:
    """The type of the filesystem path is on (the mount with the longest matching prefix)."""
    path = os.path.realpath(path)
    best, fstype = "", "?"
    for target, target_fstype in mountinfo():
        if (path == target or path.startswith(target.rstrip("/") + "/")) and \
                len(target) >= len(best):
            best, fstype = target, target_fstype
    return fstype


# --- the host, before and after ----------------------------------------------------------

def host_state() -> dict:
    def lines(argv: list[str]) -> list[str]:
        return sorted(run(argv, check=False).stdout.split("\n"))

    forward = read_ip_forward()
    # names and state only: counters and addresses of other links are not ours to compare
    links = sorted(" ".join(ln.split()[:2]) for ln in lines(["ip", "-br", "link"]) if ln)
    return {"links": links, "netns": [ln for ln in lines(["ip", "netns"]) if ln],
            "nft tables": [ln for ln in lines(["nft", "list", "tables"]) if ln],
            "ip_forward": forward}


def host_differences(before: dict, after: dict) -> list[str]:
    out = []
    for key, old in before.items():
        new = after[key]
        if old == new:
            continue
        if isinstance(old, list):
            out.append(f"{key}: gone {[x for x in old if x not in new]}, "
                       f"new {[x for x in new if x not in old]}")
        else:
            out.append(f"{key}: {old} -> {new}")
    return out


def free_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A /24 in 10.249.0.0/16 that no host route and no network of this run overlaps."""
    routes = [ipaddress.IPv4Network(d, strict=False) for d, _ in ipv4_routes()]
    start = secrets.randbelow(256)
    for i in range(256):
        net = ipaddress.IPv4Network(f"10.249.{(start + i) % 256}.0/24")
        if not any(net.overlaps(r) for r in routes if r.prefixlen) and \
                not any(net.overlaps(t) for t in taken):
            return net
    raise BenchError("no free /24 in 10.249.0.0/16 for the CNI and hand-made bridges")


# --- what has to be undone ---------------------------------------------------------------

class Resources:
    """Everything the bench made, so that cleanup can undo it whatever happened."""

    def __init__(self) -> None:
        self.nets: Networks | None = None
        self.minirun: list[str] = []  # container ids attached through Networks
        self.wires: dict[str, tuple[str, str]] = {}  # key -> (host veth, netns path)
        self.cni: dict[str, tuple[dict, str, str]] = {}  # cid -> (conflist, netns path, cache)
        self.links: list[str] = []  # deleted at the end (CNI and hand-made bridges, veths)
        self.ip_netns: list[str] = []  # made with `ip netns add`
        self.procs: list[subprocess.Popen] = []
        self.made: set[str] = set()  # every link, netns and table name, to look for leftovers

    def minirun_cid(self, cid: str) -> None:
        self.minirun.append(cid)
        self.made |= {f"mr{cid[:12]}", f"minirun-{cid[:12]}"}

    def wire(self, cid: str, veth: str, path: str) -> None:
        self.wires[cid] = (veth, path)
        self.made |= {veth, os.path.basename(path)}

    def leftovers(self) -> list[str]:
        """What this run made that the host still has."""
        links = [ln.split()[0].split("@")[0] for ln in
                 run(["ip", "-br", "link"], check=False).stdout.splitlines() if ln.strip()]
        spaces = [ln.split()[0] for ln in run(["ip", "netns"], check=False).stdout.splitlines()
                  if ln.strip()]
        tables = [ln.split()[-1] for ln in
                  run(["nft", "list", "tables"], check=False).stdout.splitlines() if ln.strip()]
        return [f"link {n}" for n in links if n in self.made] + \
            [f"netns {n}" for n in spaces if n in self.made] + \
            [f"nft table {n}" for n in tables if n in self.made]

    def cleanup(self) -> list[str]:
        problems = []
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        for cid, (conflist, path, cache) in list(self.cni.items()):
            try:
                unwire_cni(conflist, cid, path, cache)
            except (OSError, MiniRunError) as e:
                problems.append(f"cni DEL {cid[:12]}: {e}")
            self.cni.pop(cid, None)
        for key, (veth, path) in list(self.wires.items()):
            try:
                unwire(veth, path)
            except (OSError, MiniRunError) as e:
                problems.append(f"{veth}/{path}: {e}")
            self.wires.pop(key, None)
        for name in self.ip_netns:
            proc = run(["ip", "netns", "del", name], check=False)
            if proc.returncode and "No such file" not in proc.stderr:
                problems.append(f"ip netns del {name}: {proc.stderr.strip()}")
        for name in self.links:
            try:
                with Netlink() as host:
                    host.delete_link(name)
            except OSError as e:
                problems.append(f"delete link {name}: {e}")
        if self.nets is not None:
            # the last detach takes the bridge and the table down and puts ip_forward back
            for cid in reversed(self.minirun):
                try:
                    self.nets.detach(cid)
                except (OSError, MiniRunError) as e:
                    problems.append(f"detach {cid[:12]}: {e}")
        return problems


# --- the ways to attach a netns ---------------------------------------------------------

def unwire(veth: str, path: str) -> None:
    """What minirun's detach does to the host, without the records."""
    with Netlink() as host:
        host.delete_link(veth)
    netns.remove(path)


def unwire_cni(conflist: dict, cid: str, path: str, cache: str) -> None:
    try:
        cni.delete(conflist, cid, path, "eth0", cache_dir=cache)
    finally:
        netns.remove(path)


class StepTimer:
    """Times some of minirun's steps inside (a) and (b), by wrapping the functions from
    outside (the sources are not changed). Outside collect() the wrappers only call through."""

    def __init__(self, nets: Networks) -> None:
        self.current: dict[str, float] | None = None
        self._undo: list[tuple[object, str, object]] = []
        for name in ("_lease", "_bridge_up", "_wire"):
            self._wrap(nets, name, name.lstrip("_"))
        self._wrap(manager.HostLock, "__enter__", "lock")
        self._wrap(netns, "create", "netns create")
        self._wrap(netns, "remove", "netns remove")
        self._wrap(Netlink, "add_veth", "veth create")
        self._wrap(Netlink, "delete_link", "veth delete")

    def _wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        timer = self

        def timed(*args, **kw):
            if timer.current is None:
                return original(*args, **kw)
            t0 = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                timer.current[label] = timer.current.get(label, 0.0) + \
                    time.perf_counter() - t0

        # on the Networks instance the wrapper shadows the class's method: delattr undoes it
        self._undo.append((owner, name, None if isinstance(owner, Networks) else original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._undo.clear()

    def start(self) -> None:
        self.current = {}

    def stop(self, total: float, whole: str = "") -> dict[str, float]:
        """The steps seen since start(), and "rest": what the total spent outside them.
        netns and veth creation are inside wire: they count in its share, not twice."""
        steps, self.current = self.current or {}, None
        steps.pop(whole, None)
        inner = ("netns create", "veth create") if "wire" in steps else ()
        steps["rest"] = total - sum(v for k, v in steps.items() if k not in inner)
        return steps


class Attacher:
    """One container at a time, by each method; attach and detach are timed."""

    def __init__(self, res: Resources, nets: Networks, rec: dict, conflist: dict, tmp: str,
                 pyroute2: bool, timer: StepTimer) -> None:
        self.timer = timer
        self.steps: dict[str, dict[str, list[float]]] = {}
        self.res = res
        self.nets = nets
        self.rec = rec
        self.net = ipaddress.IPv4Network(rec["subnet"])
        self.conflist = conflist
        self.cache = os.path.join(tmp, "cni-cache")
        self.pyroute2 = pyroute2
        self.mtu = _host_mtu()
        self.n = 0

    def _cid(self) -> str:
        self.n += 1
        return secrets.token_hex(32)

    def _steps(self, key: str, total: float) -> None:
        for label, value in self.timer.stop(total, whole=key).items():
            self.steps.setdefault(key, {}).setdefault(label, []).append(value)

    def _spare_ip(self, slot: int) -> str:
        # from the top of the subnet: the leases take the lowest addresses
        return str(self.net.broadcast_address - 1 - slot)

    def wire(self, check: bool = False) -> tuple[float, float]:
        cid = self._cid()
        veth, path = f"mr{cid[:12]}", netns.path_for(f"minirun-{cid[:12]}")
        self.res.wire(cid, veth, path)
        self.timer.start()
        t0 = time.perf_counter()
        self.nets._wire(cid, self.rec, self._spare_ip(0))
        t1 = time.perf_counter()
        self._steps("wire", t1 - t0)
        if check:
            check_wiring(path)
        self.timer.start()
        t1 = time.perf_counter()
        unwire(veth, path)
        t2 = time.perf_counter()
        self._steps("wire_down", t2 - t1)
        del self.res.wires[cid]
        return t1 - t0, t2 - t1

    def attach(self, check: bool = False) -> tuple[float, float]:
        cid = self._cid()
        self.res.minirun_cid(cid)
        self.timer.start()
        t0 = time.perf_counter()
        att = self.nets.attach(cid, "bridge", name=f"bench-{self.n}", hostname=cid[:12])
        t1 = time.perf_counter()
        self._steps("attach", t1 - t0)
        if check:
            check_wiring(att.netns)
        self.timer.start()
        t1 = time.perf_counter()
        self.nets.detach(cid)
        t2 = time.perf_counter()
        self._steps("detach", t2 - t1)
        self.res.minirun.remove(cid)
        return t1 - t0, t2 - t1

    def cni_add(self, check: bool = False) -> tuple[float, float, float]:
        """(netns + ADD, ADD alone, DEL + netns removal)."""
        cid = self._cid()
        path = netns.path_for(f"mrbench-{cid[:12]}")
        self.res.cni[cid] = (self.conflist, path, self.cache)
        self.res.made.add(os.path.basename(path))
        t0 = time.perf_counter()
        _, nsfd, inside = netns.create(os.path.basename(path))
        os.close(nsfd)
        inside.close()
        t1 = time.perf_counter()
        result = cni.add(self.conflist, cid, path, "eth0", cache_dir=self.cache)
        t2 = time.perf_counter()
        self.res.made |= {i["name"] for i in result.get("interfaces", []) if "sandbox" not in i}
        if check:
            check_wiring(path)
        unwire_cni(self.conflist, cid, path, self.cache)
        t3 = time.perf_counter()
        del self.res.cni[cid]
        return t2 - t0, t2 - t1, t3 - t2

    def _pyroute2_links(self, ns, veth: str, nsfd: int, ip: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as host:
            bridge = host.link_lookup(ifname=self.rec["bridge"])[0]
            host.link("add", ifname=veth, kind="veth", mtu=self.mtu,
                      peer={"ifname": "eth0", "mtu": self.mtu, "net_ns_fd": nsfd})
            index = host.link_lookup(ifname=veth)[0]
            host.link("set", index=index, master=bridge)
            host.link("set", index=index, state="up")
        eth0 = ns.link_lookup(ifname="eth0")[0]
        ns.addr("add", index=eth0, address=ip, prefixlen=self.net.prefixlen,
                broadcast=str(self.net.broadcast_address))
        ns.link("set", index=eth0, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=self.rec["gateway"], oif=eth0)

    def _pyroute2_unwire(self, veth: str, name: str) -> None:
        from pyroute2 import IPRoute
        from pyroute2 import netns as pnetns

        with IPRoute() as host:
            found = host.link_lookup(ifname=veth)
            if found:
                host.link("del", index=found[0])
        pnetns.remove(name)

    def pyroute2_own(self, check: bool = False) -> tuple[float, float]:
        """pyroute2 as documented: IPRoute(netns=NAME, flags=O_CREAT) makes the netns
        (in a forked child that passes back a socket)."""
        from pyroute2 import IPRoute

        cid = self._cid()
        veth, name = f"mr{cid[:12]}", f"minirun-{cid[:12]}"
        self.res.wire(cid, veth, netns.path_for(name))
        t0 = time.perf_counter()
        with IPRoute(netns=name, flags=os.O_CREAT | os.O_EXCL) as ns:
            ns.link("set", index=1, state="up")
            nsfd = os.open(netns.path_for(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._pyroute2_links(ns, veth, nsfd, self._spare_ip(1))
            finally:
                os.close(nsfd)
        t1 = time.perf_counter()
        if check:
            check_wiring(netns.path_for(name))
        self._pyroute2_unwire(veth, name)
        t2 = time.perf_counter()
        del self.res.wires[cid]
        return t1 - t0, t2 - t1

    def pyroute2_msgs(self, check: bool = False) -> tuple[float, float]:
        """pyroute2's messages on a netns made in-process by minirun's netns.create; its
        IPRoute is opened while this thread is in the netns, as minirun's socket is."""
        from pyroute2 import IPRoute

        cid = self._cid()
        veth, name = f"mr{cid[:12]}", f"minirun-{cid[:12]}"
        self.res.wire(cid, veth, netns.path_for(name))
        t0 = time.perf_counter()
        _, nsfd, inside = netns.create(name)
        inside.close()
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                msys.setns(nsfd, msys.CLONE_NEWNET)
                try:
                    ns = IPRoute()
                finally:
                    msys.setns(home, msys.CLONE_NEWNET)
            finally:
                os.close(home)
            with ns:
                self._pyroute2_links(ns, veth, nsfd, self._spare_ip(2))
        finally:
            os.close(nsfd)
        t1 = time.perf_counter()
        if check:
            check_wiring(netns.path_for(name))
        self._pyroute2_unwire(veth, name)
        t2 = time.perf_counter()
        del self.res.wires[cid]
        return t1 - t0, t2 - t1


def check_wiring(path: str) -> None:
    """That an attached netns has what the methods are timed for: eth0 up with an address
    and a default route (read with `ip`, not with the code measured)."""
    name = os.path.basename(path)
    addr = run(["ip", "-n", name, "-br", "addr", "show", "eth0"]).stdout
    route = run(["ip", "-n", name, "route", "show", "default"]).stdout
    if "UP" not in addr or "/" not in addr or "via" not in route:
        raise BenchError(f"netns {name} is not wired as expected: {addr!r} {route!r}")


def import_times(runs: int) -> dict:
    """Wall time of a fresh interpreter importing each thing, minus `pass`; and pyroute2's
    own cumulative figure from -X importtime."""
    cases = {"python -c pass": "pass",
             "minirun netlink + netns": "import minirun.network.netlink, minirun.network.netns",
             "minirun network.manager": "import minirun.network.manager",
             "pyroute2 IPRoute, NetNS": "from pyroute2 import IPRoute, NetNS"}
    walls: dict[str, list[float]] = {k: [] for k in cases}
    self_reported = []
    for _ in range(runs):
        for label, code in cases.items():
            t0 = time.perf_counter()
            run([VENV_PYTHON, "-c", code], cwd=CHECKOUT)
            walls[label].append(time.perf_counter() - t0)
        err = run([VENV_PYTHON, "-X", "importtime", "-c", cases["pyroute2 IPRoute, NetNS"]],
                  cwd=CHECKOUT).stderr
        for line in err.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| pyroute2$", line)
            if m:
                self_reported.append(int(m[1]) / 1e6)
    base = statistics.median(walls["python -c pass"])
    out = {label: {"wall": statistics.median(v), "over_pass": statistics.median(v) - base}
           for label, v in walls.items()}
    if self_reported:
        out["pyroute2 -X importtime"] = {"cumulative": statistics.median(self_reported)}
    return out


def socket_open_times(runs: int) -> dict:
    """Opening and closing one rtnetlink handle: minirun's Netlink against pyroute2's
    IPRoute (which sets up an asyncio loop and its marshalling for each instance)."""
    from pyroute2 import IPRoute

    out = {}
    for label, make in (("minirun Netlink()", Netlink), ("pyroute2 IPRoute()", IPRoute)):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            handle = make()
            handle.close()
            times.append(time.perf_counter() - t0)
        out[label] = summary(times, mean=False)
    return out


# --- throughput ---------------------------------------------------------------------------

def start_iperf_server(res: Resources, prefix: list[str], bind: str, port: int,
                       log: str) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(prefix + ["iperf3", "-s", "-B", bind, "-p", str(port),
                                          "--forceflush"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    res.procs.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log) as f:
            if "Server listening" in f.read():
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(log) as f:
        raise BenchError(f"iperf3 server on {bind}:{port} did not start: {f.read().strip()}")


def iperf_client(prefix: list[str], server: str, port: int, seconds: int) -> dict:
    proc = run(prefix + ["iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "-J"],
               check=False, timeout=seconds + 60)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise BenchError(f"iperf3 -c {server}: {proc.stderr.strip() or proc.stdout[:200]}") \
            from None
    if doc.get("error") or proc.returncode:
        raise BenchError(f"iperf3 -c {server}: {doc.get('error') or proc.returncode}")
    end = doc["end"]
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end.get("sum_sent", {}).get("retransmits", 0)}


def hand_made_pair(res: Resources, net: ipaddress.IPv4Network, mtu: int) -> dict:
    """Two netns on a bridge made with `ip`: what minirun's bridge is compared with."""
    tag = secrets.token_hex(4)
    bridge = f"nbbr{tag}"
    res.links.append(bridge)
    res.made.add(bridge)
    run(["ip", "link", "add", bridge, "mtu", str(mtu), "type", "bridge"])
    run(["ip", "link", "set", bridge, "up"])
    out = {}
    for side, host_id in (("server", 2), ("client", 3)):
        ns, veth = f"netbench-{tag}-{side[0]}", f"nbv{tag}{side[0]}"
        res.ip_netns.append(ns)
        res.made.add(ns)
        run(["ip", "netns", "add", ns])
        res.links.append(veth)
        res.made.add(veth)
        run(["ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name",
             "eth0", "mtu", str(mtu), "netns", ns])
        run(["ip", "link", "set", veth, "master", bridge, "up"])
        ip = str(net.network_address + host_id)
        run(["ip", "-n", ns, "addr", "add", f"{ip}/{net.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        out[side] = (ns, ip)
    return out


def wait_reachable(prefix: list[str], ip: str) -> None:
    """A new bridge port forwards only once it is up; wait for a ping to get through."""
    ping = ["ping"] if shutil.which("ping") else ["/bin/busybox", "ping"]
    for _ in range(50):
        if run(prefix + ping + ["-c", "1", "-W", "1", ip], check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise BenchError(f"{ip} does not answer a ping from {' '.join(prefix) or 'the host'}")


def throughput(res: Resources, nets: Networks, tmp: str, subnet: ipaddress.IPv4Network,
               args: argparse.Namespace, log) -> dict:
    setups = {}
    cids = []
    for i in range(2):
        cid = secrets.token_hex(32)
        res.minirun_cid(cid)
        cids.append((cid, nets.attach(cid, "bridge", name=f"iperf-{i}", hostname=cid[:12])))
    (scid, satt), (ccid, _) = cids
    setups["minirun bridge"] = {
        "server": (["ip", "netns", "exec", f"minirun-{scid[:12]}"], satt.ip),
        "client": ["ip", "netns", "exec", f"minirun-{ccid[:12]}"], "port": IPERF_PORT}
    pair = hand_made_pair(res, subnet, _host_mtu())
    setups["hand-made bridge"] = {
        "server": (["ip", "netns", "exec", pair["server"][0]], pair["server"][1]),
        "client": ["ip", "netns", "exec", pair["client"][0]], "port": IPERF_PORT}
    port = free_port()  # iperf3's default may be taken on the host
    setups["host loopback"] = {"server": ([], "127.0.0.1"), "client": [], "port": port}
    for label, s in setups.items():
        prefix, ip = s["server"]
        start_iperf_server(res, prefix, ip, s["port"],
                           os.path.join(tmp, f"iperf-{label.replace(' ', '-')}.log"))
        if s["client"]:
            wait_reachable(s["client"], ip)
    labels = list(setups)
    samples: dict[str, list[dict]] = {k: [] for k in labels}
    if args.iperf_warmup:
        for label in labels:
            s = setups[label]
            iperf_client(s["client"], s["server"][1], s["port"], args.iperf_warmup)
    for i in range(args.iperf_runs):
        for label in rotated(labels, i):
            s = setups[label]
            r = iperf_client(s["client"], s["server"][1], s["port"], args.iperf_time)
            samples[label].append(r)
            print(f"  run {i + 1}/{args.iperf_runs} {label}: {r['gbps']:.2f} Gbit/s "
                  f"({r['retransmits']} retransmits)", file=log)
    return samples


# --- report -------------------------------------------------------------------------------

ATTACH_ROWS = [
    ("wire", "(a) minirun _wire: netns+veth+addr+route"),
    ("attach", "(b) minirun Networks.attach (+lease)"),
    ("cni", "(c) CNI bridge: netns + ADD"),
    ("cni_add", "    ADD alone (plugin exec)"),
    ("pyroute2_own", "(d) pyroute2, IPRoute(netns=) makes ns"),
    ("pyroute2_msgs", "(e) pyroute2 msgs, minirun's netns"),
]
DETACH_ROWS = [
    ("wire_down", "(a) delete veth + netns"),
    ("detach", "(b) Networks.detach"),
    ("cni_del", "(c) CNI DEL + netns"),
    ("pyroute2_own_down", "(d) pyroute2 delete veth + netns"),
    ("pyroute2_msgs_down", "(e) pyroute2 delete veth + netns"),
]


STEPS = {"lock": "HostLock (flock)", "lease": "lease (SQLite)",
         "bridge_up": "bridge check (_bridge_up)", "wire": "_wire",
         "netns create": "netns create", "veth create": "veth create",
         "veth delete": "veth delete", "netns remove": "netns remove", "rest": "the rest"}


def print_attach(result: dict) -> None:
    s = result["attach"]
    width = 44

    def rows(title: str, keys: list[tuple[str, str]]) -> None:
        print(stats_header(title, width, STATS + ("vs (b)",)))
        base = s.get("attach", {}).get("median")
        for key, label in keys:
            v = s.get(key)
            if not v:
                continue
            ref = base if key in dict(ATTACH_ROWS) else s.get("detach", {}).get("median")
            ratio = f"{v['median'] / ref:8.2f}x" if ref else "-"
            print(stats_row(label, v, width, STATS, 1e3) + f"{ratio:>9}")
            steps = result.get("steps", {}).get(key, {})
            for step, step_title in STEPS.items():
                if step in steps:
                    indent = "        " if step in ("netns create", "veth create") and \
                        "wire" in steps else "      "
                    print(stats_row(indent + step_title, steps[step], width, STATS, 1e3))

    print()
    rows("attach one container (ms)", ATTACH_ROWS)
    print()
    rows("detach it (ms)", DETACH_ROWS)
    first = result["first"]
    print()
    print("first container and last detach (ms, each sample)")
    print("  Networks.attach, making bridge + nft table + ip_forward: "
          + ", ".join(f"{v * 1e3:.1f}" for v in first["attach"]))
    print("  Networks.detach of the last one (bridge, table down):    "
          + ", ".join(f"{v * 1e3:.1f}" for v in first["detach"]))
    print(f"  first CNI ADD (the plugin makes its bridge):             "
          f"{first['cni_add'] * 1e3:.1f}")
    imports = result.get("imports")
    if imports:
        print()
        print("import in a fresh interpreter (ms, median; beyond `python -c pass`)")
        for label, v in imports.items():
            if "over_pass" in v:
                print(f"  {label:<30}{v['wall'] * 1e3:8.1f}{v['over_pass'] * 1e3:+9.1f}")
            else:
                print(f"  {label:<30}{v['cumulative'] * 1e3:8.1f}  (its own cumulative figure)")
    if result.get("socket_open"):
        print()
        print("open + close one rtnetlink handle in-process (ms, median / p90)")
        for label, v in result["socket_open"].items():
            print(f"  {label:<30}{v['median'] * 1e3:8.3f} /{v['p90'] * 1e3:7.3f}")
    goal = s["attach"]["median"] * 1e3
    print()
    print(f"goal: Networks.attach <= {ATTACH_GOAL_MS:g} ms per container: median "
          f"{goal:.2f} ms, p90 {s['attach']['p90'] * 1e3:.2f} ms: "
          + ("met" if goal <= ATTACH_GOAL_MS else "NOT met"))


def print_throughput(result: dict, seconds: int) -> None:
    t = result["throughput"]
    print()
    print(f"iperf3, one TCP stream, {seconds} s a run (Gbit/s)")
    print(f"{'':<22}{'median':>9}{'min':>9}{'max':>9}{'retr.':>9}  runs")
    for label, s in t["summary"].items():
        print(f"{label:<22}{s['median']:9.2f}{s['min']:9.2f}{s['max']:9.2f}"
              f"{s['retransmits']:9d}  " + ", ".join(f"{x:.2f}" for x in s["runs"]))
    ratio = t["ratio_minirun_to_hand_made"]
    print(f"minirun / hand-made bridge: {ratio:.3f}; minirun / loopback: "
          f"{t['ratio_minirun_to_loopback']:.3f}")
    print(f"goal: >= {THROUGHPUT_GOAL:g}x the hand-made bridge: "
          + ("met" if ratio >= THROUGHPUT_GOAL else "NOT met"))


# --- main ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_iteration_args(p, iterations=30, warmup=3)
    p.add_argument("--first-samples", type=int, default=3, metavar="N",
                   help="times the first container (bridge up) and the last detach are "
                   "measured")
    p.add_argument("--settle", type=float, default=0.05, metavar="S",
                   help="pause before each attach, for the kernel to finish tearing down "
                   "the previous netns (0: back to back)")
    p.add_argument("--import-runs", type=int, default=5, metavar="N",
                   help="fresh interpreters per import measured (0: none)")
    p.add_argument("--no-pyroute2", action="store_true", help="leave out (d), (e) and its "
                   "import time")
    p.add_argument("--no-iperf", action="store_true", help="attach only")
    p.add_argument("--iperf-time", type=int, default=5, metavar="S")
    p.add_argument("--iperf-runs", type=int, default=3, metavar="N")
    p.add_argument("--iperf-warmup", type=int, default=1, metavar="S",
                   help="seconds of an uncounted first run per setup (0: none)")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.first_samples < 1 or \
            args.iperf_runs < 1 or args.iperf_time < 1:
        p.error("--iterations, --first-samples, --iperf-runs, --iperf-time must be >= 1")
    return args


def cni_conflist(tmp: str, subnet: ipaddress.IPv4Network) -> dict:
    name = f"mrbench{secrets.token_hex(4)}"  # 15 characters: a link name's limit
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{
        "type": "bridge", "bridge": name, "isGateway": True, "isDefaultGateway": True,
        "ipMasq": False, "hairpinMode": False,
        "ipam": {"type": "host-local", "dataDir": os.path.join(tmp, "cni-ipam"),
                 "ranges": [[{"subnet": str(subnet)}]]}}]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("net_bench: run as root", file=sys.stderr)
        return 2
    log = log_stream(args.json)
    catch_signals(_interrupt)
    before = host_state()
    tmp = tempfile.mkdtemp(prefix="minirun-netbench.", dir=args.tmpdir)
    res = Resources()
    timer = None
    engine = None
    forward_before_cni = None
    result: dict = {}
    try:
        if not os.access(os.path.join(CNI_PLUGIN_DIR, "bridge"), os.X_OK):
            raise BenchError(f"no {CNI_PLUGIN_DIR}/bridge: apt-get install "
                             "containernetworking-plugins")
        use_pyroute2 = not args.no_pyroute2
        if use_pyroute2:
            try:
                import pyroute2  # noqa: F401
            except ImportError:
                print("no pyroute2 in this python: (d) and (e) left out", file=log)
                use_pyroute2 = False
        if not args.no_iperf and not shutil.which("iperf3"):
            raise BenchError("no iperf3: apt-get install iperf3 (or --no-iperf)")

        root = os.path.join(tmp, "root")
        # the engine's own database connection (its pragmas decide what a lease's commit
        # waits for) and its Networks
        engine = Engine(root=root, run_root=os.path.join(tmp, "run"))
        nets = engine.networks
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
            engine.db.execute("PRAGMA synchronous").fetchone()[0], "?")
        journal = engine.db.execute("PRAGMA journal_mode").fetchone()[0]
        res.nets = nets
        res.made |= {nets.table, nets.default_bridge}
        rec = nets.get("bridge")
        fstype = filesystem_type(root)
        print(f"minirun at {checkout_commit()}; root {root} on {fstype} (engine.db: journal "
              f"{journal}, synchronous {sync}); bridge {rec['bridge']} {rec['subnet']}, "
              f"nft table {nets.table}; load average {loadavg()}", file=log)

        first = {"attach": [], "detach": []}
        keep = None
        for i in range(args.first_samples):
            keep = secrets.token_hex(32)
            res.minirun_cid(keep)
            t0 = time.perf_counter()
            nets.attach(keep, "bridge", name="keep", hostname=keep[:12])
            first["attach"].append(time.perf_counter() - t0)
            if i + 1 < args.first_samples:
                t0 = time.perf_counter()
                nets.detach(keep)
                first["detach"].append(time.perf_counter() - t0)
                res.minirun.remove(keep)
        check_wiring(netns.path_for(f"minirun-{keep[:12]}"))

        subnet = free_subnet([ipaddress.IPv4Network(rec["subnet"])])
        conflist = cni_conflist(tmp, subnet)
        res.links.append(conflist["name"])
        res.made.add(conflist["name"])
        timer = StepTimer(nets)
        attacher = Attacher(res, nets, rec, conflist, tmp, use_pyroute2, timer)
        # The plugin (isGateway) switches ip_forward on and never back. minirun's bridge,
        # up since the first attach, has switched it on already (and will put it back);
        # if it has not, the value the plugin would change is noted here.
        forward_before_cni = read_ip_forward()
        first["cni_add"] = attacher.cni_add(check=True)[1]
        version = run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                      check=False).stdout or "?"
        print(f"CNI network {conflist['name']} on {subnet}, bridge plugin {version}", file=log)

        methods = [("wire", attacher.wire), ("attach", attacher.attach),
                   ("cni", attacher.cni_add)]
        if use_pyroute2:
            methods += [("pyroute2_own", attacher.pyroute2_own),
                        ("pyroute2_msgs", attacher.pyroute2_msgs)]
        samples: dict[str, list[float]] = {}
        total = args.warmup + args.iterations
        print(f"attach: {args.warmup} warm-up + {args.iterations} iterations, rotating over "
              f"{', '.join(m for m, _ in methods)}", file=log)
        for i in range(total):
            if i == args.warmup:
                attacher.steps.clear()
            for key, method in rotated(methods, i):
                # a removed netns is torn down by a kernel worker afterwards, under the
                # locks the next attach needs: let it finish, as between two real starts
                time.sleep(args.settle)
                values = method(check=i == 0)  # once each, outside the samples
                if i < args.warmup:
                    continue
                if key == "cni":
                    names = ("cni", "cni_add", "cni_del")
                else:
                    names = (key, {"attach": "detach"}.get(key, f"{key}_down"))
                for name, value in zip(names, values):
                    samples.setdefault(name, []).append(value)
            progress(i, total, log)
        result["attach"] = {k: summary(v, mean=False) for k, v in samples.items()}
        result["steps"] = {key: {label: summary(v, mean=False) for label, v in steps.items()}
                           for key, steps in attacher.steps.items()}
        result["first"] = first
        result["samples"] = samples
        if use_pyroute2 and args.import_runs:
            print(f"import times: {args.import_runs} fresh interpreters each", file=log)
            result["imports"] = import_times(args.import_runs)
        if use_pyroute2:
            result["socket_open"] = socket_open_times(max(args.iterations, 10))
        if not args.no_iperf:
            print(f"iperf3: {args.iperf_runs} runs of {args.iperf_time} s per setup, "
                  "rotating", file=log)
            tsub = free_subnet([ipaddress.IPv4Network(rec["subnet"]), subnet])
            raw = throughput(res, nets, tmp, tsub, args, log)
            summ = {}
            for label, runs in raw.items():
                g = [r["gbps"] for r in runs]
                summ[label] = {"median": statistics.median(g), "min": min(g), "max": max(g),
                               "runs": g, "retransmits": sum(r["retransmits"] for r in runs)}
            result["throughput"] = {
                "summary": summ, "samples": raw,
                "ratio_minirun_to_hand_made": summ["minirun bridge"]["median"]
                / summ["hand-made bridge"]["median"],
                "ratio_minirun_to_loopback": summ["minirun bridge"]["median"]
                / summ["host loopback"]["median"]}
        result["config"] = {
            "iterations": args.iterations, "warmup": args.warmup,
            "iperf": {"time": args.iperf_time, "runs": args.iperf_runs},
            "bridge": rec["bridge"], "subnet": rec["subnet"], "nft_table": nets.table,
            "root_fstype": fstype, "sqlite": {"journal_mode": journal, "synchronous": sync},
            "settle": args.settle,
            "cni_conflist": conflist, "commit": checkout_commit(),
            "kernel": os.uname().release, "cpus": os.cpu_count(), "loadavg_end": loadavg()}
        if args.json != "-":
            print_attach(result)
            if "throughput" in result:
                print_throughput(result, args.iperf_time)
            print(f"\nload average at the end {loadavg()}")
        return 0
    except BenchError as e:
        print(f"net_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnet_bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        if os.getpid() != _MAIN_PID:
            os._exit(1)  # never clean up from a forked child: the resources are the parent's
        ignore_signals()
        if timer is not None:
            timer.restore()
        problems = res.cleanup()
        if forward_before_cni == "0":
            problems += restore_forwarding()
        if engine is not None:
            engine.db.close()
        remove_tree(tmp)
        left, diff = wait_host_same(res, before)
        for p in problems:
            print(f"net_bench: cleanup: {p}", file=sys.stderr)
        if left:
            print("net_bench: left on the host by this run: " + ", ".join(left),
                  file=sys.stderr)
        if diff:
            print(("net_bench: " if left else "nothing of this run's is left, but ") +
                  "the host differs from before the run (other work on the machine?): " +
                  "; ".join(diff), file=sys.stderr if left else log)
        elif args.json != "-":
            print("host as before: links, netns, nft tables and ip_forward unchanged", file=log)
        result["host_after"] = {"left_by_this_run": left, "differences": diff,
                                "cleanup_problems": problems}
        if result.get("attach"):
            write_json(result, args.json)


def restore_forwarding() -> list[str]:
    """ip_forward back to 0 after the CNI plugin switched it on, unless a minirun bridge
    of any root is up (minirun then owns the saved value and puts it back itself)."""
    if os.path.exists(os.path.join(HOST_STATE, "ip_forward.saved")):
        return []
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("0")
    except OSError as e:
        return [f"ip_forward: {e}"]
    return []


def wait_host_same(res: Resources, before: dict,
                   timeout: float = 5.0) -> tuple[list[str], list[str]]:
    """(what this run made that is still there, how the host differs from before). Links
    of a removed netns go away asynchronously in the kernel: give them a moment."""
    deadline = time.monotonic() + timeout
    while True:
        left = res.leftovers()
        diff = host_differences(before, host_state())
        if not (left or diff) or time.monotonic() > deadline:
            return left, diff
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
