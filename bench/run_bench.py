#!/usr/bin/env python3
"""`minirun run --rm busybox true` against `podman run --rm busybox true` with crun and runc.

    bench/run_bench.py [--iterations 20] [--warmup 3] [--network MODE] [--tools LIST]
                       [--minirun CMD] [--podman-storage-driver overlay] [--json FILE|-]

Run as root. Both engines get the same image: the busybox rootfs tarball that
rootfs/build.sh makes, imported into a temporary minirun root, saved with `minirun save`
and loaded into a temporary podman store with `podman load`. Each command is timed from
spawn to exit. The tools take turns within an iteration and the order rotates from one
iteration to the next, after a few unrecorded warm-up iterations.

Every container runs with `--network none`. With `--network MODE` (e.g. bridge) the same
measurement is repeated with that mode, if minirun accepts it (otherwise the bench says so
and measures only `none`).

minirun is measured through three launchers: the one scripts/install.sh writes for
`minirun` (`python -SE`, minirun.client), pip's console script in .venv/bin, and a
`python -SE` launcher like install.sh's `minirun-oci-fast`, written into the temp dir.

podman is isolated from the host's podman: its store, run root, tmpdir, network config
and events log live in the temp dir; the cgroup manager is cgroupfs with the cgroup parent
/minirun-podman-bench/<token>. On a hybrid cgroup host crun refuses to run ("cgroups in
hybrid mode not supported"): podman with crun then runs from a forked helper in a private
mount namespace where a tmpfs hides /sys/fs/cgroup/unified (as bench/oci_bench.py does).
Everything is removed at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # benchlib, when run by another path

from benchlib import (
    CHECKOUT,
    MINIRUN_CONSOLE,
    BenchError,
    PrivateCgroupHelper,
    add_iteration_args,
    add_output_args,
    catch_signals,
    cgroup_dirs,
    checked,
    checkout_state,
    crun_needs_private_ns,
    describe_checkout,
    ignore_signals,
    kill_cgroup_procs,
    loadavg,
    log_stream,
    machine_and_checkout,
    minirun_command,
    progress,
    ratio,
    read_ip_forward,
    remove_tree,
    rotated,
    summary,
    timed,
    write_fast_launcher,
    write_json,
)

IMAGE = "busybox"
CGROUP_TOP = "minirun-podman-bench"
TOOLS = ("minirun", "minirun-console", "minirun-fast", "podman-crun", "podman-runc")
GOAL = 0.4  # issue 10: minirun run at most 40% of podman's time (issue 4 asked 50%)
RUN_TIMEOUT = 60.0
CAP_SYS_RESOURCE = 24

CONTAINERS_CONF = """\
[containers]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"

[network]
network_config_dir = "{network_dir}"
"""


class Helper(PrivateCgroupHelper):
    """A forked process in a private mount namespace where /sys/fs/cgroup/unified is a
    tmpfs, running commands on request (podman with crun on a hybrid host, see top)."""

    def __init__(self) -> None:
        super().__init__(lambda req: timed(req["argv"], req["env"], req["timeout"]),
                         ready_timeout=30, exit_timeout=RUN_TIMEOUT + 5)

    def run(self, argv: list[str], env: dict, timeout: float = RUN_TIMEOUT) -> dict:
        self.send({"argv": argv, "env": env, "timeout": timeout})
        reply = self.recv(timeout + 30)
        if "error" in reply:
            raise BenchError(reply["error"])
        return reply


# --- setup --------------------------------------------------------------------------------

def has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        return f"({e})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "?"


class Podman:
    """podman against a private store in `base`, cgroups under /minirun-podman-bench."""

    def __init__(self, base: str, driver: str) -> None:
        self.base = base
        os.makedirs(base)
        self.storage = os.path.join(base, "storage")
        self.cgroup_parent = f"/{CGROUP_TOP}/{secrets.token_hex(4)}"
        conf = os.path.join(base, "containers.conf")
        with open(conf, "w") as f:
            f.write(CONTAINERS_CONF.format(network_dir=os.path.join(base, "networks")))
        storage_conf = os.path.join(base, "storage.conf")
        with open(storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "{driver}"\ngraphroot = "{self.storage}"\n'
                    f'runroot = "{os.path.join(base, "run")}"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage_conf)
        self.cmd = ["podman", "--root", self.storage, "--runroot", os.path.join(base, "run"),
                    "--storage-driver", driver, "--tmpdir", os.path.join(base, "tmp"),
                    "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        self.run_opts = ["--pull", "never", "--cgroup-parent", self.cgroup_parent]
        # podman asks for RLIMIT_NOFILE 1048576; above the host's hard limit that needs
        # CAP_SYS_RESOURCE, which root lacks on some VMs (runc then fails to start).
        if not has_cap_sys_resource():
            self.run_opts += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

    def run_argv(self, runtime: str, network: str) -> list[str]:
        return self.cmd + ["--runtime", runtime, "run", "--rm", *self.run_opts,
                           "--network", network, IMAGE, "true"]


class Tool:
    def __init__(self, name: str, label: str, argv_for: Callable[[str], list[str]], env: dict,
                 in_helper: bool = False) -> None:
        self.name = name
        self.label = label
        self.argv_for = argv_for
        self.env = env
        self.in_helper = in_helper


# --- cleanup ------------------------------------------------------------------------------

def remove_cgroup_tree(rel: str) -> list[str]:
    """rmdir `rel` and everything below it in every hierarchy, killing what is still in
    it (at the end of a run only this run's containers and conmons can be there)."""
    left = []
    for top in cgroup_dirs(rel):
        kill_cgroup_procs(top)
        for _ in range(50):
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
            if not os.path.isdir(top):
                break
            time.sleep(0.1)  # a killed process stays counted for a moment
        else:
            left.append(top)
    return left


def remove_empty_cgroup(rel: str) -> None:
    for d in cgroup_dirs(rel):
        try:
            os.rmdir(d)
        except OSError:
            pass  # another bench's podman still has its cgroups there


def netavark_rules(table: str) -> list[str]:
    """The `iptables -S` lines of this table that name a netavark chain."""
    try:
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.splitlines() if "NETAVARK" in line]


class HostNetwork:
    """What podman's bridge (netavark) changes on the host and leaves behind: the bridge
    while a container uses it, and for good its base iptables chains and ip_forward."""

    def __init__(self) -> None:
        self.links = set(os.listdir("/sys/class/net"))
        self.tables = nft_tables()  # before iptables -S, which makes its base tables
        self.chains = {t: netavark_rules(t) for t in ("filter", "nat")}
        self.ip_forward = read_ip_forward()

    def restore(self) -> list[str]:
        problems = []
        if "podman0" in set(os.listdir("/sys/class/net")) - self.links:
            subprocess.run(["ip", "link", "del", "podman0"], check=False, capture_output=True)
        for table, before in self.chains.items():
            if before:
                continue  # netavark was in use before the bench: its chains are not ours
            rules = netavark_rules(table)
            jumps = [shlex.split(r) for r in rules if r.startswith("-A ")]
            chains = [r.split()[1] for r in rules if r.startswith("-N ")]
            # Jumps from the built-in chains first, then the chains themselves.
            for rule in sorted(jumps, key=lambda r: r[1].startswith("NETAVARK")):
                subprocess.run(["iptables", "-t", table, "-D", *rule[1:]], check=False,
                               capture_output=True)
            for chain in chains:
                subprocess.run(["iptables", "-t", table, "-F", chain], check=False,
                               capture_output=True)
            for chain in chains:
                subprocess.run(["iptables", "-t", table, "-X", chain], check=False,
                               capture_output=True)
            left = netavark_rules(table)
            if left:
                problems.append(f"iptables -t {table}: netavark rules left: {left}")
        for family, name in set(nft_tables()) - set(self.tables):
            # iptables-nft's empty base tables (made by netavark or by our iptables -S)
            listing = subprocess.run(["nft", "list", "table", family, name],
                                     capture_output=True, text=True, check=False).stdout
            if family == "ip" and name in ("nat", "filter") and not any(
                    line.strip() and not line.strip().startswith(("table", "chain", "type",
                                                                   "}"))
                    for line in listing.splitlines()):
                subprocess.run(["nft", "delete", "table", family, name], check=False,
                               capture_output=True)
        now = read_ip_forward()
        if now != self.ip_forward:
            bridges = {n for n in os.listdir("/sys/class/net")
                       if os.path.isdir(f"/sys/class/net/{n}/bridge")}
            if bridges <= self.links:
                # no bridge that was not there before the bench: podman's switched it
                with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                    f.write(self.ip_forward)
            else:
                new = " ".join(sorted(bridges - self.links))
                problems.append(f"net.ipv4.ip_forward is {now} (was {self.ip_forward}) and "
                                f"new bridges may need it ({new}): left as it is")
        return problems


def nft_tables() -> list[tuple[str, str]]:
    """(family, name) of the host's nftables tables."""
    try:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [tuple(line.split()[1:3]) for line in out.splitlines() if line.startswith("table ")]


def cleanup(tmp: str, podman: Podman | None, helper: Helper | None,
            minirun_cmd: list[str] | None, minirun_env: dict | None,
            host_net: HostNetwork, bridged: bool) -> list[str]:
    problems = []
    if podman is not None and os.path.isdir(podman.storage):
        for args in (("rm", "--all", "--force", "--time", "0"), ("rmi", "--all", "--force")):
            argv = podman.cmd + list(args)
            try:
                # Through the helper when there is one: crun's containers can only be
                # deleted where crun runs.
                result = helper.run(argv, podman.env) if helper \
                    else timed(argv, podman.env, RUN_TIMEOUT)
            except (BenchError, OSError) as e:
                result = {"code": None, "stderr": str(e)}
            if result["code"] != 0:
                problems.append(f"podman {' '.join(args)}: {result['stderr']}")
    if helper is not None:
        try:
            helper.close()
        except OSError as e:
            problems.append(f"helper: {e}")
    if minirun_cmd and minirun_env:
        containers = os.path.join(minirun_env["MINIRUN_ROOT"], "containers")
        for cid in sorted(os.listdir(containers)) if os.path.isdir(containers) else []:
            result = timed(minirun_cmd + ["rm", "--force", cid], minirun_env, RUN_TIMEOUT)
            if result["code"] != 0:
                problems.append(f"minirun rm --force {cid}: {result['stderr']}")
            problems += [f"cgroup {d} left" for d in remove_cgroup_tree(f"/minirun/{cid}")]
        # foreground runs start the daemon and its keeper in the bench's run root
        for name in ("daemon", "keeper"):
            problems += stop_by_pid_file(os.path.join(minirun_env["MINIRUN_RUN_ROOT"],
                                                      f"{name}.pid"))
    if podman is not None:
        problems += [f"cgroup {d} left" for d in remove_cgroup_tree(podman.cgroup_parent)]
        remove_empty_cgroup(f"/{CGROUP_TOP}")
    if bridged:
        problems += host_net.restore()
    problems += remove_tree(tmp)
    return problems


def stop_by_pid_file(path: str) -> list[str]:
    """SIGKILL the minirun process whose pid the file holds (only if it still is one)."""
    try:
        with open(path) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"minirun" not in f.read():
                return []
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return []
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return [f"process {pid} ({path}) left"] if os.path.exists(f"/proc/{pid}") else []


# --- report -------------------------------------------------------------------------------

def report(samples: dict[str, dict[str, list[float]]], tools: dict[str, Tool]) -> dict:
    out: dict = {"modes": {}}
    for mode, per_tool in samples.items():
        stats = {name: summary(v) for name, v in per_tool.items() if v}
        ratios = {}
        for name, s in stats.items():
            if not name.startswith("minirun"):
                continue
            for other in ("podman-crun", "podman-runc"):
                if other in stats:
                    ratios[f"{name}/{other}"] = ratio(s, stats[other])
        out["modes"][mode] = {"tools": stats, "ratios": ratios}
    return out


def print_report(result: dict, tools: dict[str, Tool]) -> None:
    for mode, data in result["modes"].items():
        stats, ratios = data["tools"], data["ratios"]
        others = [o for o in ("podman-crun", "podman-runc") if o in stats]
        print(f"\nrun --rm {IMAGE} true, --network {mode}")
        header = f"{'':<40}{'median ms':>11}{'p90 ms':>9}{'min ms':>9}"
        header += "".join(f"{'/' + o:>16}" for o in others)
        print(header)
        for name, s in stats.items():
            line = (f"{tools[name].label:<40}{s['median'] * 1e3:11.1f}{s['p90'] * 1e3:9.1f}"
                    f"{s['min'] * 1e3:9.1f}")
            for o in others:
                r = ratios.get(f"{name}/{o}")
                line += f"{r['median']:9.2f} /{r['p90']:5.2f}" if r else f"{'':>16}"
            print(line)
        print("(ratios: median / p90 of the row over the column's tool)")
        if "minirun" in stats and others:
            print(f"goal (issue 10), minirun at most {GOAL:.0%} of podman's time, medians:")
            for o in others:
                r = ratios[f"minirun/{o}"]["median"]
                verdict = "met" if r <= GOAL else "not met"
                print(f"  minirun/{o} = {r:.2f}: {verdict}")


# --- main ---------------------------------------------------------------------------------

MINIRUN_HOW = {"--minirun": "--minirun", "launcher": "scripts/install.sh's launcher",
               "console": "pip's console script (no install.sh launcher)"}
MINIRUN_LABEL = {"--minirun": "minirun (--minirun)", "launcher": "minirun (install.sh launcher)",
                 "console": "minirun (console script)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_iteration_args(p, iterations=20, warmup=3)
    p.add_argument("--network", metavar="MODE",
                   help="also measure with this network mode (e.g. bridge) on both engines, "
                   "if minirun accepts it; `none` is always measured")
    p.add_argument("--tools", default=",".join(TOOLS),
                   help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--minirun", help="the command for the `minirun` row (default: "
                   "scripts/install.sh's launcher for this checkout, else .venv/bin/minirun)")
    p.add_argument("--podman-storage-driver", default="overlay",
                   help="podman's storage driver (default overlay, podman's own default)")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        p.error("--iterations must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run_bench: run as root", file=sys.stderr)
        return 2
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in wanted:
        if t not in TOOLS:
            print(f"run_bench: unknown tool {t!r}", file=sys.stderr)
            return 2
    log = log_stream(args.json)

    catch_signals()
    host_net = HostNetwork()
    tmp = tempfile.mkdtemp(prefix="minirun-runbench.", dir=args.tmpdir)
    podman = helper = None
    minirun_cmd = minirun_env = None
    modes = ["none"]
    try:
        # minirun's image, from a fresh checkout: the rootfs tarball, imported.
        minirun_cmd, source = minirun_command(args.minirun)
        minirun_env = dict(os.environ, MINIRUN_ROOT=os.path.join(tmp, "minirun-root"),
                           MINIRUN_RUN_ROOT=os.path.join(tmp, "minirun-run"))
        print(f"minirun: {' '.join(minirun_cmd)} ({MINIRUN_HOW[source]})", file=log)
        tarball = os.path.join(tmp, "busybox-rootfs.tar")
        subprocess.run([os.path.join(CHECKOUT, "rootfs", "build.sh"), "--tar", tarball],
                       check=True, stdout=subprocess.DEVNULL)
        checked(minirun_cmd + ["import", "--cmd", '["sh"]', tarball, f"{IMAGE}:latest"],
                minirun_env, 300, "minirun import")
        saved = os.path.join(tmp, "busybox-saved.tar")
        checked(minirun_cmd + ["save", "-o", saved, IMAGE], minirun_env, 300, "minirun save")

        tools: dict[str, Tool] = {}

        def minirun_argv(cmd: list[str]):
            return lambda mode: cmd + ["run", "--rm", "--network", mode, IMAGE, "true"]

        if "minirun" in wanted:
            tools["minirun"] = Tool("minirun", MINIRUN_LABEL[source], minirun_argv(minirun_cmd),
                                    minirun_env)
        if "minirun-console" in wanted and os.access(MINIRUN_CONSOLE, os.X_OK) \
                and minirun_cmd != [MINIRUN_CONSOLE]:
            tools["minirun-console"] = Tool("minirun-console", "minirun (pip console script)",
                                            minirun_argv([MINIRUN_CONSOLE]), minirun_env)
        if "minirun-fast" in wanted:
            fast = write_fast_launcher(os.path.join(tmp, "minirun-fast"), "minirun.client",
                                       "teardown")
            tools["minirun-fast"] = Tool("minirun-fast", "minirun (-SE launcher)",
                                         minirun_argv([fast]), minirun_env)

        runtimes = {"podman-crun": shutil.which("crun") or "/usr/bin/crun",
                    "podman-runc": shutil.which("runc") or "/usr/bin/runc"}
        if any(t.startswith("podman") for t in wanted):
            if not shutil.which("podman"):
                raise BenchError("no podman (apt-get install podman)")
            podman = Podman(os.path.join(tmp, "podman"), args.podman_storage_driver)
            checked(podman.cmd + ["load", "-q", "-i", saved], podman.env, 300, "podman load")
            for name, runtime in runtimes.items():
                if name not in wanted:
                    continue
                if not os.access(runtime, os.X_OK):
                    print(f"skipping {name}: no {runtime}", file=log)
                    continue
                in_helper = name == "podman-crun" and crun_needs_private_ns()
                if in_helper and helper is None:
                    print("podman-crun: hybrid cgroups with controllers on cgroup2: podman "
                          "runs in a private mount namespace with a tmpfs over "
                          "/sys/fs/cgroup/unified (crun sees a v1 host; host mounts "
                          "untouched)", file=log)
                    helper = Helper()
                tools[name] = Tool(name, f"podman {version(['podman', '--version']).split()[-1]}"
                                   f" + {os.path.basename(runtime)}",
                                   lambda mode, r=runtime: podman.run_argv(r, mode),
                                   podman.env, in_helper)
        if not tools:
            raise BenchError("nothing to measure")

        def call(tool: Tool, mode: str) -> dict:
            argv = tool.argv_for(mode)
            return helper.run(argv, tool.env) if tool.in_helper \
                else timed(argv, tool.env, RUN_TIMEOUT)

        if args.network and args.network != "none":
            probe_tool = tools.get("minirun") or next(
                (t for n, t in tools.items() if n.startswith("minirun")), None)
            if probe_tool is None:
                modes.append(args.network)
            else:
                probe = call(probe_tool, args.network)
                if probe["code"] == 0:
                    modes.append(args.network)
                else:
                    print(f"minirun rejects --network {args.network} (exit {probe['code']}: "
                          f"{probe['stderr']}): only --network none is compared", file=log)

        state = checkout_state()
        load_before = loadavg()
        print(describe_checkout(state, load_before), file=log)
        names = list(tools)
        samples = {m: {n: [] for n in names} for m in modes}
        failures: dict[str, list[str]] = {n: [] for n in names}
        total = args.warmup + args.iterations
        for mode in modes:
            print(f"--network {mode}: {args.warmup} warm-up + {args.iterations} iterations, "
                  f"rotating over {', '.join(names)}", file=log)
            for i in range(total):
                for name in rotated(names, i):
                    result = call(tools[name], mode)
                    if result["code"] != 0:
                        failures[name].append(f"--network {mode} iteration {i + 1}: exit "
                                              f"{result['code']}: {result['stderr']}")
                        print(f"  {name} failed: {result['stderr'] or result['code']}",
                              file=log)
                    elif i >= args.warmup:
                        samples[mode][name].append(result["elapsed"])
                progress(i, total, log)

        result = report(samples, tools)
        result["samples"] = samples
        result["failures"] = failures
        result["config"] = {
            "iterations": args.iterations, "warmup": args.warmup, "modes": modes,
            "commands": {n: tools[n].argv_for("none") for n in names},
            "crun_private_mount_ns": any(t.in_helper for t in tools.values()),
            "podman_storage_driver": args.podman_storage_driver,
            "versions": {"podman": version(["podman", "--version"]),
                         "crun": version([runtimes["podman-crun"], "--version"]),
                         "runc": version([runtimes["podman-runc"], "--version"])},
            **machine_and_checkout(state, load_before)}
        if args.json != "-":
            print_report(result, tools)
            print(f"\nload average at the end {result['config']['loadavg_after']}")
            for name in names:
                if failures[name]:
                    print(f"{name}: {len(failures[name])} failed run(s), left out of the "
                          f"numbers; first: {failures[name][0]}")
        write_json(result, args.json)
        return 1 if any(failures.values()) else 0
    except (BenchError, subprocess.CalledProcessError) as e:
        print(f"run_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrun_bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        ignore_signals()
        bridged = len(modes) > 1
        for p in cleanup(tmp, podman, helper, minirun_cmd, minirun_env, host_net, bridged):
            print(f"run_bench: cleanup: {p}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
