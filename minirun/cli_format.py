"""`minirun ps`, `inspect`, `container prune` and `system prune`, as docker prints them:
Go templates (`--format`, `-f`), filters, docker's inspect document, and the prune
prompt. The documents come from minirun.dockerview; the templates from minirun.gotemplate."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .cli_container import _engine, root_option
from .errors import InvalidArgument, MiniRunError, NotFound


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def format_option(help_text: str = "table, json, or a Go template ('{{.Names}}')"):
    return click.option("--format", "fmt", default=None, metavar="FORMAT", help=help_text)


def print_formatted(fmt: str | None, items: list[Any], headers: dict[str, str],
                    default_table: str, json_of: Callable[[Any], Any] | None = None,
                    strict: bool = True) -> None:
    """Print `items` as `--format` asks (None: docker's default table)."""
    from .gotemplate import format_items

    echo_lines(format_items(fmt or "table", items, headers, default_table, strict=strict,
                            json_of=json_of))


# --- ps -------------------------------------------------------------------------------------

@click.command(name="ps")
@root_option
@click.option("-a", "--all", "all_", is_flag=True, help="also stopped containers")
@click.option("-q", "--quiet", is_flag=True, help="ids only")
@format_option()
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="name, id, status, label, ancestor, exited, before, since, network, "
                   "volume, health, publish, expose (one key's values OR, different keys "
                   "AND)")
@click.option("--no-trunc", is_flag=True, help="full ids and commands")
@click.option("-n", "--last", type=int, default=-1, help="the last N created (all states)")
@click.option("-l", "--latest", is_flag=True, help="the last created (all states)")
@click.option("-s", "--size", is_flag=True, help="the size of each container's own files")
def ps(root, all_, quiet, fmt, filters, no_trunc, last, latest, size) -> None:
    """List containers."""
    from . import dockerview

    wanted = dockerview.parse_filters(filters, dockerview.PS_FILTERS)
    engine = _engine(root)
    if latest:
        last = 1
    recs = engine.records(all_containers=True)
    if not (all_ or last > 0 or "status" in wanted or "exited" in wanted):
        recs = [r for r in recs if dockerview.state_of(r) in ("running", "paused")]
    recs = dockerview.filter_records(engine, recs, wanted)
    recs.sort(key=lambda r: r["created"], reverse=True)  # docker: newest first
    if last >= 0:
        recs = recs[:last]
    if quiet:
        for r in recs:
            click.echo(r["id"] if no_trunc else r["id"][:12])
        return
    rows = [dockerview.ps_context(engine, r, no_trunc=no_trunc, size=size) for r in recs]
    default = dockerview.PS_TABLE + ("\t{{.Size}}" if size else "")
    print_formatted(fmt, rows, dockerview.PS_HEADERS, default)


# --- inspect --------------------------------------------------------------------------------

INSPECT_TYPES = ("container", "image", "network", "volume")


@click.command(name="inspect")
@root_option
@click.option("-f", "--format", "fmt", default=None, metavar="TEMPLATE",
              help="a Go template for each object ('{{.State.Status}}'), or json")
@click.option("--type", "type_", type=click.Choice(INSPECT_TYPES), default=None,
              help="only objects of this type")
@click.option("-s", "--size", is_flag=True, help="accepted for docker compatibility")
@click.option("--isolation", is_flag=True,
              help="what isolates each running container, read from the kernel "
                   "(text; -f json for JSON)")
@click.argument("names", nargs=-1, required=True, metavar="NAME|ID...")
def inspect(root, fmt, type_, size, isolation, names) -> None:
    """Low-level information on containers, images, networks (docker's JSON)."""
    engine = _engine(root)
    if isolation:
        sys.exit(inspect_isolation(engine, names, fmt))
    docs, missing = [], []
    for name in names:
        try:
            docs.append(inspect_object(engine, name, type_))
        except NotFound:
            missing.append(name)
    print_inspected(fmt, docs)
    for name in missing:
        click.echo(f"Error: No such object: {name}" if type_ is None else
                   f"Error: No such {type_}: {name}", err=True)
    if missing:
        sys.exit(1)


def inspect_isolation(engine: Any, names: tuple[str, ...], fmt: str | None) -> int:
    """`inspect --isolation`: minirun.isolation's report of each running container."""
    from .isolation import format_report, report

    running = {r["name"]: r["pid"] for r in engine.records()
               if r["status"] == "running" and r.get("pid")}
    docs, status = [], 0
    for name in names:
        try:
            rec = engine.get(name)
        except NotFound:
            click.echo(f"Error: No such container: {name}", err=True)
            status = 1
            continue
        if rec["status"] != "running" or not rec.get("pid"):
            click.echo(f"Error: container {rec['name']} is not running", err=True)
            status = 1
            continue
        try:
            docs.append((rec["name"], report(rec["pid"], running, own_files=os.path.join(
                engine.root, "containers", ""))))
        except OSError as e:
            click.echo(f"Error: container {rec['name']}: {e}", err=True)
            status = 1
    if fmt is not None and fmt.strip() == "json":
        click.echo(json.dumps([dict(d, name=n) for n, d in docs], indent=4))
    elif docs:
        click.echo("\n\n".join(format_report(n, d) for n, d in docs))
    return status


def print_inspected(fmt: str | None, docs: list[dict]) -> None:
    """A JSON array (indented as docker's), or each document through the template."""
    if fmt is None or fmt.strip() == "":
        click.echo(json.dumps(docs, indent=4))
        return
    from .gotemplate import expand_escapes, go_json, parse

    if fmt.strip() == "json":
        echo_lines([go_json(d) for d in docs])
        return
    template = parse(expand_escapes(fmt))
    echo_lines([template.render(d) for d in docs])


def inspect_object(engine: Any, name: str, type_: str | None) -> dict:
    """The document of the container, image, network or volume `name` (in docker's order
    when no type is given: container, image, network, volume); NotFound if none."""
    from . import dockerview

    for kind in ([type_] if type_ else INSPECT_TYPES):
        try:
            if kind == "container":
                return dockerview.inspect_container(engine, engine.get(name))
            if kind == "image":
                from .cli_image import _inspect_doc
                from .image.store import ImageStore

                with ImageStore(engine.root) as store:
                    return _inspect_doc(store, store.get(name))
            if kind == "network":
                from .cli_network import _describe

                nets = engine.networks
                return _describe(nets, nets.get(name))
            if kind == "volume":
                return inspect_volume(engine, name)
        except NotFound:
            continue
        except InvalidArgument as e:  # not a valid image reference, say: not this kind
            if "ambiguous" in str(e):
                raise
            continue
    raise NotFound(f"no such object: {name}")


def inspect_volume(engine: Any, name: str) -> dict:
    """A named volume (made by `-v NAME:/dst` or `volume create`) as docker's volume
    inspect shows it."""
    from .cli_volume import volume_info

    return volume_info(engine.root, name)


# --- prune ----------------------------------------------------------------------------------

def confirm_or_abort(warning: str, force: bool) -> bool:
    """docker's prune prompt: `WARNING! This will remove ...` then `Are you sure you want
    to continue? [y/N] `; only y or Y (or -f) goes on; EOF or anything else does not."""
    if force:
        return True
    click.echo(f"WARNING! {warning}", nl=True)
    click.echo("Are you sure you want to continue? [y/N] ", nl=False)
    sys.stdout.flush()
    answer = sys.stdin.readline()
    if answer.strip() in ("y", "Y"):
        return True
    if not answer:
        click.echo()
    return False


def prune_containers(engine: Any) -> tuple[list[str], int]:
    """Remove every stopped container: (their ids, bytes of their own files freed)."""
    from .dockerview import state_of, upper_size

    removed, freed = [], 0
    for r in engine.records():
        if state_of(r) in ("running", "paused", "restarting"):
            continue
        size = upper_size(engine, r["id"])
        try:
            engine.remove(r["id"], force=False)
        except MiniRunError as e:
            click.echo(f"minirun: error: {e}", err=True)
            continue
        removed.append(r["id"])
        freed += size
    return removed, freed


@click.command(name="prune")
@root_option
@click.option("-f", "--force", is_flag=True, help="do not ask")
@click.option("--filter", "filters", multiple=True, help="accepted; not applied")
def container_prune(root, force, filters) -> None:
    """Remove all stopped containers."""
    if not confirm_or_abort("This will remove all stopped containers.", force):
        return
    from .cli_image import human_size

    removed, freed = prune_containers(_engine(root))
    if removed:
        click.echo("Deleted Containers:")
        echo_lines(removed)
        click.echo()
    click.echo(f"Total reclaimed space: {human_size(freed)}")


SYSTEM_PRUNE_WARNING = """This will remove:
  - all stopped containers
  - all networks not used by at least one container
{volumes}  - {images}
  - unused build cache
"""


@click.command(name="prune")
@root_option
@click.option("-a", "--all", "all_images", is_flag=True,
              help="every image no container uses, not only dangling ones")
@click.option("--volumes", is_flag=True, help="also volumes no container uses")
@click.option("-f", "--force", is_flag=True, help="do not ask")
@click.option("--filter", "filters", multiple=True, help="accepted; not applied")
def system_prune(root, all_images, volumes, force, filters) -> None:
    """Remove stopped containers, unused networks, dangling (-a: unused) images and, with
    --volumes, unused volumes."""
    images = "all images without at least one container associated to them" if all_images \
        else "all dangling images"
    warning = SYSTEM_PRUNE_WARNING.format(
        volumes="  - all anonymous volumes not used by at least one container\n"
        if volumes else "", images=images)
    if not confirm_or_abort(warning.rstrip("\n") + "\n", force):
        return
    from .cli_image import human_size
    from .image.store import ImageStore

    engine = _engine(root)
    removed, freed = prune_containers(engine)
    if removed:
        click.echo("Deleted Containers:")
        echo_lines(removed)
        click.echo()
    known = {r["id"] for r in engine.records()}
    _, nets = engine.networks.prune(known)
    if nets:
        click.echo("Deleted Networks:")
        echo_lines(nets)
        click.echo()
    if volumes:
        gone = prune_volumes(engine)
        if gone:
            click.echo("Deleted Volumes:")
            echo_lines(gone)
            click.echo()
    with ImageStore(engine.root) as store:
        result = store.prune(all_images=all_images)
    if result.images:
        click.echo("Deleted Images:")
        echo_lines([f"deleted: {i}" for i in result.images])
        click.echo()
    click.echo(f"Total reclaimed space: {human_size(freed + result.reclaimed)}")


def prune_volumes(engine: Any) -> list[str]:
    """Remove the named volumes no container's -v names: their names."""
    import os
    import subprocess

    used = set()
    for r in engine.records():
        for spec in json.loads(r["options"]).get("volumes") or []:
            used.add(spec.split(":")[0])
    top = os.path.join(engine.root, "volumes")
    gone = []
    for name in sorted(os.listdir(top)) if os.path.isdir(top) else []:
        if name not in used:
            subprocess.run(["rm", "-rf", "--one-file-system", os.path.join(top, name)],
                           check=False)
            engine.record_object_event("volume", "destroy", name, driver="local")
            gone.append(name)
    return gone


def register(group: click.Group) -> None:
    """ps, inspect (top-level and under `container`), container prune, system prune."""
    group.add_command(ps)
    group.add_command(inspect)
    container = group.commands["container"]
    container.add_command(ps)
    container.add_command(ps, name="ls")
    container.add_command(inspect)
    container.add_command(container_prune)
    system = group.commands.get("system")
    if system is None:
        system = click.Group(name="system", help="Manage minirun.")
        group.add_command(system)
    system.add_command(system_prune)
