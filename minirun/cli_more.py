"""docker's other verbs: `create`, `version`, `port`, `cp`, `pause`/`unpause`, `rename`,
`update`, `diff`, `export`, `commit`, `history`, `login`/`logout`, `system df`, and the
`container`/`image`/`volume` management groups' extra names."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .cli_container import _engine, docker_exit_code, root_option, run_options
from .errors import InvalidArgument, MiniRunError


def _fail(e: MiniRunError, code: int | None = None) -> None:
    click.echo(f"minirun: error: {e}", err=True)
    sys.exit(code if code is not None else 1)


def _reader_gone() -> None:
    """stdout's reader left (`export | head`): quietly, with a shell's SIGPIPE status."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)


@click.command(name="create", context_settings={"allow_interspersed_args": False,
                                                "help_option_names": ["--help"]})
@run_options
def create(root, image, command, volumes, remove, **kw) -> None:
    """Create a new container from IMAGE without starting it (`start` starts it)."""
    from .cli_container import build_run_options, pull_image
    from .engine import check_run_options

    policy = kw.pop("pull_policy")
    try:
        opts = build_run_options(image, command, volumes, remove, kw)
        opts.detach = True  # started later by the daemon, as `run -d`'s
        check_run_options(opts)
    except MiniRunError as e:  # bad flags are refused before anything is pulled
        _fail(e, docker_exit_code(e))
    pull_image(root, image, policy)
    try:
        click.echo(_engine(root, revive=False).prepare(image, opts))
    except MiniRunError as e:
        _fail(e, docker_exit_code(e))


def start_attached(engine, name: str) -> int:
    """docker start -a: start it, print what it writes from now on until it exits (from
    its log), and its exit status."""
    from .logs import follow_log

    try:
        ns = time.time_ns()
        cid = engine.start(name)
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        return 1
    secs, frac = divmod(ns, 1_000_000_000)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"
    for stream, _, text in follow_log(engine, cid, follow=True, since=since):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(text)
        out.flush()
    engine.wait_exit(cid)
    return engine.get(cid)["exit_code"] or 0


def version_info() -> dict:
    """`version`'s data, shaped as docker's (Client, Server with Components), so that
    --format templates written for docker (`{{.Server.Version}}`) find their fields."""
    import platform

    from . import OCI_VERSION, __version__
    from .runflags import host_platform

    arch = host_platform().split("/")[1]
    return {
        "Client": {"Platform": {"Name": "minirun"}, "Version": __version__,
                   "PythonVersion": platform.python_version(), "Os": "linux", "Arch": arch},
        "Server": {"Platform": {"Name": "minirun"}, "Version": __version__,
                   "KernelVersion": platform.release(), "Os": "linux", "Arch": arch,
                   "Components": [
                       {"Name": "Engine", "Version": __version__,
                        "Details": {"KernelVersion": platform.release(), "Os": "linux",
                                    "Arch": arch}},
                       {"Name": "minirun-oci", "Version": __version__,
                        "Details": {"OCIVersion": OCI_VERSION}}]},
    }


@click.command(name="version")
@click.option("-f", "--format", "fmt", default=None, help="json")
def version(fmt) -> None:
    """minirun's version, as docker's client and server sections."""
    info = version_info()
    if fmt in ("json", "{{json .}}"):
        click.echo(json.dumps(info))
        return
    if fmt:
        raise MiniRunError(f"--format {fmt!r}: only json here")
    c, s = info["Client"], info["Server"]
    lines = ["Client: minirun",
             f" Version:           {c['Version']}",
             f" Python version:    {c['PythonVersion']}",
             f" OS/Arch:           {c['Os']}/{c['Arch']}",
             "",
             "Server: minirun"]
    for comp in s["Components"]:
        lines.append(f" {comp['Name']}:")
        lines.append(f"  Version:          {comp['Version']}")
        for key, value in comp["Details"].items():
            label = {"KernelVersion": "Kernel version", "OCIVersion": "OCI spec",
                     "Os": "OS"}.get(key, key)
            if key == "Arch":
                continue
            if key == "Os":
                label, value = "OS/Arch", f"{value}/{comp['Details']['Arch']}"
            lines.append(f"  {label + ':':<17} {value}")
    click.echo("\n".join(lines))


@click.command(name="port")
@root_option
@click.argument("container")
@click.argument("private_port", required=False)
def port(root, container, private_port) -> None:
    """The container's published ports: PRIVATE/PROTO -> HOST_IP:HOST_PORT."""
    try:
        engine = _engine(root)
        rec = engine.get(container)
        ports = engine.network_settings(rec).get("Ports") or {}
    except MiniRunError as e:
        _fail(e)
    if private_port:
        key = private_port if "/" in private_port else f"{private_port}/tcp"
        if not ports.get(key):
            _fail(MiniRunError(f"No public port '{key}' published for {rec['name']}"))
        for b in ports[key]:
            click.echo(f"{b['HostIp']}:{b['HostPort']}")
        return
    for key in sorted(ports, key=lambda k: (int(k.split("/")[0]), k)):
        for b in ports[key] or []:
            click.echo(f"{key} -> {b['HostIp']}:{b['HostPort']}")


def _split_container_path(arg: str) -> tuple[str | None, str]:
    """CONTAINER:PATH or a host path (one with a / before any colon is a host path)."""
    if arg == "-" or arg.startswith(("/", ".")):
        return None, arg
    name, colon, path = arg.partition(":")
    if not colon:
        return None, arg
    return name, path or "/"


@click.command(name="cp")
@root_option
@click.option("-a", "--archive", is_flag=True, help="keep the owners (uid:gid)")
@click.option("-L", "--follow-link", is_flag=True, help="follow a symlink SRC (host side)")
@click.option("-q", "--quiet", is_flag=True, help="accepted (no progress is shown)")
@click.argument("src")
@click.argument("dst")
def cp(root, archive, follow_link, quiet, src, dst) -> None:
    """Copy files between a container and the host: CONTAINER:SRC DST or SRC
    CONTAINER:DST; - for a tar archive on stdin or stdout."""
    from . import containerfs

    src_ctr, src_path = _split_container_path(src)
    dst_ctr, dst_path = _split_container_path(dst)
    try:
        if (src_ctr is None) == (dst_ctr is None):
            raise InvalidArgument("copying between containers or between host paths is not "
                                  "supported: one side must be CONTAINER:PATH")
        engine = _engine(root)
        if src_ctr is not None:
            rec = engine.get(src_ctr)
            if dst_path == "-":
                containerfs.archive_from_container(engine, rec, src_path, sys.stdout.buffer)
            else:
                containerfs.copy_from_container(engine, rec, src_path, dst_path, archive)
        else:
            rec = engine.get(dst_ctr)
            if src_path == "-":
                containerfs.extract_into_container(engine, rec, dst_path, sys.stdin.buffer,
                                                   keep_owner=True)
            else:
                if follow_link:
                    src_path = os.path.realpath(src_path)
                containerfs.copy_to_container(engine, rec, src_path, dst_path, archive)
    except MiniRunError as e:
        _fail(e)
    except BrokenPipeError:
        _reader_gone()
    except OSError as e:
        _fail(MiniRunError(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"))
    except Exception as e:
        import tarfile

        if isinstance(e, tarfile.TarError):
            _fail(MiniRunError(f"bad archive: {e}"))
        raise


def _each(root, names, action) -> None:
    from .cli_container import _each as each

    each(root, names, action)


@click.command(name="pause")
@root_option
@click.argument("containers", nargs=-1, required=True)
def pause(root, containers) -> None:
    """Freeze all processes of containers (the cgroup freezer)."""
    from .containerops import pause as pause_container

    _each(root, containers, pause_container)


@click.command(name="unpause")
@root_option
@click.argument("containers", nargs=-1, required=True)
def unpause(root, containers) -> None:
    """Thaw the processes of paused containers."""
    from .containerops import unpause as unpause_container

    _each(root, containers, unpause_container)


@click.command(name="rename")
@root_option
@click.argument("container")
@click.argument("new_name")
def rename(root, container, new_name) -> None:
    """Rename a container."""
    try:
        from .containerops import rename_container

        rename_container(_engine(root), container, new_name)
    except MiniRunError as e:
        _fail(e)


@click.command(name="update")
@root_option
@click.option("-m", "--memory", default=None)
@click.option("--memory-swap", default=None)
@click.option("--memory-reservation", default=None)
@click.option("--cpus", default=None)
@click.option("--cpu-shares", "-c", type=int, default=None)
@click.option("--cpuset-cpus", default=None)
@click.option("--pids-limit", type=int, default=None)
@click.option("--restart", default=None)
@click.argument("containers", nargs=-1, required=True)
def update(root, containers, **values) -> None:
    """Change the limits (and restart policy) of containers."""
    from .containerops import update_container
    from .runlog import warn

    _each(root, containers, lambda e, n: update_container(e, n, values, warn))


@click.command(name="diff")
@root_option
@click.argument("container")
def diff(root, container) -> None:
    """The changes to a container's files: A added, C changed, D deleted."""
    from .containerfs import changes

    try:
        engine = _engine(root)
        for kind, path in changes(engine, engine.get(container)):
            click.echo(f"{kind} {path}")
    except MiniRunError as e:
        _fail(e)


@click.command(name="export")
@root_option
@click.option("-o", "--output", default=None, help="a file instead of stdout")
@click.argument("container")
def export(root, output, container) -> None:
    """A container's filesystem as a tar archive."""
    from .containerfs import export as export_tar

    try:
        engine = _engine(root)
        rec = engine.get(container)
        if output is None and sys.stdout.isatty():
            raise InvalidArgument("cowardly refusing to write a tar archive to a terminal: "
                                  "use -o FILE or a redirection")
        if output is None:
            export_tar(engine, rec, sys.stdout.buffer)
            return
        tmp = f"{output}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                export_tar(engine, rec, f)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except MiniRunError as e:
        _fail(e)
    except BrokenPipeError:
        _reader_gone()
    except OSError as e:
        _fail(MiniRunError(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"))


@click.command(name="commit")
@root_option
@click.option("-c", "--change", multiple=True, help="a Dockerfile instruction (CMD, ENV, ...)")
@click.option("-m", "--message", default="")
@click.option("-a", "--author", default="")
@click.option("-p", "--pause/--no-pause", default=True, help="freeze it meanwhile (default)")
@click.argument("container")
@click.argument("reference", required=False)
def commit(root, change, message, author, pause, container, reference) -> None:
    """A new image from a container's changes: its image's layers plus one."""
    import contextlib

    from .containerfs import frozen
    from .image.commit import commit as commit_image
    from .image.reference import parse_reference

    try:
        engine = _engine(root)
        rec = engine.get(container)
        if reference:
            parse_reference(reference)
        with frozen(engine, rec) if pause else contextlib.nullcontext():
            image = commit_image(engine, rec, reference, list(change), message, author)
        click.echo(image.id)
    except MiniRunError as e:
        _fail(e)


@click.command(name="history")
@root_option
@click.option("-H", "--human/--no-human", default=True)
@click.option("--no-trunc", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
@click.argument("image")
def history(root, human, no_trunc, quiet, image) -> None:
    """An image's history: its layers and the steps that made them, newest first."""
    from .cli_image import human_duration, human_size
    from .image.commit import history_rows
    from .image.store import ImageStore

    try:
        record = ImageStore(root).get(image)
    except MiniRunError as e:
        _fail(e)
    rows = history_rows(record)
    if quiet:
        for r in rows:
            click.echo(record.id if no_trunc and r["id"] != "<missing>" else r["id"])
        return
    table = [("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT")]
    for r in rows:
        created = r["created"]
        if human and created:
            when = _parse_time(created)
            created = f"{human_duration(time.time() - when)} ago" if when else created
        by = r["created_by"]
        if not no_trunc and len(by) > 45:
            by = by[:44] + "…"
        size = human_size(r["size"]) if human else str(r["size"])
        table.append((r["id"], created, by, size, r["comment"]))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        click.echo("   ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _parse_time(text: str) -> float | None:
    import datetime

    try:
        head = text.rstrip("Z").split(".")[0]
        return datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


# --- login / logout -----------------------------------------------------------------------

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


def _auth_file() -> str:
    """The file login writes: $REGISTRY_AUTH_FILE, else docker's ~/.docker/config.json
    (both read by minirun.image.registry.load_credentials)."""
    return os.environ.get("REGISTRY_AUTH_FILE") or os.path.join(
        os.path.expanduser("~"), ".docker", "config.json")


def _registry_key(server: str | None) -> tuple[str, str]:
    """(the registry host as the client names it, the key in the auths map)."""
    from .image.registry import DOCKER_HUB

    host = (server or "").split("://", 1)[-1].rstrip("/")
    host = host.removesuffix("/v1")
    if not host or host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB, DOCKER_HUB_KEY
    return host, host


def _read_auths(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise MiniRunError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise MiniRunError(f"{path}: not a JSON object")
    return data


def _write_auths(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def check_login(registry: str, username: str, password: str) -> None:
    """GET /v2/ with these credentials (basic, or the registry's token service)."""
    from .image.registry import Credentials, RegistryClient

    client = RegistryClient(registry, "", credentials=Credentials(username, password, "login"))
    resp = client.request("GET", "/v2/", what="login")
    status = getattr(resp, "status", 200)
    close = getattr(resp, "close", None)
    if close:
        close()
    if status >= 400:
        raise MiniRunError(f"login to {registry}: the registry answered {status}")


@click.command(name="login")
@click.option("-u", "--username", default=None)
@click.option("-p", "--password", default=None)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@click.argument("server", required=False)
def login(username, password, password_stdin, server) -> None:
    """Log in to a registry: check the credentials, then keep them (config.json auths)."""
    import base64

    from_flag = password is not None
    try:
        if password and password_stdin:
            raise InvalidArgument("--password and --password-stdin are mutually exclusive")
        if password_stdin:
            if not username:
                raise InvalidArgument("Must provide --username with --password-stdin")
            password = sys.stdin.read().rstrip("\r\n")
        if not username:
            username = click.prompt("Username")
        if password is None:
            password = click.prompt("Password", hide_input=True)
        if not username or not password:
            raise InvalidArgument("a username and a password are needed")
        if from_flag:
            click.echo("WARNING! Using --password via the CLI is insecure. Use "
                       "--password-stdin.", err=True)
        registry, key = _registry_key(server)
        check_login(registry, username, password)
        path = _auth_file()
        data = _read_auths(path)
        auths = data.setdefault("auths", {})
        auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
        _write_auths(path, data)
        click.echo("Login Succeeded")
    except MiniRunError as e:
        _fail(e)


@click.command(name="logout")
@click.argument("server", required=False)
def logout(server) -> None:
    """Forget the credentials kept for a registry."""
    _, key = _registry_key(server)
    path = _auth_file()
    try:
        data = _read_auths(path)
    except MiniRunError as e:
        _fail(e)
    auths = data.get("auths") or {}
    found = [k for k in auths if _registry_key(k)[1] == key]
    if not found:
        click.echo(f"Not logged in to {key}")
        return
    click.echo(f"Removing login credentials for {key}")
    for k in found:
        del auths[k]
    _write_auths(path, data)


# --- system df ----------------------------------------------------------------------------

@click.group(name="system", help="Manage minirun.")
def system() -> None:
    pass


@system.command(name="df")
@root_option
@click.option("-v", "--verbose", is_flag=True)
def system_df(root, verbose) -> None:
    """Disk usage: images, containers (their writable layers) and volumes."""
    from .cli_image import human_size
    from .cli_volume import volume_users, volumes_dir
    from .dockerview import tree_size
    from .image.store import ImageStore

    engine = _engine(root)
    store = ImageStore(engine.root)
    images = store.images()
    recs = engine.records()
    used_images = {r["image_id"] for r in recs}
    img_size = sum(i.size for i in images)
    img_free = sum(i.size for i in images if i.id not in used_images)
    sizes = {r["id"]: tree_size(os.path.join(engine.root, "containers", r["id"], "upper"))
             for r in recs}
    running = [r for r in recs if r["status"] == "running"]
    vdir = volumes_dir(engine.root)
    vols = sorted(os.listdir(vdir)) if os.path.isdir(vdir) else []
    users = volume_users(engine)
    vsizes = {v: tree_size(os.path.join(vdir, v, "_data")) for v in vols}
    rows = [("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"),
            ("Images", str(len(images)), str(len(used_images & {i.id for i in images})),
             human_size(img_size), _pct(img_free, img_size)),
            ("Containers", str(len(recs)), str(len(running)), human_size(sum(sizes.values())),
             _pct(sum(s for c, s in sizes.items() if c not in {r["id"] for r in running}),
                  sum(sizes.values()))),
            ("Local Volumes", str(len(vols)), str(len([v for v in vols if users.get(v)])),
             human_size(sum(vsizes.values())),
             _pct(sum(s for v, s in vsizes.items() if not users.get(v)),
                  sum(vsizes.values())))]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        click.echo("   ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    if verbose:
        click.echo("\nContainers space usage:\n")
        for r in recs:
            click.echo(f"{r['id'][:12]}   {r['image']}   {human_size(sizes[r['id']])}   "
                       f"{r['status']}   {r['name']}")
        click.echo("\nLocal Volumes space usage:\n")
        for v in vols:
            click.echo(f"{v}   {len(users.get(v, []))}   {human_size(vsizes[v])}")


def _pct(part: int, whole: int) -> str:
    from .cli_image import human_size

    return f"{human_size(part)} ({int(100 * part / whole) if whole else 0}%)"


def register(group: click.Group) -> None:
    """The verbs at the top level and in the management groups, as docker has them."""
    for cmd in (create, version, port, cp, pause, unpause, rename, update, diff, export,
                commit, history, login, logout):
        group.add_command(cmd)
    existing = group.commands.get("system")  # cli_format's, with system prune
    if isinstance(existing, click.Group):
        for name, cmd in system.commands.items():
            existing.add_command(cmd, name)
        sys_group = existing
    else:
        group.add_command(system)
        sys_group = system
    container = group.commands.get("container")
    if isinstance(container, click.Group):
        for cmd in (create, port, cp, pause, unpause, rename, update, diff, export, commit):
            container.add_command(cmd)
        ps = container.commands.get("ls")
        if ps is not None:
            container.add_command(ps, "ps")
            container.add_command(ps, "list")
    if "info" in group.commands:
        sys_group.add_command(group.commands["info"], "info")
    image = group.commands.get("image")
    if isinstance(image, click.Group):
        image.add_command(history)
        for name in ("pull", "push", "import"):
            if name in group.commands and name not in image.commands:
                image.add_command(group.commands[name], name)
