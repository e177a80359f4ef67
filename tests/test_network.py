"""Bridge networking end to end: `minirun run` on the default bridge and on user networks,
published ports, /etc/hosts and resolv.conf, the network modes, concurrency, crashes and
bad input; and after all of it the host's links, addresses, routes, nftables ruleset,
sysctls and netns exactly as they were.

Traffic goes only to 127.0.0.1 and to container addresses on the test's own bridges.
Masquerade (traffic to the outside) is checked by reading the ruleset, never by sending.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from enginetest import EngineEnv, engine  # noqa: F401
from nettest import differences, free_port, host_network_state, wait_until_same
from ocitest import needs_root

pytestmark = [needs_root, pytest.mark.root]

HTTPD = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && " \
        "exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module")
def host_before():
    return host_network_state()


@pytest.fixture(scope="module")
def env(host_before, engine):  # noqa: F811
    yield engine
    for cid in engine("ps", "-a", "-q").stdout.split():
        engine("rm", "-f", cid)
    for name in engine("network", "ls", "-q").stdout.split():
        if name != "bridge":
            engine("network", "rm", name)
    # minirun leaves ip_forward on once it needed it: the test puts back what it found
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write(host_before["sysctls"]["net/ipv4/ip_forward"])
    diff = wait_until_same(host_before)
    assert not diff, f"the host's network changed: {diff}"


def run_ok(env, *args, timeout=60) -> str:
    proc = env(*args, timeout=timeout)
    assert proc.returncode == 0, f"minirun {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def ip_of(env, name: str) -> str:
    data = json.loads(run_ok(env, "inspect", name))[0]
    return data["NetworkSettings"]["IPAddress"]


def sh(env, name: str, script: str, timeout=30) -> subprocess.CompletedProcess:
    return env("exec", name, "sh", "-c", script, timeout=timeout)


def http_get(env, name: str, host: str, timeout: int = 5) -> str:
    """The body of http://host/ fetched from inside a container (busybox's static wget
    crashes in getaddrinfo on Debian 12, so nc speaks HTTP/1.0)."""
    proc = sh(env, name, f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w {timeout} {host} 80')
    head, _, body = proc.stdout.partition("\n\n")  # text mode made \r\n \n
    return body if head.startswith("HTTP/1.") else ""


def wait_http(url: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def bridge_of(env, network: str = "bridge") -> str:
    return json.loads(run_ok(env, "network", "inspect", network))[0]["Options"]["bridge"]


def nft_table(env) -> str:
    name = "minirun_" + bridge_of(env)[2:10]
    proc = subprocess.run(["nft", "list", "table", "ip", name], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def test_default_bridge_two_containers_reach_each_other(env):
    run_ok(env, "run", "-d", "--name", "web1", "busybox", "sh", "-c", HTTPD)
    run_ok(env, "run", "-d", "--name", "cli1", "busybox", "sleep", "300")
    try:
        web, cli = ip_of(env, "web1"), ip_of(env, "cli1")
        assert web != cli and web.split(".")[:2] == cli.split(".")[:2]
        inside = sh(env, "cli1", "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0; "
                    "ip route; cat /sys/class/net/eth0/mtu")
        assert f"inet {cli}/16" in inside.stdout
        # the MAC follows the address (as docker's), so a reused address keeps ARP right
        mac = json.loads(run_ok(env, "inspect", "cli1"))[0]["NetworkSettings"]["Networks"][
            "bridge"]["MacAddress"]
        assert mac == "02:6d:" + ":".join(f"{int(b):02x}" for b in cli.split("."))
        assert inside.stdout.split()[0] == mac
        gateway = json.loads(run_ok(env, "inspect", "cli1"))[0]["NetworkSettings"]["Gateway"]
        assert f"default via {gateway} dev eth0" in inside.stdout
        with open("/sys/class/net/eth0/mtu") as f:  # the host's default route device
            assert inside.stdout.split()[-1] == f.read().strip()
        ping = sh(env, "cli1", f"ping -c 1 -W 3 {web}")
        assert ping.returncode == 0 and "1 packets received" in ping.stdout, ping.stdout
        page = http_get(env, "cli1", web)
        assert page == "hello from " + json.loads(run_ok(env, "inspect", "web1"))[0][
            "Id"][:12] + "\n"
        # outbound NAT exists for the subnet, checked by reading the rules
        subnet = json.loads(run_ok(env, "network", "inspect", "bridge"))[0]["IPAM"][
            "Config"][0]["Subnet"]
        assert f'ip saddr {subnet} oifname != "{bridge_of(env)}" masquerade' in nft_table(env)
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            assert f.read().strip() == "1"
    finally:
        env("rm", "-f", "web1", "cli1")
    assert nft_table(env) == "", "the table outlived the last container"
    # left on with the last container gone (as docker and netavark leave it): another
    # runtime's containers may need it by then
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == "1"


def test_published_port_on_localhost_and_its_rule_goes_with_rm(env):
    port = free_port()
    run_ok(env, "run", "-d", "--name", "pub", "-p", f"127.0.0.1:{port}:80", "busybox",
           "sh", "-c", HTTPD)
    try:
        assert wait_http(f"http://127.0.0.1:{port}/").startswith("hello from ")
        settings = json.loads(run_ok(env, "inspect", "pub"))[0]["NetworkSettings"]
        assert settings["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
        assert f"ip daddr 127.0.0.1 tcp dport {port} dnat to {settings['IPAddress']}:80" in \
            nft_table(env)
    finally:
        run_ok(env, "rm", "-f", "pub")
    assert f"dport {port}" not in subprocess.run(["nft", "list", "ruleset"],
                                                 capture_output=True, text=True).stdout
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_random_host_port_and_a_second_container_keeps_its_rule(env):
    run_ok(env, "run", "-d", "--name", "r1", "-p", "80", "busybox", "sh", "-c", HTTPD)
    run_ok(env, "run", "-d", "--name", "r2", "-p", "127.0.0.1::80", "busybox", "sh", "-c",
           HTTPD)
    try:
        ports = {}
        for name in ("r1", "r2"):
            binding = json.loads(run_ok(env, "inspect", name))[0]["NetworkSettings"][
                "Ports"]["80/tcp"][0]
            ports[name] = int(binding["HostPort"])
            assert ports[name] > 0
        assert ports["r1"] != ports["r2"]
        r1_id = json.loads(run_ok(env, "inspect", "r1"))[0]["Id"][:12]
        # published on every address: 127.0.0.1 works too
        assert wait_http(f"http://127.0.0.1:{ports['r1']}/") == f"hello from {r1_id}\n"
        run_ok(env, "rm", "-f", "r1")
        assert wait_http(f"http://127.0.0.1:{ports['r2']}/").startswith("hello from ")
    finally:
        env("rm", "-f", "r1", "r2")


def test_user_network_names_resolve_and_networks_are_isolated(env):
    run_ok(env, "network", "create", "--subnet", "10.211.7.0/24", "front")
    run_ok(env, "network", "create", "back")
    try:
        run_ok(env, "run", "-d", "--name", "fa", "--network", "front", "busybox", "sh", "-c",
               HTTPD)
        run_ok(env, "run", "-d", "--name", "fb", "--network", "front", "busybox", "sleep",
               "300")
        run_ok(env, "run", "-d", "--name", "ba", "--network", "back", "busybox", "sleep", "300")
        fa, ba = ip_of(env, "fa"), ip_of(env, "ba")
        assert fa.startswith("10.211.7.")
        # by name, both ways: fa was there before fb, and learns of it afterwards
        assert http_get(env, "fb", "fa").startswith("hello from")
        assert sh(env, "fa", "ping -c 1 -W 3 fb").returncode == 0
        # another network cannot reach them, by address, either way
        assert sh(env, "ba", f"ping -c 1 -W 2 {fa}").returncode != 0
        assert http_get(env, "ba", fa, timeout=2) == ""
        assert sh(env, "fa", f"ping -c 1 -W 2 {ba}").returncode != 0
        assert sh(env, "ba", "ping -c 1 -W 1 fa").returncode != 0  # and not by name
        # a container that leaves is forgotten by the others
        run_ok(env, "rm", "-f", "fb")
        names = [w for line in sh(env, "fa", "cat /etc/hosts").stdout.splitlines()
                 for w in line.split()[1:]]
        assert "fa" in names and "fb" not in names
        listing = run_ok(env, "network", "ls")
        assert "front" in listing and "back" in listing and "10.211.7.0/24" in listing
        proc = env("network", "rm", "front")
        assert proc.returncode == 1 and "in use" in one_line_error(proc)
    finally:
        env("rm", "-f", "fa", "fb", "ba")
        env("network", "rm", "front", "back")
    assert "front" not in run_ok(env, "network", "ls", "-q").split()


def test_hosts_and_resolv_conf(env):
    out = run_ok(env, "run", "--rm", "-h", "myhost", "--name", "named", "--dns", "192.0.2.53",
                 "--dns-search", "example.test", "--add-host", "db.local:10.9.8.7",
                 "busybox", "sh", "-c",
                 "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; hostname")
    resolv, hosts, hostname = out.split("---\n")
    assert "nameserver 192.0.2.53" in resolv.splitlines()
    assert "search example.test" in resolv.splitlines()
    assert not [ln for ln in resolv.splitlines() if ln.startswith("nameserver 127.")]
    lines = [ln.split() for ln in hosts.splitlines()]
    assert ["10.9.8.7", "db.local"] in lines
    mine = [ln for ln in lines if "myhost" in ln]
    assert mine and mine[0][1:] == ["myhost", "named"]
    assert hostname.strip() == "myhost"


def test_resolv_conf_skips_the_hosts_loopback_resolvers(env):
    out = run_ok(env, "run", "--rm", "busybox", "cat", "/etc/resolv.conf")
    with open("/etc/resolv.conf") as f:
        host = [ln.split()[1] for ln in f if ln.startswith("nameserver")]
    inside = [ln.split()[1] for ln in out.splitlines() if ln.startswith("nameserver")]
    assert inside == [a for a in host if not a.startswith("127.") and a != "::1"]


def test_modes_host_none_and_container(env):
    host_links = sorted(os.listdir("/sys/class/net"))
    out = run_ok(env, "run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net")
    assert sorted(out.split()) == host_links
    out = run_ok(env, "run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net")
    assert out.split() == ["lo"]
    run_ok(env, "run", "-d", "--name", "owner", "busybox", "sh", "-c", HTTPD)
    try:
        owner_ip = ip_of(env, "owner")
        out = run_ok(env, "run", "--rm", "--network", "container:owner", "busybox", "sh", "-c",
                     "ip -o -4 addr show eth0; "
                     'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 127.0.0.1 80')
        assert f"inet {owner_ip}/" in out and "hello from" in out
        proc = env("run", "--rm", "--network", "container:nosuch", "busybox", "true")
        assert proc.returncode == 125 and "no such container" in one_line_error(proc)
    finally:
        env("rm", "-f", "owner")


def test_twenty_concurrent_runs_get_twenty_addresses(env):
    procs = [subprocess.Popen([sys.executable, "-m", "minirun.cli", "run", "-d", "--name",
                               f"c{i}", "busybox", "sleep", "300"], env=env.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(20)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
        ips = [ip_of(env, f"c{i}") for i in range(20)]
        assert len(set(ips)) == 20 and all(ips)
        inside = sh(env, "c0", "ip -o -4 addr show eth0").stdout
        assert f"inet {ips[0]}/" in inside
        assert sh(env, "c0", f"ping -c 1 -W 3 {ips[19]}").returncode == 0
    finally:
        env("rm", "-f", *[f"c{i}" for i in range(20)], timeout=300)


def test_fifty_run_rm_cycles_leave_the_host_as_it_was(env, host_before):
    for i in range(50):
        args = ["-p", f"127.0.0.1:{free_port()}:80"] if i % 2 else []
        run_ok(env, "run", "--rm", *args, "busybox", "true")
    diff = wait_until_same(host_before)
    assert not diff, f"after 50 cycles: {diff}"


def test_a_killed_run_mid_setup_is_cleaned_by_rm(env, host_before):
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    proc = subprocess.Popen([sys.executable, "-m", "minirun.cli", "run", "--name", "killed",
                             "busybox", "sleep", "300"], env=env.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (set(os.listdir("/run/netns")) - before if os.path.isdir("/run/netns")
                   else set()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert "killed" in run_ok(env, "ps", "-a")
    run_ok(env, "rm", "-f", "killed")
    diff = wait_until_same(host_before)
    assert not diff, f"after a killed run and rm: {diff}"


def test_network_prune_cleans_an_endpoint_whose_container_record_is_gone(env, host_before):
    run_ok(env, "run", "-d", "--name", "orphan", "busybox", "sleep", "300")
    data = json.loads(run_ok(env, "inspect", "orphan"))[0]
    cid, pid = data["Id"], data["State"]["Pid"]
    # what a crash between the network and the record's deletion leaves behind (the record
    # goes first: a container that exits with its record there has its network released)
    import sqlite3
    db = sqlite3.connect(os.path.join(env.root, "engine.db"))
    with db:
        db.execute("DELETE FROM containers WHERE id = ?", (cid,))
    db.close()
    os.kill(pid, signal.SIGKILL)
    from minirun.image.store import ImageStore
    ImageStore(env.root).release(cid)
    assert f"mr{cid[:12]}" in os.listdir("/sys/class/net")
    proc = env("network", "prune", "-f")
    assert proc.returncode == 0 and cid[:12] in proc.stderr
    diff = same_here(host_before, {bridge_of(env)[2:10], cid[:12]})
    assert not diff, f"after network prune: {diff}"


def host_objects(cid: str) -> dict:
    """What the host holds for a container, read with pyroute2 and /proc: its veth, its
    named netns and that netns' nsfs mount."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    netns = f"/run/netns/minirun-{cid[:12]}"
    return {"veth": f"mr{cid[:12]}" in links, "netns": os.path.exists(netns),
            "nsfs mount": f" {netns} " in mounts}


def released(cid: str, timeout: float = 5.0) -> bool:
    """Link deletion finishes asynchronously in the kernel: give it a moment."""
    deadline = time.monotonic() + timeout
    while any(host_objects(cid).values()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def link_names() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def inside_eth0(env, name: str) -> tuple[str, str]:
    """(address/prefix, MAC) of eth0, read inside the container with `ip addr`."""
    out = sh(env, name, "ip -o addr show eth0").stdout
    inet = out.split(" inet ")[1].split()[0]
    mac = sh(env, name, "ip -o link show eth0").stdout.split("link/ether ")[1].split()[0]
    return inet, mac


MINIRUN_NAME = re.compile(r"\b(?:mr[0-9a-f]{8,14}|minirun[-_][0-9a-f]{8,12})")


def this_root_only(state: dict, mine: set[str]) -> dict:
    """The host's state without the objects of other minirun roots (other suites run
    their containers on this host meanwhile): an entry naming a minirun link, netns or
    table is kept only if that name holds one of `mine` (ids, bridge and table tags)."""
    def keep(text: str) -> bool:
        found = MINIRUN_NAME.findall(text)
        return not found or any(m in f for f in found for m in mine)

    out = {}
    for key, value in state.items():
        if key == "nftables":
            value = "".join(t for t in re.split(r"(?m)^(?=table )", value) if keep(t))
        elif isinstance(value, list):
            value = [x for x in value if keep(str(x))]
        out[key] = value
    return out


def same_here(before: dict, mine: set[str], timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        diff = differences(this_root_only(before, mine),
                           this_root_only(host_network_state(), mine))
        if not diff or time.monotonic() > deadline:
            return diff
        time.sleep(0.1)


def wait_state(env, name: str, state: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = json.loads(run_ok(env, "inspect", name))[0]
        if data["State"]["Status"] == state:
            return data
        assert time.monotonic() < deadline, f"{name} is {data['State']['Status']}"
        time.sleep(0.1)


def test_stop_releases_the_host_objects_and_start_wires_them_again(env, host_before):
    port = free_port()
    run_ok(env, "run", "-d", "--name", "stopme", "-p", f"127.0.0.1:{port}:80", "busybox",
           "sh", "-c", HTTPD)
    try:
        cid = json.loads(run_ok(env, "inspect", "stopme"))[0]["Id"]
        bridge = bridge_of(env)
        assert wait_http(f"http://127.0.0.1:{port}/").startswith("hello from ")
        ip = ip_of(env, "stopme")
        inet, mac = inside_eth0(env, "stopme")
        assert inet.startswith(ip + "/")
        assert all(host_objects(cid).values()) and bridge in link_names()
        run_ok(env, "stop", "-t", "1", "stopme")
        # nothing of it is left on the host: no veth, netns or port rule; the bridge stays
        # with its lease (its route keeps the subnet from other roots and runtimes)
        assert released(cid), host_objects(cid)
        assert bridge in link_names()
        table = nft_table(env)
        assert f"dport {port}" not in table and f'oifname != "{bridge}" masquerade' in table
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        # the lease, the MAC and the port stay: start gives them back
        assert ip_of(env, "stopme") == ip
        run_ok(env, "start", "stopme")
        assert inside_eth0(env, "stopme") == (inet, mac)
        assert wait_http(f"http://127.0.0.1:{port}/").startswith("hello from ")
        assert f"dport {port} dnat to {ip}:80" in nft_table(env)
        run_ok(env, "stop", "-t", "1", "stopme")
        assert released(cid), host_objects(cid)
    finally:
        env("rm", "-f", "stopme")
    # rm of the stopped container: the bridge and the table go, the host is as it was
    assert bridge not in link_names() and nft_table(env) == ""
    diff = same_here(host_before, {bridge[2:10], cid[:12]})
    assert not diff, f"after stop and rm: {diff}"


def test_stop_keeps_the_bridge_for_the_others_and_drops_only_its_rule(env):
    p1, p2 = free_port(), free_port()
    run_ok(env, "run", "-d", "--name", "st1", "-p", f"127.0.0.1:{p1}:80", "busybox", "sh",
           "-c", HTTPD)
    run_ok(env, "run", "-d", "--name", "st2", "-p", f"127.0.0.1:{p2}:80", "busybox", "sh",
           "-c", HTTPD)
    try:
        cid = json.loads(run_ok(env, "inspect", "st1"))[0]["Id"]
        run_ok(env, "stop", "-t", "1", "st1")
        assert released(cid), host_objects(cid)
        assert bridge_of(env) in link_names()
        table = nft_table(env)
        assert f"dport {p2} " in table and f"dport {p1} " not in table
        assert wait_http(f"http://127.0.0.1:{p2}/").startswith("hello from ")
        # its address stays leased while it is stopped: a new container gets another
        run_ok(env, "run", "-d", "--name", "st3", "busybox", "sleep", "300")
        assert ip_of(env, "st3") not in (ip_of(env, "st1"), ip_of(env, "st2"))
    finally:
        env("rm", "-f", "st1", "st2", "st3")


def test_a_foreign_link_on_the_bridge_name_is_refused_and_left_alone(env):
    bridge = bridge_of(env)
    # a bridge of that name, not minirun's (no alias of ours); no container of this root
    # runs, so minirun's bridge is not there
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        proc = env("run", "-d", "--name", "squat", "busybox", "sleep", "300")
        assert proc.returncode == 125
        assert f"a link named {bridge} exists and is not minirun's bridge" in \
            one_line_error(proc)
        assert bridge in link_names(), "minirun deleted a link that is not its own"
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False)
    cid = run_ok(env, "run", "-d", "--name", "squat", "busybox", "sleep", "300").strip()
    try:
        ip = ip_of(env, "squat")
        run_ok(env, "stop", "-t", "1", "squat")
        assert released(cid), host_objects(cid)
        # a reboot takes the bridge; something else takes its name meanwhile
        subprocess.run(["ip", "link", "del", bridge], check=True)
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        try:
            proc = env("start", "squat")
            assert proc.returncode != 0
            assert f"a link named {bridge} exists and is not minirun's bridge" in \
                one_line_error(proc)
            assert bridge in link_names(), "minirun deleted a link that is not its own"
            assert not any(host_objects(cid).values()), host_objects(cid)
        finally:
            subprocess.run(["ip", "link", "del", bridge], check=False)
        run_ok(env, "start", "squat")
        assert f"inet {ip}/" in sh(env, "squat", "ip -o -4 addr show eth0").stdout
    finally:
        env("rm", "-f", "squat")


def test_a_command_that_exits_releases_the_host_objects(env, host_before):
    cid = run_ok(env, "run", "-d", "--name", "quick", "busybox", "true").strip()
    try:
        wait_state(env, "quick", "exited")
        assert released(cid), host_objects(cid)
        # foreground, without --rm: the record stays, the host objects go
        run_ok(env, "run", "--name", "fore", "busybox", "true")
        fore = json.loads(run_ok(env, "inspect", "fore"))[0]["Id"]
        assert released(fore), host_objects(fore)
        mine = {bridge_of(env)[2:10], cid[:12], fore[:12]}
        ip = ip_of(env, "fore")
        run_ok(env, "start", "quick", "fore")
        for name in ("quick", "fore"):
            wait_state(env, name, "exited")
        assert ip_of(env, "fore") == ip
        assert released(cid) and released(fore)
    finally:
        env("rm", "-f", "quick", "fore")
    diff = same_here(host_before, mine)
    assert not diff, f"after rm: {diff}"


def test_a_restart_policy_container_restarts_with_its_address(env):
    # each run appends its address to a file of its rootfs; the third stays up
    run_ok(env, "run", "-d", "--name", "again", "--restart", "always", "busybox", "sh", "-c",
           "ip -o -4 addr show eth0 >> /addrs; [ $(wc -l < /addrs) -ge 3 ] && "
           "exec sleep 300; exit 1")
    try:
        deadline = time.monotonic() + 30
        while json.loads(run_ok(env, "inspect", "again"))[0]["RestartCount"] < 2:
            assert time.monotonic() < deadline, "no second restart"
            time.sleep(0.1)
        wait_state(env, "again", "running")
        ip = ip_of(env, "again")
        lines = sh(env, "again", "cat /addrs").stdout.splitlines()
        assert len(lines) >= 3 and all(f"inet {ip}/" in ln for ln in lines), lines
    finally:
        env("rm", "-f", "again")


def test_container_network_mode_follows_its_owner(env):
    run_ok(env, "run", "-d", "--name", "own", "busybox", "sh", "-c", HTTPD)
    try:
        run_ok(env, "run", "-d", "--name", "joiner", "--network", "container:own", "busybox",
               "sleep", "300")
        owner_ip = ip_of(env, "own")
        assert f"inet {owner_ip}/" in sh(env, "joiner", "ip -o -4 addr show eth0").stdout
        # the owner stops: its netns loses eth0; the joiner runs on with only lo (docker's)
        run_ok(env, "stop", "-t", "1", "own")
        assert sh(env, "joiner", "ls /sys/class/net").stdout.split() == ["lo"]
        run_ok(env, "stop", "-t", "1", "joiner")
        proc = env("start", "joiner")
        assert proc.returncode != 0
        assert "joins the network of own, which is not running" in one_line_error(proc)
        assert json.loads(run_ok(env, "inspect", "joiner"))[0]["State"]["Status"] == "exited"
        run_ok(env, "start", "own")
        run_ok(env, "start", "joiner")
        out = sh(env, "joiner", "ip -o -4 addr show eth0; "
                 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 127.0.0.1 80').stdout
        assert f"inet {owner_ip}/" in out and "hello from" in out
    finally:
        env("rm", "-f", "joiner", "own")


@pytest.mark.parametrize("subnet, why", [
    ("10.0.0.0/33", "invalid subnet"),
    ("banana", "invalid subnet"),
    ("10.211.8.1/24", "invalid subnet"),  # host bits set
    ("127.0.0.0/16", "not usable"),
])
def test_bad_subnets(env, subnet, why):
    proc = env("network", "create", "--subnet", subnet, "badnet")
    assert proc.returncode == 1 and why in one_line_error(proc)
    assert "badnet" not in run_ok(env, "network", "ls", "-q").split()


def test_overlapping_subnets_are_refused(env):
    run_ok(env, "network", "create", "--subnet", "10.212.0.0/24", "first")
    try:
        proc = env("network", "create", "--subnet", "10.212.0.128/25", "second")
        assert proc.returncode == 1 and "overlaps network first" in one_line_error(proc)
        with open("/proc/net/route") as f:
            dev = next(ln.split()[0] for ln in f.read().splitlines()[1:]
                       if ln.split()[1] != "00000000")
        host_route = subprocess.run(["ip", "-4", "-o", "route", "show", "dev", dev,
                                     "scope", "link"], capture_output=True,
                                    text=True).stdout.split()[0]
        proc = env("network", "create", "--subnet", host_route, "clash")
        assert proc.returncode == 1 and "overlaps the host route" in one_line_error(proc)
        assert set(run_ok(env, "network", "ls", "-q").split()) == {"bridge", "first"}
    finally:
        env("network", "rm", "first")


def test_bad_run_network_input_leaves_nothing(env, host_before):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        cases = [
            (["--network", "nosuchnet"], "no such network: nosuchnet"),
            (["-p", f"127.0.0.1:{port}:80"], "already in use"),
            (["-p", "99999:80"], "invalid port"),
            (["-p", "1.2.3:80:80"], "invalid IPv4 host address"),
            (["-p", "80", "--network", "none"], "need a bridge"),
            (["--add-host", "nocolon"], "expected HOST:IP"),
            (["--dns", "not-an-ip"], "not an IP address"),
        ]
        for args, why in cases:
            proc = env("run", "--rm", *args, "busybox", "true")
            assert proc.returncode == 125, (args, proc.stderr)
            assert why in one_line_error(proc), (args, proc.stderr)
    finally:
        held.close()
    assert run_ok(env, "ps", "-a", "-q").split() == []
    diff = wait_until_same(host_before)
    assert not diff, f"after refused runs: {diff}"


def test_same_host_port_twice_is_refused(env):
    port = free_port()
    run_ok(env, "run", "-d", "--name", "p1", "-p", f"{port}:80", "busybox", "sleep", "300")
    try:
        proc = env("run", "-d", "--name", "p2", "-p", f"127.0.0.1:{port}:80", "busybox",
                   "sleep", "300")
        assert proc.returncode == 125 and "already published" in one_line_error(proc)
        assert "p2" not in run_ok(env, "ps", "-a")
    finally:
        env("rm", "-f", "p1", "p2")


def test_the_default_network_cannot_be_removed(env):
    proc = env("network", "rm", "bridge")
    assert proc.returncode == 1 and "cannot be removed" in one_line_error(proc)


def test_internal_network_has_no_nat(env):
    run_ok(env, "network", "create", "--internal", "--subnet", "10.213.0.0/24", "inner")
    try:
        run_ok(env, "run", "-d", "--name", "in1", "--network", "inner", "busybox", "sleep",
               "300")
        run_ok(env, "run", "-d", "--name", "in2", "--network", "inner", "busybox", "sleep",
               "300")
        assert sh(env, "in1", "ping -c 1 -W 3 in2").returncode == 0
        table = nft_table(env) or subprocess.run(["nft", "list", "ruleset"],
                                                 capture_output=True, text=True).stdout
        assert "10.213.0.0/24" in table
        assert "ip saddr 10.213.0.0/24 oifname" not in table  # no masquerade
    finally:
        env("rm", "-f", "in1", "in2")
        env("network", "rm", "inner")


def _host_addresses() -> list[str]:
    """The host's global IPv4 addresses outside minirun's bridges (as `ip` sees them)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=True).stdout
    return [a["local"] for link in json.loads(out) if not link["ifname"].startswith("mr")
            for a in link.get("addr_info", [])]


def test_internal_network_reaches_nothing_outside_itself(env):
    """No default route inside, and the host's input from the bridge dropped: a server the
    test runs on the host (on the bridge's own address and on the host's other addresses)
    is out of reach, while the network's containers still talk to each other."""
    run_ok(env, "network", "create", "--internal", "--subnet", "10.215.0.0/24", "sealed")
    listeners = []
    try:
        run_ok(env, "run", "-d", "--name", "sealed1", "--network", "sealed", "busybox",
               "sleep", "300")
        run_ok(env, "run", "-d", "--name", "sealed2", "--network", "sealed", "busybox", "sh",
               "-c", "while true; do nc -l -p 7000 -e echo peer; done")
        gateway = json.loads(run_ok(env, "network", "inspect", "sealed"))[0]["IPAM"][
            "Config"][0]["Gateway"]
        for addr in [gateway] + _host_addresses():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((addr, 0))
            s.listen()
            s.setblocking(False)
            listeners.append(s)
        tries = "; ".join(f"nc -w 3 {a} {p} </dev/null && echo reached {a} || echo blocked {a}"
                          for a, p in (s.getsockname() for s in listeners))
        inside = sh(env, "sealed1", f"ip route; {tries}").stdout
        assert "default" not in inside and "10.215.0.0/24 dev eth0" in inside, inside
        for s in listeners:
            assert f"blocked {s.getsockname()[0]}" in inside, inside
            with pytest.raises(BlockingIOError):  # nothing reached the host's server
                s.accept()
        assert sh(env, "sealed1", "nc -w 3 sealed2 7000 </dev/null").stdout == "peer\n"
        assert sh(env, "sealed1", "ping -c 1 -W 3 sealed2").returncode == 0
        # the host may still open connections to the network's containers
        sealed2 = ip_of(env, "sealed2")
        with socket.create_connection((sealed2, 7000), timeout=5) as c:
            assert c.recv(16) == b"peer\n"
        bridge = bridge_of(env, "sealed")
        table = nft_table(env)
        chain = table[table.index("chain input {"):]
        chain = chain[:chain.index("}")]
        assert "type filter hook input priority filter; policy accept;" in chain
        assert f'iifname "{bridge}" ct state established,related accept' in chain
        assert f'iifname "{bridge}" drop' in chain
        assert f'iifname "{bridge}" oifname != "{bridge}" drop' in table  # forwarded out
    finally:
        for s in listeners:
            s.close()
        env("rm", "-f", "sealed1", "sealed2")
        env("network", "rm", "sealed")
    assert "chain input" not in nft_table(env)


def test_network_none_has_loopback_up(env):
    """As docker and podman: lo is up with 127.0.0.1 (a server on it answers inside)."""
    out = run_ok(env, "run", "--rm", "--network", "none", "busybox", "sh", "-c",
                 "ip -o link show; ip -o -4 addr show; ip route; "
                 "(nc -l -p 8080 -e echo hi &); "
                 "for i in 1 2 3 4 5 6 7 8 9 10; do "
                 "nc -w 2 127.0.0.1 8080 </dev/null && break; sleep 0.2; done")
    lines = out.splitlines()
    assert len([ln for ln in lines if ": lo: " in ln]) == 1 and \
        "<LOOPBACK,UP,LOWER_UP>" in lines[0], out
    assert "inet 127.0.0.1/8" in lines[1] and "eth0" not in out, out
    assert lines[-1] == "hi", out
    run_ok(env, "run", "-d", "--name", "nonet", "--network", "none", "busybox", "sleep", "300")
    try:
        settings = json.loads(run_ok(env, "inspect", "nonet"))[0]["NetworkSettings"]
        assert list(settings["Networks"]) == ["none"] and settings["IPAddress"] == ""
        assert "127.0.0.1" in sh(env, "nonet", "ip -o -4 addr show lo").stdout
        # its netns goes with a stop and comes back with start
        run_ok(env, "stop", "-t", "1", "nonet")
        assert not os.path.exists(settings["SandboxKey"])
        with open("/proc/self/mountinfo") as f:
            assert settings["SandboxKey"] not in f.read()
        run_ok(env, "start", "nonet")
        assert "127.0.0.1" in sh(env, "nonet", "ip -o -4 addr show lo").stdout
    finally:
        env("rm", "-f", "nonet")
    assert not os.path.exists(settings["SandboxKey"])
    with open("/proc/self/mountinfo") as f:
        assert settings["SandboxKey"] not in f.read()


def test_a_second_root_gets_its_own_bridge_and_table(env, tmp_path):
    other = EngineEnv(str(tmp_path))
    os.makedirs(other.root)
    assert bridge_of(other) != bridge_of(env)
    assert bridge_of(other).startswith("mr") and len(bridge_of(other)) <= 15
    from minirun.network.manager import Networks
    import sqlite3
    tables = {Networks(sqlite3.connect(":memory:"), root).table for root in (env.root, other.root)}
    assert len(tables) == 2 and all(t.startswith("minirun_") for t in tables)


def test_differences_reports_what_changed():
    before = {"links": [("a", None)], "sysctls": {"x": "0"}}
    after = {"links": [("a", None), ("b", "veth")], "sysctls": {"x": "1"}}
    diff = differences(before, after)
    assert any("new [('b', 'veth')]" in d for d in diff) and any("'0' -> '1'" in d for d in diff)


def test_cni_network_through_run(env, tmp_path):
    """--network cni:NAME: the standard bridge plugin wires the container's netns."""
    token = secrets.token_hex(3)
    bridge, name = f"mrcni{token}", f"mrtest{token}"
    conf_dir, ipam_dir = tmp_path / "net.d", tmp_path / "ipam"
    conf_dir.mkdir()
    (conf_dir / "10-test.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": name,
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                     "ipam": {"type": "host-local", "subnet": "10.214.0.0/24",
                              "dataDir": str(ipam_dir)}}]}))
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read()
    env.env["MINIRUN_CNI_CONF_DIR"] = str(conf_dir)
    try:
        for c in ("k1", "k2"):
            run_ok(env, "run", "-d", "--name", c, "--network", f"cni:{name}", "busybox",
                   "sleep", "300")
        k1, k2 = ip_of(env, "k1"), ip_of(env, "k2")
        assert k1.startswith("10.214.0.") and k2.startswith("10.214.0.") and k1 != k2
        assert f"inet {k1}/24" in sh(env, "k1", "ip -o -4 addr show eth0").stdout
        assert sh(env, "k1", f"ping -c 1 -W 3 {k2}").returncode == 0
        assert sorted(os.listdir(ipam_dir / name)) >= sorted([k1, k2])
        run_ok(env, "rm", "-f", "k1", "k2")
        assert k1 not in os.listdir(ipam_dir / name) and k2 not in os.listdir(ipam_dir / name)
        links = os.listdir("/sys/class/net")
        assert not [ln for ln in links if ln.startswith("veth") and
                    os.path.exists(f"/sys/class/net/{ln}/brport") and
                    os.path.realpath(f"/sys/class/net/{ln}/master").endswith(bridge)]
        proc = env("run", "--rm", "--network", "cni:nosuchnet", "busybox", "true")
        assert proc.returncode == 125 and "nosuchnet" in one_line_error(proc)
    finally:
        env("rm", "-f", "k1", "k2")
        del env.env["MINIRUN_CNI_CONF_DIR"]
        subprocess.run(["ip", "link", "del", bridge], stderr=subprocess.DEVNULL)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(forward)


def test_info_and_inspect_show_the_networks(env):
    run_ok(env, "run", "-d", "--name", "shown", "-p", "127.0.0.1::80", "busybox", "sleep", "300")
    try:
        nets = {n["name"]: n for n in json.loads(run_ok(env, "info", "--format", "json"))[
            "networks"]}
        assert nets["bridge"]["containers"] == 1 and nets["bridge"]["bridge_up"]
        assert "bridge: " in run_ok(env, "info") and "1 container(s)" in run_ok(env, "info")
        settings = json.loads(run_ok(env, "inspect", "shown"))[0]["NetworkSettings"]
        assert settings["Networks"]["bridge"]["IPAddress"] == settings["IPAddress"]
        assert settings["SandboxKey"].startswith("/run/netns/minirun-")
        assert list(settings["Ports"]) == ["80/tcp"]
    finally:
        env("rm", "-f", "shown")


def test_two_roots_never_share_a_default_subnet(env, tmp_path):
    """A second root whose default subnet was chosen while the first root's bridge was down
    moves to a free one when it brings its bridge up (instead of failing)."""
    import sqlite3

    from minirun.network.manager import Networks

    roots = [tmp_path / "one", tmp_path / "two"]
    nets = []
    for root in roots:
        root.mkdir()
        nets.append(Networks(sqlite3.connect(root / "engine.db", isolation_level=None),
                             str(root)))
    first, second = "1" * 64, "2" * 64
    try:
        a = nets[0].attach(first, "bridge", name="one", hostname="one")
        nets[1].ensure_default()
        nets[1].db.execute("UPDATE networks SET subnet = ?, gateway = ?",
                           (nets[0].get("bridge")["subnet"], a.gateway))
        b = nets[1].attach(second, "bridge", name="two", hostname="two")
        assert nets[1].get("bridge")["subnet"] != nets[0].get("bridge")["subnet"]
        assert b.ip.split(".")[:2] != a.ip.split(".")[:2]
    finally:
        nets[1].detach(second)
        nets[0].detach(first)
