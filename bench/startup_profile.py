#!/usr/bin/env python3
"""Where minirun-oci's start time goes.

    bench/startup_profile.py [--iterations 20] [--json FILE|-]

Run as root. Measures, each as a median over the iterations:
  1. interpreter startup: the venv's python with -SE (what the fast launcher runs), with
     site (what pip's console script runs), and /bin/true as the floor of a spawn;
  2. imports: minirun.oci_cli, then minirun.runtime, measured from outside (time of the
     import minus `-c pass`) and inside with -X importtime (top entries, self and
     cumulative);
  3. the CLI's fixed cost: `minirun-oci --version` and `state <missing id>`;
  4. `minirun-oci create`, `start` and `delete` from outside (with the installed launcher
     and with one that ends in SystemExit(main()), i.e. with the interpreter's teardown),
     the runtime's own MINIRUN_TRACE=1 step times when it has them, and the same calls
     made in-process by a worker with timers wrapped around the runtime's steps, in the
     parent and in the forked children (patched from outside: the sources stay as they
     are). Children report over a pipe, with time.perf_counter, which is CLOCK_MONOTONIC
     and so comparable across processes.
  5. fork: os.fork + _exit + waitpid in a process that has imported minirun.runtime.
  6. moving a fresh process into a cgroup in every hierarchy, four ways (measure_attach).

The containers use the same bundle as oci_bench.py (busybox, /bin/true) and cgroups under
/minirun-bench/profile-<n>; everything is removed at the end and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import benchlib  # after the path is set
import oci_bench

VENV_PYTHON = os.path.join(CHECKOUT, ".venv", "bin", "python")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spawn_time(argv: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall time of one spawn-to-exit, and its stderr."""
    r, w = os.pipe()
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
               (os.POSIX_SPAWN_DUP2, w, 2)]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env if env is not None else os.environ,
                         file_actions=actions, setpgroup=0)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    elapsed = time.perf_counter() - t0
    os.close(r)
    return elapsed, b"".join(chunks).decode(errors="replace")


def path_setup() -> str:
    # The fast launcher's sys.path: checkout first, site-packages last.
    return (f"import sys; sys.path[0:0] = [{CHECKOUT!r}]; "
            f"sys.path.append({benchlib.site_packages(VENV_PYTHON)!r}); ")


# --- 1-3: startup, imports, fixed CLI cost ------------------------------------------------

def measure_startup(n: int, launcher: str) -> dict:
    setup = path_setup()
    cases = {
        "/bin/true (spawn floor)": ["/bin/true"],
        "python -SE -c pass (fast launcher)": [VENV_PYTHON, "-SE", "-c", "pass"],
        "python -c pass (site, editable finder)": [VENV_PYTHON, "-c", "pass"],
        "python -I -S -c 'import argparse, json'": [VENV_PYTHON, "-I", "-S", "-c",
                                                    "import argparse, json"],
        "-SE import minirun.oci_cli": [VENV_PYTHON, "-SE", "-c",
                                       setup + "import minirun.oci_cli"],
        "-SE import minirun.oci_cli + runtime": [VENV_PYTHON, "-SE", "-c",
                                                 setup + "import minirun.oci_cli, "
                                                 "minirun.runtime"],
        "-SE import oci_cli + runtime, then os._exit": [
            VENV_PYTHON, "-SE", "-c",
            setup + "import minirun.oci_cli, minirun.runtime, os; os._exit(0)"],
        "minirun-oci --version": [launcher, "--version"],
        "minirun-oci state <missing>": [launcher, "--root", "/nonexistent-minirun-root",
                                        "state", "missing"],
    }
    for rt in ("runc", "crun"):
        path = shutil.which(rt)
        if path:
            cases[f"{rt} --version"] = [path, "--version"]
            cases[f"{rt} state <missing>"] = [path, "--root", "/nonexistent-minirun-root",
                                              "state", "missing"]
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for argv in cases.values():
        spawn_time(argv)  # warm the page cache and __pycache__
    for _ in range(n):
        for name, argv in cases.items():
            samples[name].append(spawn_time(argv)[0])
    return {k: median(v) for k, v in samples.items()}


def measure_importtime(n: int) -> dict:
    """-X importtime of `import minirun.oci_cli, minirun.runtime`; medians per module."""
    argv = [VENV_PYTHON, "-SE", "-X", "importtime", "-c",
            path_setup() + "import minirun.oci_cli, minirun.runtime"]
    self_us: dict[str, list[int]] = {}
    cum_us: dict[str, list[int]] = {}
    depth: dict[str, int] = {}
    parent: dict[str, str] = {}
    for _ in range(n):
        _, err = spawn_time(argv)
        # Lines come children first, each indented two spaces per level below its
        # importer: a line claims the pending deeper lines as its descendants.
        pending: list[tuple[str, int]] = []
        for line in err.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_part, cum_part, name_part = line[len("import time:"):].split("|")
            name = name_part.rstrip()
            d = (len(name) - len(name.lstrip()) - 1) // 2
            name = name.strip()
            while pending and pending[-1][1] > d:
                child, child_depth = pending.pop()
                if child_depth == d + 1:
                    parent[child] = name
            pending.append((name, d))
            depth[name] = d
            self_us.setdefault(name, []).append(int(self_part))
            cum_us.setdefault(name, []).append(int(cum_part))
    return {name: {"self_ms": median(self_us[name]) / 1e3,
                   "cumulative_ms": median(cum_us[name]) / 1e3, "depth": depth[name],
                   "imported_by": parent.get(name, "")}
            for name in self_us}


# --- 4: the in-process trace (runs in a worker under the venv's python -SE) ------------

PARENT_SPANS = [
    # (module, attribute path, label)
    ("minirun.spec", "load_config", "spec.load_config"),
    ("minirun.runtime", "_check_supported", "_check_supported"),
    ("minirun.security", "capability_plan", "security.capability_plan"),
    ("minirun.security", "rlimit_plan", "security.rlimit_plan"),
    ("minirun.runtime", "open_cgroup", "cgroups.open_cgroup"),
    ("minirun.runtime", "NamespacePlan", "NamespacePlan()"),
    ("minirun.runtime", "_spawn", "_spawn (fork, child setup until ready)"),
    ("minirun.runtime", "Container.save", "Container.save (json+fsync)"),
    ("minirun.runtime", "_write_pid_file", "_write_pid_file"),
    ("minirun.runtime", "Container.load", "Container.load"),
    ("minirun.runtime", "Container.lock", "Container.lock"),
    ("minirun.runtime", "Container.status", "Container.status"),
    ("minirun.runtime", "Container.cgroup", "Container.cgroup (open driver)"),
    ("minirun.runtime", "_cleanup", "_cleanup (cgroup + state dir)"),
    ("minirun.runtime", "_kill_and_wait", "_kill_and_wait"),
    ("minirun.runtime", "run_hooks", "run_hooks"),
    # the children
    ("minirun.runtime", "_first_child", "_first_child (all of C)"),
    ("minirun.runtime", "_reset_signals", "_reset_signals"),
    ("minirun.namespaces", "NamespacePlan.join_all", "plan.join_all"),
    ("minirun.sys", "unshare", "unshare"),
    ("minirun.mounts", "RootfsBuilder.__init__", "RootfsBuilder()"),
    ("minirun.mounts", "RootfsBuilder.prepare", "rootfs prepare (mounts)"),
    ("minirun.mounts", "RootfsBuilder.pivot", "pivot_root"),
    ("minirun.mounts", "RootfsBuilder.finish", "finish (masks, ro paths)"),
    ("minirun.sys", "sethostname", "sethostname"),
    ("minirun.security", "apply_rlimits", "apply_rlimits"),
    ("minirun.security", "last_cap", "last_cap"),
    ("minirun.security", "drop_bounding", "drop_bounding"),
    ("minirun.security", "set_user", "set_user"),
    ("minirun.security", "setgroups_allowed", "setgroups_allowed"),
    ("minirun.security", "apply_caps", "apply_caps"),
    ("minirun.runtime", "_enter_cwd", "_enter_cwd"),
    ("minirun.runtime", "_find_executable", "_find_executable"),
    ("minirun.runtime", "_prepare_fds", "_prepare_fds"),
]
CGROUP_METHODS = ("create", "apply", "add_pid", "exists", "destroy", "kill_all", "is_frozen")


def worker(args: argparse.Namespace) -> int:
    """In-process create/start/delete with timers around the runtime's steps."""
    import importlib

    sys.path.insert(0, CHECKOUT)
    r, w = os.pipe()
    os.set_blocking(r, False)

    def record(label: str, t0: float, t1: float) -> None:
        # One write per record, below PIPE_BUF: atomic even from the children.
        os.write(w, f"{os.getpid()}\t{label}\t{t0!r}\t{t1!r}\n".encode())

    def timed(fn, label):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                record(label, t0, time.perf_counter())
        wrapper.__wrapped__ = fn
        return wrapper

    missing = []
    for module_name, attr_path, label in PARENT_SPANS:
        module = importlib.import_module(module_name)
        owner = module
        *parents, attr = attr_path.split(".")
        for p in parents:
            owner = getattr(owner, p, None)
        if owner is None or not hasattr(owner, attr):
            missing.append(f"{module_name}.{attr_path}")
            continue
        setattr(owner, attr, timed(getattr(owner, attr), label))
    for version, cls_name in (("v1", "CgroupV1"), ("v2", "CgroupV2")):
        try:
            cls = getattr(importlib.import_module(f"minirun.cgroups.{version}"), cls_name)
        except (ImportError, AttributeError):
            continue
        for m in CGROUP_METHODS:
            if m in cls.__dict__:
                setattr(cls, m, timed(cls.__dict__[m], f"cgroup {version}.{m}"))

    real_fork, real_execve = os.fork, os.execve

    def fork():
        t0 = time.perf_counter()
        pid = real_fork()
        t1 = time.perf_counter()
        record("os.fork (parent returns)" if pid else "os.fork -> child runs", t0, t1)
        return pid

    def execve(path, argv, env):
        t = time.perf_counter()
        record("execve called", t, t)
        return real_execve(path, argv, env)

    os.fork, os.execve = fork, execve
    runtime = importlib.import_module("minirun.runtime")
    real_send = runtime._send

    def send(sock, msg):
        t = time.perf_counter()
        record(f"send {min(msg)}", t, t)
        return real_send(sock, msg)

    runtime._send = send

    # Not in the loop: what a fork costs at this process size.
    fork_times = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        pid = real_fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        fork_times.append(time.perf_counter() - t0)

    iterations = []
    for i in range(args.warmup + args.iterations):
        oci_bench.write_config(args.bundle, json.loads(args.config),
                               f"/{oci_bench.CGROUP_PARENT}/profile-{i}")
        cid = f"profile-{os.getpid()}-{i}"
        marks = {}
        try:
            marks["create0"] = time.perf_counter()
            c = runtime.create(args.root, cid, args.bundle, runtime.CreateOptions())
            marks["create1"] = time.perf_counter()
            pid = c.pid
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                raise RuntimeError(f"pidfd_open of the init's pid {pid!r}: {e}") from None
            marks["start0"] = time.perf_counter()
            runtime.start(args.root, cid)
            marks["start1"] = time.perf_counter()
            ready, _, _ = select.select([pidfd], [], [], oci_bench.EXIT_TIMEOUT)
            marks["exit_seen"] = time.perf_counter()
            os.close(pidfd)
            if not ready:
                raise RuntimeError(f"/bin/true did not exit within {oci_bench.EXIT_TIMEOUT}s")
            try:
                os.waitpid(pid, 0)  # the init is our child: create made us a subreaper
            except ChildProcessError:
                pass
            marks["delete0"] = time.perf_counter()
            runtime.delete(args.root, cid)
            marks["delete1"] = time.perf_counter()
        except BaseException:
            try:
                runtime.delete(args.root, cid, force=True)
            except Exception as e:  # noqa: BLE001  (the first error is the one to show)
                print(f"worker: cleanup of {cid}: {e}", file=sys.stderr)
            raise
        records = []
        buf = b""
        while True:
            try:
                data = os.read(r, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            buf += data
        for line in buf.decode().splitlines():
            rpid, label, t0, t1 = line.split("\t")
            records.append((int(rpid), label, float(t0), float(t1)))
        if i >= args.warmup:
            iterations.append({"marks": marks, "records": records})
    with open(f"/proc/{os.getpid()}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(args.out, "w") as f:
        json.dump({"iterations": iterations, "fork": fork_times, "missing": missing,
                   "worker_rss_kib": rss, "parent_pid": os.getpid()}, f)
    return 0


def analyse_trace(data: dict) -> dict:
    """Per label: median duration and median start offset from the beginning of its verb."""
    per_label: dict[str, dict[str, list[float]]] = {}
    verbs: dict[str, list[float]] = {"create": [], "start": [], "start->exit": [],
                                     "delete": []}
    parent = data["parent_pid"]
    for it in data["iterations"]:
        m = it["marks"]
        verbs["create"].append(m["create1"] - m["create0"])
        verbs["start"].append(m["start1"] - m["start0"])
        verbs["start->exit"].append(m["exit_seen"] - m["start1"])
        verbs["delete"].append(m["delete1"] - m["delete0"])
        pids = sorted({rec[0] for rec in it["records"] if rec[0] != parent})
        role = {parent: "P"}
        # C forks first, then I; the earliest child pid seen is C.
        if pids:
            first_seen = sorted(pids, key=lambda p: min(r[2] for r in it["records"]
                                                       if r[0] == p))
            role[first_seen[0]] = "C"
            for p in first_seen[1:]:
                role[p] = "I"
        seen: dict[str, int] = {}
        for rpid, label, t0, t1 in it["records"]:
            verb = ("create" if t0 < m["create1"] else "start" if t0 < m["exit_seen"]
                    else "delete")
            key = f"{verb}\t{role.get(rpid, '?')}\t{label}"
            n = seen[key] = seen.get(key, 0) + 1
            if n > 1:
                key += f" #{n}"
            d = per_label.setdefault(key, {"dur": [], "offset": []})
            d["dur"].append(t1 - t0)
            d["offset"].append(t0 - m[f"{verb}0"])
    out = {"verbs_ms": {k: median(v) * 1e3 for k, v in verbs.items()}, "steps": []}
    for key, d in per_label.items():
        verb, role_name, label = key.split("\t")
        out["steps"].append({"verb": verb, "process": role_name, "label": label,
                             "offset_ms": median(d["offset"]) * 1e3,
                             "duration_ms": median(d["dur"]) * 1e3, "n": len(d["dur"])})
    out["steps"].sort(key=lambda s: (["create", "start", "delete"].index(s["verb"]),
                                     s["offset_ms"]))
    out["fork_ms"] = median(data["fork"]) * 1e3
    out["worker_rss_mib"] = data["worker_rss_kib"] / 1024
    out["missing_hooks"] = data["missing"]
    return out


TRACE_LINE = re.compile(r"^\[\s*([\d.]+) ms\s+(\d+)\] (.+)$")


def measure_minirun_trace(n: int, runner: oci_bench.Runner, bundle: str, cfg: dict) -> dict:
    """The runtime's own MINIRUN_TRACE=1 step times (ms since minirun.runtime was imported),
    from the real CLI; median per step, per verb."""
    steps: dict[str, dict[str, list[float]]] = {}
    rt = runner.runtimes["minirun"]
    os.environ["MINIRUN_TRACE"] = "1"
    try:
        for i in range(n):
            oci_bench.write_config(bundle, cfg, f"/{oci_bench.CGROUP_PARENT}/profile-trace-{i}")
            cid = f"profile-trace-{os.getpid()}-{i}"
            pid_file = os.path.join(runner.tmp, f"{cid}.pid")
            rt.live.add(cid)
            errs = {}
            _, code, _, errs["create"] = runner.exec(
                rt.cmd("create", "--bundle", bundle, "--pid-file", pid_file, cid))
            if code != 0:
                raise benchlib.BenchError(f"create with MINIRUN_TRACE=1: {errs['create']}")
            with open(pid_file) as f:
                pidfd = os.pidfd_open(int(f.read()))
            _, _, _, errs["start"] = runner.exec(rt.cmd("start", cid))
            select.select([pidfd], [], [], oci_bench.EXIT_TIMEOUT)
            os.close(pidfd)
            _, _, _, errs["delete"] = runner.exec(rt.cmd("delete", cid))
            rt.live.discard(cid)
            for verb, text in errs.items():
                for line in text.splitlines():
                    m = TRACE_LINE.match(line.strip())
                    if m:
                        steps.setdefault(verb, {}).setdefault(m.group(3), []).append(
                            float(m.group(1)))
    finally:
        del os.environ["MINIRUN_TRACE"]
    return {verb: sorted(((step, median(v)) for step, v in by_step.items()),
                         key=lambda item: item[1])
            for verb, by_step in steps.items()}


def measure_cli_verbs(n: int, runner: oci_bench.Runner, bundle: str, cfg: dict) -> dict:
    """create / start / delete of the real CLI as oci_bench measures them, for each
    launcher in the runner (interleaved)."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {"create": [], "start": [], "delete": []} for name in runner.runtimes}
    for i in range(n + 2):
        for name in runner.runtimes:
            oci_bench.write_config(bundle, cfg,
                                   f"/{oci_bench.CGROUP_PARENT}/profile-{name}-{i}")
            result = runner.lifecycle(name, f"profile-{name}-{os.getpid()}-{i}")
            if i >= 2:
                for k in samples[name]:
                    samples[name][k].append(result[k])
    return {name: {k: median(v) * 1e3 for k, v in verbs.items()}
            for name, verbs in samples.items()}


# --- 6: what one cgroup attach costs ------------------------------------------------------

def measure_attach(n: int) -> dict:
    """A fresh fork moving itself into /minirun-bench/attach-probe in every hierarchy:
    through cgroup.procs everywhere, through v1's `tasks` (one thread, itself), `tasks` in
    v1 plus cgroup.procs in the cgroup2 mount, and (what minirun does where the kernel
    has it) a child that clone3 starts in the cgroup2 directory (CLONE_INTO_CGROUP),
    which then writes v1's `tasks`. The parent's side of the fork is timed too."""
    mounts = benchlib.cgroup_mounts()
    rel = f"{oci_bench.CGROUP_PARENT}/attach-probe"
    for mp, _ in mounts:
        directory = mp
        for part in rel.split("/"):
            parent, directory = directory, os.path.join(directory, part)
            os.makedirs(directory, exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    with open(path) as f:
                        if f.read().strip():
                            continue
                    with open(os.path.join(parent, name)) as f:
                        value = f.read().strip()
                    with open(path, "w") as f:
                        f.write(value)

    def attach(mode: str) -> float:
        t0 = time.perf_counter()
        for mp, fstype in mounts:
            if fstype == "cgroup2" and mode in ("v1 tasks only", CLONE_MODE):
                continue  # not at all, or already there since the clone
            name = "tasks" if fstype == "cgroup" and mode != "cgroup.procs" else "cgroup.procs"
            with open(os.path.join(mp, rel, name), "w") as f:
                f.write("0")
        return time.perf_counter() - t0

    modes = ["cgroup.procs", "v1 tasks only", "v1 tasks + cgroup2 cgroup.procs"]
    cgroup2 = [mp for mp, fstype in mounts if fstype == "cgroup2"]
    fork_into = _fork_into_cgroup_probe(os.path.join(cgroup2[0], rel)) if cgroup2 else None
    if fork_into:
        modes.append(CLONE_MODE)
    samples: dict[str, list[float]] = {m: [] for m in modes}
    forks: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(n):
        for mode in modes:
            # Let the kernel's rcu_sync for cgroup_threadgroup_rwsem go idle, as it is
            # when containers do not start back to back.
            time.sleep(0.25)
            r, w = os.pipe()
            t0 = time.perf_counter()
            pid = fork_into() if mode == CLONE_MODE else os.fork()
            if pid == 0:
                try:
                    os.write(w, repr(attach(mode)).encode())
                finally:
                    os._exit(0)
            forks[mode].append(time.perf_counter() - t0)
            os.close(w)
            data = os.read(r, 100)
            os.close(r)
            os.waitpid(pid, 0)
            if data:
                samples[mode].append(float(data))
    return {"hierarchies": len(mounts),
            "ms": {m: median(v) * 1e3 for m, v in samples.items()},
            "fork_ms": {m: median(v) * 1e3 for m, v in forks.items()}}


CLONE_MODE = "clone3 into cgroup2, v1 tasks"


def _fork_into_cgroup_probe(directory: str):
    """minirun's own clone3 wrapper bound to `directory`, or None where the kernel lacks
    CLONE_INTO_CGROUP (or the checkout lacks the wrapper)."""
    sys.path.insert(0, CHECKOUT)
    try:
        from minirun import sys as minirun_sys
    except ImportError:
        return None
    finally:
        sys.path.remove(CHECKOUT)
    if not hasattr(minirun_sys, "fork_into_cgroup"):
        return None
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def fork_into() -> int:
        return minirun_sys.fork_into_cgroup(fd)

    try:
        pid = fork_into()
    except OSError:
        os.close(fd)
        return None
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return fork_into


# --- report -----------------------------------------------------------------------------

def print_report(res: dict) -> None:
    print("\n1-3. interpreter, imports and fixed CLI cost (median ms)")
    for name, t in res["startup_ms"].items():
        print(f"  {name:<46}{t:8.1f}")
    s = res["startup_ms"]
    base = s["python -SE -c pass (fast launcher)"]
    print(f"  => import minirun.oci_cli alone:          "
          f"{s['-SE import minirun.oci_cli'] - base:8.1f}")
    print(f"  => + minirun.runtime (what create/start/delete/state need): "
          f"{s['-SE import minirun.oci_cli + runtime'] - base:5.1f}")

    imp = res["importtime"]
    print("\n2. -X importtime of minirun.oci_cli + minirun.runtime (median ms)")
    print("  minirun modules and what each pulls in first (cumulative; a module already "
          "loaded costs its next importer nothing):")
    for k in sorted(imp, key=lambda k: -imp[k]["cumulative_ms"]):
        by = imp[k]["imported_by"]
        if k.startswith("minirun") or (by.startswith("minirun")
                                       and imp[k]["cumulative_ms"] >= 0.3):
            print(f"    {k:<28}{imp[k]['cumulative_ms']:8.2f}   "
                  f"{'<- ' + by if by else '(top level)'}")
    print("  top self time (any depth):")
    for k in sorted(imp, key=lambda k: -imp[k]["self_ms"])[:12]:
        print(f"    {k:<28}{imp[k]['self_ms']:8.2f}   <- {imp[k]['imported_by'] or '-'}")
    mini = sum(v["self_ms"] for k, v in imp.items() if k.startswith("minirun"))
    print(f"  minirun's own modules, self time total: {mini:.2f} ms; everything: "
          f"{sum(v['self_ms'] for v in imp.values()):.2f} ms")

    tr = res["trace"]
    print("\n4. create / start / delete: CLI from outside vs in-process (median ms)")
    cli, teardown = res["cli_ms"]["minirun"], res["cli_ms"]["minirun-teardown"]
    print(f"  {'':<8}{'CLI':>8}{'in-process':>12}{'outside':>10}"
          f"{'CLI, launcher ending in SystemExit(main())':>45}")
    for verb in ("create", "start", "delete"):
        print(f"  {verb:<8}{cli[verb]:8.1f}{tr['verbs_ms'][verb]:12.1f}"
              f"{cli[verb] - tr['verbs_ms'][verb]:10.1f}{teardown[verb]:45.1f}")
    print("  (outside = interpreter start, imports, argument parsing and exit)")
    if res.get("minirun_trace"):
        print("\n  MINIRUN_TRACE=1 from the CLI (ms since minirun.runtime was imported, median):")
        for verb, steps in res["minirun_trace"].items():
            for step, ms in steps:
                print(f"    {verb:<8}{step:<44}{ms:8.2f}")
    print(f"  start -> exit seen (in-process): {tr['verbs_ms']['start->exit']:.2f}")
    print("\n  steps (P = create's process, C = first child, I = container init);"
          " offset from the verb's start, duration:")
    for st in tr["steps"]:
        print(f"    {st['verb']:<7}{st['process']:<3}{st['label']:<46}"
              f"@{st['offset_ms']:7.2f}  {st['duration_ms']:7.2f}")
    print(f"\n5. os.fork+_exit+waitpid at minirun.runtime's size "
          f"(RSS {tr['worker_rss_mib']:.1f} MiB): {tr['fork_ms']:.2f} ms")
    att = res["attach"]
    print(f"\n6. a fresh process moving itself into a cgroup in all {att['hierarchies']} "
          "hierarchies (median ms; the parent's side of its fork apart):")
    for mode, t in att["ms"].items():
        print(f"  {mode:<40}{t:8.2f}   fork {att.get('fork_ms', {}).get(mode, 0):6.2f}")
    if tr["missing_hooks"]:
        print(f"  (not traced, not found in this minirun: {', '.join(tr['missing_hooks'])})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_iteration_args(p, iterations=20, warmup=2)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if os.geteuid() != 0:
        print("startup_profile: run as root", file=sys.stderr)
        return 2
    signals = (signal.SIGINT, signal.SIGTERM)
    benchlib.catch_signals(signals=signals)
    log = benchlib.log_stream(args.json)
    tmp = tempfile.mkdtemp(prefix="minirun-profile.")
    runner = None
    names = []
    try:
        stale = oci_bench.remove_bench_cgroups(kill=False)
        if stale:
            raise benchlib.BenchError(f"stale /{oci_bench.CGROUP_PARENT} cgroups: {stale}")
        launcher, how = oci_bench.minirun_launcher(tmp)
        print(f"minirun-oci: {launcher} ({how})", file=log)
        rootfs = oci_bench.build_rootfs(tmp)
        bundle, cfg = oci_bench.make_bundle(tmp, rootfs, [launcher])
        print("measuring interpreter startup and imports...", file=log)
        res = {"startup_ms": {k: v * 1e3 for k, v in
                              measure_startup(args.iterations, launcher).items()},
               "importtime": measure_importtime(args.iterations)}
        print("measuring the CLI's create/start/delete...", file=log)
        teardown_launcher = oci_bench.write_minirun_launcher(
            os.path.join(tmp, "minirun-oci-teardown"), "teardown")
        runtimes = {
            "minirun": oci_bench.Runtime("minirun", [launcher],
                                         os.path.join(tmp, "state-cli")),
            "minirun-teardown": oci_bench.Runtime("minirun-teardown", [teardown_launcher],
                                                  os.path.join(tmp, "state-cli-teardown")),
        }
        runner = oci_bench.Runner(runtimes, bundle, tmp)
        names = list(runtimes)
        res["cli_ms"] = measure_cli_verbs(args.iterations, runner, bundle, cfg)
        with open(os.path.join(CHECKOUT, "minirun", "runtime.py")) as f:
            has_trace = "MINIRUN_TRACE" in f.read()
        if has_trace:
            print("MINIRUN_TRACE=1 runs...", file=log)
            res["minirun_trace"] = measure_minirun_trace(args.iterations, runner, bundle, cfg)
        print("measuring one cgroup attach...", file=log)
        res["attach"] = measure_attach(args.iterations)
        print("tracing create/start/delete in-process...", file=log)
        clean_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        # Files, not pipes, for the worker's output: the containers' inits inherit its
        # stdio, and a pipe held by a leaked init would never reach EOF.
        result_file = os.path.join(tmp, "trace.json")
        err_file = os.path.join(tmp, "trace.err")
        with open(err_file, "w") as err:
            code = subprocess.run(
                [VENV_PYTHON, "-SE", os.path.abspath(__file__), "--worker",
                 "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                 "--root", os.path.join(tmp, "state-trace"), "--bundle", bundle,
                 "--config", json.dumps(clean_cfg), "--out", result_file],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
                timeout=600, check=False).returncode
        if code != 0:
            with open(err_file) as f:
                raise benchlib.BenchError(f"trace worker failed: {f.read().strip()}")
        with open(result_file) as f:
            res["trace"] = analyse_trace(json.load(f))
        if args.json != "-":
            print_report(res)
        benchlib.write_json(res, args.json)
        return 0
    except benchlib.BenchError as e:
        print(f"startup_profile: {e}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired:
        print("startup_profile: the trace worker timed out", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstartup_profile: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        benchlib.ignore_signals(signals)
        if runner is None:
            runner = oci_bench.Runner({}, "", tmp)
        # The trace worker's containers, if it was interrupted.
        try:
            runner.runtimes["trace"] = oci_bench.Runtime(
                "trace", [oci_bench.minirun_launcher(tmp)[0]], os.path.join(tmp, "state-trace"))
            names.append("trace")
        except (OSError, benchlib.BenchError):
            pass
        problems = oci_bench.cleanup(runner, None, names, tmp)
        for prob in problems:
            print(f"startup_profile: cleanup: {prob}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
