"""`minirun system service`: serve the Docker Engine API on a unix socket
(minirun/dockerapi/server.py), for the docker CLI, docker-compose and docker-py."""

from __future__ import annotations

import sys

import click

from .cli_container import root_option
from .errors import MiniRunError


@click.command(name="service")
@root_option
@click.option("--run-root", envvar="MINIRUN_RUN_ROOT", default=None,
              help="state directory (default /run/minirun)")
@click.option("--socket", "socket_", envvar="MINIRUN_DOCKER_SOCKET", default=None,
              help="unix socket to serve (default /run/minirun/docker.sock); "
                   "DOCKER_HOST=unix://PATH points clients at it")
@click.option("--debug", is_flag=True, help="log every request on stderr")
def service(root, run_root, socket_, debug) -> None:
    """Serve the Docker Engine API (1.41) on a unix socket until SIGTERM."""
    try:
        from .daemon.server import ensure_daemon
        from .dockerapi.server import Server, log, socket_path
        from .engine import Engine

        path = socket_path(socket_)
        server = Server(path, root, run_root, debug)  # a second server stops here
        try:
            ensure_daemon(Engine(root, run_root))  # no database opened in this process
        except BaseException:
            server.close()
            raise
        from .dockerapi import API_VERSION

        log("info", f"serving the Docker API {API_VERSION} on {path}")
        server.run()
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"minirun: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
                   err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    system = group.commands.get("system")
    if not isinstance(system, click.Group):
        system = click.Group(name="system", help="Manage minirun.")
        group.add_command(system)
    system.add_command(service)
