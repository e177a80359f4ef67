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
`minirun` (a normal interpreter start, -E), pip's console script in .venv/bin, and a
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
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the sibling oci_bench.py, when run by another path

from oci_bench import (
    cgroup_mountpoints,
    checkout_state,
    crun_needs_private_ns,
    enter_private_cgroup_view,
    loadavg,
    mounts_under,
    remove_tree,
    summary,
)

CHECKOUT = os.path.dirname(HERE)
VENV = os.path.join(CHECKOUT, ".venv")
IMAGE = "busybox"
CGROUP_TOP = "minirun-podman-bench"
TOOLS = ("minirun", "minirun-console", "minirun-fast", "podman-crun", "podman-runc")
GOAL = 0.5  # issue 4: minirun run at most half of podman's time
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


class BenchError(Exception):
    pass


# --- commands -----------------------------------------------------------------------------

def timed(argv: list[str], env: dict, timeout: float = RUN_TIMEOUT) -> dict:
    """Run argv, timed from spawn to exit; never raises for the command's own failure."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"elapsed": time.perf_counter() - t0, "code": None,
                "stderr": f"timed out after {timeout:.0f}s"}
    elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "code": proc.returncode,
            "stdout": proc.stdout.decode(errors="replace")[-4000:],
            "stderr": proc.stderr.decode(errors="replace").strip()[-2000:]}


def checked(argv: list[str], env: dict, what: str, timeout: float = 300) -> str:
    result = timed(argv, env, timeout)
    if result["code"] != 0:
        raise BenchError(f"{what} failed ({result['code']}): {result['stderr'] or '(no stderr)'}")
    return result["stdout"]


class Helper:
    """A forked process in a private mount namespace where /sys/fs/cgroup/unified is a
    tmpfs, running commands on request (podman with crun on a hybrid host, see top)."""

    def __init__(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            parent.close()
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                enter_private_cgroup_view()
                child.send(b'{"ready": true}')
                while True:
                    data = child.recv(1 << 20)
                    if not data:
                        break
                    req = json.loads(data)
                    child.send(json.dumps(timed(req["argv"], req["env"],
                                                req["timeout"])).encode())
                code = 0
            except BaseException as e:  # noqa: BLE001  (a fork must never return)
                try:
                    child.send(json.dumps({"error": f"helper: {e}"}).encode())
                except OSError:
                    pass
            os._exit(code)
        child.close()
        self.sock = parent
        reply = self._recv(30)
        if "error" in reply:
            self.close()
            raise BenchError(reply["error"])

    def _recv(self, timeout: float) -> dict:
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        if not data:
            raise BenchError("the crun helper exited")
        return json.loads(data)

    def run(self, argv: list[str], env: dict, timeout: float = RUN_TIMEOUT) -> dict:
        self.sock.send(json.dumps({"argv": argv, "env": env, "timeout": timeout}).encode())
        reply = self._recv(timeout + 30)
        if "error" in reply:
            raise BenchError(reply["error"])
        return reply

    def close(self) -> None:
        """EOF ends the helper once its command in flight is done; SIGKILL if it hangs."""
        self.sock.close()
        deadline = time.monotonic() + RUN_TIMEOUT + 5
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


# --- setup --------------------------------------------------------------------------------

def venv_python() -> str:
    path = os.path.join(VENV, "bin", "python")
    if not os.access(path, os.X_OK):
        raise BenchError(f"no venv at {VENV}: run scripts/install.sh first")
    return path


def installed_launcher() -> str | None:
    """scripts/install.sh's launcher for `minirun`, if it was written for this checkout."""
    path = os.path.join(VENV, "bin", "minirun-launcher")
    try:
        with open(path) as f:
            if f'sys.path[0] = "{CHECKOUT}"' in f.read():
                return path
    except OSError:
        pass
    return None


def write_fast_launcher(path: str) -> str:
    """install.sh's minirun-oci-fast approach for minirun.cli: python -SE (no site, no
    editable-install finder), the checkout first on sys.path, site-packages last."""
    python = venv_python()
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    with open(path, "w") as f:
        f.write(f"#!{python} -SE\n"
                "# minirun with the -SE launcher of scripts/install.sh; written by bench/.\n"
                "import sys\n\n"
                f"sys.path[0] = {CHECKOUT!r}\n"
                f"sys.path.append({site_packages!r})\n"
                "from minirun.cli import main\n\nraise SystemExit(main())\n")
    os.chmod(path, 0o755)
    return path


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

def cgroup_tree_dirs(rel: str) -> list[str]:
    return [d for d in (os.path.join(mp, rel.lstrip("/")) for mp in cgroup_mountpoints())
            if os.path.isdir(d)]


def remove_cgroup_tree(rel: str) -> list[str]:
    """rmdir `rel` and everything below it in every hierarchy, killing what is still in
    it (at the end of a run only this run's containers and conmons can be there)."""
    left = []
    for top in cgroup_tree_dirs(rel):
        for _ in range(50):
            pids = []
            for dirpath, _dirs, _files in os.walk(top):
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids += [int(p) for p in f.read().split()]
                except OSError:
                    pass
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
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
    for d in cgroup_tree_dirs(rel):
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
        self.ip_forward = self._ip_forward()

    @staticmethod
    def _ip_forward() -> str:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip()

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
        now = self._ip_forward()
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
                result = helper.run(argv, podman.env) if helper else timed(argv, podman.env)
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
            result = timed(minirun_cmd + ["rm", "--force", cid], minirun_env)
            if result["code"] != 0:
                problems.append(f"minirun rm --force {cid}: {result['stderr']}")
            problems += [f"cgroup {d} left" for d in remove_cgroup_tree(f"/minirun/{cid}")]
    if podman is not None:
        problems += [f"cgroup {d} left" for d in remove_cgroup_tree(podman.cgroup_parent)]
        remove_empty_cgroup(f"/{CGROUP_TOP}")
    if bridged:
        problems += host_net.restore()
    remove_tree(tmp)
    if os.path.exists(tmp):
        problems.append(f"{tmp} could not be removed: {mounts_under(tmp)}")
    return problems


# --- report -------------------------------------------------------------------------------

def report(samples: dict[str, dict[str, list[float]]], tools: dict[str, Tool]) -> dict:
    out: dict = {"modes": {}}
    for mode, per_tool in samples.items():
        stats = {name: summary(v) for name, v in per_tool.items() if v}
        ratios = {}
        for name in stats:
            if not name.startswith("minirun"):
                continue
            for other in ("podman-crun", "podman-runc"):
                if other in stats:
                    ratios[f"{name}/{other}"] = {
                        s: stats[name][s] / stats[other][s] for s in ("median", "p90")}
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
            print(f"goal (issue 4), minirun at most {GOAL:.0%} of podman's time, medians:")
            for o in others:
                r = ratios[f"minirun/{o}"]["median"]
                verdict = "met" if r <= GOAL else "not met"
                print(f"  minirun/{o} = {r:.2f}: {verdict}")


# --- main ---------------------------------------------------------------------------------

def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", "-n", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--network", metavar="MODE",
                   help="also measure with this network mode (e.g. bridge) on both engines, "
                   "if minirun accepts it; `none` is always measured")
    p.add_argument("--tools", default=",".join(TOOLS),
                   help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--minirun", help="the command for the `minirun` row (default: "
                   "scripts/install.sh's launcher for this checkout, else .venv/bin/minirun)")
    p.add_argument("--podman-storage-driver", default="overlay",
                   help="podman's storage driver (default overlay, podman's own default)")
    p.add_argument("--tmpdir", default=None, help="parent of the temp dir (default $TMPDIR)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the results as JSON ('-' for stdout, then no table)")
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
    log = sys.stderr if args.json == "-" else sys.stdout

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _interrupt)
    host_net = HostNetwork()
    tmp = tempfile.mkdtemp(prefix="minirun-runbench.", dir=args.tmpdir)
    podman = helper = None
    minirun_cmd = minirun_env = None
    modes = ["none"]
    try:
        # minirun's image, from a fresh checkout: the rootfs tarball, imported.
        main_launcher = installed_launcher()
        console = os.path.join(VENV, "bin", "minirun")
        if args.minirun:
            minirun_cmd, how = args.minirun.split(), "--minirun"
        elif main_launcher:
            minirun_cmd, how = [main_launcher], "scripts/install.sh's launcher"
        elif os.access(console, os.X_OK):
            minirun_cmd, how = [console], "pip's console script (no install.sh launcher)"
        else:
            raise BenchError(f"no minirun in {VENV}: run scripts/install.sh first")
        minirun_env = dict(os.environ, MINIRUN_ROOT=os.path.join(tmp, "minirun-root"),
                           MINIRUN_RUN_ROOT=os.path.join(tmp, "minirun-run"))
        print(f"minirun: {' '.join(minirun_cmd)} ({how})", file=log)
        tarball = os.path.join(tmp, "busybox-rootfs.tar")
        subprocess.run([os.path.join(CHECKOUT, "rootfs", "build.sh"), "--tar", tarball],
                       check=True, stdout=subprocess.DEVNULL)
        checked(minirun_cmd + ["import", "--cmd", '["sh"]', tarball, f"{IMAGE}:latest"],
                minirun_env, "minirun import")
        saved = os.path.join(tmp, "busybox-saved.tar")
        checked(minirun_cmd + ["save", "-o", saved, IMAGE], minirun_env, "minirun save")

        tools: dict[str, Tool] = {}

        def minirun_argv(cmd: list[str]):
            return lambda mode: cmd + ["run", "--rm", "--network", mode, IMAGE, "true"]

        if "minirun" in wanted:
            if args.minirun:
                label = "minirun (--minirun)"
            elif main_launcher:
                label = "minirun (install.sh launcher)"
            else:
                label = "minirun (console script)"
            tools["minirun"] = Tool("minirun", label, minirun_argv(minirun_cmd), minirun_env)
        if "minirun-console" in wanted and os.access(console, os.X_OK) \
                and minirun_cmd != [console]:
            tools["minirun-console"] = Tool("minirun-console", "minirun (pip console script)",
                                            minirun_argv([console]), minirun_env)
        if "minirun-fast" in wanted:
            fast = write_fast_launcher(os.path.join(tmp, "minirun-fast"))
            tools["minirun-fast"] = Tool("minirun-fast", "minirun (-SE launcher)",
                                         minirun_argv([fast]), minirun_env)

        runtimes = {"podman-crun": shutil.which("crun") or "/usr/bin/crun",
                    "podman-runc": shutil.which("runc") or "/usr/bin/runc"}
        if any(t.startswith("podman") for t in wanted):
            if not shutil.which("podman"):
                raise BenchError("no podman (apt-get install podman)")
            podman = Podman(os.path.join(tmp, "podman"), args.podman_storage_driver)
            checked(podman.cmd + ["load", "-q", "-i", saved], podman.env, "podman load")
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
            return helper.run(argv, tool.env) if tool.in_helper else timed(argv, tool.env)

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
        print(f"minirun at {state['commit']}"
              + (f" plus uncommitted changes to {len(state['dirty'])} file(s) in minirun/"
                 if state["dirty"] else "") + f"; load average {load_before}", file=log)
        names = list(tools)
        samples = {m: {n: [] for n in names} for m in modes}
        failures: dict[str, list[str]] = {n: [] for n in names}
        total = args.warmup + args.iterations
        for mode in modes:
            print(f"--network {mode}: {args.warmup} warm-up + {args.iterations} iterations, "
                  f"rotating over {', '.join(names)}", file=log)
            for i in range(total):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    result = call(tools[name], mode)
                    if result["code"] != 0:
                        failures[name].append(f"--network {mode} iteration {i + 1}: exit "
                                              f"{result['code']}: {result['stderr']}")
                        print(f"  {name} failed: {result['stderr'] or result['code']}",
                              file=log)
                    elif i >= args.warmup:
                        samples[mode][name].append(result["elapsed"])
                if (i + 1) % 10 == 0 or i + 1 == total:
                    print(f"  {i + 1}/{total}", file=log)

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
            "kernel": os.uname().release, "cpus": os.cpu_count(), "checkout": state,
            "loadavg_before": load_before, "loadavg_after": loadavg()}
        if args.json != "-":
            print_report(result, tools)
            print(f"\nload average at the end {result['config']['loadavg_after']}")
            for name in names:
                if failures[name]:
                    print(f"{name}: {len(failures[name])} failed run(s), left out of the "
                          f"numbers; first: {failures[name][0]}")
        if args.json:
            text = json.dumps(result, indent=2)
            if args.json == "-":
                print(text)
            else:
                with open(args.json, "w") as f:
                    f.write(text + "\n")
        return 1 if any(failures.values()) else 0
    except (BenchError, subprocess.CalledProcessError) as e:
        print(f"run_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrun_bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        bridged = len(modes) > 1
        for p in cleanup(tmp, podman, helper, minirun_cmd, minirun_env, host_net, bridged):
            print(f"run_bench: cleanup: {p}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
