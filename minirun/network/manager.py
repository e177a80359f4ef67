"""Networks and endpoints: the records, the bridges, the leases, the ports.

Records live in the engine's SQLite database (one transaction per lease: no address is
handed out twice, whatever runs at once). Host state is derived from the records:

- a container's host objects (its netns, veth pair and published-port rules) exist while
  it runs: its exit releases them and `start` makes them again from its endpoint row, which
  keeps the address, MAC and host ports until `rm` (docker keeps no sandbox for a stopped
  container either);
- a network's bridge exists while at least one container has an address on it, running
  or stopped (netavark's rule, with docker's stopped containers), so when the last one
  goes the host has exactly the links it had before. Not only while one runs: the
  bridge's route is what keeps the subnet taken for everyone else (another root, another
  runtime picks a subnet no host route overlaps), and a stopped container can only come
  back with its address if its subnet is still free;
- minirun's nftables table is regenerated from the records (bridges) and the wired
  endpoints (published ports) whenever ports or bridges change, under one host-wide lock;
- net.ipv4.ip_forward is switched on with the first non-internal minirun bridge on the
  host and left on (as docker and netavark leave it): other containers (podman's, a
  VM's) may need it by then, and putting it back would cut them off.

Each endpoint's row is written before any host resource is made, with the names the
resources will have, so a crash at any point leaves a row that `rm`, `network prune` or
the daemon's start can clean.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field

from ..errors import AlreadyExists, InvalidArgument, MiniRunError, NotFound
from ..lookup import find_record
from ..monitor import trace as spans
from . import netns, nft
from .netlink import Netlink, NetlinkError, ipv4_routes

DEFAULT_ROOT = "/var/lib/minirun"
DEFAULT_NETWORK = "bridge"
NO_NETWORK = "none"  # an endpoint with a netns of its own holding only lo
DEFAULT_BRIDGE = "minirun0"
HOST_STATE = "/run/minirun/network"
ALIAS_PREFIX = "minirun"
# /16s tried in turn for the default network, skipping any that overlaps a host route
DEFAULT_SUBNETS = [f"10.{n}.0.0/16" for n in range(77, 100)] + \
    [f"172.{n}.0.0/16" for n in range(28, 32)]
USER_SUBNETS = [f"10.{n}.{m}.0/24" for n in range(100, 104) for m in range(256)]
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY, id TEXT UNIQUE NOT NULL, driver TEXT NOT NULL,
    subnet TEXT NOT NULL, gateway TEXT NOT NULL, bridge TEXT UNIQUE NOT NULL,
    internal INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    container TEXT PRIMARY KEY, network TEXT NOT NULL, ip TEXT, prefixlen INTEGER,
    gateway TEXT, veth TEXT, netns TEXT NOT NULL, ports TEXT NOT NULL DEFAULT '[]',
    name TEXT NOT NULL DEFAULT '', hostname TEXT NOT NULL DEFAULT '',
    extra_hosts TEXT NOT NULL DEFAULT '[]',
    UNIQUE (network, ip));
"""


@dataclass
class Attachment:
    """What the engine needs from the network: the netns to join and /etc/hosts."""

    netns: str | None
    network: str
    ip: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None
    ports: list[dict] = field(default_factory=list)


def parse_publish(spec: str) -> dict:
    """docker's -p: [ip:][hostPort:]containerPort[/proto] (hostPort may be empty)."""
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f"-p {spec!r}: protocol must be tcp or udp")
    if rest.startswith("["):
        raise InvalidArgument(f"-p {spec!r}: IPv6 host addresses are not supported")
    parts = rest.split(":")
    if len(parts) == 1:
        host_ip, host_port, ctr_port = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, (host_port, ctr_port) = "", parts
    elif len(parts) == 3:
        host_ip, host_port, ctr_port = parts
    else:
        raise InvalidArgument(f"-p {spec!r}: expected [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]")
    if host_ip:
        try:
            if not isinstance(ipaddress.ip_address(host_ip), ipaddress.IPv4Address):
                raise ValueError
        except ValueError:
            raise InvalidArgument(f"-p {spec!r}: invalid IPv4 host address {host_ip!r}") \
                from None
        if host_ip == "0.0.0.0":
            host_ip = ""
    if "-" in host_port or "-" in ctr_port:
        raise InvalidArgument(f"-p {spec!r}: port ranges are not supported")
    out = {"host_ip": host_ip, "proto": proto}
    for key, text, allow_empty in (("host_port", host_port, True),
                                   ("container_port", ctr_port, False)):
        if text == "" and allow_empty:
            out[key] = 0
            continue
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise InvalidArgument(f"-p {spec!r}: invalid port {text!r}")
        out[key] = int(text)
    return out


def _root_tag(root: str) -> str:
    from ..seccomp import _sha256  # the builtin one: hashlib loads OpenSSL

    return _sha256(os.path.realpath(root).encode()).hexdigest()[:8]


class Networks:
    def __init__(self, db: sqlite3.Connection, root: str, record_event=None) -> None:
        self.db = db
        self.root = root
        # Engine.record_object_event: the network events of `minirun events`
        self.record_event = record_event
        self._attached: dict[str, dict] = {}  # cid -> its network, until `connected`
        self.db.executescript(SCHEMA)
        self._add_columns()
        default_root = os.path.realpath(root) == DEFAULT_ROOT
        # another root (tests, a second installation) gets its own names, so two roots never
        # fight over one bridge or one table
        self.table = "minirun" if default_root else f"minirun_{_root_tag(root)}"
        self.default_bridge = DEFAULT_BRIDGE if default_root else f"mr{_root_tag(root)}b0"

    def _add_columns(self) -> None:
        """Columns newer than a database: a network's labels (the Docker API's), an
        endpoint's aliases (more names its peers find it by, as compose's service names)."""
        for table, column in (("networks", "labels TEXT NOT NULL DEFAULT '{}'"),
                              ("endpoints", "aliases TEXT NOT NULL DEFAULT '[]'")):
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column.split()[0] in have:
                continue
            try:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            except sqlite3.OperationalError as e:  # another process added it just now
                if "duplicate column" not in str(e):
                    raise

    # --- records ------------------------------------------------------------------------

    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        cur = self.db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def list(self) -> list[dict]:
        self.ensure_default()
        return self._rows("SELECT * FROM networks ORDER BY created")

    def get(self, name_or_id: str) -> dict:
        if name_or_id == DEFAULT_NETWORK:
            self.ensure_default()
        return find_record(self.db, "networks", "network", name_or_id)

    def containers_on(self, network: str) -> list[dict]:
        return self._rows("SELECT * FROM endpoints WHERE network = ?", (network,))

    def endpoint(self, cid: str) -> dict | None:
        rows = self._rows("SELECT * FROM endpoints WHERE container = ?", (cid,))
        return rows[0] if rows else None

    def ensure_default(self) -> None:
        if self._rows("SELECT name FROM networks WHERE name = ?", (DEFAULT_NETWORK,)):
            return
        subnet = os.environ.get("MINIRUN_BRIDGE_SUBNET")
        if subnet:
            net = self._check_subnet(subnet, DEFAULT_NETWORK)
        else:
            net = self._free_subnet(DEFAULT_SUBNETS, DEFAULT_NETWORK)
        try:
            self._insert_network(DEFAULT_NETWORK, net, None, self.default_bridge, False)
        except AlreadyExists:
            pass  # another command made it meanwhile

    def create(self, name: str, subnet: str | None = None, gateway: str | None = None,
               internal: bool = False, labels: dict | None = None) -> dict:
        if not name or not set(name) <= NAME_CHARS or not name[0].isalnum():
            raise InvalidArgument(f"invalid network name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]")
        if name in (DEFAULT_NETWORK, "host", "none") or ":" in name:
            raise InvalidArgument(f"network name {name!r} is reserved")
        if subnet:
            net = self._check_subnet(subnet, name)
        else:
            net = self._free_subnet(USER_SUBNETS, name)
        nid = os.urandom(32).hex()
        rec = self._insert_network(name, net, gateway, f"mrbr{nid[:10]}", internal, nid,
                                   labels)
        self._event("create", rec)
        return rec

    def _event(self, action: str, rec: dict, **attrs) -> None:
        """A network event (EVENTS-CONTRACT.md), as docker's: the network's id, its name
        and driver; connect and disconnect name the container."""
        if self.record_event is not None:
            self.record_event("network", action, rec["id"], name=rec["name"],
                              type=rec.get("driver") or "bridge", **attrs)

    def _endpoint_event(self, action: str, rec: dict, cid: str) -> None:
        """connect or disconnect, for a container of the engine's that exists: not for
        one being made (its created event brings its connect: `connected`), nor for one
        whose making failed and is undone."""
        if self.record_event is None:
            return
        try:
            row = self.db.execute("SELECT status FROM containers WHERE id = ?",
                                  (cid,)).fetchone()
        except sqlite3.OperationalError:  # a database without containers
            row = None
        if row is not None and row[0] != "creating":
            self._event(action, rec, container=cid)

    def connected(self, cid: str) -> None:
        """The connect event of a container this object attached just now, recorded with
        its created event (docker's order: create, connect, start)."""
        rec = self._attached.pop(cid, None)
        if rec is not None:
            self._event("connect", rec, container=cid)

    def _insert_network(self, name: str, net: ipaddress.IPv4Network, gateway: str | None,
                        bridge: str, internal: bool, nid: str | None = None,
                        labels: dict | None = None) -> dict:
        if gateway:
            try:
                gw = ipaddress.IPv4Address(gateway)
            except ValueError:
                raise InvalidArgument(f"invalid gateway {gateway!r}") from None
            if gw not in net or gw in (net.network_address, net.broadcast_address):
                raise InvalidArgument(f"gateway {gateway} is not a host address of {net}")
        else:
            gw = net.network_address + 1
        try:
            self.db.execute(
                "INSERT INTO networks (name, id, driver, subnet, gateway, bridge, internal,"
                " created, labels) VALUES (?, ?, 'bridge', ?, ?, ?, ?, ?, ?)",
                (name, nid or os.urandom(32).hex(), str(net), str(gw), bridge, int(internal),
                 time.time(), json.dumps(labels or {})))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"network {name} already exists") from None
        return self.get(name)

    def _check_subnet(self, text: str, name: str) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.IPv4Network(text, strict=True)
        except ValueError as e:
            raise InvalidArgument(f"invalid subnet {text!r}: {e}") from None
        if net.prefixlen > 30:
            raise InvalidArgument(f"subnet {text} is too small: at most /30")
        if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
            raise InvalidArgument(f"subnet {text} is not usable for containers")
        clash = self._clash(net, name)
        if clash:
            raise InvalidArgument(f"subnet {net} overlaps {clash}")
        return net

    def _free_subnet(self, candidates: list[str], name: str) -> ipaddress.IPv4Network:
        for text in candidates:
            net = ipaddress.IPv4Network(text)
            if not self._clash(net, name):
                return net
        raise MiniRunError("no free subnet left for a new network: give one with --subnet")

    def _clash(self, net: ipaddress.IPv4Network, name: str) -> str | None:
        """What net overlaps: another network of ours, or a host route that is not one of
        this network's own bridge."""
        own = None
        for row in self._rows("SELECT name, subnet, bridge FROM networks"):
            if row["name"] == name:
                own = row["bridge"]
                continue
            if net.overlaps(ipaddress.IPv4Network(row["subnet"])):
                return f"network {row['name']} ({row['subnet']})"
        for dest, dev in ipv4_routes():
            route = ipaddress.IPv4Network(dest, strict=False)
            if route.prefixlen == 0 or dev == own:
                continue
            if net.overlaps(route):
                return f"the host route {dest} on {dev}"
        return None

    def remove(self, name: str) -> str:
        rec = self.get(name)
        if rec["name"] == DEFAULT_NETWORK:
            raise InvalidArgument("the default network bridge cannot be removed")
        with HostLock():  # no container may join it between the check and the delete
            users = self.containers_on(rec["name"])
            if users:
                raise MiniRunError(f"network {rec['name']} is in use by "
                                   f"{len(users)} container(s): remove them first")
            self.db.execute("DELETE FROM networks WHERE name = ?", (rec["name"],))
        self._event("destroy", rec)
        return rec["name"]

    def prune(self, known_containers: set[str]) -> tuple[list[str], list[str]]:
        """Endpoints of containers that no longer exist (a crash mid-setup), then the user
        networks nobody uses: (containers cleaned, networks removed)."""
        cleaned = self.recover(known_containers)
        removed = []
        with HostLock():
            for rec in self._rows("SELECT * FROM networks WHERE name != ?",
                                  (DEFAULT_NETWORK,)):
                if not self.containers_on(rec["name"]):
                    self.db.execute("DELETE FROM networks WHERE name = ?", (rec["name"],))
                    self._event("destroy", rec)
                    removed.append(rec["name"])
        return cleaned, removed

    def recover(self, known_containers: set[str]) -> list[str]:
        """Detach the endpoints whose container record is gone (a crash between steps)."""
        cleaned = []
        for row in self._rows("SELECT container FROM endpoints"):
            if row["container"] not in known_containers:
                self.detach(row["container"])
                cleaned.append(row["container"])
        return cleaned

    # --- attach and detach ----------------------------------------------------------------

    def attach(self, cid: str, network: str, *, name: str, hostname: str,
               publish: list[str] = (), exposed: list[str] = (),
               extra_hosts: list[str] = ()) -> Attachment:
        """A netns for the container, wired to `network` (a bridge network's name or
        "cni:NAME"), with its lease and published ports."""
        ports = [parse_publish(p) for p in publish]
        for key in exposed:  # -P: the image's exposed ports on random host ports
            port, _, proto = key.partition("/")
            spec = parse_publish(f"{port}/{proto or 'tcp'}")
            if not any(p["container_port"] == spec["container_port"] and
                       p["proto"] == spec["proto"] for p in ports):
                ports.append(spec)
        hosts = [_parse_add_host(h) for h in extra_hosts]
        if network.startswith("cni:"):
            return self._attach_cni(cid, network, name, hostname, ports, hosts)
        self.get(network)  # an unknown network fails before anything is locked
        with HostLock():
            rec = self._repick_default_subnet(self.get(network))  # read under the lock
            ip = self._lease(cid, rec, name, hostname, hosts)
            try:
                ports = self._reserve_ports(cid, rec, ports, ip)
                created = self._bridge_up(rec, cid)  # after the lease: the table has it
                self._wire(cid, rec, ip)
                if ports and not created:
                    self._apply_table()
            except BaseException:
                self._detach_locked(cid)
                raise
        if rec["name"] != DEFAULT_NETWORK:
            self.write_peer_hosts(rec["name"], skip=cid)
        self._attached[cid] = rec
        net = ipaddress.IPv4Network(rec["subnet"])
        return Attachment(netns.path_for(f"minirun-{cid[:12]}"), rec["name"], ip,
                          net.prefixlen, rec["gateway"], ports)

    def attach_none(self, cid: str, name: str, hostname: str) -> Attachment:
        """--network none: a netns of the container's own with only lo, up with 127.0.0.1
        as under docker and podman. Made here like every other container netns: one that
        minirun's runtime makes has lo down."""
        path = netns.path_for(f"minirun-{cid[:12]}")
        try:
            self.db.execute("INSERT INTO endpoints (container, network, netns, name, hostname)"
                            " VALUES (?, ?, ?, ?, ?)", (cid, NO_NETWORK, path, name, hostname))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"container {cid[:12]} already has a network") from None
        try:
            self._make_lo_only_netns(cid)
        except BaseException:
            self._forget(self.endpoint(cid))
            raise
        return Attachment(path, NO_NETWORK)

    def _make_lo_only_netns(self, cid: str) -> None:
        with spans.span("netns"):
            _, nsfd, inside = netns.create(f"minirun-{cid[:12]}")
        os.close(nsfd)
        inside.close()

    def _forget(self, ep: dict) -> None:
        """The endpoint's netns and row, once its links are gone."""
        netns.remove(ep["netns"])
        self.db.execute("DELETE FROM endpoints WHERE container = ?", (ep["container"],))

    def _repick_default_subnet(self, rec: dict) -> dict:
        """The default network's subnet was free when it was chosen; if something took it
        since (another root's bridge, a new host route) and nothing uses ours yet, move to
        a free one rather than fail. A subnet the user chose is never moved."""
        if rec["name"] != DEFAULT_NETWORK or os.environ.get("MINIRUN_BRIDGE_SUBNET") or \
                self.containers_on(rec["name"]) or \
                not self._clash(ipaddress.IPv4Network(rec["subnet"]), rec["name"]):
            return rec
        net = self._free_subnet(DEFAULT_SUBNETS, rec["name"])
        self.db.execute("UPDATE networks SET subnet = ?, gateway = ? WHERE name = ?",
                        (str(net), str(net.network_address + 1), rec["name"]))
        return self.get(rec["name"])

    def _lease(self, cid: str, rec: dict, name: str, hostname: str, hosts: list) -> str:
        """The lowest free address of the network, recorded with the endpoint's resource
        names in one write transaction."""
        net = ipaddress.IPv4Network(rec["subnet"])
        self.db.execute("BEGIN IMMEDIATE")
        try:
            used = {r[0] for r in self.db.execute(
                "SELECT ip FROM endpoints WHERE network = ?", (rec["name"],))}
            used.add(rec["gateway"])
            ip = next((str(a) for a in net.hosts() if str(a) not in used), None)
            if ip is None:
                raise MiniRunError(f"network {rec['name']} ({net}) has no free address left")
            self.db.execute(
                "INSERT INTO endpoints (container, network, ip, prefixlen, gateway, veth,"
                " netns, name, hostname, extra_hosts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, rec["name"], ip, net.prefixlen, rec["gateway"], f"mr{cid[:12]}",
                 netns.path_for(f"minirun-{cid[:12]}"), name, hostname, json.dumps(hosts)))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return ip

    def _reserve_ports(self, cid: str, rec: dict, ports: list[dict], ip: str) -> list[dict]:
        if not ports:
            return ports
        taken = {}
        for row in self._rows("SELECT container, ports FROM endpoints"):
            for p in json.loads(row["ports"]):
                taken[(p["proto"], p["host_port"])] = (p["host_ip"], row["container"])
        out = []
        for p in ports:
            p = dict(p)
            if p["host_port"] == 0:
                p["host_port"] = _free_host_port(p["host_ip"], p["proto"], taken)
            else:
                other = taken.get((p["proto"], p["host_port"]))
                if other and (not other[0] or not p["host_ip"] or other[0] == p["host_ip"]):
                    if other[1] == cid:  # its own -p twice: not another container's
                        raise InvalidArgument(f"-p: host port {p['host_port']}/{p['proto']}"
                                              " is given twice")
                    raise MiniRunError(f"port {p['host_port']}/{p['proto']} is already "
                                       f"published by container {other[1][:12]}")
                _check_host_port(p["host_ip"], p["host_port"], p["proto"])
            p["container_ip"] = ip
            taken[(p["proto"], p["host_port"])] = (p["host_ip"], cid)
            out.append(p)
        self.db.execute("UPDATE endpoints SET ports = ? WHERE container = ?",
                        (json.dumps(out), cid))
        return out

    def _wire(self, cid: str, rec: dict, ip: str) -> None:
        net = ipaddress.IPv4Network(rec["subnet"])
        with spans.span("netns"):
            path, nsfd, inside = netns.create(f"minirun-{cid[:12]}")
        wiring = spans.begin("veth")
        try:
            with Netlink() as host:
                mtu = _host_mtu()
                bridge = host.link_index(rec["bridge"])
                if bridge is None:
                    raise MiniRunError(f"bridge {rec['bridge']} of network {rec['name']} "
                                       "disappeared")
                veth = host.add_veth(f"mr{cid[:12]}", "eth0", nsfd, mtu, mac_for(ip))
                host.set_link(veth, master=bridge, what=f"attach mr{cid[:12]} to {rec['bridge']}")
                host.set_link(veth, up=True, what=f"bring mr{cid[:12]} up")
            eth0 = inside.link_index("eth0")
            inside.add_address(eth0, ip, net.prefixlen, str(net.broadcast_address),
                               f"add {ip}/{net.prefixlen} to eth0")
            inside.set_link(eth0, up=True, what="bring eth0 up")
            if not rec["internal"]:  # as docker: an internal network has no way out
                inside.add_default_route(rec["gateway"], eth0)
        except NetlinkError as e:
            raise MiniRunError(f"network {rec['name']}: {e.strerror}") from None
        finally:
            os.close(nsfd)
            inside.close()
            spans.end(wiring)
        self._endpoint_event("connect", rec, cid)

    def _attach_cni(self, cid: str, network: str, name: str, hostname: str,
                    ports: list[dict], hosts: list) -> Attachment:
        from . import cni

        conflist = cni.load_conflist(network[4:])
        path = netns.path_for(f"minirun-{cid[:12]}")
        try:
            self.db.execute(
                "INSERT INTO endpoints (container, network, netns, name, hostname, extra_hosts,"
                " ports) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cid, network, path, name, hostname, json.dumps(hosts), json.dumps(ports)))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"container {cid[:12]} already has a network") from None
        try:
            self._make_lo_only_netns(cid)
            mappings = [{"hostPort": p["host_port"], "containerPort": p["container_port"],
                         "protocol": p["proto"], "hostIP": p["host_ip"]} for p in ports]
            result = cni.add(conflist, cid, path, "eth0", cache_dir=self._cni_cache(),
                             capability_args={"portMappings": mappings} if mappings else None)
        except BaseException:
            self._detach_cni(self.endpoint(cid))
            raise
        addrs = cni.addresses(result)
        ip = prefixlen = gateway = None
        if addrs:
            iface = ipaddress.IPv4Interface(addrs[0]) if "." in addrs[0] else None
            if iface:
                ip, prefixlen = str(iface.ip), iface.network.prefixlen
        for entry in result.get("ips", []):
            gateway = entry.get("gateway") or gateway
        self.db.execute("UPDATE endpoints SET ip = ?, prefixlen = ?, gateway = ? "
                        "WHERE container = ?", (ip, prefixlen, gateway, cid))
        return Attachment(path, network, ip, prefixlen, gateway, ports)

    def _cni_cache(self) -> str:
        return os.path.join(self.root, "cni-cache")

    def _detach_cni(self, ep: dict | None) -> None:
        if ep is None:
            return
        from . import cni

        try:
            conflist = cni.load_conflist(ep["network"][4:])
        except MiniRunError:
            conflist = None  # its conflist is gone: nothing left to ask its plugins
        try:
            if conflist is not None:
                cni.delete(conflist, ep["container"],
                           ep["netns"] if os.path.exists(ep["netns"]) else None, "eth0",
                           cache_dir=self._cni_cache())
        finally:
            self._forget(ep)

    def ensure_wired(self, cid: str) -> None:
        """A stopped container's netns and links are gone (its exit released them, or a
        reboot) but its row is not: wire it again with the same address, MAC and host
        ports before starting it."""
        ep = self.endpoint(cid)
        if ep is None or os.path.exists(ep["netns"]) and _is_nsfs(ep["netns"]):
            return
        if ep["network"].startswith("cni:"):
            raise MiniRunError(f"container {cid[:12]}: its CNI netns is gone; recreate it")
        if ep["network"] == NO_NETWORK:
            netns.remove(ep["netns"])
            self._make_lo_only_netns(cid)
            return
        rec = self.get(ep["network"])
        with HostLock():
            with Netlink() as host:
                host.delete_link(ep["veth"])
            netns.remove(ep["netns"])
            try:
                created = self._bridge_up(rec, cid)
                self._wire(cid, rec, ep["ip"])
                if not created:
                    self._apply_table()
            except BaseException:
                self._unwire(ep)
                raise

    def release(self, cid: str) -> None:
        """The container exited: its veth pair, netns and port rules go; its row (address,
        MAC, host ports) stays for `ensure_wired`, and with it the bridge. A CNI container keeps its netns: its plugins' ADD may
        hand out another address, so it is released by `rm` only."""
        ep = self.endpoint(cid)
        if ep is None or ep["network"].startswith("cni:") or not _is_nsfs(ep["netns"]):
            return
        if ep["network"] == NO_NETWORK:
            netns.remove(ep["netns"])
            return
        with HostLock():
            ep = self.endpoint(cid)  # `rm` may have detached it meanwhile
            if ep is None:
                return
            self._unwire(ep)

    def _unwire(self, ep: dict, forget: bool = False) -> None:
        """Under HostLock: the endpoint's host objects, its row too if `forget` (last, so a
        crash leaves a row to clean up), then the bridge or the rules that were there for
        it."""
        wired = _is_nsfs(ep["netns"])
        with Netlink() as host:
            host.delete_link(ep["veth"])
        netns.remove(ep["netns"])
        if forget:
            self.db.execute("DELETE FROM endpoints WHERE container = ?", (ep["container"],))
        try:
            rec = self.get(ep["network"])
        except NotFound:
            rec = None
        if rec is not None and not self.containers_on(rec["name"]):
            self._bridge_down(rec)
        elif json.loads(ep["ports"]):
            self._apply_table()
        if wired and rec is not None:  # last: the host is clean whatever happens to it
            self._endpoint_event("disconnect", rec, ep["container"])

    def _wired_on(self, network: str, joining: str | None) -> list[dict]:
        """The endpoints of a network whose netns is there (their container runs or is
        being made), `joining` counted as one."""
        return [ep for ep in self.containers_on(network)
                if ep["container"] == joining or _is_nsfs(ep["netns"])]

    def detach(self, cid: str) -> None:
        self._attached.pop(cid, None)  # a creation undone: no connect event
        ep = self.endpoint(cid)
        if ep is None:
            return
        if ep["network"].startswith("cni:"):
            self._detach_cni(ep)
            return
        if ep["network"] == NO_NETWORK:
            self._forget(ep)
            return
        with HostLock():
            self._detach_locked(cid)
        if ep["network"] != DEFAULT_NETWORK:
            self.write_peer_hosts(ep["network"])

    def _detach_locked(self, cid: str) -> None:
        ep = self.endpoint(cid)
        if ep is None:
            return
        self._unwire(ep, forget=True)

    # --- bridges, the table and forwarding (host-wide, under HostLock) ----------------------

    def _bridge_up(self, rec: dict, joining: str) -> bool:
        """Make the network's bridge unless it is there; True if it was made (and the
        table applied, with `joining`'s ports: it is wired right after)."""
        with Netlink() as host:
            info = host.link_info(rec["bridge"])
            if info is not None:
                if info["kind"] != "bridge" or not info["alias"].startswith(ALIAS_PREFIX):
                    raise MiniRunError(f"a link named {rec['bridge']} exists and is not "
                                       "minirun's bridge")
                return False
            clash = self._clash(ipaddress.IPv4Network(rec["subnet"]), rec["name"])
            if clash:
                raise MiniRunError(f"network {rec['name']}: subnet {rec['subnet']} "
                                   f"overlaps {clash}")
            net = ipaddress.IPv4Network(rec["subnet"])
            index = host.add_bridge(rec["bridge"], _host_mtu(),
                                    f"{ALIAS_PREFIX} {self.table} {rec['name']}")
            try:
                host.add_address(index, rec["gateway"], net.prefixlen,
                                 str(net.broadcast_address),
                                 f"add {rec['gateway']} to {rec['bridge']}")
                host.set_link(index, up=True, what=f"bring {rec['bridge']} up")
                # lets a published port answer on 127.0.0.1 (docker does the same)
                _write_sysctl(f"net/ipv4/conf/{rec['bridge']}/route_localnet", "1")
                if not rec["internal"]:
                    _forwarding_on()
                self._apply_table(joining)
            except BaseException:
                host.delete_link(rec["bridge"])
                raise
        return True

    def _bridge_down(self, rec: dict) -> None:
        with Netlink() as host:
            info = host.link_info(rec["bridge"])
            # a failed _bridge_up may have found a link of that name that is not ours
            if info is not None and info["kind"] == "bridge" and \
                    info["alias"].startswith(ALIAS_PREFIX):
                host.delete_link(rec["bridge"])
        self._apply_table()

    def _apply_table(self, joining: str | None = None) -> None:
        """The bridges of the networks in use and the published ports of the wired
        endpoints (`joining` counted as one): a stopped container's ports have no rule."""
        table = nft.Table(self.table)
        for rec in self._rows("SELECT * FROM networks"):
            if not self.containers_on(rec["name"]):
                continue
            table.bridges.append(nft.Bridge(rec["bridge"], rec["subnet"],
                                            bool(rec["internal"])))
            for ep in self._wired_on(rec["name"], joining):
                for p in json.loads(ep["ports"]):
                    table.ports.append(nft.Port(p["host_ip"], p["host_port"], p["proto"],
                                                ep["ip"], p["container_port"],
                                                rec["bridge"]))
        nft.apply(table)

    # --- /etc/hosts -------------------------------------------------------------------------

    def hosts_text(self, cid: str) -> str | None:
        """The container's /etc/hosts: its own address and names, --add-host entries and,
        on a user network, every other container of the network by name."""
        ep = self.endpoint(cid)
        if ep is None or ep["network"] == NO_NETWORK:
            return None
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if ep["ip"]:
            names = [ep["hostname"]] + ([ep["name"]] if ep["name"] != ep["hostname"] else [])
            names += [a for a in json.loads(ep["aliases"]) if a not in names]
            lines.append(f"{ep['ip']}\t{' '.join(n for n in names if n)}")
        for host, addr in json.loads(ep["extra_hosts"]):
            lines.append(f"{addr}\t{host}")
        if ep["network"] not in (DEFAULT_NETWORK,) and not ep["network"].startswith("cni:"):
            for peer in self.containers_on(ep["network"]):
                if peer["container"] != cid and peer["ip"]:
                    names = [peer["name"]] + [a for a in json.loads(peer["aliases"])
                                              if a != peer["name"]]
                    lines.append(f"{peer['ip']}\t{' '.join(names)}")
        return "\n".join(lines) + "\n"

    def set_aliases(self, cid: str, aliases: list[str]) -> None:
        """More names the container's peers find it by (and it finds itself by), in every
        hosts file of its network at once."""
        ep = self.endpoint(cid)
        if ep is None:
            raise NotFound(f"container {cid[:12]} has no network endpoint")
        bad = [a for a in aliases if not a or not set(a) <= NAME_CHARS]
        if bad:
            raise InvalidArgument(f"invalid network alias {bad[0]!r}")
        self.db.execute("UPDATE endpoints SET aliases = ? WHERE container = ?",
                        (json.dumps(list(dict.fromkeys(aliases))), cid))
        if ep["network"] != DEFAULT_NETWORK and not ep["network"].startswith("cni:"):
            self.write_peer_hosts(ep["network"])

    def write_peer_hosts(self, network: str, skip: str | None = None) -> None:
        """Rewrite, in place (the file is bind-mounted: its inode must stay), the hosts
        file of every container on a user network after one joined or left."""
        for peer in self.containers_on(network):
            if peer["container"] == skip:
                continue
            path = os.path.join(self.root, "containers", peer["container"], "hosts")
            text = self.hosts_text(peer["container"])
            if text is None or not os.path.exists(path):
                continue
            with open(path, "r+") as f:
                f.truncate(0)
                f.write(text)


class HostLock:
    """Host-wide: bridges, the nftables tables and ip_forward are shared by every root."""

    def __enter__(self) -> HostLock:
        os.makedirs(HOST_STATE, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(HOST_STATE, "lock"),
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _write_sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value)


def _read_sysctl(name: str) -> str:
    with open(f"/proc/sys/{name}") as f:
        return f.read().strip()


def _forwarding_on() -> None:
    """On, and left on: see the module's docstring."""
    if _read_sysctl("net/ipv4/ip_forward") != "1":
        _write_sysctl("net/ipv4/ip_forward", "1")


def mac_for(ip: str) -> bytes:
    """The container's MAC from its address (as docker does): a reused address comes back
    with the same MAC, so neighbours' ARP caches stay right."""
    return b"\x02\x6d" + socket.inet_aton(ip)


def _host_mtu() -> int:
    """The MTU of the host's default route's device (1500 without one)."""
    for dest, dev in ipv4_routes():
        if dest == "0.0.0.0/0":
            try:
                with open(f"/sys/class/net/{dev}/mtu") as f:
                    return int(f.read())
            except (OSError, ValueError):
                break
    return 1500


def _is_nsfs(path: str) -> bool:
    try:
        return os.stat(path).st_ino != 0 and os.path.ismount(path)
    except OSError:
        return False


def _parse_add_host(spec: str) -> list[str]:
    host, sep, addr = spec.partition(":")
    if not sep or not host:
        raise InvalidArgument(f"--add-host {spec!r}: expected HOST:IP")
    if addr == "host-gateway":
        raise InvalidArgument("--add-host host-gateway is not supported")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise InvalidArgument(f"--add-host {spec!r}: invalid address {addr!r}") from None
    return [host, addr]


def _check_host_port(host_ip: str, port: int, proto: str) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip or "0.0.0.0", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise MiniRunError(f"port {host_ip + ':' if host_ip else ''}{port}/{proto} "
                                   "is already in use on the host") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(f"-p: {host_ip} is not an address of this host") \
                    from None
            raise


def _free_host_port(host_ip: str, proto: str, taken: dict) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host_ip or "0.0.0.0", 0))
            port = s.getsockname()[1]
        if (proto, port) not in taken:
            return port
    raise MiniRunError("no free host port found")
