"""`minirun volume create|ls|inspect|rm|prune`: named volumes, the directories
<root>/volumes/NAME/_data that `-v NAME:/dst` and `--mount type=volume` use."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .cli_container import _engine, root_option
from .errors import ContainerStateError, InvalidArgument, MiniRunError, NotFound

META = "minirun-volume.json"  # labels, created: beside _data


def volumes_dir(root: str) -> str:
    return os.path.join(root, "volumes")


def _check_name(name: str) -> str:
    from .engine import NAME_CHARS

    if not name or not set(name) <= NAME_CHARS or not name[0].isalnum():
        raise InvalidArgument(f"invalid volume name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]")
    return name


def volume_users(engine) -> dict[str, list[str]]:
    """Volume name -> the names of the containers whose -v/--mount use it."""
    out: dict[str, list[str]] = {}
    for rec in engine.records():
        for spec in json.loads(rec["options"]).get("volumes") or []:
            source = spec.split(":", 1)[0]
            if source and not source.startswith("/"):
                out.setdefault(source, []).append(rec["name"])
    return out


def volume_info(root: str, name: str) -> dict:
    """docker's volume inspect document; NotFound for a volume that is not there."""
    top = os.path.join(volumes_dir(root), name)
    if "/" in name or not os.path.isdir(os.path.join(top, "_data")):
        raise NotFound(f"no such volume: {name}")
    try:
        with open(os.path.join(top, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    created = meta.get("created") or os.stat(top).st_mtime
    return {"CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            "Driver": "local", "Labels": meta.get("labels") or {},
            "Mountpoint": os.path.join(top, "_data"), "Name": name,
            "Options": meta.get("options") or {}, "Scope": "local"}


def create_volume(engine, name: str | None, labels: dict | None = None) -> str:
    """Make the volume NAME (a random 64-hex name without one) unless it is there; its
    name. Labels are written with a new volume only, as docker's."""
    name = _check_name(name or os.urandom(32).hex())
    top = os.path.join(volumes_dir(engine.root), name)
    os.makedirs(os.path.join(top, "_data"), mode=0o755, exist_ok=True)
    if not os.path.exists(os.path.join(top, META)):
        with open(os.path.join(top, META), "w") as f:
            json.dump({"created": time.time(), "labels": labels or {}}, f)
        engine.record_object_event("volume", "create", name, driver="local")
    return name


def _remove(engine, name: str) -> None:
    from .image.store import mounts_under, remove_tree

    top = os.path.join(volumes_dir(engine.root), name)
    if mounts_under(top):
        raise ContainerStateError(f"remove {name}: something is mounted inside it")
    remove_tree(top)
    engine.record_object_event("volume", "destroy", name, driver="local")


@click.group(name="volume", help="Manage volumes.")
def volume() -> None:
    pass


@volume.command(name="create")
@root_option
@click.option("-d", "--driver", default="local", help="only local")
@click.option("-l", "--label", multiple=True, help="KEY=VALUE")
@click.option("-o", "--opt", multiple=True, help="not supported by the local driver here")
@click.argument("name", required=False)
def create(root, driver, label, opt, name) -> None:
    """Create a volume (a random name without NAME)."""
    from .runflags import parse_labels

    try:
        if driver != "local":
            raise InvalidArgument(f"volume driver {driver!r}: only local is supported")
        if opt:
            raise InvalidArgument(f"volume option {opt[0]!r}: the local driver here takes "
                                  "no options")
        labels = parse_labels(list(label), [])
        engine = _engine(root, revive=False)
        click.echo(create_volume(engine, name, labels))
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(1)


@volume.command(name="ls")
@root_option
@click.option("-q", "--quiet", is_flag=True)
def ls(root, quiet) -> None:
    """List volumes."""
    engine = _engine(root, revive=False)
    vdir = volumes_dir(engine.root)
    names = sorted(n for n in (os.listdir(vdir) if os.path.isdir(vdir) else [])
                   if os.path.isdir(os.path.join(vdir, n, "_data")))
    if quiet:
        for n in names:
            click.echo(n)
        return
    click.echo("DRIVER    VOLUME NAME")
    for n in names:
        click.echo(f"local     {n}")


@volume.command(name="inspect")
@root_option
@click.argument("names", nargs=-1, required=True)
def inspect(root, names) -> None:
    """Volumes as JSON."""
    engine = _engine(root, revive=False)
    out, failed = [], False
    for n in names:
        try:
            out.append(volume_info(engine.root, n))
        except MiniRunError as e:
            click.echo(f"minirun: error: {e}", err=True)
            failed = True
    click.echo(json.dumps(out, indent=4))
    if failed:
        sys.exit(1)


@volume.command(name="rm")
@root_option
@click.option("-f", "--force", is_flag=True, help="no error for a missing volume")
@click.argument("names", nargs=-1, required=True)
def rm(root, force, names) -> None:
    """Remove volumes no container uses."""
    engine = _engine(root)
    users = volume_users(engine)
    failed = False
    for n in names:
        try:
            volume_info(engine.root, n)
            if users.get(n):
                raise ContainerStateError(f"remove {n}: volume is in use - "
                                          f"[{', '.join(users[n])}]")
            _remove(engine, n)
            click.echo(n)
        except NotFound as e:
            if not force:
                click.echo(f"minirun: error: {e}", err=True)
                failed = True
        except MiniRunError as e:
            click.echo(f"minirun: error: {e}", err=True)
            failed = True
    if failed:
        sys.exit(1)


def is_anonymous(name: str) -> bool:
    """A volume made without a name (-v /DST, --mount without source, create without
    NAME): 64 hex digits, as docker's."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


@volume.command(name="prune")
@root_option
@click.option("-f", "--force", is_flag=True, help="do not ask")
@click.option("-a", "--all", "all_", is_flag=True,
              help="every unused volume, not only anonymous ones")
def prune(root, force, all_) -> None:
    """Remove the anonymous volumes (-a: all volumes) no container uses."""
    from .cli_format import confirm_or_abort
    from .cli_image import human_size
    from .dockerview import tree_size

    what = "all local volumes" if all_ else "anonymous local volumes"
    if not confirm_or_abort(f"This will remove {what} not used by at least one container.",
                            force):
        return
    engine = _engine(root)
    users = volume_users(engine)
    vdir = volumes_dir(engine.root)
    removed, reclaimed = [], 0
    for n in sorted(os.listdir(vdir) if os.path.isdir(vdir) else []):
        if users.get(n) or not os.path.isdir(os.path.join(vdir, n, "_data")) or \
                not (all_ or is_anonymous(n)):
            continue
        size = tree_size(os.path.join(vdir, n))
        try:
            _remove(engine, n)
        except MiniRunError as e:
            click.echo(f"minirun: error: {e}", err=True)
            continue
        removed.append(n)
        reclaimed += size
    if removed:
        click.echo("Deleted Volumes:")
        for n in removed:
            click.echo(n)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(reclaimed)}")


def register(group: click.Group) -> None:
    group.add_command(volume)
