"""`minirun doctor`: the audit of minirun's leftovers (minirun/monitor/doctor.py)."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--fix", "do_fix", is_flag=True,
              help="repair what is safe to repair (see each finding's [safe])")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for machines")
@click.option("--oci-root", default=None,
              help="minirun-oci's state root to audit too (default: /run/minirun/oci when "
                   "the audit is host-wide)")
@click.option("--host-wide/--scoped", default=None,
              help="judge every host-wide object minirun names (default with the default "
                   "roots) or only those whose ids the roots in effect have known")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds a new record or cgroup is left alone (a create under way)")
@click.option("--no-host-checks", is_flag=True,
              help="skip the kernel, cgroup layout and ip_forward checks")
def doctor(do_fix: bool, as_json: bool, oci_root: str | None, host_wide: bool | None,
           grace: float, no_host_checks: bool) -> None:
    """Find what crashed runs left on the host (mounts, cgroups, links, netns, nftables
    rules, leases, records, processes, stale files) and what is wrong with the host.
    Exit status: 0 nothing found or all fixed, 1 findings left, 2 the audit failed."""
    from .monitor import doctor as doc

    try:
        audit = doc.audit(oci_state_root=oci_root, host_wide=host_wide,
                          check_host=not no_host_checks, grace=grace)
    except Exception as e:  # noqa: BLE001 - the audit failing is its own exit status
        _failed(e, doc.EXIT_ERROR)
    if do_fix:
        try:  # what a second look still finds, and only that (see doc.fix)
            again = doc.audit(oci_state_root=oci_root, host_wide=host_wide, check_host=False,
                              grace=grace)
        except Exception as e:  # noqa: BLE001
            _failed(e, doc.EXIT_ERROR)
        doc.fix(audit.findings, again.findings)
    if as_json:
        import json

        click.echo(json.dumps(doc.report(audit), indent=2))
    else:
        click.echo(doc.format_text(audit))
    sys.exit(doc.exit_code(audit))


def register(cli: click.Group) -> None:
    cli.add_command(doctor)


def _failed(e: Exception, code: int) -> None:
    """The audit could not run: one line (minirun's own errors as they are, anything
    else with its type, which names an unexpected failure), then `code`."""
    from .errors import MiniRunError

    what = str(e) if isinstance(e, MiniRunError) else f"{type(e).__name__}: {e}"
    click.echo(f"minirun: doctor: the audit failed: {what}", err=True)
    sys.exit(code)
