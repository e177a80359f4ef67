"""`minirun`, the command for people: parses arguments and prints; the work happens in the
modules it calls."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from . import __version__
from .errors import MiniRunError

if TYPE_CHECKING:
    from .info import HostInfo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="minirun", message="%(prog)s %(version)s")
def cli() -> None:
    """minirun: a small container runtime on Linux primitives."""


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="human-readable text or JSON",
)
def info(fmt: str) -> None:
    """What this host supports: cgroups, namespaces, seccomp, overlayfs, ..."""
    from .info import collect

    host = collect()
    nets = _networks_info()
    if fmt == "json":
        import json

        click.echo(json.dumps(dict(host.to_dict(), networks=nets), indent=2))
    else:
        click.echo(format_info(host))
        click.echo("networks:")
        if isinstance(nets, str):
            click.echo(f"  unavailable: {nets}")
        for n in nets if isinstance(nets, list) else []:
            state = "up" if n["bridge_up"] else "down (made when a container joins)"
            click.echo(f"  {n['name']}: {n['subnet']} on {n['bridge']}, {state}, "
                       f"{n['containers']} container(s){', internal' if n['internal'] else ''}")


def _networks_info() -> list[dict] | str:
    """The engine's networks, whether their bridges are up and how many containers each
    has; a string saying why when they cannot be read."""
    import os

    from .engine import Engine

    try:
        nets = Engine().networks
        return [{"name": r["name"], "subnet": r["subnet"], "gateway": r["gateway"],
                 "bridge": r["bridge"], "internal": bool(r["internal"]),
                 "bridge_up": os.path.isdir(f"/sys/class/net/{r['bridge']}/bridge"),
                 "containers": len(nets.containers_on(r["name"]))} for r in nets.list()]
    except Exception as e:  # noqa: BLE001 - info must not fail over the networks
        return f"{type(e).__name__}: {e}"


def format_info(host: HostInfo) -> str:
    """The text form of `minirun info`: what is there, and for what is not, why."""
    lines = [
        f"minirun {host.version} (OCI runtime spec {host.oci_version})",
        f"kernel:       {host.kernel}",
        f"privileges:   euid {host.euid}, capabilities {host.capabilities}",
    ]
    cg = host.cgroup
    if cg.mode is None:
        lines.append(f"cgroups:      unavailable: {cg.reason}")
    else:
        where = {"v2": f"cgroup2 at {cg.root}", "v1": f"v1 controllers under {cg.root}"}.get(
            cg.mode, f"v1 controllers under {cg.root}, cgroup2 at {cg.v2_mount}"
        )
        lines.append(f"cgroups:      {cg.mode} ({where}), minirun uses the {cg.driver} driver")
        if cg.mode != "v2":
            lines.append(f"  v1 controllers: {' '.join(sorted(cg.v1_controllers)) or 'none'}")
        if cg.v2_mount:
            lines.append(f"  v2 controllers: {' '.join(cg.v2_controllers) or 'none'}")
        for name, reason in cg.unusable_controllers.items():
            lines.append(f"  no {name}: {reason}")
    lines.append(f"namespaces:   {' '.join(host.namespaces) or 'none'}")
    for name, reason in host.missing_namespaces.items():
        lines.append(f"  no {name}: {reason}")
    lines.append("features:")
    width = max(len(name) for name in host.features)
    for name, feature in host.features.items():
        label = name.replace("_", " ").ljust(width)
        if feature.available:
            lines.append(f"  yes  {label}  {feature.detail}".rstrip())
        else:
            lines.append(f"  no   {label}  {feature.reason}")
    lines.append("other runtimes:")
    for name, runtime in host.runtimes.items():
        if runtime.path is None:
            lines.append(f"  {name}: not found on PATH")
        else:
            lines.append(f"  {name}: {runtime.path} ({runtime.version or 'version unknown'})")
    return "\n".join(lines)


def _register_commands() -> None:
    """The other command groups live in their own modules (containers, images, ...)."""
    from . import cli_container

    cli_container.register(cli)
    from . import cli_pull

    cli_pull.register(cli)
    from . import cli_image

    cli_image.register(cli)
    from . import cli_network

    cli_network.register(cli)
    from . import cli_cri

    cli_cri.register(cli)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    try:
        result = cli.main(args=argv, prog_name="minirun", standalone_mode=False)
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("minirun: aborted", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
