"""`minirun cri`: serve the Kubernetes CRI on a unix socket (minirun/cri/server.py).

grpc is imported inside the command only: `minirun run` and the other verbs never pay
for it.

The services are found by name, so each lands when its module does:
  minirun.cri.runtime_service.RuntimeService(engine, config)   else InfoOnly (Version,
                                                               Status, RuntimeConfig,
                                                               UpdateRuntimeConfig)
  minirun.cri.image_service.ImageService(engine, config)       else no image rpcs
config is a CriConfig. A module that is missing falls back; one that fails to import
for any other reason is an error (a bug must not hide behind UNIMPLEMENTED).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import click

from .cli_container import root_option
from .errors import MiniRunError

DEFAULT_STREAM_ADDRESS = "127.0.0.1:0"


@dataclass
class CriConfig:
    """What `minirun cri` was started with; handed to every service impl."""

    socket: str
    stream_address: str = DEFAULT_STREAM_ADDRESS  # HOST:PORT; port 0 picks a free one


def load_service(module: str, name: str, fallback):
    """The class `name` of minirun.cri.<module>, or fallback when that module does not
    exist (yet)."""
    full = f"minirun.cri.{module}"
    try:
        mod = importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name != full:
            raise
        return fallback
    return getattr(mod, name)


def build_services(engine, config: CriConfig) -> tuple[object, object]:
    """(RuntimeService impl, ImageService impl) for the server."""
    from .cri.info import InfoMixin

    class InfoOnly(InfoMixin):
        def __init__(self, engine, config):
            self.engine, self.config = engine, config

    class NoImages:
        def __init__(self, engine, config):
            self.engine, self.config = engine, config

    runtime = load_service("runtime_service", "RuntimeService", InfoOnly)
    image = load_service("image_service", "ImageService", NoImages)
    return runtime(engine, config), image(engine, config)


def write_default_cni() -> str | None:
    """minirun's pod network into the CNI conf dir when that has no network config (a
    fresh host; a subnet no host route overlaps); a cluster's CNI (flannel, calico)
    replaces it. The path written, or None."""
    from .pods import write_default_conflist

    return write_default_conflist()


@click.command(name="cri")
@root_option
@click.option("--run-root", envvar="MINIRUN_RUN_ROOT", default=None,
              help="state directory (default /run/minirun)")
@click.option("--cri-socket", envvar="MINIRUN_CRI_SOCKET", default=None,
              help="unix socket to serve (default /run/minirun/cri.sock)")
@click.option("--stream-address", default=DEFAULT_STREAM_ADDRESS, show_default=True,
              help="HOST:PORT of the exec/attach/port-forward streaming server")
@click.option("--default-cni/--no-default-cni", default=True, show_default=True,
              help="write minirun's pod network conflist when the CNI conf dir has none")
def cri(root, run_root, cri_socket, stream_address, default_cni) -> None:
    """Serve the Kubernetes CRI (runtime.v1 and v1alpha2) for kubelet and crictl."""
    try:
        from .cri.server import CriServer, socket_path
        from .daemon.server import ensure_daemon
        from .engine import Engine

        engine = Engine(root=root, run_root=run_root)
        config = CriConfig(socket=socket_path(cri_socket), stream_address=stream_address)
        server = CriServer(config.socket)
        try:
            server.claim()  # a second `minirun cri` on this socket stops here
            if default_cni:
                write_default_cni()
            ensure_daemon(engine)
            runtime, image = build_services(engine, config)
            server.impls.update(RuntimeService=runtime, ImageService=image)
        except BaseException:
            server.stop()
            raise
        server.serve_until_signal()
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"minirun: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
                   err=True)
        sys.exit(1)
    from . import exit_without_teardown

    exit_without_teardown(0)  # the server is stopped; grpc's teardown has nothing to do


def register(group: click.Group) -> None:
    group.add_command(cri)
