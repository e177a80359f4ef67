"""`minirun images`, `load`, `import`, `save`, `rmi`, `tag` and `minirun image ...`: parse
the flags, call minirun.image, print as docker does."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .errors import MiniRunError

if TYPE_CHECKING:
    from .image.store import ImageRecord, ImageStore

root_option = click.option("--root", envvar="MINIRUN_ROOT", default=None,
                           help="data directory (default /var/lib/minirun)")


def _store(root: str | None) -> ImageStore:
    from .image.store import ImageStore

    return ImageStore(root)


def _host_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """OSError and SQLite errors (a full disk, a read-only root) as one-line errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise MiniRunError(f"{where}{e.strerror or e}") from None
        except sqlite3.Error as e:
            raise MiniRunError(f"image database: {e}") from None

    return wrapper


# --- formatting ---------------------------------------------------------------------------------

def human_size(size: float) -> str:
    """docker's sizes: decimal units, three significant digits (4.26MB)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{units[i]}"


def human_duration(seconds: float) -> str:
    """go-units HumanDuration, which docker uses for CREATED."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _created_epoch(created: str | None) -> float | None:
    if not created:
        return None
    import datetime

    text = created.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go writes nanoseconds; fromisoformat takes at most microseconds.
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        text = f"{head}.{digits[:6]}{tail[len(digits):]}"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _since(created: str | None) -> str:
    epoch = _created_epoch(created)
    if epoch is None or epoch <= 0:
        return "N/A"
    return human_duration(max(0.0, time.time() - epoch)) + " ago"


def _table(rows: list[list[str]]) -> str:
    """Columns as docker's tabwriter lays them out: at least 10 wide, 3 spaces apart."""
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def _repo_tag(name: str) -> tuple[str, str]:
    from .image.reference import parse_reference

    ref = parse_reference(name)
    return ref.familiar_name(), ref.tag or "<none>"


def _image_rows(records: list[ImageRecord]) -> list[tuple[ImageRecord, str | None, str, str]]:
    """(record, name, repository, tag): a row per name, one <none> row for an unnamed image."""
    rows: list[tuple[ImageRecord, str | None, str, str]] = []
    for record in records:
        if record.names:
            rows.extend((record, n, *_repo_tag(n)) for n in record.names)
        else:
            rows.append((record, None, "<none>", "<none>"))
    return rows


def _matches(filter_ref: str | None, name: str | None) -> bool:
    if filter_ref is None:
        return True
    if name is None:
        return False
    from .image.reference import parse_reference

    ref = parse_reference(name)
    want = parse_reference(filter_ref)
    if ref.name != want.name:
        return False
    # `minirun images busybox` lists every tag; `busybox:1.36` that one.
    return ":" not in filter_ref.rsplit("/", 1)[-1] or ref.tag == want.tag


# --- commands -----------------------------------------------------------------------------------

IMAGE_HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG",
                 "Digest": "DIGEST", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                 "Size": "SIZE", "Containers": "CONTAINERS", "VirtualSize": "SIZE",
                 "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE"}
IMAGE_FILTERS = ("dangling", "reference", "label", "before", "since")


def _image_context(record: ImageRecord, repo: str, tag: str, no_trunc: bool) -> dict:
    """docker's imageContext for one row (`--format` fields, `--format json` keys)."""
    epoch = _created_epoch(record.created)
    return {
        "Containers": "N/A",
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(epoch))
        if epoch is not None else "",
        "CreatedSince": _since(record.created),
        "Digest": record.manifest_digest or "<none>",
        "ID": record.id if no_trunc else record.short_id,
        "Repository": repo,
        "SharedSize": "N/A",
        "Size": human_size(record.size),
        "Tag": tag,
        "UniqueSize": "N/A",
        "VirtualSize": human_size(record.size),
    }


def _image_passes(store: ImageStore, record: ImageRecord, name: str | None, key: str,
                  value: str) -> bool:
    import fnmatch

    if key == "dangling":
        if value.lower() not in ("true", "false", "1", "0"):
            raise MiniRunError(f"invalid filter 'dangling={value}': true or false")
        return (not record.names) == (value.lower() in ("true", "1"))
    if key == "reference":
        if name is None:
            return False
        repo, tag = _repo_tag(name)
        return fnmatch.fnmatchcase(repo, value) or fnmatch.fnmatchcase(f"{repo}:{tag}", value)
    if key == "label":
        labels = (record.config.get("config") or {}).get("Labels") or {}
        k, eq, v = value.partition("=")
        return k in labels and (not eq or labels[k] == v)
    other = _created_epoch(store.get(value).created) or 0
    mine = _created_epoch(record.created) or 0
    return mine < other if key == "before" else mine > other


@click.command("images")
@root_option
@click.option("-a", "--all", "all_", is_flag=True, help="accepted (there are no "
              "intermediate images)")
@click.option("-q", "--quiet", is_flag=True, help="only image ids")
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help="table, json (one object per line), or a Go template")
@click.option("--no-trunc", is_flag=True, help="full image ids")
@click.option("--digests", is_flag=True, help="a DIGEST column")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="dangling=true|false, reference=PATTERN, label=K[=V], before=, since=")
@click.argument("repository", required=False)
@_host_errors
def images(root: str | None, all_: bool, quiet: bool, fmt: str | None, no_trunc: bool,
           digests: bool, filters: tuple[str, ...], repository: str | None) -> None:
    """List images: REPOSITORY TAG IMAGE ID CREATED SIZE."""
    from .cli_format import print_formatted
    from .dockerview import parse_filters

    wanted = parse_filters(filters, IMAGE_FILTERS)
    with _store(root) as store:
        records = store.images()
        rows = [(r, repo, tag) for r, name, repo, tag in _image_rows(records)
                if _matches(repository, name) and
                all(any(_image_passes(store, r, name, key, v) for v in values)
                    for key, values in wanted.items())]
    if quiet:
        seen = []
        for record, _, _ in rows:
            shown = record.id if no_trunc else record.short_id
            if shown not in seen:
                seen.append(shown)
        for image_id in seen:
            click.echo(image_id)
        return
    default = "{{.Repository}}\t{{.Tag}}\t" + ("{{.Digest}}\t" if digests else "") + \
        "{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    print_formatted(fmt, [_image_context(r, repo, tag, no_trunc) for r, repo, tag in rows],
                    IMAGE_HEADERS, default)


@click.command("load")
@root_option
@click.option("-i", "--input", "input_path", default=None, metavar="FILE|DIR",
              help="archive or OCI layout directory to read (default: stdin)")
@click.option("-q", "--quiet", is_flag=True, help="accepted for docker compatibility")
@_host_errors
def load(root: str | None, input_path: str | None, quiet: bool) -> None:
    """Load images from a docker-save or OCI layout archive (plain, gzip, xz or bzip2) or
    an OCI layout directory."""
    from .image import archive

    if input_path is None or input_path == "-":
        if sys.stdin.isatty():
            raise MiniRunError("no archive on stdin: use -i FILE or pipe one in")
        source: Any = sys.stdin.buffer
    else:
        source = input_path
    with _store(root) as store:
        loaded = archive.load_with_names(store, source)
    for record, names in loaded:
        for name in names:
            click.echo(f"Loaded image: {_familiar(name)}")
        if not names:
            click.echo(f"Loaded image ID: {record.id}")


def _familiar(name: str) -> str:
    from .image.reference import parse_reference

    return parse_reference(name).familiar()


@click.command("import")
@root_option
@click.option("--cmd", "cmd", default=None, metavar="CMD",
              help='the image\'s default command: a JSON array (\'["sh"]\') or a shell-like '
                   "line; as docker's --change 'CMD ...'")
@click.argument("file")
@click.argument("name", required=False)
@_host_errors
def import_(root: str | None, cmd: str | None, file: str, name: str | None) -> None:
    """Make a one-layer image from a root filesystem tarball (FILE, or - for stdin)."""
    from .image import archive

    command = archive.parse_cmd(cmd) if cmd is not None else None
    source: Any = sys.stdin.buffer if file == "-" else file
    with _store(root) as store:
        record = archive.import_rootfs(store, source, name, cmd=command)
    click.echo(record.id)


@click.command("save")
@root_option
@click.option("-o", "--output", default=None, metavar="FILE",
              help="write to FILE (default: stdout, which must not be a terminal)")
@click.argument("image_refs", nargs=-1, required=True, metavar="IMAGE...")
@_host_errors
def save(root: str | None, output: str | None, image_refs: tuple[str, ...]) -> None:
    """Save images to a docker-save archive that is also an OCI layout (loadable by docker,
    podman, skopeo and minirun). As docker: a repository without a tag (busybox) saves
    every tag of it, NAME:TAG that tag, an image id the image without names."""
    from .image import archive

    with _store(root) as store:
        if output is not None and output != "-":
            archive.save(store, list(image_refs), output)
            return
        if sys.stdout.isatty():
            raise MiniRunError("refusing to write an archive to a terminal: use -o FILE or "
                               "redirect stdout")
        sys.stdout.flush()
        archive.save(store, list(image_refs), sys.stdout.buffer)
        sys.stdout.buffer.flush()


@click.command("rmi")
@root_option
@click.option("-f", "--force", is_flag=True,
              help="remove an image several names share; untag one containers use")
@click.argument("image_refs", nargs=-1, required=True, metavar="IMAGE...")
@_host_errors
def rmi(root: str | None, force: bool, image_refs: tuple[str, ...]) -> int:
    """Remove images (refused while a container uses one, unless forced: then only its names
    go, and the image stays until its containers are removed)."""
    failed = 0
    with _store(root) as store:
        for ref in image_refs:
            try:
                result = store.remove(ref, force=force)
            except MiniRunError as e:
                click.echo(f"minirun: error: {e}", err=True)
                failed = 1
                continue
            for name in result.untagged:
                click.echo(f"Untagged: {_familiar(name)}")
            for image_id in result.deleted:
                click.echo(f"Deleted: {image_id}")
    return failed


@click.command("tag")
@root_option
@click.argument("source")
@click.argument("target")
@_host_errors
def tag(root: str | None, source: str, target: str) -> None:
    """Give image SOURCE the name TARGET."""
    with _store(root) as store:
        store.tag(source, target)


@click.command("inspect")
@root_option
@click.argument("image_refs", nargs=-1, required=True, metavar="IMAGE...")
@_host_errors
def inspect(root: str | None, image_refs: tuple[str, ...]) -> int:
    """Image details as JSON (docker's fields)."""
    out, failed = [], 0
    with _store(root) as store:
        for ref in image_refs:
            try:
                record = store.get(ref)
            except MiniRunError as e:
                click.echo(f"minirun: error: {e}", err=True)
                failed = 1
                continue
            out.append(_inspect_doc(store, record))
    click.echo(json.dumps(out, indent=4))
    return failed


def _inspect_doc(store: ImageStore, record: ImageRecord) -> dict:
    from .image.reference import parse_reference

    refs = [parse_reference(n) for n in record.names]
    config = record.config
    lowers = list(reversed(store.layer_paths(record)))
    return {
        "Id": record.id,
        "RepoTags": [r.familiar() for r in refs if r.tag],
        "RepoDigests": sorted({f"{r.familiar_name()}@{record.manifest_digest}" for r in refs})
        if record.manifest_digest else [],
        "Created": record.created,
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        **({"Variant": config["variant"]} if config.get("variant") else {}),
        "Author": config.get("author", ""),
        "Size": record.size,
        "Config": config.get("config") or {},
        "RootFS": {"Type": "layers", "Layers": record.diff_ids},
        "GraphDriver": {"Name": "overlay", "Data": {"LowerDir": ":".join(lowers)}},
        "Containers": record.containers,
        "Metadata": {"Added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.added))},
    }


@click.command("prune")
@root_option
@click.option("-a", "--all", "all_images", is_flag=True,
              help="every image no container uses, not only unnamed ones")
@click.option("-f", "--force", is_flag=True, help="do not ask")
@_host_errors
def prune(root: str | None, all_images: bool, force: bool) -> None:
    """Remove unnamed images no container uses (with -a: every unused image), and every
    blob and layer no image needs."""
    if not force:
        what = "all images without at least one container associated to them" if all_images \
            else "all dangling images"
        from .cli_format import confirm_or_abort

        if not confirm_or_abort(f"This will remove {what}.", force):
            return
    with _store(root) as store:
        result = store.prune(all_images=all_images)
    if result.images:
        click.echo("Deleted Images:")
        for image_id in result.images:
            click.echo(f"deleted: {image_id}")
        click.echo()
    if result.deferred:
        click.echo("blobs and layers not deleted: a load, pull or container start is in "
                   "progress; prune again later", err=True)
    click.echo(f"Total reclaimed space: {human_size(result.reclaimed)}")


@click.group("image")
def image_group() -> None:
    """Manage images."""


def register(group: click.Group) -> None:
    """Add the image commands to `minirun` (docker's names, top-level and under `image`)."""
    for command in (images, load, import_, save, rmi, tag):
        group.add_command(command)
    for name, command in (("ls", images), ("load", load), ("import", import_), ("save", save),
                          ("rm", rmi), ("tag", tag), ("inspect", inspect), ("prune", prune)):
        image_group.add_command(command, name)
    group.add_command(image_group)
