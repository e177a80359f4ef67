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
@click.option("-f", "--format", "fmt", default="text", show_default=True,
              help="text, json (minirun's document), or a Go template over docker's info "
                   "fields ('{{.ServerVersion}}', '{{json .}}')")
def info(fmt: str) -> None:
    """What this host supports: cgroups, namespaces, seccomp, overlayfs, ..."""
    from .info import collect

    host = collect()
    nets = _networks_info()
    if fmt not in ("text", "json"):
        from .gotemplate import expand_escapes, parse

        template = parse(expand_escapes(fmt))  # a bad template fails before the counts
        click.echo(template.render(docker_info(host, nets)))
    elif fmt == "json":
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


def docker_info(host: HostInfo, nets: list[dict] | str) -> dict:
    """`docker info`'s fields that mean something here, for --format templates; minirun's
    own document under "Minirun"."""
    import os
    import platform

    from .engine import Engine

    counts = {"running": 0, "paused": 0, "stopped": 0}
    images = 0
    try:
        engine = Engine()
        for r in engine.records():
            key = r["status"] if r["status"] in ("running", "paused") else "stopped"
            counts[key] += 1
        from .image.store import ImageStore

        with ImageStore(engine.root) as store:
            images = len(store.images())
        root = engine.root
    except Exception:  # noqa: BLE001 - info must not fail over the records
        root = ""
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem = 0
    try:
        with open("/etc/os-release") as f:
            release = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        os_name = release.get("PRETTY_NAME", "").strip('"')
    except OSError:
        os_name = ""
    return {
        "Containers": sum(counts.values()), "ContainersRunning": counts["running"],
        "ContainersPaused": counts["paused"], "ContainersStopped": counts["stopped"],
        "Images": images, "Driver": "overlay2", "DockerRootDir": root,
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "2" if host.cgroup.mode == "v2" else "1",
        "KernelVersion": host.kernel, "OperatingSystem": os_name, "OSType": "linux",
        "Architecture": platform.machine(), "NCPU": os.cpu_count() or 0, "MemTotal": mem,
        "Name": os.uname().nodename, "ServerVersion": host.version,
        "DefaultRuntime": "minirun", "Runtimes": {"minirun": {"path": "minirun"}},
        "SecurityOptions": [f"name={n}" for n in ("seccomp",)
                            if host.features["seccomp"].available] +
        (["name=userns"] if host.features["user_namespaces"].available else []),
        "Minirun": dict(host.to_dict(), networks=nets),
    }


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
    from . import cli_format

    cli_format.register(cli)
    from . import cli_pull

    cli_pull.register(cli)
    from . import cli_image

    cli_image.register(cli)
    from . import cli_network

    cli_network.register(cli)
    from . import cli_cri

    cli_cri.register(cli)
    from . import cli_volume

    cli_volume.register(cli)
    from . import cli_more

    cli_more.register(cli)
    from . import cli_demo

    cli_demo.register(cli)
    from . import cli_dockerapi

    cli_dockerapi.register(cli)
    from . import cli_events

    cli_events.register(cli)


_register_commands()


# docker (and podman) exit 125 on a usage error, with one line naming it and where help is
EXIT_USAGE = 125
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def usage_error_text(e: click.UsageError) -> str:
    """A usage error as docker words it: `unknown flag: --bogus`, `unknown shorthand flag:
    'x' in -x`, `invalid argument "x" for "-t, --time" flag: ...`, `"minirun run"
    requires at least 1 argument`, then `See 'minirun run --help'.`"""
    ctx = e.ctx
    path = ctx.command_path if ctx is not None else "minirun"
    if isinstance(e, click.NoSuchOption):
        name = e.option_name
        what = f"unknown flag: {name}" if name.startswith("--") or len(name) != 2 else \
            f"unknown shorthand flag: {name[1]!r} in {name}"
    elif isinstance(e, click.MissingParameter) and isinstance(e.param, click.Argument):
        what = f'"{path}" requires at least 1 argument ({e.param.human_readable_name} ' \
            "is missing)"
    elif isinstance(e, click.BadParameter) and e.param is not None:
        names = ", ".join(getattr(e.param, "opts", []) or [e.param.human_readable_name])
        given = ctx.params.get(e.param.name) if ctx is not None else None
        value = f'"{given}" ' if given is not None else ""
        kind = "flag" if isinstance(e.param, click.Option) else "argument"
        what = f"invalid argument {value}for \"{names}\" {kind}: {e.message}"
    elif e.message.startswith("Option '") and e.message.endswith("requires an argument."):
        what = f"flag needs an argument: {e.message.split(chr(39))[1]}"
    elif e.message.startswith("No such command"):
        name = e.message.split("'")[1] if "'" in e.message else e.message
        what = f"{name!r} is not a {path} command"
    else:
        what = e.message[:1].lower() + e.message[1:]
    what = what.replace("\n", " ").rstrip(".")
    return f"{path.split()[0]}: {what}\nSee '{path} --help'."


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    try:
        result = cli.main(args=argv, prog_name="minirun", standalone_mode=False)
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        return e.exit_code
    except NO_ARGS_IS_HELP as e:  # a bare `minirun` or `minirun network`: its help, as docker
        click.echo(e.ctx.get_help() if e.ctx is not None else str(e))
        return 0
    except click.UsageError as e:
        click.echo(usage_error_text(e), err=True)
        return EXIT_USAGE
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("minirun: aborted", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
