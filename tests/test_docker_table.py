"""The README's table of docker verbs and flags: current, and true of the click commands.

No containers: it reads the CLI's definitions only."""

import os
import subprocess
import sys

import click

from minirun import dockertable
from minirun.cli import cli

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def flag_support(paths: tuple[str, ...], flag: str) -> dict[str, str]:
    """{"support": ..., "note": ...} of one flag row, found by docker's long name."""
    for row_paths, data in dockertable.FLAGS:
        if row_paths == paths:
            for row in dockertable.flag_rows(cli, paths, data):
                if f"`{flag}`" in row.docker.split(", "):
                    return {"support": row.support, "note": row.note}
    raise AssertionError(f"no row for {paths} {flag}")


def test_readme_table_is_the_generated_one():
    with open(README) as f:
        text = f.read()
    assert dockertable.readme_table(text) == dockertable.render(), \
        "README's docker table is stale: python -m minirun.dockertable --write README.md"


def test_known_flags_and_verbs():
    assert flag_support(("run", "create"), "--memory") == {"support": "yes", "note": ""}
    assert flag_support(("run", "create"), "--gpus")["support"] == "no"
    assert flag_support(("run", "create"), "--platform")["support"] == "partial"
    # minirun's logs has --tail but not docker's -n: partial, computed
    assert flag_support(("logs",), "--tail") == {"support": "partial",
                                                 "note": "no -n shorthand"}
    verbs = {r.docker: r.support for r in dockertable.verb_rows(cli)}
    assert verbs["`run`"] == "yes" and verbs["`volume prune`"] == "yes"
    assert verbs["`build`"] == "no" and verbs["`push`"] == "no"


def parses(path: str, flag: str) -> bool:
    """Whether click's own parser takes `minirun PATH FLAG 1` (the 1: a value, or an
    argument for a flag), rather than refusing the flag as unknown. Nothing runs: a
    context is only made."""
    command = dockertable.find_command(cli, path)
    assert isinstance(command, click.Command), path
    try:
        command.make_context(path, [flag, "1"])
    except click.NoSuchOption:
        return False
    except click.UsageError:  # the flag was taken; a missing argument, a bad value
        pass
    return True


def test_every_yes_is_in_the_click_tree():
    """Checked with click's parser, not with the module's walk of the options."""
    assert parses("run", "--memory") and not parses("run", "--gpus")
    for paths, data in dockertable.FLAGS:
        for (names, _), row in zip(data, dockertable.flag_rows(cli, paths, data)):
            wanted = {"yes": names, "partial": names[-1:], "no": ()}[row.support]
            for path in paths:
                assert all(parses(path, n) for n in wanted), (path, names, row.support)
            if row.support == "no":
                assert not all(parses(p, names[-1]) for p in paths), (paths, names)
    rows = dockertable.verb_rows(cli)
    for (paths, _), row in zip(dockertable.VERBS, rows):
        found = [cli.get_command(click.Context(cli), p.split()[0]) for p in paths]
        found = [c.get_command(click.Context(c), p.split()[1]) if len(p.split()) > 1 and c
                 else c for c, p in zip(found, paths)]
        assert (row.support == "yes") == all(found), (paths, row.support)


def test_a_flag_minirun_lacks_is_no_with_its_reason():
    root = click.Group(commands={"run": click.Command("run", params=[
        click.Option(["-m", "--memory"]), click.Option(["--security-opt"])])})
    rows = {r.docker: r for r in dockertable.flag_rows(root, ("run",), dockertable.RUN_FLAGS)}
    assert (rows["`-m`, `--memory`"].support, rows["`-m`, `--memory`"].note) == ("yes", "")
    assert rows["`--security-opt`"].support == "partial"
    assert (rows["`--gpus`"].support, rows["`--gpus`"].note) == \
        ("no", "no GPU or CDI devices (--device passes a device node)")
    assert (rows["`--cpus`"].support, rows["`--cpus`"].note) == ("no", "not implemented")


def test_write_refuses_a_file_without_markers(tmp_path):
    target = tmp_path / "README.md"
    target.write_text("# no table here\n")
    proc = subprocess.run([sys.executable, "-m", "minirun.dockertable", "--write", str(target)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "markers" in proc.stderr
    assert target.read_text() == "# no table here\n"


def test_write_replaces_only_between_markers(tmp_path):
    target = tmp_path / "README.md"
    target.write_text("a\n<!-- docker-table begin -->\nold\n<!-- docker-table end -->\nb\n")
    subprocess.run([sys.executable, "-m", "minirun.dockertable", "--write", str(target)],
                   check=True, timeout=60)
    text = target.read_text()
    assert text.startswith("a\n<!-- docker-table begin -->\n") and text.endswith(
        "<!-- docker-table end -->\nb\n")
    assert dockertable.readme_table(text) == dockertable.render()
