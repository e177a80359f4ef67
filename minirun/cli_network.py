"""`minirun network create|ls|inspect|rm|prune`, as docker's."""

from __future__ import annotations

import json
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


@network.command(name="ls")
@root_option
@click.option("-q", "--quiet", is_flag=True, help="only names")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def ls(root, quiet, fmt) -> None:
    """List networks."""
    nets = _engine(root).networks
    rows = nets.list()
    if quiet:
        for r in rows:
            click.echo(r["name"])
        return
    if fmt == "json":
        click.echo(json.dumps([_describe(nets, r) for r in rows], indent=2))
        return
    lines = [("NETWORK ID", "NAME", "DRIVER", "SUBNET", "BRIDGE", "CONTAINERS")]
    for r in rows:
        lines.append((r["id"][:12], r["name"], r["driver"], r["subnet"], r["bridge"],
                      str(len(nets.containers_on(r["name"])))))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        click.echo("   ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


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
@click.argument("names", nargs=-1, required=True)
def inspect(root, names) -> None:
    """Details of networks, as JSON."""
    nets = _engine(root).networks
    try:
        out = [_describe(nets, nets.get(n)) for n in names]
    except MiniRunError as e:
        _fail(e)
    click.echo(json.dumps(out, indent=2))


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
