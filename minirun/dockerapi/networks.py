"""Networks: list, inspect, create, connect, disconnect, remove and prune, as Docker
Engine API 1.41 answers them, over minirun's bridge networks (minirun/network/manager.py).

The document is moby's NetworkResource. docker's three built-in networks are there:
`bridge` is minirun's default network; `host` and `none` are the modes of the same names
(no record of their own, so their ids are derived from the engine's root).

minirun gives a container one network, chosen when it is created. connect and
disconnect change it while the container does not run (compose disconnects a container
it has just created and connects it again with its service name as an alias); a second
network, or a change to a running container, is a 501 that says so.
"""

from __future__ import annotations

import hashlib
import json
import os

from ..dockerview import rfc3339, state_of
from ..errors import MiniRunError, NotFound
from ._objects import bool_filter, check_filters, match, match_labels
from .server import ApiError, Response

NETWORK_FILTERS = ("driver", "id", "label", "name", "scope", "type", "dangling")
PRUNE_FILTERS = ("label", "until")
BUILTIN = {"host": "host", "none": "null"}  # pseudo networks: name -> driver
ALIAS_OK_STATES = ("created", "exited", "dead")


def _builtin_id(engine, name: str) -> str:
    return hashlib.sha256(f"minirun network {name} {os.path.realpath(engine.root)}"
                          .encode()).hexdigest()


def _endpoint_id(cid: str, network: str) -> str:
    return hashlib.sha256(f"{network}/{cid}".encode()).hexdigest()


def _mac(ip: str | None) -> str:
    from ..network.manager import mac_for

    return ":".join(f"{b:02x}" for b in mac_for(ip)) if ip else ""


def _names(engine) -> dict[str, str]:
    return {r["id"]: r["name"] for r in engine.records()}


def _containers(engine, network: str) -> dict:
    """The network's endpoints as docker's Containers map."""
    names = _names(engine)
    out = {}
    for ep in engine.networks.containers_on(network):
        cid = ep["container"]
        out[cid] = {"Name": names.get(cid, ep["name"]),
                    "EndpointID": _endpoint_id(cid, network),
                    "MacAddress": _mac(ep["ip"]) if network != "none" else "",
                    "IPv4Address": f"{ep['ip']}/{ep['prefixlen']}" if ep["ip"] else "",
                    "IPv6Address": ""}
    return out


def network_resource(engine, rec: dict, containers: bool = True) -> dict:
    """moby's NetworkResource for one of minirun's bridge networks."""
    labels = json.loads(rec.get("labels") or "{}")
    return {"Name": rec["name"], "Id": rec["id"], "Created": rfc3339(rec["created"]),
            "Scope": "local", "Driver": rec["driver"], "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": None,
                     "Config": [{"Subnet": rec["subnet"], "Gateway": rec["gateway"]}]},
            "Internal": bool(rec["internal"]), "Attachable": False, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
            "Containers": _containers(engine, rec["name"]) if containers else {},
            # the options it was created with (none: minirun takes none), as docker
            # shows them and compose compares them; the default network's bridge name
            "Options": {"com.docker.network.bridge.name": rec["bridge"]}
            if rec["name"] == "bridge" else {},
            "Labels": labels}


def builtin_resource(engine, name: str, containers: bool = True) -> dict:
    """host and none: the modes, shown as docker shows its networks of those names."""
    cmap = {}
    if containers:
        if name == "none":
            cmap = _containers(engine, "none")
        else:
            for rec in engine.records():
                if (json.loads(rec["options"]).get("network") or "") == "host":
                    cmap[rec["id"]] = {"Name": rec["name"],
                                       "EndpointID": _endpoint_id(rec["id"], name),
                                       "MacAddress": "", "IPv4Address": "",
                                       "IPv6Address": ""}
    return {"Name": name, "Id": _builtin_id(engine, name), "Created": rfc3339(None),
            "Scope": "local", "Driver": BUILTIN[name], "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": None, "Config": []},
            "Internal": False, "Attachable": False, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": cmap,
            "Options": {}, "Labels": {}}


def _all(engine, containers: bool) -> list[dict]:
    out = [network_resource(engine, r, containers) for r in engine.networks.list()]
    return out + [builtin_resource(engine, n, containers) for n in BUILTIN]


def find(engine, name_or_id: str, containers: bool = True) -> dict:
    """One network's resource by name, id or id prefix; docker's 404 otherwise."""
    for name in BUILTIN:
        if name_or_id == name or name_or_id == _builtin_id(engine, name) or (
                len(name_or_id) >= 3 and _builtin_id(engine, name).startswith(name_or_id)):
            return builtin_resource(engine, name, containers)
    try:
        return network_resource(engine, engine.networks.get(name_or_id), containers)
    except NotFound:
        raise ApiError(404, f"network {name_or_id} not found") from None


def _passes(doc: dict, filters: dict) -> bool:
    if "driver" in filters and doc["Driver"] not in filters["driver"]:
        return False
    if "id" in filters and not match(filters["id"], doc["Id"]):
        return False
    if "name" in filters and not match(filters["name"], doc["Name"]):
        return False
    if "label" in filters and not match_labels(filters["label"], doc["Labels"]):
        return False
    if "scope" in filters and "local" not in filters["scope"]:
        return False
    builtin = doc["Name"] in BUILTIN or doc["Name"] == "bridge"
    if "type" in filters:
        for value in filters["type"]:
            if value not in ("custom", "builtin"):
                raise ApiError(400, f"invalid filter: 'type'='{value}'")
        if ("builtin" if builtin else "custom") not in filters["type"]:
            return False
    if "dangling" in filters:
        dangling = not builtin and not doc["Containers"]
        if bool_filter(filters["dangling"], "dangling") != dangling:
            return False
    return True


def list_networks(req):
    filters = check_filters(req.filters(), NETWORK_FILTERS)
    docs = _all(req.engine, containers="dangling" in filters)
    out = [d for d in docs if _passes(d, filters)]
    if "dangling" in filters:
        for d in out:
            d["Containers"] = {}
    return out


def inspect_network(req):
    return find(req.engine, req.params["id"])


def create_network(req):
    body = req.json()
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "network name (Name) is required")
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        raise ApiError(501, f"network driver {driver!r} is not supported by minirun: "
                            "only bridge")
    if body.get("EnableIPv6"):
        raise ApiError(501, "IPv6 networks are not supported by minirun")
    if body.get("Options"):
        raise ApiError(501, f"network option {next(iter(body['Options']))!r} is not "
                            "supported by minirun")
    if body.get("ConfigOnly") or body.get("ConfigFrom") and \
            (body["ConfigFrom"] or {}).get("Network"):
        raise ApiError(501, "config-only networks are not supported by minirun")
    ipam = body.get("IPAM") or {}
    if (ipam.get("Driver") or "default") != "default":
        raise ApiError(501, f"IPAM driver {ipam['Driver']!r} is not supported by minirun")
    if ipam.get("Options"):
        raise ApiError(501, "IPAM options are not supported by minirun")
    configs = ipam.get("Config") or []
    if len(configs) > 1:
        raise ApiError(501, "a network with more than one subnet is not supported by minirun")
    subnet = gateway = None
    if configs:
        cfg = configs[0] or {}
        for key in ("IPRange", "AuxiliaryAddresses"):
            if cfg.get(key):
                raise ApiError(501, f"IPAM {key} is not supported by minirun")
        subnet, gateway = cfg.get("Subnet") or None, cfg.get("Gateway") or None
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ApiError(400, "Labels: want a map of strings to strings")
    nets = req.engine.networks
    if name in BUILTIN or name == "bridge":
        raise ApiError(403, f"{name} is a pre-defined network and cannot be created")
    try:
        nets.get(name)
        raise ApiError(409, f"network with name {name} already exists")
    except NotFound:
        pass
    rec = nets.create(name, subnet=subnet, gateway=gateway,
                      internal=bool(body.get("Internal")), labels=labels)
    return Response(201, {"Id": rec["id"], "Warning": ""})


def delete_network(req):
    engine = req.engine
    doc = find(engine, req.params["id"], containers=False)
    if doc["Name"] in BUILTIN or doc["Name"] == "bridge":
        raise ApiError(403, f"{doc['Name']} is a pre-defined network and cannot be removed")
    if engine.networks.containers_on(doc["Name"]):
        raise ApiError(403, f"error while removing network: network {doc['Name']} id "
                            f"{doc['Id']} has active endpoints")
    try:
        engine.networks.remove(doc["Name"])
    except NotFound:
        raise ApiError(404, f"network {req.params['id']} not found") from None
    except MiniRunError as e:  # taken meanwhile
        raise ApiError(403, str(e)) from None


def prune_networks(req):
    from .images import parse_until

    filters = check_filters(req.filters(), PRUNE_FILTERS)
    until = parse_until(filters["until"][0]) if filters.get("until") else None
    engine = req.engine
    engine.networks.recover({r["id"] for r in engine.records()})
    removed = []
    for rec in engine.networks.list():
        if rec["name"] == "bridge" or engine.networks.containers_on(rec["name"]):
            continue
        if until is not None and rec["created"] >= until:
            continue
        if "label" in filters and not match_labels(filters["label"],
                                                   json.loads(rec.get("labels") or "{}")):
            continue
        try:
            engine.networks.remove(rec["name"])
        except MiniRunError:
            continue  # a container joined it meanwhile
        removed.append(rec["name"])
    return {"NetworksDeleted": removed or None}


# --- connect and disconnect -------------------------------------------------------------------

def _changeable(engine, rec: dict, what: str) -> dict:
    """The container's options, when its network may change: it does not run and does not
    share another's (or the host's) network."""
    if state_of(rec) not in ALIAS_OK_STATES:
        raise ApiError(501, f"minirun cannot {what} a container while it is {state_of(rec)}: "
                            "its network is set up when it starts; stop it first")
    if rec.get("pid") and state_of(rec) == "created":
        raise ApiError(501, f"minirun cannot {what} container {rec['name']}: its process "
                            "was created in its network namespace already")
    opts = json.loads(rec["options"])
    mode = opts.get("network") or "bridge"
    if mode == "host" or mode.startswith(("container:", "ns:", "cni:")):
        raise ApiError(400, f"container {rec['name']} shares another network namespace "
                            f"({mode}) and cannot be connected to or disconnected from a "
                            "network")
    return opts


def _rewrite_hosts(engine, cid: str) -> None:
    """The container's own hosts file, in place (it is bind-mounted when it runs)."""
    path = os.path.join(engine.root, "containers", cid, "hosts")
    text = engine.networks.hosts_text(cid) or \
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if os.path.exists(path):
        with open(path, "r+") as f:
            f.truncate(0)
            f.write(text)


def _exposed(engine, rec: dict, opts: dict) -> list[str]:
    if not opts.get("publish_all"):
        return []
    from ..image.store import ImageStore

    with ImageStore(engine.root) as store:
        config = store.get(rec["image_id"]).config.get("config") or {}
    return list((config.get("ExposedPorts") or {}).keys())


def _request(req) -> tuple[dict, dict, dict]:
    """connect's and disconnect's body, network and container record."""
    body = req.json()
    net = find(req.engine, req.params["id"], containers=False)
    if not body.get("Container"):
        raise ApiError(400, "Container is required")
    return body, net, req.engine.get(body["Container"])


def connect(req):
    engine = req.engine
    body, net, rec = _request(req)
    cid = rec["id"]
    endpoint_cfg = body.get("EndpointConfig") or {}
    aliases = [a for a in endpoint_cfg.get("Aliases") or [] if a]
    ipam = endpoint_cfg.get("IPAMConfig") or {}
    if any(ipam.get(k) for k in ("IPv4Address", "IPv6Address", "LinkLocalIPs")):
        raise ApiError(501, "a fixed container address (ip, ip6) is not supported by "
                            "minirun: addresses are leased")
    if endpoint_cfg.get("Links"):
        raise ApiError(501, "links are not supported by minirun: use the network's names")
    ep = engine.networks.endpoint(cid)
    if ep is not None and ep["network"] == net["Name"]:
        raise ApiError(403, f"endpoint with name {rec['name']} already exists in network "
                            f"{net['Name']}")
    if net["Name"] in BUILTIN:
        raise ApiError(501, f"minirun cannot connect a container to the {net['Name']} "
                            "network after it is created: use --network at create")
    if ep is not None and ep["network"] != "none":
        raise ApiError(501, f"minirun gives a container one network: {rec['name']} is on "
                            f"{ep['network']}; disconnect it first")
    if aliases and net["Name"] == "bridge":
        raise ApiError(400, "network-scoped alias is supported only for containers in user "
                            "defined networks")
    opts = _changeable(engine, rec, "connect")
    nets = engine.networks
    if ep is not None:
        nets.detach(cid)
    hostname = opts.get("hostname") or cid[:12]
    try:
        nets.attach(cid, net["Name"], name=rec["name"], hostname=hostname,
                    publish=opts.get("publish") or [], exposed=_exposed(engine, rec, opts),
                    extra_hosts=opts.get("add_host") or [])
    except BaseException:
        if ep is not None:  # back to where it was
            nets.attach_none(cid, rec["name"], hostname)
        raise
    if aliases:
        nets.set_aliases(cid, aliases)
    opts["network"] = net["Name"]
    engine._update(cid, options=json.dumps(opts))
    _rewrite_hosts(engine, cid)
    return Response(200, b"")


def disconnect(req):
    engine = req.engine
    _body, net, rec = _request(req)
    cid = rec["id"]
    ep = engine.networks.endpoint(cid)
    mode = json.loads(rec["options"]).get("network") or "bridge"
    if (ep is None or ep["network"] != net["Name"]) and not (net["Name"] == "host" and
                                                             mode == "host"):
        raise ApiError(409, f"container {rec['name']} is not connected to network "
                            f"{net['Name']}")
    if net["Name"] in BUILTIN:
        raise ApiError(501, f"minirun cannot disconnect a container from the {net['Name']} "
                            "network")
    opts = _changeable(engine, rec, "disconnect")
    nets = engine.networks
    nets.detach(cid)
    hostname = opts.get("hostname") or cid[:12]
    nets.attach_none(cid, rec["name"], hostname)
    opts["network"] = "none"
    engine._update(cid, options=json.dumps(opts))
    _rewrite_hosts(engine, cid)
    return Response(200, b"")


ROUTES = [
    ("GET", "/networks", list_networks),
    ("GET", "/networks/", list_networks),
    ("POST", "/networks/create", create_network),
    ("POST", "/networks/prune", prune_networks),
    ("GET", "/networks/{id}", inspect_network),
    ("DELETE", "/networks/{id}", delete_network),
    ("POST", "/networks/{id}/connect", connect),
    ("POST", "/networks/{id}/disconnect", disconnect),
]
