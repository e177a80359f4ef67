"""`minirun pull NAME[:TAG|@DIGEST]`: parses the flags and hands the work to
minirun.image.registry; progress bars only when stderr is a terminal."""

from __future__ import annotations

import sys

import click

from .errors import InvalidArgument, MiniRunError, NotFound
from .monitor import trace as spans


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

    progress = None
    if not quiet and sys.stderr.isatty():
        progress = registry.TerminalProgress(sys.stderr)
    config = registry.load_config(registries_conf)
    with open_store(root) as store:
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


PULL_POLICIES = ("missing", "always", "never")


def open_store(root: str | None):
    """The image store, or one line saying why it cannot be opened."""
    from .image.store import ImageStore

    try:
        return ImageStore(root)
    except OSError as e:
        raise MiniRunError(f"cannot open the image store: {e.strerror}: "
                           f"{e.filename or root}") from None


class DockerProgress:
    """docker's pull lines when its output is not a terminal: `<layer>: Pulling fs
    layer`, `<layer>: Pull complete` or `Already exists`. The first blob a pull fetches
    is the image's config, which docker does not show."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.blobs = 0
        self.label = ""

    def start(self, digest: str, size: int | None) -> None:
        self.blobs += 1
        self.label = digest.split(":", 1)[-1][:12]
        if self.blobs > 1:
            self._line("Pulling fs layer")

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self, status: str) -> None:
        if self.blobs > 1:
            self._line("Already exists" if status == "already present" else "Pull complete")

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()


def check_pull_policy(policy: str) -> str:
    if policy not in PULL_POLICIES:
        raise InvalidArgument(f'invalid pull option: {policy!r}: must be one of "always", '
                              '"missing" or "never"')
    return policy


def ensure_image(root: str | None, image: str, policy: str = "missing") -> None:
    """`run --pull` (and `create --pull`): pull IMAGE when it is not in the store
    (missing), every time (always) or never; docker's lines on stderr. `never` with a
    missing image leaves it to the run to fail with "no such image" (docker's 125)."""
    check_pull_policy(policy)
    if policy == "never":
        return
    with open_store(root) as store:
        if policy == "missing":
            try:
                store.get(image)
                return
            except NotFound:
                pass
        pull_with_docker_lines(store, image, announce=policy == "missing")


def pull_with_docker_lines(store, image: str, announce: bool = False) -> None:
    """Pull IMAGE into `store` printing what docker prints to stderr."""
    with spans.span("pull", **{"container.image.name": image}):
        _pull_with_docker_lines(store, image, announce)


def _pull_with_docker_lines(store, image: str, announce: bool) -> None:
    from .image import registry
    from .image.reference import parse_reference

    ref = parse_reference(image)
    shown = ref.familiar()
    err = sys.stderr
    if announce:
        err.write(f"Unable to find image '{shown}' locally\n")
    err.write(f"{ref.tag or ref.digest or 'latest'}: Pulling from {ref.repository}\n")
    err.flush()
    stats = registry.PullStats()
    record = registry.pull(store, ref, progress=DockerProgress(err),
                           config=registry.load_config(None), stats=stats)
    news = "Downloaded newer image for" if stats.blobs_fetched else "Image is up to date for"
    err.write(f"Digest: {record.manifest_digest}\nStatus: {news} {shown}\n")
    err.flush()


def register(group: click.Group) -> None:
    group.add_command(pull)
