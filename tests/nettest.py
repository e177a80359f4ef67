"""The host's network state, read through pyroute2 (an independent witness of what
minirun's own netlink code did), nft and /proc: compared before and after the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from pyroute2 import IPRoute

SYSCTLS = ["net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
           "net/ipv4/conf/all/forwarding"]


def host_network_state() -> dict:
    """Links, addresses, routes, nftables ruleset, sysctls, named netns and nsfs mounts."""
    with IPRoute() as ipr:
        names = {}
        links = []
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            names[link["index"]] = name
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            links.append((name, kind, bool(link["flags"] & 1), link.get_attr("IFLA_MTU"),
                          link.get_attr("IFLA_MASTER")))
        addrs = sorted((names.get(a["index"]), a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                       for a in ipr.get_addr())
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family, table=254):
                routes.append((family, r.get_attr("RTA_DST"), r["dst_len"],
                               r.get_attr("RTA_GATEWAY"), names.get(r.get_attr("RTA_OIF"))))
    sysctls = {}
    for name in SYSCTLS:
        with open(f"/proc/sys/{name}") as f:
            sysctls[name] = f.read().strip()
    netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    with open("/proc/self/mountinfo") as f:
        nsfs = sorted(line.split()[4] for line in f if " - nsfs " in line)
    # stateless (-s): without the packet counters, which the traffic of anything else on
    # the host moves (the CNI portmap plugin's chains count every local packet)
    ruleset = subprocess.run(["nft", "-s", "list", "ruleset"], capture_output=True,
                             text=True, check=True).stdout
    return {"links": sorted(links, key=str), "addresses": addrs, "routes": sorted(routes, key=str),
            "sysctls": sysctls, "netns": netns, "nsfs mounts": nsfs, "nftables": ruleset}


def differences(before: dict, after: dict) -> list[str]:
    out = []
    for key in before:
        if before[key] != after[key]:
            if isinstance(before[key], list):
                gone = [x for x in before[key] if x not in after[key]]
                new = [x for x in after[key] if x not in before[key]]
                out.append(f"{key}: gone {gone}, new {new}")
            elif isinstance(before[key], dict):
                for name in sorted(set(before[key]) | set(after[key])):
                    if before[key].get(name) != after[key].get(name):
                        out.append(f"{key} {name}: {before[key].get(name)!r} -> "
                                   f"{after[key].get(name)!r}")
            else:
                out.append(f"{key}: {before[key]!r} -> {after[key]!r}")
    return out


def wait_until_same(before: dict, timeout: float = 5.0) -> list[str]:
    """Link deletion finishes asynchronously in the kernel: give it a moment."""
    deadline = time.monotonic() + timeout
    while True:
        diff = differences(before, host_network_state())
        if not diff or time.monotonic() > deadline:
            return diff
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
