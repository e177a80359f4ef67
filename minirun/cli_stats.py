"""`minirun stats`: docker's live table of containers' resource use.

Each frame is computed as the docker CLI does from the Docker API's stats documents
(minirun/monitor/stats.py), each with the document of the frame before as precpu; the
first frame is primed with a sample taken a second earlier (dockerd does that for
--no-stream), so no frame shows a CPU % without a measured interval behind it.

On a terminal each frame is drawn over the one before with curses' terminfo strings
(home, el, ed; the stdlib, so no dependency, and no full-screen takeover: the last frame
stays on screen as docker's does; rich would add a dependency and its own table layout,
not docker's tabwriter columns). Into a pipe each frame is printed after the one before,
without escape sequences.
"""

from __future__ import annotations

import sys
import time

import click

from .cli_container import _engine, root_option
from .errors import MiniRunError, NotFound

INTERVAL = 1.0


@click.command(name="stats")
@root_option
@click.option("-a", "--all", "all_", is_flag=True,
              help="all containers (default: the running ones)")
@click.option("--no-stream", is_flag=True, help="one frame, then exit")
@click.option("--no-trunc", is_flag=True, help="full container ids")
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help="table, json, or a Go template ('{{.Name}} {{.CPUPerc}}')")
@click.argument("names", nargs=-1, metavar="[CONTAINER...]")
def stats(root, all_, no_stream, no_trunc, fmt, names) -> None:
    """A live stream of containers' resource use (CPU, memory, network and block I/O,
    pids)."""
    from .gotemplate import format_items
    from .monitor import stats as mstats

    fmt = fmt or "table"
    format_items(fmt, [], mstats.HEADERS, mstats.TABLE)  # a bad template fails first
    engine = _engine(root)
    named: list[tuple[str, str]] = []  # (as the user named it, id)
    errors = []
    for name in names:
        try:
            named.append((name, engine.get(name)["id"]))
        except NotFound:
            errors.append(f"Error response from daemon: No such container: {name}")
        except MiniRunError as e:
            errors.append(f"Error response from daemon: {e}")
    if errors:
        click.echo("\n".join(errors), err=True)
        sys.exit(1)

    def targets() -> list[tuple[str, dict]]:
        if names:
            out = []
            for shown, cid in named:
                try:
                    out.append((shown, engine.get(cid)))
                except NotFound:
                    pass  # removed meanwhile
            return out
        recs = [r for r in engine.records() if all_ or r["status"] in mstats.RUNNING]
        recs.sort(key=lambda r: r["created"], reverse=True)
        return [(r["id"], r) for r in recs]

    def sample(previous: dict[str, dict]) -> list[tuple[str, dict]]:
        return [(shown, mstats.container_stats(engine, rec, previous.get(rec["id"])))
                for shown, rec in targets()]

    def lines(frame: list[tuple[str, dict]]) -> list[str]:
        rows = [mstats.format_entry(mstats.entry_of(doc), shown, trunc=not no_trunc)
                for shown, doc in frame]
        return format_items(fmt, rows, mstats.HEADERS, mstats.TABLE)

    screen = Screen() if not no_stream and sys.stdout.isatty() else None
    try:
        previous = {doc["id"]: doc for _, doc in sample({})}
        while True:
            if previous:
                time.sleep(INTERVAL)
            frame = sample(previous)
            previous = {doc["id"]: doc for _, doc in frame}
            if screen is not None:
                screen.draw(lines(frame))
            else:
                for line in lines(frame):
                    click.echo(line)
            if no_stream or (names and not frame):
                return
            if not previous:
                time.sleep(INTERVAL)
    except KeyboardInterrupt:
        sys.exit(130)


class Screen:
    """Draws frames over each other on a terminal with its terminfo strings."""

    def __init__(self) -> None:
        import curses

        try:
            curses.setupterm()
            caps = {cap: curses.tigetstr(cap) or b"" for cap in ("clear", "home", "el", "ed")}
        except curses.error:  # no terminfo for $TERM: the ANSI sequences docker writes
            caps = {}
        self.clear = caps.get("clear") or b"\033[H\033[2J"
        self.home = caps.get("home") or b"\033[H"
        self.el = caps.get("el") or b"\033[K"
        self.ed = caps.get("ed") or b"\033[J"
        self.first = True

    def draw(self, lines: list[str]) -> None:
        out = sys.stdout.buffer
        out.write(self.clear if self.first else self.home)
        self.first = False
        for line in lines:
            out.write(line.encode() + self.el + b"\n")
        out.write(self.ed)
        out.flush()


def register(group: click.Group) -> None:
    group.add_command(stats)
    container = group.commands.get("container")
    if isinstance(container, click.Group):
        container.add_command(stats)
