#!/usr/bin/env python3
"""What supervising detached containers costs: minirun's daemon and keeper against
podman's conmons, as the number of detached `sleep 3600` containers grows.

    bench/supervise_bench.py [--steps 0,25,50,100,150,200] [--max N] [--iterations 5]
                             [--window 10] [--settle 3] [--minirun CMD]
                             [--plot bench/supervise.png|none] [--json FILE|-]

Run as root. Both engines get the same image: the busybox rootfs tarball that
rootfs/build.sh makes, imported with `minirun import` into a temporary minirun root
(MINIRUN_ROOT, MINIRUN_RUN_ROOT) and with `podman import` into a temporary podman store
(run_bench.py's setup: private store, run root, tmpdir and cgroup parent; its default
runtime crun, from a private mount namespace on a hybrid cgroup host). Every container
runs with `--network none`: this measures supervision, not networking.

At each step both engines are brought to N running containers, one `run -d` after the
other (each timed), then, after --settle seconds:

- memory: VmRSS and Pss (smaps_rollup) summed over minirun's daemon and keeper (their pids
  from the run root's daemon.pid and keeper.pid, each checked against the holder of the
  flock on daemon.lock or keeper.lock), and over podman's conmons (the parent of each
  container's pid in `podman ps`, checked to be a conmon);
- idle CPU: utime + stime consumed by the same processes over --window seconds, both
  engines in the same window;
- `minirun ps` and `podman ps`: the median of --iterations runs each, taking turns, after
  one unrecorded run each (the first minirun command starts the daemon at N = 0).

The containers' own processes (the sleeps) are left out of both sides. Everything is
removed at the end, on error and on Ctrl-C: podman's containers and store, minirun's
containers, its daemon and keeper (by pid, only those holding this run root's locks), the
cgroups and the temp dir (after unmounting what is below it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # benchlib, when run by another path

from benchlib import (
    CHECKOUT,
    BenchError,
    add_output_args,
    catch_signals,
    checked,
    checkout_state,
    crun_needs_private_ns,
    describe_checkout,
    ignore_signals,
    loadavg,
    log_stream,
    machine_and_checkout,
    minirun_command,
    remove_tree,
    rotated,
    summary,
    timed,
    write_json,
)
from run_bench import (
    CGROUP_TOP,
    IMAGE,
    Helper,
    Podman,
    remove_cgroup_tree,
    remove_empty_cgroup,
    version,
)

STEPS = (0, 25, 50, 100, 150, 200)
TIMEOUT = 120.0
NPROC = "8192:8192"
OUTPUT_MAX = 4000  # benchlib.timed() keeps this much of stdout
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_PLOT = os.path.join(HERE, "supervise.png")
ENGINES = ("minirun", "podman")


# --- processes ----------------------------------------------------------------------------

def flock_holders(path: str) -> set[int]:
    """The pids /proc/locks shows holding a lock on this file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return set()
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields[1]:  # a waiter (" 1: -> FLOCK ...")
                continue
            if len(fields) > 5 and fields[5] == dev:
                holders.add(int(fields[4]))
    return holders


def supervisor_pid(run_root: str, name: str) -> int | None:
    """The pid in name.pid, if that process holds name.lock (so it is this run root's
    daemon or keeper, not a recycled pid)."""
    try:
        with open(os.path.join(run_root, f"{name}.pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return None
    return pid if pid in flock_holders(os.path.join(run_root, f"{name}.lock")) else None


def minirun_supervisors(run_root: str) -> dict[str, int]:
    return {name: pid for name in ("daemon", "keeper")
            if (pid := supervisor_pid(run_root, name)) is not None}


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def memory_kib(pid: int) -> tuple[int, int | None]:
    """VmRSS and Pss in KiB (Pss None where smaps_rollup cannot be read)."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pss = next((int(line.split()[1]) for line in f if line.startswith("Pss:")), None)
    except OSError:
        pss = None
    return rss, pss


def memory_sum(pids: list[int]) -> dict:
    rss = pss = 0
    for pid in pids:
        r, p = memory_kib(pid)
        rss += r
        pss = None if pss is None or p is None else pss + p
    return {"rss_kib": rss, "pss_kib": pss}


def listing(result: dict) -> list[str]:
    """The lines of a command's output, which timed() cuts to its last OUTPUT_MAX chars."""
    if len(result["stdout"]) >= OUTPUT_MAX:
        raise BenchError("a listing was cut to its end: too many containers for this bench")
    return result["stdout"].split()


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after timeout; True once it is gone (or a zombie)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return True
            except FileNotFoundError:
                return True
            time.sleep(0.05)
    return False


# --- the engines --------------------------------------------------------------------------

class Minirun:
    def __init__(self, cmd: list[str], tmp: str) -> None:
        self.cmd = cmd
        self.run_root = os.path.join(tmp, "minirun-run")
        self.env = dict(os.environ, MINIRUN_ROOT=os.path.join(tmp, "minirun-root"),
                        MINIRUN_RUN_ROOT=self.run_root)
        self.ids: list[str] = []
        self.daemon: subprocess.Popen | None = None  # one we started ourselves, if any

    def start(self) -> float:
        r = checked(self.cmd + ["run", "-d", "--network", "none", IMAGE, "sleep", "3600"],
                    self.env, TIMEOUT, "minirun run -d")
        self.ids.append(r["stdout"].split()[-1])
        return r["elapsed"]

    def ps(self) -> dict:
        return checked(self.cmd + ["ps"], self.env, TIMEOUT, "minirun ps")

    def prepare(self) -> None:
        """With no detached container yet there is no daemon: start one as `run -d` would
        (it starts the keeper), so that N = 0 shows what they cost idle."""
        if minirun_supervisors(self.run_root):
            return
        os.makedirs(self.run_root, exist_ok=True)
        with open(os.path.join(self.run_root, "bench-daemon.out"), "ab") as out:
            self.daemon = subprocess.Popen(self.cmd + ["daemon"], env=self.env,
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                           start_new_session=True)
        deadline = time.monotonic() + 30
        while set(minirun_supervisors(self.run_root)) != {"daemon", "keeper"}:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"minirun daemon did not come up (exit {self.daemon.poll()}"
                                 f"; see {self.run_root}/bench-daemon.out)")
            time.sleep(0.05)

    def supervisors(self, n: int) -> dict[str, int]:
        running = listing(checked(self.cmd + ["ps", "-q"], self.env, TIMEOUT, "minirun ps -q"))
        if len(running) != n:
            raise BenchError(f"minirun at N={n}: {len(running)} running containers")
        found = minirun_supervisors(self.run_root)
        if set(found) != {"daemon", "keeper"}:
            raise BenchError(f"minirun at N={n}: found {found or 'no'} supervisors in "
                             f"{self.run_root} (expected a daemon and a keeper)")
        return found

    def cleanup(self) -> list[str]:
        problems = []
        ids = set(self.ids)
        if minirun_supervisors(self.run_root):  # else `ps` would start a daemon
            listed = timed(self.cmd + ["ps", "-aq"], self.env, TIMEOUT)
            ids |= set(listed.get("stdout", "").split())
        # ps -q prints short ids; rm takes them, the cgroups are named by the full ones
        ids = sorted({i for i in ids if not any(o != i and o.startswith(i) for o in ids)})
        if ids:
            result = timed(self.cmd + ["rm", "--force", *ids], self.env, TIMEOUT * 5)
            if result["code"] != 0:
                problems.append(f"minirun rm --force: {result['stderr']}")
        for cid in ids:
            problems += [f"cgroup {d} left" for d in remove_cgroup_tree(f"/minirun/{cid}")]
        # The daemon first: after its SIGTERM (a clean exit) the keeper starts no other.
        for name in ("daemon", "keeper"):
            pid = supervisor_pid(self.run_root, name)
            if pid is not None and not stop_pid(pid):
                problems.append(f"minirun {name} {pid} did not exit")
        if self.daemon is not None and self.daemon.poll() is None:
            try:
                self.daemon.wait(10)  # ours: reap it (stopped above by its pid file)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        return problems


class PodmanEngine:
    def __init__(self, tmp: str) -> None:
        self.podman = Podman(os.path.join(tmp, "podman"), "overlay")
        # Without CAP_SYS_RESOURCE run_bench's Podman caps nproc at 1024, but RLIMIT_NPROC
        # counts every task of uid 0 on the host, and past it a container's execve fails
        # (EAGAIN): 57 of 100 sleeps ran. Left out, podman asks for more than crun may set
        # without the capability; 8192 is allowed here and far above what 2 x 200 need.
        self.podman.run_opts = [f"nproc={NPROC}" if o == "nproc=1024:1024" else o
                                for o in self.podman.run_opts]
        self.runtime = shutil.which("crun") or "/usr/bin/crun"
        self.helper = Helper() if crun_needs_private_ns() else None
        self.n = 0

    def call(self, args: list[str], what: str) -> dict:
        argv = self.podman.cmd + ["--runtime", self.runtime, *args]
        result = self.helper.run(argv, self.podman.env, TIMEOUT) if self.helper \
            else timed(argv, self.podman.env, TIMEOUT)
        if result["code"] != 0:
            raise BenchError(f"{what} failed ({result['code']}): {result['stderr']}")
        return result

    def start(self) -> float:
        r = self.call(["run", "-d", *self.podman.run_opts, "--network", "none", IMAGE,
                       "sleep", "3600"], "podman run -d")
        self.n += 1
        return r["elapsed"]

    def ps(self) -> dict:
        return self.call(["ps"], "podman ps")

    def prepare(self) -> None:
        pass  # podman has no daemon: nothing runs with no container

    def supervisors(self, n: int) -> dict[str, int]:
        """One conmon per container: the parent of each container's pid."""
        pids = listing(self.call(["ps", "--format", "{{.Pid}}"], "podman ps --format"))
        conmons = {}
        for pid in pids:
            ppid = parent_pid(int(pid))
            if comm(ppid) != "conmon":
                raise BenchError(f"podman: the parent {ppid} of container pid {pid} is "
                                 f"{comm(ppid)!r}, not conmon")
            conmons[pid] = ppid
        if len(conmons) != n:
            raise BenchError(f"podman at N={n}: {len(conmons)} running containers")
        return conmons

    def cleanup(self) -> list[str]:
        problems = []
        if os.path.isdir(self.podman.storage):
            for args in (["rm", "--all", "--force", "--time", "0"], ["rmi", "--all", "--force"]):
                try:
                    self.call(args, f"podman {' '.join(args)}")
                except (BenchError, OSError) as e:
                    problems.append(str(e))
        if self.helper is not None:
            try:
                self.helper.close()
            except OSError as e:
                problems.append(f"helper: {e}")
        problems += [f"cgroup {d} left"
                     for d in remove_cgroup_tree(self.podman.cgroup_parent)]
        remove_empty_cgroup(f"/{CGROUP_TOP}")
        return problems


# --- one step -----------------------------------------------------------------------------

def measure(engines: dict, n: int, args: argparse.Namespace, log) -> dict:
    step: dict = {"n": n}
    for engine in engines.values():
        engine.prepare()
        engine.ps()  # unrecorded
    time.sleep(args.settle)
    found = {name: e.supervisors(n) for name, e in engines.items()}
    pids = {name: sorted(set(f.values())) for name, f in found.items()}
    before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    time.sleep(args.window)
    after = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    if {name: sorted(set(e.supervisors(n).values())) for name, e in engines.items()} != pids:
        raise BenchError(f"N={n}: the supervising processes changed during the window")
    for name in engines:
        step[name] = {"processes": len(pids[name]), **memory_sum(pids[name]),
                      "idle_cpu_s": after[name] - before[name]}
        if name == "minirun":  # the daemon and the keeper, each on its own
            step[name]["by_process"] = {role: memory_sum([pid])
                                        for role, pid in found[name].items()}
    samples = {name: [] for name in engines}
    for i in range(args.iterations):
        for name in rotated(list(engines), i):
            samples[name].append(engines[name].ps()["elapsed"])
    for name in engines:
        step[name]["ps"] = summary(samples[name])
        step[name]["ps_samples"] = samples[name]
    print(f"  N={n}: measured", file=log)
    return step


def grow(engines: dict, n: int, totals: dict, log) -> None:
    for name, engine in engines.items():
        have = totals[name]["count"]
        t0 = time.perf_counter()
        for _ in range(n - have):
            totals[name]["start_s"] += engine.start()
        totals[name]["count"] = n
        if n > have:
            print(f"  {name}: {n - have} started in {time.perf_counter() - t0:.1f}s", file=log)


# --- report -------------------------------------------------------------------------------

def fmt_mib(kib: int | None) -> str:
    return f"{kib / 1024:8.1f}" if kib is not None else f"{'-':>8}"


MEDIAN = "median"


def pair(mr: dict | None, pod: dict | None, key: str, fmt) -> str:
    """The two engines' values of key, formatted, '-' for an engine not measured."""
    return " ".join(fmt(e[key]) if e else f"{'-':>8}" for e in (mr, pod))


def print_report(steps: list[dict], engines: list[str]) -> None:
    print(f"\n{'':>5} | {'supervisors':^11} | {'RSS MiB':^17} | {'PSS MiB':^17} | "
          f"{'idle CPU ms':^17} | {'ps ms (median)':^17} | {'start s (total)':^17}")
    print(f"{'N':>5} | {'mr':>4} {'pod':>6} | " + " | ".join(
        f"{'minirun':>8} {'podman':>8}" for _ in range(5)))
    for s in steps:
        mr, pod = s.get("minirun"), s.get("podman")
        print(f"{s['n']:>5} | {mr['processes'] if mr else '-':>4} "
              f"{pod['processes'] if pod else '-':>6} | "
              f"{pair(mr, pod, 'rss_kib', fmt_mib)} | {pair(mr, pod, 'pss_kib', fmt_mib)} | "
              f"{pair(mr, pod, 'idle_cpu_s', lambda v: f'{v * 1e3:8.0f}')} | "
              f"{pair(mr, pod, 'ps', lambda v: f'{v[MEDIAN] * 1e3:8.1f}')} | "
              f"{pair(mr, pod, 'start_total_s', lambda v: f'{v:8.1f}')}")
    if "podman" not in engines:
        return
    print("\nminirun / podman:")
    for s in steps:
        mr, pod = s["minirun"], s["podman"]
        parts = [f"ps {mr['ps']['median'] / pod['ps']['median']:.2f}"]
        if pod["rss_kib"]:
            parts.insert(0, f"RSS {mr['rss_kib'] / pod['rss_kib']:.2f}")
        if pod["pss_kib"] and mr["pss_kib"] is not None:
            parts.insert(1, f"PSS {mr['pss_kib'] / pod['pss_kib']:.2f}")
        if s["n"]:
            parts.append(f"start {mr['start_total_s'] / pod['start_total_s']:.2f}")
        print(f"  N={s['n']:<4} " + ", ".join(parts))


def plot(steps: list[dict], engines: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [s["n"] for s in steps]
    colors = {"minirun": "tab:blue", "podman": "tab:orange"}
    labels = {"minirun": "minirun (daemon + keeper)", "podman": "podman (conmons)"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (mem, ps), (cpu, start) = axes
    for e in engines:
        c = colors[e]
        mem.plot(ns, [s[e]["rss_kib"] / 1024 for s in steps], "o-", color=c,
                 label=f"{labels[e]} RSS")
        if all(s[e]["pss_kib"] is not None for s in steps):
            mem.plot(ns, [s[e]["pss_kib"] / 1024 for s in steps], "s--", color=c,
                     label=f"{labels[e]} PSS")
        ps.plot(ns, [s[e]["ps"]["median"] * 1e3 for s in steps], "o-", color=c,
                label=f"{e} ps")
        cpu.plot(ns, [s[e]["idle_cpu_s"] * 1e3 for s in steps], "o-", color=c,
                 label=labels[e])
        start.plot(ns, [s[e]["start_total_s"] for s in steps], "o-", color=c,
                   label=f"{e} run -d")
    window = steps[0]["window_s"]
    for ax, ylabel, head in (
            (mem, "MiB", "supervision memory"),
            (ps, "ms (median)", "`ps` time"),
            (cpu, f"CPU ms over {window:g} s idle", "supervision CPU while idle"),
            (start, "s (sum of run -d)", "total start time to reach N")):
        ax.set_title(head)
        ax.set_xlabel("detached sleep containers (N)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default=",".join(map(str, STEPS)),
                   help="container counts to measure at, ascending (default %(default)s)")
    p.add_argument("--max", type=int, help="drop the steps above this count")
    p.add_argument("--iterations", "-n", type=int, default=5,
                   help="timed `ps` runs per engine and step (default %(default)s)")
    p.add_argument("--window", type=float, default=10.0,
                   help="seconds of idle CPU measured per step (default %(default)s)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds to wait after the starts of a step (default %(default)s)")
    p.add_argument("--minirun", help="the `minirun` command (default: scripts/install.sh's "
                   "launcher for this checkout, else .venv/bin/minirun)")
    p.add_argument("--no-podman", action="store_true", help="measure minirun alone")
    p.add_argument("--plot", default=DEFAULT_PLOT,
                   help="the PNG to write ('none': no plot; default bench/supervise.png)")
    add_output_args(p)
    args = p.parse_args(argv)
    try:
        steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError:
        p.error(f"--steps: not a list of counts: {args.steps!r}")
    if args.max is not None:
        steps = [s for s in steps if s <= args.max]
    if not steps or steps[0] < 0:
        p.error("--steps: need at least one count >= 0 (within --max)")
    if args.iterations < 1 or args.window <= 0 or args.settle < 0:
        p.error("--iterations must be >= 1, --window > 0, --settle >= 0")
    args.step_list = steps
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("supervise_bench: run as root", file=sys.stderr)
        return 2
    log = log_stream(args.json)
    want_plot = args.plot != "none"
    if want_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("supervise_bench: matplotlib is not installed, so no plot (install it "
                  "with `.venv/bin/pip install -e '.[bench]'`)", file=sys.stderr)
            want_plot = False
    if not args.no_podman and not shutil.which("podman"):
        print("supervise_bench: no podman (apt-get install podman), or use --no-podman",
              file=sys.stderr)
        return 2

    catch_signals()
    tmp = tempfile.mkdtemp(prefix="minirun-supbench.", dir=args.tmpdir)
    engines: dict = {}
    try:
        cmd, _source = minirun_command(args.minirun)
        engines["minirun"] = minirun = Minirun(cmd, tmp)
        print(f"minirun: {' '.join(cmd)}; temp dir {tmp}", file=log)
        tarball = os.path.join(tmp, "busybox-rootfs.tar")
        subprocess.run([os.path.join(CHECKOUT, "rootfs", "build.sh"), "--tar", tarball],
                       check=True, stdout=subprocess.DEVNULL)
        checked(cmd + ["import", "--cmd", '["sh"]', tarball, f"{IMAGE}:latest"],
                minirun.env, 300, "minirun import")
        if not args.no_podman:
            engines["podman"] = podman = PodmanEngine(tmp)
            if podman.helper:
                print("podman: hybrid cgroups with controllers on cgroup2: podman runs in a "
                      "private mount namespace where crun sees a v1 host", file=log)
            checked(podman.podman.cmd + ["import", "--change", "CMD=sh", tarball,
                                         f"{IMAGE}:latest"], podman.podman.env, 300,
                    "podman import")

        state = checkout_state()
        load_before = loadavg()
        print(describe_checkout(state, load_before), file=log)
        print(f"steps {args.step_list}; {args.window:g}s idle window, {args.iterations} "
              f"ps runs each per step", file=log)
        totals = {name: {"count": 0, "start_s": 0.0} for name in engines}
        steps = []
        for n in args.step_list:
            grow(engines, n, totals, log)
            step = measure(engines, n, args, log)
            step["window_s"] = args.window
            for name in engines:
                step[name]["start_total_s"] = totals[name]["start_s"]
            steps.append(step)

        result = {"steps": steps, "config": {
            "steps": args.step_list, "window_s": args.window, "settle_s": args.settle,
            "ps_iterations": args.iterations, "minirun": cmd,
            "versions": {"podman": version(["podman", "--version"]),
                         "conmon": version(["conmon", "--version"]),
                         "crun": version([shutil.which("crun") or "crun", "--version"])}
            if "podman" in engines else {},
            "crun_private_mount_ns": bool("podman" in engines and engines["podman"].helper),
            **machine_and_checkout(state, load_before)}}
        names = list(engines)
        if args.json != "-":
            print_report(steps, names)
            print(f"\nload average {load_before} before, {result['config']['loadavg_after']} "
                  "at the end")
        if want_plot:
            plot(steps, names, args.plot,
                 f"{len(steps)} steps, idle window {args.window:g} s, ps median of "
                 f"{args.iterations}; minirun {state['commit']}, "
                 f"{result['config']['versions'].get('podman', '')} + crun; load "
                 f"{load_before} → {result['config']['loadavg_after']}")
            print(f"plot: {args.plot}", file=log)
        write_json(result, args.json)
        return 0
    except (BenchError, subprocess.CalledProcessError) as e:
        print(f"supervise_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsupervise_bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        ignore_signals()
        problems = []
        for engine in reversed(list(engines.values())):
            problems += engine.cleanup()
        problems += remove_tree(tmp)
        for p in problems:
            print(f"supervise_bench: cleanup: {p}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
