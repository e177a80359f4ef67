"""`minirun network create|ls|inspect|rm|prune`, as docker's."""

from __future__ import annotations

import sys

import click

from .cli_container import _engine, root_option
from .errors import MiniRunError


def _fail(e: MiniRunError) -> None:
    click.echo(f"minirun: error: {e}", err=True)
    sys.exit(1)


@click.group(name="network", help="Manage networks.")
def network() -> None:
    pass


@network.command(name="create")
@root_option
@click.option("--subnet", default=None, help="CIDR, e.g. 10.101.0.0/24 (default: a free /24)")
@click.option("--gateway", default=None, help="the bridge's address (default: the first)")
@click.option("--internal", is_flag=True, help="no traffic to or from outside the network")
@click.option("-d", "--driver", default="bridge", help="bridge (the only driver)")
@click.argument("name")
def create(root, subnet, gateway, internal, driver, name) -> None:
    """Create a network: its own bridge and subnet; its containers resolve each other by
    name."""
    try:
        if driver != "bridge":
            raise MiniRunError(f"network driver {driver!r} is not supported: use bridge")
        rec = _engine(root).networks.create(name, subnet=subnet, gateway=gateway,
                                            internal=internal)
    except MiniRunError as e:
        _fail(e)
    click.echo(rec["id"])


NETWORK_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                   "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS",
                   "CreatedAt": "CREATED AT", "Subnet": "SUBNET", "Bridge": "BRIDGE",
                   "Containers": "CONTAINERS"}
# docker's columns, then minirun's: the subnet, the bridge and how many containers
NETWORK_TABLE = "{{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Subnet}}\t{{.Bridge}}\t{{.Containers}}"


@network.command(name="ls")
@root_option
@click.option("-q", "--quiet", is_flag=True, help="only names")
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help="table, json (one object per line), or a Go template")
@click.option("--no-trunc", is_flag=True, help="full ids")
def ls(root, quiet, fmt, no_trunc) -> None:
    """List networks."""
    from .cli_format import print_formatted

    nets = _engine(root).networks
    rows = nets.list()
    if quiet:
        for r in rows:
            click.echo(r["name"])
        return
    items = [{"ID": r["id"] if no_trunc else r["id"][:12], "Name": r["name"],
              "Driver": r["driver"], "Scope": "local", "IPv6": "false",
              "Internal": "true" if r["internal"] else "false", "Labels": "",
              "CreatedAt": "", "Subnet": r["subnet"], "Bridge": r["bridge"],
              "Containers": str(len(nets.containers_on(r["name"])))} for r in rows]
    print_formatted(fmt, items, NETWORK_HEADERS, NETWORK_TABLE)


def _describe(nets, r: dict) -> dict:
    return {"Name": r["name"], "Id": r["id"], "Driver": r["driver"],
            "Internal": bool(r["internal"]),
            "IPAM": {"Config": [{"Subnet": r["subnet"], "Gateway": r["gateway"]}]},
            "Options": {"bridge": r["bridge"]},
            "Containers": {ep["container"]: {"Name": ep["name"],
                                             "IPv4Address": f"{ep['ip']}/{ep['prefixlen']}"}
                           for ep in nets.containers_on(r["name"])}}


@network.command(name="inspect")
@root_option
@click.option("-f", "--format", "fmt", default=None, metavar="TEMPLATE",
              help="a Go template for each network, or json")
@click.argument("names", nargs=-1, required=True)
def inspect(root, fmt, names) -> None:
    """Details of networks, as JSON."""
    from .cli_format import print_inspected

    nets = _engine(root).networks
    try:
        out = [_describe(nets, nets.get(n)) for n in names]
    except MiniRunError as e:
        _fail(e)
    print_inspected(fmt, out)


@network.command(name="rm")
@root_option
@click.argument("names", nargs=-1, required=True)
def rm(root, names) -> None:
    """Remove networks no container uses."""
    nets = _engine(root).networks
    failed = False
    for n in names:
        try:
            click.echo(nets.remove(n))
        except MiniRunError as e:
            click.echo(f"minirun: error: {e}", err=True)
            failed = True
    sys.exit(1 if failed else 0)


@network.command(name="prune")
@root_option
@click.option("-f", "--force", is_flag=True, help="do not ask")
@click.option("--filter", "filters", multiple=True, help="accepted; not applied")
def prune(root, force, filters) -> None:
    """Remove unused user networks, and the leftovers of containers that no longer exist
    (their leases, links and netns, after a crash)."""
    from .cli_format import confirm_or_abort

    if not confirm_or_abort("This will remove all custom networks not used by at least one "
                            "container.", force):
        return
    engine = _engine(root)
    known = {r["id"] for r in engine.records()}
    cleaned, removed = engine.networks.prune(known)
    for cid in cleaned:
        click.echo(f"cleaned the network of {cid[:12]}", err=True)
    if removed:
        click.echo("Deleted Networks:")
        for name in removed:
            click.echo(name)


def register(group: click.Group) -> None:
    group.add_command(network)
