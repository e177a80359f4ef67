#!/usr/bin/env python3
"""Container start latency of minirun-oci against runc and crun, on one busybox bundle.

    bench/oci_bench.py [--iterations 30] [--warmup 3] [--runtimes minirun,runc,crun]
                       [--rootfs DIR] [--minirun CMD] [--json FILE|-]

Run as root. For each runtime, N iterations of
  (a) `<rt> --root <tmp> run <id>` of /bin/true, and
  (b) create --pid-file, start, wait for the init to exit (pidfd), delete,
interleaved round-robin per iteration (the order rotates) so that drift hits every
runtime alike, after a few unrecorded warm-up iterations. It prints medians, p90s, the
minirun/runc and minirun/crun ratios, and the memory of `create` and of the waiting init.

Every container gets linux.cgroupsPath "/minirun-bench/<runtime>-<n>": without an
absolute path runc would nest the cgroup under the caller's own, which must not be touched
on this host. Everything is cleaned up at the end, on error and on Ctrl-C: containers
deleted, /minirun-bench removed from every cgroup hierarchy, the temp dir removed.

crun refuses a hybrid cgroup host whose cgroup2 mount has a controller enabled ("cgroups
in hybrid mode not supported"). In that case crun runs from a helper process in a private
mount namespace where a throwaway tmpfs hides /sys/fs/cgroup/unified: crun then sees a
plain v1 host. The host's mounts are not changed. --no-crun-workaround skips crun instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
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
    PrivateCgroupHelper,
    add_iteration_args,
    add_output_args,
    catch_signals,
    cgroup_dirs,
    checkout_state,
    crun_needs_private_ns,
    describe_checkout,
    ignore_signals,
    installed_launcher,
    kill_cgroup_procs,
    loadavg,
    log_stream,
    machine_and_checkout,
    progress,
    ratio,
    remove_tree,
    rotated,
    summary,
    write_fast_launcher,
    write_json,
)

CGROUP_PARENT = "minirun-bench"
RUNTIMES = ("minirun", "runc", "crun")
LABELS = {"minirun": "minirun-oci", "runc": "runc", "crun": "crun"}
EXIT_TIMEOUT = 10.0
GNU_TIME = "/usr/bin/time"
HELPER_TIMEOUT = 120.0


# --- setup --------------------------------------------------------------------------------

def write_minirun_launcher(path: str, ending: str = "auto") -> str:
    """scripts/install.sh's minirun-oci-fast for this checkout, written at path.

    ending: "main_and_exit" (what install.sh writes when oci_cli has it: flush, os._exit),
    "teardown" (raise SystemExit(main()): the interpreter's normal finalization), or "auto"
    (main_and_exit if this checkout's oci_cli defines it).
    """
    if ending == "auto":
        with open(os.path.join(CHECKOUT, "minirun", "oci_cli.py")) as f:
            ending = "main_and_exit" if "def main_and_exit" in f.read() else "teardown"
    return write_fast_launcher(path, "minirun.oci_cli", ending)


def minirun_launcher(tmp: str) -> tuple[str, str]:
    """The fast launcher scripts/install.sh made for this checkout, else a copy in tmp."""
    installed = installed_launcher("minirun-oci-fast")
    if installed:
        return installed, "the fast launcher from scripts/install.sh"
    return (write_minirun_launcher(os.path.join(tmp, "minirun-oci")),
            "a copy of scripts/install.sh's fast launcher (none installed)")


def build_rootfs(tmp: str) -> str:
    """rootfs/build.sh into tmp/build; keep only its rootfs/ (not its example bundle)."""
    out = os.path.join(tmp, "build")
    subprocess.run([os.path.join(CHECKOUT, "rootfs", "build.sh"), out], check=True,
                   stdout=subprocess.DEVNULL)
    rootfs = os.path.join(tmp, "rootfs")
    os.rename(os.path.join(out, "rootfs"), rootfs)
    remove_tree(out)
    return rootfs


def make_bundle(tmp: str, rootfs: str, minirun_cmd: list[str] | None) -> tuple[str, dict]:
    """A bundle dir with `runc spec`'s config (minirun-oci spec without runc) adjusted."""
    bundle = os.path.join(tmp, "bundle")
    os.mkdir(bundle)
    if shutil.which("runc"):
        subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
        source = "runc spec"
    elif minirun_cmd:
        subprocess.run(minirun_cmd + ["spec", "--bundle", bundle], check=True)
        source = "minirun-oci spec"
    else:
        raise BenchError("neither runc nor minirun-oci to write a config.json with")
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["terminal"] = False
    if os.path.dirname(rootfs) == tmp:
        os.rename(rootfs, os.path.join(bundle, "rootfs"))
        cfg["root"] = {"path": "rootfs", "readonly": True}
    else:
        cfg["root"] = {"path": rootfs, "readonly": True}
    cfg.setdefault("linux", {})["cgroupsPath"] = f"/{CGROUP_PARENT}/unset"
    cfg["_source"] = source
    return bundle, cfg


def write_config(bundle: str, cfg: dict, cgroups_path: str) -> None:
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["linux"] = dict(cfg["linux"], cgroupsPath=cgroups_path)
    tmp = os.path.join(bundle, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=1)
    os.rename(tmp, os.path.join(bundle, "config.json"))


# --- cgroups ------------------------------------------------------------------------------

def remove_bench_cgroups(kill: bool = True) -> list[str]:
    """rmdir /minirun-bench (deepest first) in every hierarchy; returns what is left.

    With kill, SIGKILL what is still inside first: at the end of a run, only containers
    of this run can be there. Before a run (kill=False) they could be another bench's.
    """
    left = []
    for top in cgroup_dirs(CGROUP_PARENT):
        if kill:
            kill_cgroup_procs(top)
        # EBUSY for a while is normal: a killed init stays counted in its cgroup's
        # ancestors until its parent (often pid 1) has reaped it.
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(f"{dirpath}: {e.strerror}")
                        break
                    time.sleep(0.05)
    return left


# --- measuring ----------------------------------------------------------------------------

class Runtime:
    def __init__(self, name: str, argv: list[str], state_root: str) -> None:
        self.name = name
        self.argv = argv
        self.state_root = state_root
        self.live: set[str] = set()  # ids that may still exist

    def cmd(self, *args: str) -> list[str]:
        return self.argv + ["--root", self.state_root, *args]


class Runner:
    """Runs the commands and times them; the same code in the bench and in the helper."""

    def __init__(self, runtimes: dict[str, Runtime], bundle: str, tmp: str) -> None:
        self.runtimes = runtimes
        self.bundle = bundle
        self.tmp = tmp
        self.current_pid = 0

    def exec(self, argv: list[str]) -> tuple[float, int, object, str]:
        """Spawn argv, wait4 it: (seconds, exit code, rusage, stderr)."""
        errfile = os.path.join(self.tmp, f"stderr.{os.getpid()}")
        errfd = os.open(errfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                        0o600)
        try:
            actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                       (os.POSIX_SPAWN_DUP2, errfd, 2)]
            t0 = time.perf_counter()
            # Own process group: a Ctrl-C reaches the bench, which cleans up, not the
            # runtime halfway through a create.
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setpgroup=0)
            self.current_pid = pid
            _, status, usage = os.wait4(pid, 0)
            elapsed = time.perf_counter() - t0
            self.current_pid = 0
        finally:
            os.close(errfd)
        with open(errfile, errors="replace") as f:
            err = f.read().strip()
        return elapsed, os.waitstatus_to_exitcode(status), usage, err

    def checked(self, rt: Runtime, *args: str) -> tuple[float, object]:
        elapsed, code, usage, err = self.exec(rt.cmd(*args))
        if code != 0:
            raise BenchError(f"{rt.name} {args[0]} exited {code}: {err or '(no stderr)'}")
        return elapsed, usage

    def run_once(self, rt_name: str, cid: str) -> dict:
        rt = self.runtimes[rt_name]
        rt.live.add(cid)
        elapsed, _ = self.checked(rt, "run", "--bundle", self.bundle, cid)
        rt.live.discard(cid)
        return {"run": elapsed}

    def lifecycle(self, rt_name: str, cid: str) -> dict:
        rt = self.runtimes[rt_name]
        pid_file = os.path.join(self.tmp, f"{cid}.pid")
        rt.live.add(cid)
        create, _ = self.checked(rt, "create", "--bundle", self.bundle, "--pid-file",
                                 pid_file, cid)
        # Not timed: reading the init's pid and memory between create and start.
        with open(pid_file) as f:
            pid = int(f.read())
        os.unlink(pid_file)
        pidfd = os.pidfd_open(pid)
        try:
            memory = init_memory(pid)
            start, _ = self.checked(rt, "start", cid)
            t0 = time.perf_counter()
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(EXIT_TIMEOUT * 1000):
                raise BenchError(f"{rt.name}: /bin/true did not exit within {EXIT_TIMEOUT}s")
            wait = time.perf_counter() - t0
        finally:
            os.close(pidfd)
        delete, _ = self.checked(rt, "delete", cid)
        rt.live.discard(cid)
        return {"create": create, "start": start, "wait": wait, "delete": delete,
                "lifecycle": create + start + wait + delete, **memory}

    def create_maxrss(self, rt_name: str, cid: str) -> dict:
        """Peak RSS of `create`, untimed, through GNU time.

        Not wait4 from here: a spawned process inherits its spawner's RSS high-water mark
        (the mm's hiwater is copied at fork, and exec keeps the larger one), so every
        command spawned from this Python process would report at least its ~15 MiB.
        GNU time is a small process, so the count starts from its ~1 MiB.
        """
        rt = self.runtimes[rt_name]
        pid_file = os.path.join(self.tmp, f"{cid}.pid")
        out = os.path.join(self.tmp, f"maxrss.{os.getpid()}")
        rt.live.add(cid)
        _, code, _, err = self.exec([GNU_TIME, "-f", "%M", "-o", out, *rt.cmd(
            "create", "--bundle", self.bundle, "--pid-file", pid_file, cid)])
        if code != 0:
            raise BenchError(f"{rt.name} create exited {code}: {err or '(no stderr)'}")
        with open(out) as f:
            maxrss = int(f.read().split()[-1])
        with open(pid_file) as f:
            pid = int(f.read())
        os.unlink(pid_file)
        pidfd = os.pidfd_open(pid)
        try:
            self.checked(rt, "start", cid)
            select.select([pidfd], [], [], EXIT_TIMEOUT)
        finally:
            os.close(pidfd)
        self.checked(rt, "delete", cid)
        rt.live.discard(cid)
        return {"create_maxrss_kib": maxrss}

    def cleanup(self, rt_name: str) -> list[str]:
        """Force-delete every container this runtime may still have; returns problems."""
        rt = self.runtimes[rt_name]
        problems = []
        ids = set(rt.live)
        # Every runtime keeps one directory per container under its --root.
        if os.path.isdir(rt.state_root):
            ids |= {d for d in os.listdir(rt.state_root)
                    if os.path.isdir(os.path.join(rt.state_root, d))}
        for cid in sorted(ids):
            _, code, _, err = self.exec(rt.cmd("delete", "--force", cid))
            if code != 0 and "not exist" not in err and "does not exist" not in err:
                problems.append(f"{rt.name} delete --force {cid}: {err}")
        rt.live.clear()
        return problems

    def wait_current(self, timeout: float = 10.0) -> None:
        """After an interrupt: let the runtime command in flight finish, or kill it."""
        pid = self.current_pid
        if not pid:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if got:
                break
            time.sleep(0.02)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.current_pid = 0


def init_memory(pid: int) -> dict:
    """The waiting init's memory: VmHWM/VmRSS and its proportional share (Pss)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[f"init_{key.lower()}_kib"] = int(value.split()[0])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Pss", "Private_Dirty"):
                    out[f"init_{key.lower()}_kib"] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


class Helper(PrivateCgroupHelper):
    """A forked copy of the Runner in a private mount namespace (for crun, see top)."""

    def __init__(self, runner: Runner) -> None:
        self.seq = 0
        super().__init__(lambda req: answer(runner, req), ready_timeout=HELPER_TIMEOUT)

    def call(self, op: str, *args: str) -> object:
        self.seq += 1
        self.send({"seq": self.seq, "op": op, "args": args})
        while True:
            reply = self.recv(HELPER_TIMEOUT)
            if reply.get("seq") == self.seq:
                break  # replies to calls an interrupt abandoned are dropped here
        if "error" in reply:
            raise BenchError(reply["error"])
        return reply["result"]


def answer(runner: Runner, req: dict) -> dict:
    """The helper's side of Helper.call."""
    try:
        result = getattr(runner, req["op"])(*req["args"])
        return {"seq": req["seq"], "result": result}
    except Exception as e:  # noqa: BLE001  (reported to the bench, which stops)
        return {"seq": req["seq"], "error": str(e)}


# --- report -------------------------------------------------------------------------------

TIMED = ("run", "lifecycle", "create", "start", "wait", "delete")
MEMORY = ("create_maxrss_kib", "init_vmhwm_kib", "init_vmrss_kib", "init_pss_kib",
          "init_private_dirty_kib")
TITLES = {
    "run": "(a) run /bin/true",
    "lifecycle": "(b) create+start+wait+delete",
    "create": "    create",
    "start": "    start",
    "wait": "    start -> exit seen",
    "delete": "    delete",
    "create_maxrss_kib": "create peak RSS (GNU time)",
    "init_vmhwm_kib": "init VmHWM before start",
    "init_vmrss_kib": "init VmRSS before start",
    "init_pss_kib": "init Pss before start",
    "init_private_dirty_kib": "init Private_Dirty",
}


def report(samples: dict[str, dict[str, list[float]]], names: list[str]) -> dict:
    out: dict = {"runtimes": {}, "ratios": {}}
    for name in names:
        out["runtimes"][name] = {k: summary(v) for k, v in samples[name].items() if v}
    if "minirun" in names:
        for other in ("runc", "crun"):
            if other not in names:
                continue
            out["ratios"][f"minirun/{other}"] = {
                metric: ratio(out["runtimes"]["minirun"][metric], out["runtimes"][other][metric])
                for metric in TIMED + MEMORY
                if metric in out["runtimes"]["minirun"] and metric in out["runtimes"][other]
                and out["runtimes"][other][metric]["median"] > 0}
    return out


def print_report(result: dict, names: list[str]) -> None:
    ratio_keys = list(result["ratios"])
    cols = [LABELS[n] for n in names] + ratio_keys
    width = 34
    print()
    print(f"{'time (ms), median / p90':<{width}}" + "".join(f"{c:>20}" for c in cols))
    for metric in TIMED:
        cells = []
        for n in names:
            s = result["runtimes"][n].get(metric)
            cells.append(f"{s['median'] * 1e3:8.1f} /{s['p90'] * 1e3:7.1f}" if s else "-")
        for r in ratio_keys:
            v = result["ratios"][r].get(metric)
            cells.append(f"{v['median']:7.2f}x /{v['p90']:5.2f}x" if v else "-")
        print(f"{TITLES[metric]:<{width}}" + "".join(f"{c:>20}" for c in cells))
    print()
    print(f"{'memory (MiB), median':<{width}}" + "".join(f"{c:>20}" for c in cols))
    for metric in MEMORY:
        cells = []
        for n in names:
            s = result["runtimes"][n].get(metric)
            cells.append(f"{s['median'] / 1024:8.1f}" if s else "-")
        for r in ratio_keys:
            v = result["ratios"][r].get(metric)
            cells.append(f"{v['median']:7.2f}x" if v else "-")
        print(f"{TITLES[metric]:<{width}}" + "".join(f"{c:>20}" for c in cells))


# --- main ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_iteration_args(p, iterations=30, warmup=3)
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="comma-separated subset of minirun,runc,crun")
    p.add_argument("--rootfs", help="reuse this busybox rootfs instead of building one")
    p.add_argument("--minirun", help="minirun-oci command (default: a fast launcher like "
                   "scripts/install.sh's, for this checkout)")
    add_output_args(p)
    p.add_argument("--memory-samples", type=int, default=5, metavar="N",
                   help="untimed creates per runtime for the peak RSS of create (0: none)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first failed operation (default: count failures, "
                   "leave them out of the numbers and go on)")
    p.add_argument("--no-crun-workaround", action="store_true",
                   help="skip crun on a hybrid host instead of using a private mount ns")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        p.error("--iterations must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("oci_bench: run as root", file=sys.stderr)
        return 2
    wanted = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for r in wanted:
        if r not in RUNTIMES:
            print(f"oci_bench: unknown runtime {r!r}", file=sys.stderr)
            return 2
    log = log_stream(args.json)

    catch_signals()
    tmp = tempfile.mkdtemp(prefix="minirun-bench.", dir=args.tmpdir)
    runner = None
    helper = None
    names: list[str] = []
    try:
        stale = remove_bench_cgroups(kill=False)
        if stale:
            raise BenchError(f"stale /{CGROUP_PARENT} cgroups that cannot be removed: {stale}")
        minirun_cmd = None
        if "minirun" in wanted:
            if args.minirun:
                minirun_cmd, how = args.minirun.split(), "--minirun"
            else:
                launcher, how = minirun_launcher(tmp)
                minirun_cmd = [launcher]
            print(f"minirun-oci: {' '.join(minirun_cmd)} ({how})", file=log)
        rootfs = os.path.abspath(args.rootfs) if args.rootfs else build_rootfs(tmp)
        if not os.path.isfile(os.path.join(rootfs, "bin", "true")):
            raise BenchError(f"{rootfs} has no bin/true: not a busybox rootfs")
        bundle, cfg = make_bundle(tmp, rootfs, minirun_cmd)
        print(f"bundle {bundle} (config from {cfg['_source']}), rootfs {rootfs}", file=log)

        runtimes: dict[str, Runtime] = {}
        for name in wanted:
            if name == "minirun":
                argv = list(minirun_cmd)
                argv[0] = shutil.which(argv[0]) or argv[0]
            else:
                path = shutil.which(name)
                if not path:
                    print(f"skipping {name}: no {name} binary in PATH", file=log)
                    continue
                argv = [path]
            runtimes[name] = Runtime(name, argv, os.path.join(tmp, f"state-{name}"))
        names = list(runtimes)
        if not names:
            raise BenchError("no runtime to measure")
        runner = Runner(runtimes, bundle, tmp)
        in_helper = set()
        if "crun" in runtimes and crun_needs_private_ns():
            if args.no_crun_workaround:
                print("skipping crun: it refuses this hybrid cgroup host "
                      "(--no-crun-workaround)", file=log)
                del runtimes["crun"]
                names.remove("crun")
            else:
                print("crun: hybrid cgroups with controllers on cgroup2; running crun in a "
                      "private mount namespace with a tmpfs over /sys/fs/cgroup/unified "
                      "(crun sees a v1 host; host mounts untouched)", file=log)
                helper = Helper(runner)
                in_helper.add("crun")

        def call(op: str, name: str, cid: str) -> dict:
            if name in in_helper:
                return helper.call(op, name, cid)
            return getattr(runner, op)(name, cid)

        counters = {n: 0 for n in names}

        def next_id(name: str) -> str:
            counters[name] += 1
            write_config(bundle, cfg, f"/{CGROUP_PARENT}/{name}-{counters[name]}")
            return f"bench-{os.getpid()}-{name}-{counters[name]}"

        state = checkout_state()
        load_before = loadavg()
        print(describe_checkout(state, load_before), file=log)
        samples = {n: {k: [] for k in TIMED + MEMORY} for n in names}
        failures: dict[str, list[str]] = {n: [] for n in names}
        total = args.warmup + args.iterations
        print(f"{args.warmup} warm-up + {args.iterations} iterations, round-robin over "
              f"{', '.join(LABELS[n] for n in names)}", file=log)
        for i in range(total):
            for op in ("run_once", "lifecycle"):
                for name in rotated(names, i):
                    try:
                        result = call(op, name, next_id(name))
                    except BenchError as e:
                        if args.fail_fast:
                            raise
                        failures[name].append(f"iteration {i + 1} {op}: {e}")
                        print(f"  {LABELS[name]} failed: {e}", file=log)
                        if name in in_helper:
                            helper.call("cleanup", name)
                        else:
                            runner.cleanup(name)
                        continue
                    if i >= args.warmup:
                        for key, value in result.items():
                            samples[name][key].append(value)
            progress(i, total, log)

        if args.memory_samples and not os.access(GNU_TIME, os.X_OK):
            print(f"no {GNU_TIME} (Debian package 'time'): no peak RSS of create", file=log)
        elif args.memory_samples:
            print(f"peak RSS of create: {args.memory_samples} more untimed create(s) each, "
                  f"under {GNU_TIME}", file=log)
            for i in range(args.memory_samples):
                for name in names:
                    try:
                        result = call("create_maxrss", name, next_id(name))
                    except BenchError as e:
                        failures[name].append(f"memory sample {i + 1}: {e}")
                        continue
                    samples[name]["create_maxrss_kib"].append(result["create_maxrss_kib"])

        result = report(samples, names)
        result["samples"] = samples
        result["failures"] = failures
        result["config"] = {"iterations": args.iterations, "warmup": args.warmup,
                            "bundle_config": cfg["_source"],
                            "crun_private_mount_ns": "crun" in in_helper,
                            "commands": {n: runtimes[n].argv for n in names},
                            **machine_and_checkout(state, load_before)}
        if args.json != "-":
            print_report(result, names)
            print("\nratios are minirun / other (above 1: minirun is slower or bigger); "
                  f"load average at the end {result['config']['loadavg_after']}")
            for name in names:
                if failures[name]:
                    print(f"{LABELS[name]}: {len(failures[name])} failed operation(s), "
                          f"left out of the numbers; first: {failures[name][0]}")
        write_json(result, args.json)
        # Numbers were printed, but a run with failures is not a clean run.
        return 1 if any(failures.values()) else 0
    except BenchError as e:
        print(f"oci_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\noci_bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        ignore_signals()
        problems = cleanup(runner, helper, names, tmp)
        for p in problems:
            print(f"oci_bench: cleanup: {p}", file=sys.stderr)


def cleanup(runner: Runner | None, helper: Helper | None, names: list[str],
            tmp: str) -> list[str]:
    problems = []
    if runner is not None:
        runner.wait_current()
        for name in names:
            try:
                if helper is not None and name == "crun":
                    problems += helper.call("cleanup", name)
                else:
                    problems += runner.cleanup(name)
            except (OSError, BenchError) as e:
                problems.append(f"{name}: {e}")
    if helper is not None:
        helper.close()
    problems += remove_bench_cgroups()
    remove_tree(tmp)
    return problems


if __name__ == "__main__":
    sys.exit(main())
