"""`minirun events`: docker's events from the engine's log (minirun/monitor/events.py),
printed as docker prints them; followed until interrupted, or until --until."""

from __future__ import annotations

import signal
import sys

import click

from .cli_container import root_option
from .errors import MiniRunError


class _Interrupted(Exception):
    pass


def _interrupt(signum, frame) -> None:
    raise _Interrupted


@click.command(name="events")
@root_option
@click.option("--since", default=None, metavar="TIME",
              help="show events from TIME: RFC3339, unix seconds, or a duration back "
                   "from now (10m, 1h30m)")
@click.option("--until", default=None, metavar="TIME",
              help="stop streaming at TIME (same forms as --since)")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="container=, event=, type=, image=, label=, network=, volume= "
                   "(one key's values ORed, keys ANDed)")
@click.option("--format", "fmt", default=None,
              help="json (one object per line), or a Go template ('{{.Action}}')")
def events(root, since, until, filters, fmt) -> None:
    """Print events of containers, images, networks and volumes as they happen."""
    from .engine import Engine
    from .gotemplate import expand_escapes, go_json, parse
    from .monitor import events as ev

    try:
        wanted = ev.parse_filters(filters)
        since_ns = ev.parse_time(since) if since is not None else None
        until_ns = ev.parse_time(until) if until is not None else None
        ev.check_window(since_ns, until_ns)
        if fmt is None or fmt.strip() == "":
            render = ev.text_line
        elif fmt.strip() == "json":
            render = go_json
        else:
            render = parse(expand_escapes(fmt), strict=True).render
        engine = Engine(root=root)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt)
        for msg in ev.follow(engine.db, since_ns, until_ns, wanted):
            sys.stdout.write(render(msg) + "\n")
            sys.stdout.flush()
    except _Interrupted:
        return  # as docker: ^C (or a TERM) ends the stream, status 0
    except BrokenPipeError:
        from .cli_more import _reader_gone

        _reader_gone()
    except MiniRunError as e:
        click.echo(f"minirun: error: {e}", err=True)
        sys.exit(e.exit_code)


def register(group: click.Group) -> None:
    group.add_command(events)
    system = group.commands.get("system")
    if isinstance(system, click.Group):  # docker's `system events` too
        system.add_command(events)
