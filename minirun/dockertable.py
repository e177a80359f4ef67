"""The README's table of docker's verbs and flags and what minirun does with each.

Docker's side is data: the verbs of docker 24's `docker --help` and the flags of its
`docker run --help` (less `--help`), `exec`, `ps`, `logs`, ... that docker users pass
(swarm's cluster-volume flags left out), each with a note. minirun's side is computed
from the click command tree, so the table cannot claim what the CLI does not define:

- a verb or flag minirun defines is "yes", or "partial" when its note says
  `partial: why`, or when minirun lacks one of docker's names for it (`-n` of `--tail`);
- one it lacks is "no", with the note as the reason ("not implemented" without one).

Regenerate the README's copy (tests/test_docker_table.py fails when it is stale):

    python -m minirun.dockertable --write README.md
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import click

BEGIN = "<!-- docker-table begin -->"
END = "<!-- docker-table end -->"

NOT_IMPLEMENTED = "not implemented"
SWARM = "no orchestration here (Kubernetes: `minirun cri`)"
NO_BUILD = "no image builder: build elsewhere, then `minirun load` or `pull`"
NO_TRUST = "no image signing (Docker Content Trust)"
OCI_ONLY = "no flag here; minirun-oci applies it from a config.json"
WINDOWS = "Windows only"
NO_HEALTH = "no health checks (every container's health is `none`)"

# (docker's verb or verbs, note); a row of several verbs is as good as its worst
VERBS: list[tuple[tuple[str, ...], str]] = [
    (("run",), ""), (("create",), ""), (("start",), ""), (("stop",), ""), (("restart",), ""),
    (("kill",), ""), (("rm",), ""), (("ps",), ""), (("container ls",), ""),
    (("container prune",), ""), (("logs",), ""), (("exec",), ""), (("attach",), ""),
    (("wait",), ""), (("top",), ""), (("inspect",), ""), (("port",), ""), (("rename",), ""),
    (("update",), ""), (("pause", "unpause"), ""), (("cp",), ""), (("diff",), ""),
    (("export",), ""), (("commit",), ""),
    (("stats",), NOT_IMPLEMENTED), (("events",), ""),
    (("images",), ""), (("pull",), ""), (("push",), "not implemented: no registry upload"),
    (("rmi",), ""), (("tag",), ""), (("history",), ""), (("save",), ""), (("load",), ""),
    (("import",), ""), (("image inspect",), ""), (("image prune",), ""),
    (("search",), NOT_IMPLEMENTED), (("build",), NO_BUILD), (("builder",), NO_BUILD),
    (("buildx",), NO_BUILD), (("login",), ""), (("logout",), ""),
    (("network create",), ""), (("network ls",), ""), (("network inspect",), ""),
    (("network rm",), ""), (("network prune",), ""),
    (("network connect", "network disconnect"),
     "not implemented: a container's networks are chosen at `run`"),
    (("volume create",), ""), (("volume ls",), ""), (("volume inspect",), ""),
    (("volume rm",), ""), (("volume prune",), ""),
    (("version",), ""), (("info",), ""), (("system info",), ""), (("system df",), ""),
    (("system prune",), ""), (("system events",), ""),
    (("compose",), "not implemented: no compose plugin"),
    (("context",), "one local engine, no remote contexts"),
    (("manifest",), NOT_IMPLEMENTED), (("plugin",), "no engine plugins"),
    (("trust",), NO_TRUST),
    (("swarm", "service", "stack", "node", "secret", "config"), SWARM),
]

# docker 24's `docker run --help` (and `create`'s, the same list)
RUN_FLAGS: list[tuple[tuple[str, ...], str]] = [
    (("--add-host",), ""),
    (("--annotation",), NOT_IMPLEMENTED),
    (("-a", "--attach"),
     "not implemented: a foreground run attaches stdout and stderr, stdin with -i"),
    (("--blkio-weight",), OCI_ONLY), (("--blkio-weight-device",), OCI_ONLY),
    (("--cap-add",), ""), (("--cap-drop",), ""), (("--cgroup-parent",), ""),
    (("--cgroupns",), NOT_IMPLEMENTED),
    (("--cidfile",), NOT_IMPLEMENTED),
    (("--cpu-count",), WINDOWS), (("--cpu-percent",), WINDOWS),
    (("--cpu-period",), "not implemented: use --cpus"),
    (("--cpu-quota",), "not implemented: use --cpus"),
    (("--cpu-rt-period",), OCI_ONLY), (("--cpu-rt-runtime",), OCI_ONLY),
    (("-c", "--cpu-shares"), ""), (("--cpus",), ""), (("--cpuset-cpus",), ""),
    (("--cpuset-mems",), OCI_ONLY),
    (("-d", "--detach"), ""),
    (("--detach-keys",), "not on `run`: ctrl-p ctrl-q detaches; `attach --detach-keys` takes others"),
    (("--device",), ""), (("--device-cgroup-rule",), NOT_IMPLEMENTED),
    (("--device-read-bps",), OCI_ONLY), (("--device-read-iops",), OCI_ONLY),
    (("--device-write-bps",), OCI_ONLY), (("--device-write-iops",), OCI_ONLY),
    (("--disable-content-trust",), NO_TRUST),
    (("--dns",), ""), (("--dns-option",), ""), (("--dns-search",), ""),
    (("--domainname",), NOT_IMPLEMENTED),
    (("--entrypoint",), ""), (("-e", "--env"), ""), (("--env-file",), ""),
    (("--expose",), "not implemented: -P publishes the image's ExposedPorts"),
    (("--gpus",), "no GPU or CDI devices (--device passes a device node)"),
    (("--group-add",), ""),
    (("--health-cmd",), NO_HEALTH), (("--health-interval",), NO_HEALTH),
    (("--health-retries",), NO_HEALTH), (("--health-start-period",), NO_HEALTH),
    (("--health-timeout",), NO_HEALTH), (("--no-healthcheck",), NO_HEALTH),
    (("-h", "--hostname"), ""), (("--init",), ""), (("-i", "--interactive"), ""),
    (("--io-maxbandwidth",), WINDOWS), (("--io-maxiops",), WINDOWS),
    (("--ip",), "not implemented: addresses are leased from the network's subnet"),
    (("--ip6",), "no IPv6 on minirun's networks"),
    (("--ipc",), "partial: `none` is refused"),
    (("--isolation",), WINDOWS),
    (("--kernel-memory",), "deprecated by docker; cgroup v2 has no kernel memory limit"),
    (("-l", "--label"), ""), (("--label-file",), ""),
    (("--link",), "legacy: containers on one user network find each other by name"),
    (("--link-local-ip",), NOT_IMPLEMENTED),
    (("--log-driver",), "one log format (minirun's own file, read by `logs`)"),
    (("--log-opt",), "partial: max-size and max-file only"),
    (("--mac-address",), NOT_IMPLEMENTED),
    (("-m", "--memory"), ""), (("--memory-reservation",), ""), (("--memory-swap",), ""),
    (("--memory-swappiness",), OCI_ONLY),
    (("--mount",), ""), (("--name",), ""), (("--network",), ""),
    (("--network-alias",), "not implemented: peers know a container by its name"),
    (("--oom-kill-disable",), "partial: cgroup v1 only (v2 has no such setting)"),
    (("--oom-score-adj",), ""), (("--pid",), ""), (("--pids-limit",), ""),
    (("--platform",), "partial: this host's platform only, no emulation"),
    (("--privileged",), ""), (("-p", "--publish"), ""), (("-P", "--publish-all"), ""),
    (("--pull",), ""),
    (("-q", "--quiet"), NOT_IMPLEMENTED),
    (("--read-only",), ""), (("--restart",), ""), (("--rm",), ""),
    (("--runtime",), "minirun is its own runtime"),
    (("--security-opt",), ("partial: no AppArmor profiles or SELinux labels "
                           "(`apparmor=unconfined`, `label=disable` accepted)")),
    (("--shm-size",), ""),
    (("--sig-proxy",), "not implemented: signals are always passed on"),
    (("--stop-signal",), ""), (("--stop-timeout",), ""),
    (("--storage-opt",), "not implemented: no size quota on a container's layer"),
    (("--sysctl",), ""), (("--tmpfs",), ""), (("-t", "--tty"), ""), (("--ulimit",), ""),
    (("-u", "--user"), ""), (("--userns",), ""), (("--uts",), ""), (("-v", "--volume"), ""),
    (("--volume-driver",), "only local volumes"),
    (("--volumes-from",), NOT_IMPLEMENTED),
    (("-w", "--workdir"), ""),
]

# (docker's commands that take the same flags, those flags)
FLAGS: list[tuple[tuple[str, ...], list[tuple[tuple[str, ...], str]]]] = [
    (("run", "create"), RUN_FLAGS),
    (("exec",), [
        (("-d", "--detach"), ""), (("--detach-keys",), NOT_IMPLEMENTED),
        (("-e", "--env"), ""), (("--env-file",), NOT_IMPLEMENTED),
        (("-i", "--interactive"), ""),
        (("--privileged",), NOT_IMPLEMENTED), (("-t", "--tty"), ""), (("-u", "--user"), ""),
        (("-w", "--workdir"), ""),
    ]),
    (("ps",), [
        (("-a", "--all"), ""), (("-f", "--filter"), ""), (("--format",), ""),
        (("-n", "--last"), ""), (("-l", "--latest"), ""), (("--no-trunc",), ""),
        (("-q", "--quiet"), ""), (("-s", "--size"), ""),
    ]),
    (("logs",), [
        (("--details",), "no log attributes to show"), (("-f", "--follow"), ""),
        (("--since",), ""), (("-n", "--tail"), ""), (("-t", "--timestamps"), ""),
        (("--until",), NOT_IMPLEMENTED),
    ]),
    (("events",), [
        (("-f", "--filter"), ""), (("--format",), ""), (("--since",), ""), (("--until",), ""),
    ]),
    (("start",), [
        (("-a", "--attach"), ""), (("--detach-keys",), NOT_IMPLEMENTED),
        (("-i", "--interactive"), NOT_IMPLEMENTED),
    ]),
    (("stop", "restart"), [
        (("-s", "--signal"), "not implemented: the container's --stop-signal is sent"),
        (("-t", "--time"), ""),
    ]),
    (("rm",), [
        (("-f", "--force"), ""), (("-l", "--link"), "no legacy links"),
        (("-v", "--volumes"), ""),
    ]),
    (("update",), [
        (("--blkio-weight",), OCI_ONLY), (("--cpu-period",), "not implemented: use --cpus"),
        (("--cpu-quota",), "not implemented: use --cpus"), (("--cpu-rt-period",), OCI_ONLY),
        (("--cpu-rt-runtime",), OCI_ONLY), (("-c", "--cpu-shares"), ""), (("--cpus",), ""),
        (("--cpuset-cpus",), ""), (("--cpuset-mems",), OCI_ONLY),
        (("--kernel-memory",), "deprecated by docker; cgroup v2 has no kernel memory limit"),
        (("-m", "--memory"), ""), (("--memory-reservation",), ""), (("--memory-swap",), ""),
        (("--pids-limit",), ""), (("--restart",), ""),
    ]),
    (("inspect",), [(("-f", "--format"), ""), (("-s", "--size"), ""), (("--type",), "")]),
    (("images",), [
        (("-a", "--all"), ""), (("--digests",), ""), (("-f", "--filter"), ""),
        (("--format",), ""), (("--no-trunc",), ""), (("-q", "--quiet"), ""),
    ]),
    (("pull",), [
        (("-a", "--all-tags"), NOT_IMPLEMENTED), (("--disable-content-trust",), NO_TRUST),
        (("--platform",), "partial: this host's platform only"), (("-q", "--quiet"), ""),
    ]),
    (("network create",), [
        (("--attachable",), SWARM), (("--aux-address",), NOT_IMPLEMENTED),
        (("--config-from",), SWARM), (("--config-only",), SWARM),
        (("-d", "--driver"), "partial: bridge only"), (("--gateway",), ""),
        (("--ingress",), SWARM), (("--internal",), ""),
        (("--ip-range",), NOT_IMPLEMENTED), (("--ipam-driver",), NOT_IMPLEMENTED),
        (("--ipam-opt",), NOT_IMPLEMENTED), (("--ipv6",), "no IPv6 on minirun's networks"),
        (("--label",), NOT_IMPLEMENTED), (("-o", "--opt"), NOT_IMPLEMENTED),
        (("--scope",), SWARM), (("--subnet",), ""),
    ]),
    (("network ls",), [
        (("-f", "--filter"), NOT_IMPLEMENTED), (("--format",), ""), (("--no-trunc",), ""),
        (("-q", "--quiet"), ""),
    ]),
    (("network inspect",), [(("-f", "--format"), ""), (("-v", "--verbose"), SWARM)]),
    (("network rm",), [(("-f", "--force"), NOT_IMPLEMENTED)]),
    (("network prune",), [(("--filter",), ""), (("-f", "--force"), "")]),
    (("volume create",), [
        (("-d", "--driver"), "partial: `local` only"), (("--label",), ""),
        (("-o", "--opt"), "partial: accepted, but the local driver here takes no options"),
    ]),
    (("volume ls",), [
        (("-f", "--filter"), NOT_IMPLEMENTED), (("--format",), NOT_IMPLEMENTED),
        (("-q", "--quiet"), ""),
    ]),
    (("volume inspect",), [(("-f", "--format"), NOT_IMPLEMENTED)]),
    (("volume rm",), [(("-f", "--force"), "")]),
    (("volume prune",), [
        (("-a", "--all"), ""), (("--filter",), NOT_IMPLEMENTED), (("-f", "--force"), ""),
    ]),
    (("system df",), [(("--format",), NOT_IMPLEMENTED), (("-v", "--verbose"), "")]),
    (("system prune",), [
        (("-a", "--all"), ""), (("--filter",), ""), (("-f", "--force"), ""),
        (("--volumes",), ""),
    ]),
]


@dataclass
class Row:
    """One line of the table: docker's names, minirun's support and why."""

    docker: str
    support: str  # yes | partial | no
    note: str


def find_command(root: click.Group, path: str) -> click.Command | None:
    """The click command at `path` ("network create"), or None."""
    command: click.Command | None = root
    for word in path.split():
        if not isinstance(command, click.Group):
            return None
        command = command.commands.get(word)
    return command


def option_names(command: click.Command) -> set[str]:
    """Every flag name a command accepts (`-m`, `--memory`, `--no-pause`, ...)."""
    return {name for p in command.params if isinstance(p, click.Option)
            for name in [*p.opts, *p.secondary_opts]}


def judge(present: bool, note: str, missing_names: Sequence[str] = ()) -> tuple[str, str]:
    """(support, note) from whether minirun defines it and the data's note."""
    if not present:
        return "no", note if note and not note.startswith("partial:") else NOT_IMPLEMENTED
    if note.startswith("partial:"):
        return "partial", note.removeprefix("partial:").strip()
    if missing_names:
        return "partial", f"no {', '.join(missing_names)} shorthand"
    return "yes", ""


def verb_rows(root: click.Group) -> list[Row]:
    """docker's verbs; a row of several (pause, unpause) needs each."""
    rows = []
    for paths, note in VERBS:
        present = all(find_command(root, p) is not None for p in paths)
        rows.append(Row(", ".join(f"`{p}`" for p in paths), *judge(present, note)))
    return rows


def flag_rows(root: click.Group, paths: tuple[str, ...],
              flags: list[tuple[tuple[str, ...], str]]) -> list[Row]:
    """A command's flags; with several paths (run, create) a flag must be on each."""
    defined = [option_names(c) if (c := find_command(root, p)) else set() for p in paths]
    rows = []
    for names, note in flags:
        long_name = names[-1]
        present = all(long_name in d for d in defined)
        missing = sorted({n for n in names[:-1] for d in defined if n not in d})
        rows.append(Row(", ".join(f"`{n}`" for n in names), *judge(present, note, missing)))
    return rows


def summary(rows: list[Row]) -> str:
    return ", ".join(f"{sum(r.support == s for r in rows)} {s}" for s in ("yes", "partial", "no"))


def render(root: click.Group | None = None) -> str:
    """The tables, as they go between the README's markers: the verbs, then the flags."""
    if root is None:
        from .cli import cli as root
    verbs = verb_rows(root)
    lines = [f"<details><summary>docker verbs ({summary(verbs)})</summary>", "",
             "| docker | minirun | note |", "|:--|:--|:--|"]
    lines += [f"| {r.docker} | {r.support} | {r.note} |" for r in verbs]
    lines += ["", "</details>", ""]
    flags = [(paths, row) for paths, data in FLAGS for row in flag_rows(root, paths, data)]
    lines += [f"<details><summary>their flags ({summary([r for _, r in flags])})</summary>",
              "", "| docker | flag | minirun | note |", "|:--|:--|:--|:--|"]
    lines += [f"| {', '.join(paths)} | {r.docker} | {r.support} | {r.note} |"
              for paths, r in flags]
    lines += ["", "</details>"]
    return "\n".join(lines)


def marker_span(text: str) -> tuple[int, int]:
    """Where the table lies in `text`: from the end of BEGIN to the start of END."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} ... {END} are missing")
    return start + len(BEGIN), end


def replace_between_markers(text: str, table: str) -> str:
    """`text` with what lies between BEGIN and END replaced by `table`."""
    start, end = marker_span(text)
    return text[:start] + "\n" + table + "\n" + text[end:]


def readme_table(text: str) -> str:
    """What lies between the markers of `text`, without the newlines around it."""
    start, end = marker_span(text)
    return text[start:end].strip("\n")


def main(argv: list[str] | None = None) -> int:
    """Print the table, or with `--write FILE` put it between FILE's markers."""
    args = sys.argv[1:] if argv is None else argv
    table = render()
    if not args:
        print(table)
        return 0
    if len(args) != 2 or args[0] != "--write":
        print("usage: python -m minirun.dockertable [--write README.md]", file=sys.stderr)
        return 2
    with open(args[1]) as f:
        text = f.read()
    try:
        new = replace_between_markers(text, table)
    except ValueError as e:
        print(f"{args[1]}: {e}", file=sys.stderr)
        return 1
    if new != text:
        with open(args[1], "w") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
