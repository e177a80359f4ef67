"""The network namespace [redes]."""

from __future__ import annotations

import os

from . import CannotRun

NAME = "network"
TITLE = "network: the bridge connects, user networks separate, none is only lo, host is the host's"
EXPLAIN = """
Each container gets its own network namespace: its own links, addresses, routes and
firewall. On the default bridge network a veth pair joins it to a bridge on the host, so
two containers there reach each other. Two user networks have two bridges, and the host's
firewall (minirun's nft table) drops traffic between them. `--network none` leaves only the
loopback link; `--network host` does not isolate at all: the container sees (and, with
NET_ADMIN, could change) the host's links. The lab sends packets only between containers
it made (one ping each way it tests), never outside.
"""


def run(lab) -> None:
    lab.say("Two containers on the default bridge:")
    a = lab.start("busybox", "sleep", "300", name="a")
    ip_a = _ip(lab, a)
    proc = lab.run("busybox", "ping", "-c", "1", "-W", "2", ip_a)
    lab.observe("bridge_ping_status", proc.returncode)
    lab.expect(proc.returncode == 0, "containers on one bridge reach each other",
               f"ping {ip_a}")

    lab.say("Two user networks, a container on each:")
    net1, net2 = lab.network("one"), lab.network("two")
    c = lab.start("--network", net1, "busybox", "sleep", "300", name="c")
    ip_c = _ip(lab, c)
    proc = lab.run("--network", net2, "busybox", "ping", "-c", "1", "-W", "2", ip_c)
    lab.observe("cross_network_ping_status", proc.returncode)
    lab.expect(proc.returncode != 0, "containers on two user networks do not",
               f"ping {ip_c} from {net2}")

    lab.say("--network none and --network host: the links each sees:")
    proc = lab.run("--network", "none", "busybox", "ls", "/sys/class/net")
    none_links = proc.stdout.split()
    lab.observe("links[none]", none_links)
    lab.expect(none_links == ["lo"], "--network none has only lo")
    host_links = set(os.listdir("/sys/class/net"))
    proc = lab.run("--network", "host", "busybox", "ls", "/sys/class/net")
    seen = set(proc.stdout.split())
    if not seen:
        raise CannotRun(f"--network host failed: {proc.stderr.strip()}")
    stable = {n for n in host_links if not n.startswith(("mr", "veth"))}  # others come and go
    lab.observe("links[host]", sorted(seen))
    lab.expect(stable <= seen and len(seen) > 1, "--network host sees the host's links",
               f"{len(seen)} links")


def _ip(lab, container: str) -> str:
    proc = lab.minirun("inspect", "-f",
                       "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container)
    ip = proc.stdout.strip()
    if not ip:
        raise CannotRun(f"no address for {container}: {proc.stderr.strip()}")
    return ip
