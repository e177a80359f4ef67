"""`minirun pull NAME[:TAG|@DIGEST]`: parses the flags and hands the work to
minirun.image.registry; progress bars only when stderr is a terminal."""

from __future__ import annotations

import sys

import click

from .errors import MiniRunError


@click.command()
@click.option(
    "--root", envvar="MINIRUN_ROOT", default=None, help="data directory (default /var/lib/minirun)"
)
@click.option(
    "--platform",
    default=None,
    help="os/arch[/variant] to pick from a multi-platform image (default: this host's)",
)
@click.option(
    "--authfile",
    envvar="REGISTRY_AUTH_FILE",
    default=None,
    help='credentials file with docker\'s "auths" map (default ~/.docker/config.json)',
)
@click.option(
    "--insecure-registry",
    "insecure",
    multiple=True,
    metavar="HOST[:PORT]",
    help="allow http or unverified https for this registry (repeatable)",
)
@click.option(
    "--registries-conf",
    envvar="MINIRUN_REGISTRIES_CONF",
    default=None,
    help="registries config (insecure registries, mirrors); default /etc/minirun/registries.json",
)
@click.option("-q", "--quiet", is_flag=True, help="no progress, print only the image id")
@click.argument("reference")
def pull(
    root: str | None,
    platform: str | None,
    authfile: str | None,
    insecure: tuple[str, ...],
    registries_conf: str | None,
    quiet: bool,
    reference: str,
) -> None:
    """Pull an image from a registry (OCI distribution API v2); prints its id."""
    from .image import registry
    from .image.store import ImageStore

    progress = None
    if not quiet and sys.stderr.isatty():
        progress = registry.TerminalProgress(sys.stderr)
    config = registry.load_config(registries_conf)
    try:
        store = ImageStore(root)
    except OSError as e:
        raise MiniRunError(f"cannot open the image store: {e.strerror}: "
                           f"{e.filename or root}") from None
    with store:
        record = registry.pull(
            store,
            reference,
            platform=platform,
            auth_file=authfile,
            insecure_registries=insecure,
            progress=progress,
            config=config,
        )
    if progress is not None:
        click.echo(f"pulled {reference} ({record.manifest_digest})", err=True)
    click.echo(record.id)


def register(group: click.Group) -> None:
    group.add_command(pull)
