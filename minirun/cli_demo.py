"""`minirun demo [NAME|all]`: the limits lab (minirun.demo). Parses and prints; the
scenarios and the runner live in minirun.demo, imported only when the verb runs."""

from __future__ import annotations

import signal
import sys

import click

from .cli_container import root_option


@click.command(name="demo")
@root_option
@click.option("--run-root", envvar="MINIRUN_RUN_ROOT", default=None,
              help="runtime state directory (default /run/minirun)")
@click.option("--json", "as_json", is_flag=True, help="results as JSON on stdout")
@click.option("--keep", is_flag=True, help="leave the scenario's containers for a look")
@click.option("--explain", is_flag=True, help="print the longer text of each scenario")
@click.argument("name", required=False)
def demo(root, run_root, as_json, keep, explain, name) -> None:
    """The limits lab: see on this host what containers do and do not isolate.
    Without NAME, list the scenarios; NAME or `all` runs them. Exit status: 0 every
    lesson held, 1 a lesson did not hold, 3 a scenario could not run on this host."""
    from .demo import SCENARIOS, load

    if name is None:
        width = max(len(n) for n in SCENARIOS)
        for n in SCENARIOS:
            click.echo(f"{n:<{width}}  {load(n).TITLE}")
            if explain:
                click.echo(load(n).EXPLAIN)
        return
    names = list(SCENARIOS) if name == "all" else [name]
    if name != "all" and name not in SCENARIOS:
        click.echo(f"minirun: error: no demo scenario {name!r} (one of: "
                   f"{', '.join(SCENARIOS)}, all)", err=True)
        sys.exit(2)
    import json

    from .demo.lab import Lab, exit_status

    out = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    lab = Lab(root=root, run_root=run_root, out=out, keep=keep, explain=explain)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # the runner's finally removes containers
    results = []
    try:
        for n in names:
            results.append(lab.run_scenario(n))
    except KeyboardInterrupt:
        click.echo("minirun: demo interrupted; its containers were removed", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps({"results": [r.to_dict() for r in results],
                               "exit_status": exit_status(results)}, indent=2))
    elif len(results) > 1:
        for r in results:
            click.echo(f"{r.name:<13} {r.verdict.upper()}" + (f": {r.reason}" if r.reason
                                                               else ""))
    sys.exit(exit_status(results))


def register(cli: click.Group) -> None:
    cli.add_command(demo)
