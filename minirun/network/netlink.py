"""Just enough rtnetlink for container networking: bridges, veth pairs, addresses, routes.

Why not pyroute2 (the design card's choice): importing it takes ~180 ms here, three times a
whole `minirun-oci run`; these dozen message layouts take no time to import. The tests
check what this module does with `ip -j` and pyroute2 as independent witnesses.

A socket is bound to the network namespace it was opened in, for its whole life: open one
inside a container's netns (see netns.py) and it configures that netns from anywhere.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLA_F_NESTED = 0x8000

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_IFALIAS = 18, 28, 20
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
# family, dst_len, src_len, tos, table, protocol, scope, type; flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid


class NetlinkError(OSError):
    """The kernel refused a request: errno and what was asked."""


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size & 3)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + size]
        pos += (size + 3) & ~3
    return out


class Netlink:
    """One NETLINK_ROUTE socket (in the netns current when it was made)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, body: bytes, what: str) -> list[bytes]:
        """Send one request, return the payloads of its answers (for a GET), raise on error."""
        self.seq += 1
        seq = self.seq
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), msg_type,
                                   flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
        replies = []
        while True:
            data = self.sock.recv(65536)
            pos = 0
            while pos + _NLMSG.size <= len(data):
                size, kind, _flags, rseq, _pid = _NLMSG.unpack_from(data, pos)
                payload = data[pos + _NLMSG.size:pos + size]
                pos += (size + 3) & ~3
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise NetlinkError(err, f"{what}: {os.strerror(err)}")
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(payload)

    # --- links ---------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        """The index of the link called name in this socket's netns, or None."""
        info = self.link_info(name)
        return None if info is None else info["index"]

    def link_info(self, name: str) -> dict | None:
        """index, flags, mtu, master and kind of a link, or None if there is none."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
        try:
            replies = self.request(RTM_GETLINK, 0, body, f"find link {name}")
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for payload in replies:
            _fam, _type, index, flags, _change = _IFINFO.unpack_from(payload)
            attrs = parse_attrs(payload[_IFINFO.size:])
            info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
            return {"index": index, "flags": flags,
                    "mtu": struct.unpack("=I", attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0,
                    "master": struct.unpack("=I", attrs[IFLA_MASTER])[0]
                    if IFLA_MASTER in attrs else 0,
                    "kind": info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode(),
                    "alias": attrs.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode()}
        return None

    def add_bridge(self, name: str, mtu: int, alias: str) -> int:
        linkinfo = attr(IFLA_LINKINFO | NLA_F_NESTED, attr_str(IFLA_INFO_KIND, "bridge"))
        body = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) +
                attr_u32(IFLA_MTU, mtu) + linkinfo)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")
        index = self.link_index(name)
        if index is None:
            raise NetlinkError(errno.ENODEV, f"bridge {name} vanished after its creation")
        # the kernel ignores an alias given at creation: it is set like any change
        self.set_link(index, alias=alias, what=f"name bridge {name} as minirun's")
        return index

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int,
                 peer_mac: bytes | None = None) -> int:
        """A veth pair: `name` here, `peer` created directly in the netns of peer_netns_fd."""
        peer_msg = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer) +
                    attr_u32(IFLA_MTU, mtu) + attr_u32(IFLA_NET_NS_FD, peer_netns_fd))
        if peer_mac:
            peer_msg += attr(IFLA_ADDRESS, peer_mac)
        data = attr(IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER | NLA_F_NESTED, peer_msg))
        linkinfo = attr(IFLA_LINKINFO | NLA_F_NESTED, attr_str(IFLA_INFO_KIND, "veth") + data)
        body = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) +
                attr_u32(IFLA_MTU, mtu) + linkinfo)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name}")
        index = self.link_index(name)
        if index is None:
            raise NetlinkError(errno.ENODEV, f"veth {name} vanished after its creation")
        return index

    def set_link(self, index: int, *, up: bool | None = None, master: int | None = None,
                 alias: str | None = None, what: str = "") -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)
        if master is not None:
            body += attr_u32(IFLA_MASTER, master)
        if alias is not None:
            body += attr_str(IFLA_IFALIAS, alias)
        self.request(RTM_NEWLINK, 0, body, what or f"set link {index}")

    def delete_link(self, name: str) -> bool:
        """Delete a link by name; False if there was none."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
        try:
            self.request(RTM_DELLINK, 0, body, f"delete link {name}")
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # --- addresses and routes --------------------------------------------------------------

    def add_address(self, index: int, address: str, prefixlen: int, broadcast: str | None,
                    what: str) -> None:
        raw = socket.inet_aton(address)
        body = (_IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index) +
                attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw))
        if broadcast:
            body += attr(IFA_BROADCAST, socket.inet_aton(broadcast))
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, what)

    def add_default_route(self, gateway: str, index: int) -> None:
        body = (_RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                            RT_SCOPE_UNIVERSE, RTN_UNICAST, 0) +
                attr(RTA_GATEWAY, socket.inet_aton(gateway)) + attr_u32(RTA_OIF, index))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body,
                     f"add default route via {gateway}")


def ipv4_routes() -> list[tuple[str, str]]:
    """(destination/prefix, device) of the main IPv4 table, from /proc/net/route: enough to
    check that a subnet does not clash with the host's routes, without a netlink dump."""
    out = []
    try:
        with open("/proc/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 8:
            continue
        dest = socket.inet_ntoa(struct.pack("=I", int(parts[1], 16)))
        mask = bin(int(parts[7], 16)).count("1")
        out.append((f"{dest}/{mask}", parts[0]))
    return out
