"""`minirun run`, `rm`, `stop`, `logs`, ...: docker's flags, parsed here and handed to
minirun.engine (`ps`, `inspect` and the prunes are in minirun.cli_format)."""

from __future__ import annotations

import sys

import click

from .errors import ExecutableNotFound, MiniRunError, NotExecutable

# docker's exit statuses for `run`: 125 the engine failed, 126 the command cannot be
# executed, 127 it was not found; otherwise the container's own status.
EXIT_ENGINE, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND = 125, 126, 127


def docker_exit_code(e: MiniRunError) -> int:
    if isinstance(e, ExecutableNotFound):
        return EXIT_NOT_FOUND
    if isinstance(e, NotExecutable):
        return EXIT_CANNOT_EXECUTE
    return EXIT_ENGINE


def _engine(root: str | None, revive: bool = True):
    from .engine import Engine

    engine = Engine(root=root)
    if revive:  # a daemon that died comes back before we read or change containers
        from .daemon.server import revive as revive_daemon

        revive_daemon(engine)
    return engine


root_option = click.option("--root", envvar="MINIRUN_ROOT", default=None,
                           help="data directory (default /var/lib/minirun)")


RUN_OPTIONS = [
    root_option,
    click.option("-d", "--detach", is_flag=True, help="run in the background"),
    click.option("-i", "--interactive", is_flag=True, help="keep stdin open"),
    click.option("-t", "--tty", is_flag=True, help="allocate a terminal"),
    click.option("--rm", "remove", is_flag=True, help="remove the container when it exits"),
    click.option("--name", default=None),
    click.option("-e", "--env", multiple=True, help="NAME=VALUE, or NAME: the caller's"),
    click.option("--env-file", multiple=True),
    click.option("-w", "--workdir", default=None, help="relative: under the image's"),
    click.option("-u", "--user", default=None, help="name|uid[:group|gid]"),
    click.option("-v", "--volume", "volumes", multiple=True,
                 help="SOURCE:/DEST[:ro|rw,z|Z,nocopy,U,PROPAGATION]"),
    click.option("--mount", multiple=True,
                 help="type=bind|volume|tmpfs,source=,target=,readonly,bind-propagation=,"
                 "tmpfs-size=,tmpfs-mode=,volume-nocopy"),
    click.option("--tmpfs", multiple=True, help="/DEST[:OPTIONS]"),
    click.option("-h", "--hostname", default=None),
    click.option("-m", "--memory", default=None, help="e.g. 64m (0: unlimited)"),
    click.option("--memory-swap", default=None,
                 help="memory + swap (default twice --memory; -1 unlimited)"),
    click.option("--memory-reservation", default=None, help="a soft limit"),
    click.option("--oom-kill-disable", is_flag=True),
    click.option("--cpus", default=None, help="0.01 .. the host's CPUs (0: unlimited)"),
    click.option("--cpu-shares", "-c", type=int, default=None),
    click.option("--cpuset-cpus", default=None, help="e.g. 0-1,3"),
    click.option("--pids-limit", type=int, default=None),
    click.option("--device", multiple=True, help="HOST[:CONTAINER][:rwm]"),
    click.option("--ulimit", multiple=True, help="NAME=SOFT[:HARD]"),
    click.option("--shm-size", default=None, help="/dev/shm's size (default 64m)"),
    click.option("--stop-signal", default=None),
    click.option("--stop-timeout", type=int, default=None),
    click.option("--sysctl", multiple=True, help="NAME=VALUE"),
    click.option("--group-add", multiple=True),
    click.option("--platform", default=None, help="only this host's (linux/ARCH)"),
    click.option("--pid", default=None, help="host | container:NAME"),
    click.option("--ipc", default=None, help="private | shareable | host | container:NAME"),
    click.option("--uts", default=None, help="host"),
    click.option("--cgroup-parent", default=None),
    click.option("--oom-score-adj", type=int, default=None),
    click.option("-l", "--label", multiple=True, help="KEY=VALUE"),
    click.option("--label-file", multiple=True),
    click.option("--read-only", is_flag=True),
    click.option("--cap-add", multiple=True),
    click.option("--cap-drop", multiple=True),
    click.option("--privileged", is_flag=True),
    click.option("--security-opt", multiple=True,
                 help="no-new-privileges[=true|false] | seccomp=unconfined|PROFILE.json | "
                 "apparmor=unconfined | label=disable (also KEY:VALUE)"),
    click.option("--init", is_flag=True, help="a small init (tini) as pid 1"),
    click.option("--restart", default="no",
                 help="no | always | unless-stopped | on-failure[:N]"),
    click.option("--entrypoint", default=None),
    click.option("--network", "--net", default="bridge",
                 help="bridge | NETWORK | host | none | container:NAME | cni:NAME"),
    click.option("-p", "--publish", multiple=True, metavar="[IP:][HOST:]PORT[/PROTO]",
                 help="publish a container port on the host"),
    click.option("-P", "--publish-all", is_flag=True,
                 help="publish the image's exposed ports"),
    click.option("--dns", multiple=True, help="a DNS server for the container"),
    click.option("--dns-search", multiple=True, help="a DNS search domain"),
    click.option("--dns-option", multiple=True, help="a resolv.conf option"),
    click.option("--add-host", multiple=True, metavar="HOST:IP", help="an /etc/hosts entry"),
    click.option("--log-opt", "log_opts", multiple=True,
                 metavar="max-size=N[k|m|g]|max-file=N",
                 help="log rotation (default max-size=20m, max-file=5: output bytes)"),
    click.option("--userns", default="host",
                 help="host | auto (alias private: a new user namespace) | ns:PATH"),
    click.option("--pull", "pull_policy", default="missing", metavar="missing|always|never",
                 help="pull the image: when it is not here (default), always, or never"),
    click.argument("image"),
    click.argument("command", nargs=-1, type=click.UNPROCESSED),
]


def run_options(f):
    """`run`'s and `create`'s flags."""
    for decorator in reversed(RUN_OPTIONS):
        f = decorator(f)
    return f


def build_run_options(image, command, volumes, remove, kw):
    """RunOptions from run's/create's click values (docker's readings: runflags)."""
    from .engine import RunOptions
    from .runflags import docker_run_fields
    from .runlog import warn

    fields = docker_run_fields(kw, warn=warn)
    volumes = list(volumes) + fields.pop("mount_volumes")
    tmpfs = list(kw.pop("tmpfs")) + fields.pop("mount_tmpfs")
    return RunOptions(command=list(command), volumes=volumes, remove=remove,
                      env=list(kw.pop("env")), env_files=list(kw.pop("env_file")),
                      tmpfs=tmpfs, cap_add=list(kw.pop("cap_add")),
                      cap_drop=list(kw.pop("cap_drop")),
                      security_opt=list(kw.pop("security_opt")),
                      publish=list(kw.pop("publish")), dns=list(kw.pop("dns")),
                      dns_search=list(kw.pop("dns_search")),
                      dns_option=list(kw.pop("dns_option")),
                      add_host=list(kw.pop("add_host")), log_opts=list(kw.pop("log_opts")),
                      **fields, **kw)


@click.command(context_settings={"allow_interspersed_args": False,
                                 "help_option_names": ["--help"]})  # -h is --hostname
@run_options
def run(root, image, command, volumes, remove, **kw) -> None:
    """Run a command in a new container from IMAGE."""
    policy = kw.pop("pull_policy")
    try:
        opts = build_run_options(image, command, volumes, remove, kw)
        from .engine import check_run_options

        check_run_options(opts)
    except MiniRunError as e:  # bad flags are refused before anything is pulled
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(docker_exit_code(e))
    pull_image(root, image, policy)
    try:
        if opts.detach:
            click.echo(_engine(root, revive=False).run_detached(image, opts))
            return
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(docker_exit_code(e))
    from .client import run_in_daemon

    sys.exit(run_in_daemon(image, dict(opts.__dict__, root=root, pull="never")))


def pull_image(root: str | None, image: str, policy: str) -> None:
    """--pull for run and create: a failed pull exits 125, as docker's."""
    from .cli_pull import ensure_image

    try:
        ensure_image(root, image, policy)
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(EXIT_ENGINE)


@click.command(name="rm")
@root_option
@click.option("-f", "--force", is_flag=True)
@click.option("-v", "--volumes", is_flag=True, help="accepted for docker compatibility")
@click.argument("containers", nargs=-1, required=True)
def rm(root, force, volumes, containers) -> None:
    """Remove containers."""
    _each(root, containers, lambda e, n: e.remove(n, force=force))


def _each(root, containers, action) -> None:
    engine = _engine(root)
    failed = False
    for name in containers:
        try:
            action(engine, name)
            click.echo(name)
        except MiniRunError as e:
            click.echo(f"minirun: error: {e}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@click.command(name="stop")
@root_option
@click.option("-t", "--time", "timeout", type=float, default=None,
              help="seconds to wait before SIGKILL (default: its --stop-timeout, else 10)")
@click.argument("containers", nargs=-1, required=True)
def stop(root, timeout, containers) -> None:
    """Stop containers: their stop signal, then SIGKILL."""
    _each(root, containers, lambda e, n: e.stop(n, timeout))


@click.command(name="kill")
@root_option
@click.option("-s", "--signal", "sig", default="KILL")
@click.argument("containers", nargs=-1, required=True)
def kill(root, sig, containers) -> None:
    """Send a signal to containers (SIGKILL by default)."""
    _each(root, containers, lambda e, n: e.kill(n, sig))


@click.command(name="start")
@root_option
@click.option("-a", "--attach", is_flag=True,
              help="print its output until it exits; exit with its status")
@click.argument("containers", nargs=-1, required=True)
def start(root, attach, containers) -> None:
    """Start stopped containers (in the daemon)."""
    if attach:
        from .cli_more import start_attached

        if len(containers) != 1:
            raise MiniRunError("you cannot start and attach multiple containers at once")
        sys.exit(start_attached(_engine(root), containers[0]))
    _each(root, containers, lambda e, n: e.start(n))


@click.command(name="restart")
@root_option
@click.option("-t", "--time", "timeout", type=float, default=None)
@click.argument("containers", nargs=-1, required=True)
def restart(root, timeout, containers) -> None:
    """Stop then start containers."""
    _each(root, containers, lambda e, n: e.restart(n, timeout))


@click.command(name="wait")
@root_option
@click.argument("containers", nargs=-1, required=True)
def wait(root, containers) -> None:
    """Wait for containers to exit; print their exit codes."""
    engine = _engine(root)
    for name in containers:
        rec = engine.get(name)
        engine.wait_exit(rec["id"])
        click.echo(engine.get(rec["id"])["exit_code"])


@click.command(name="logs")
@root_option
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", default="all", help="lines from the end (or all)")
@click.option("--since", default=None, help="RFC 3339 time or seconds ago (e.g. 60)")
@click.option("-t", "--timestamps", is_flag=True)
@click.argument("container")
def logs(root, follow, tail, since, timestamps, container) -> None:
    """A container's output, from its CRI-format log."""
    from .logs import follow_log

    engine = _engine(root)
    rec = engine.get(container)
    try:
        tail_n = None if tail == "all" else int(tail)
        if tail_n is not None and tail_n < 0:  # docker: a negative count is all of it
            tail_n = None
    except ValueError:
        raise MiniRunError(f"--tail {tail!r}: a number or all") from None
    for stream, stamp, text in follow_log(engine, rec["id"], follow=follow, tail=tail_n,
                                          since=since):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(f"{stamp} {text}" if timestamps else text)
        out.flush()


@click.command(name="exec", context_settings={"allow_interspersed_args": False})
@root_option
@click.option("-i", "--interactive", is_flag=True, help="keep stdin open (it always is)")
@click.option("-t", "--tty", is_flag=True)
@click.option("-d", "--detach", is_flag=True)
@click.option("-u", "--user", default=None)
@click.option("-w", "--workdir", default=None)
@click.option("-e", "--env", multiple=True)
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(root, interactive, tty, detach, user, workdir, env, container, command) -> None:
    """Run a command in a running container."""
    try:
        status = _engine(root).exec(container, list(command), tty=tty, env=list(env),
                                    user=user, workdir=workdir, detach=detach)
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(docker_exit_code(e))
    sys.exit(status)


@click.command(name="attach")
@root_option
@click.option("--detach-keys", default=None,
              help="the keys that detach, docker's format (default ctrl-p,ctrl-q)")
@click.option("--no-stdin", is_flag=True, help="do not connect stdin")
@click.argument("container")
def attach(root, detach_keys, no_stdin, container) -> None:
    """Connect this terminal to a running detached container (its input and output).

    The detach keys leave it running; otherwise attach ends when the container exits,
    with its exit status."""
    from .terminal import DEFAULT_DETACH_KEYS

    keys = DEFAULT_DETACH_KEYS if detach_keys is None else detach_keys
    try:
        status = _engine(root).attach(container, detach_keys=keys, stdin=not no_stdin)
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(status)


@click.command(name="top", context_settings={"allow_interspersed_args": False})
@root_option
@click.argument("container")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED)
def top(root, container, ps_args) -> None:
    """The processes of a container (host ps, default -ef)."""
    try:
        lines = _engine(root).top(container, list(ps_args))
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(1)
    for line in lines:
        click.echo(line)


@click.command(name="daemon")
@root_option
@click.option("--run-root", envvar="MINIRUN_RUN_ROOT", default=None)
@click.option("--wait", is_flag=True,
              help="if another daemon serves this run root, take over when it ends "
                   "(for a service manager) instead of exiting")
def daemon(root, run_root, wait) -> None:
    """Supervise detached containers (started on first need by run -d)."""
    from .daemon.server import Daemon
    from .engine import Engine

    try:
        Daemon(Engine(root=root, run_root=run_root)).serve(wait=wait)
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    for cmd in (run, rm, stop, kill, start, restart, wait, logs, exec_, top,
                attach, daemon):
        group.add_command(cmd)
    container = click.Group(name="container", help="Manage containers.")
    for cmd in (run, rm, stop, kill, start, restart, wait, logs, exec_, top, attach):
        container.add_command(cmd)
    group.add_command(container)
