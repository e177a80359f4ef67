#!/usr/bin/env python3
"""What the daemon's Prometheus endpoint costs (issue 14: under 1 % of a core for 50
running containers at a 15 s scrape interval).

    bench/metrics_bench.py [--containers 50] [--scrapes 30] [--network bridge|none|host]
                           [--idle 10] [--interval 15] [--minirun CMD] [--json FILE|-]

Run as root, with prometheus-client in the checkout's venv (`pip install -e '.[test]'`).
A temporary minirun root gets the busybox rootfs as an image and a daemon started with
MINIRUN_METRICS=127.0.0.1:<free port> (as `minirun daemon --metrics` would be); then
--containers `run -d busybox sleep 3600`, on the default bridge network unless --network
says otherwise (bridge: each container has its own netns with eth0, the costliest case for
the collector, which reads every netns's net/dev; host skips that read).

Measured on the daemon alone (utime + stime from /proc/<pid>/stat, the pid checked to hold
daemon.lock): its CPU over --idle seconds with no scrape (the baseline: the containers are
asleep and silent, so it should be ~0), then over --scrapes scrapes one after the other,
after 3 unrecorded ones. The cost of one scrape is (CPU during the scrapes - baseline rate
x their wall time) / scrapes; at one scrape per --interval seconds that is
cost / interval of a core. Each scrape's wall time is also how long the daemon's loop is
busy with it (it serves the endpoint itself).

Everything is removed at the end, on error and on Ctrl-C: the containers, the daemon and
keeper (by pid, only those holding this run root's locks), their cgroups, the temp dir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from benchlib import (
    CHECKOUT,
    BenchError,
    add_output_args,
    catch_signals,
    checked,
    checkout_state,
    describe_checkout,
    free_port,
    ignore_signals,
    loadavg,
    log_stream,
    machine_and_checkout,
    minirun_command,
    remove_tree,
    summary,
    write_json,
)
from supervise_bench import TIMEOUT, Minirun, cpu_seconds, supervisor_pid

IMAGE = "busybox"
GOAL_PERCENT = 1.0


class MetricsMinirun(Minirun):
    def __init__(self, cmd: list[str], tmp: str, network: str, addr: str) -> None:
        super().__init__(cmd, tmp)
        self.network = network
        self.env["MINIRUN_METRICS"] = addr

    def start(self) -> float:
        r = checked(self.cmd + ["run", "-d", "--network", self.network, IMAGE, "sleep", "3600"],
                    self.env, TIMEOUT, "minirun run -d")
        self.ids.append(r["stdout"].split()[-1])
        return r["elapsed"]


def scrape(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--containers", type=int, default=50)
    p.add_argument("--scrapes", type=int, default=30)
    p.add_argument("--network", default="bridge", choices=("bridge", "none", "host"))
    p.add_argument("--idle", type=float, default=10.0,
                   help="seconds of the no-scrape baseline (default 10)")
    p.add_argument("--interval", type=float, default=15.0,
                   help="the scrape interval the cost is given for (default 15 s)")
    p.add_argument("--minirun", default=None, help="the minirun command (default the venv's)")
    add_output_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("metrics_bench: run as root", file=sys.stderr)
        return 2
    log = log_stream(args.json)
    catch_signals()
    tmp = tempfile.mkdtemp(prefix="minirun-metricsbench.", dir=args.tmpdir)
    minirun = None
    try:
        cmd, _source = minirun_command(args.minirun)
        addr = f"127.0.0.1:{free_port()}"
        minirun = MetricsMinirun(cmd, tmp, args.network, addr)
        url = f"http://{addr}/metrics"
        print(f"minirun: {' '.join(cmd)}; temp dir {tmp}; metrics {url}", file=log)
        tarball = os.path.join(tmp, "busybox-rootfs.tar")
        subprocess.run([os.path.join(CHECKOUT, "rootfs", "build.sh"), "--tar", tarball],
                       check=True, stdout=subprocess.DEVNULL)
        checked(cmd + ["import", "--cmd", '["sh"]', tarball, f"{IMAGE}:latest"],
                minirun.env, 300, "minirun import")
        state = checkout_state()
        load_before = loadavg()
        print(describe_checkout(state, load_before), file=log)
        minirun.prepare()  # the daemon, with MINIRUN_METRICS in its environment
        for i in range(args.containers):
            minirun.start()
            if (i + 1) % 10 == 0:
                print(f"  {i + 1} containers", file=log)
        daemon = minirun.supervisors(args.containers)["daemon"]
        for _ in range(3):
            _, body = scrape(url)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        running = sum(1 for line in body.splitlines()
                      if line.startswith(b"container_processes{"))
        if running != args.containers:
            raise BenchError(f"the endpoint lists {running} containers, not {args.containers}")

        cpu0, t0 = cpu_seconds(daemon), time.monotonic()
        time.sleep(args.idle)
        idle_rate = (cpu_seconds(daemon) - cpu0) / (time.monotonic() - t0)

        walls = []
        cpu0, t0 = cpu_seconds(daemon), time.monotonic()
        for _ in range(args.scrapes):
            wall, _ = scrape(url)
            walls.append(wall)
        elapsed = time.monotonic() - t0
        busy = cpu_seconds(daemon) - cpu0
        per_scrape = max(0.0, busy - idle_rate * elapsed) / args.scrapes
        percent = per_scrape / args.interval * 100
        if supervisor_pid(minirun.run_root, "daemon") != daemon:
            raise BenchError("the daemon changed during the measurement")

        result = {
            "containers": args.containers, "network": args.network, "scrapes": args.scrapes,
            "series": series, "exposition_bytes": len(body),
            "daemon_idle_cpu_percent": idle_rate * 100,
            "daemon_cpu_per_scrape_ms": per_scrape * 1000,
            "scrape_wall_ms": summary([w * 1000 for w in walls]),
            "interval_s": args.interval, "core_percent_at_interval": percent,
            "goal_met": percent < GOAL_PERCENT,
            "config": {"minirun": cmd, **machine_and_checkout(state, load_before)},
        }
        if args.json != "-":
            w = result["scrape_wall_ms"]
            print(f"\n{args.containers} running containers ({args.network} network), "
                  f"{series} series, {len(body)} bytes a scrape")
            print(f"daemon idle: {idle_rate * 100:.3f} % of a core")
            print(f"daemon CPU per scrape: {per_scrape * 1000:.1f} ms "
                  f"(scrape wall median {w['median']:.1f} ms, p90 {w['p90']:.1f} ms)")
            print(f"at one scrape every {args.interval:g} s: {percent:.2f} % of a core "
                  f"(goal < {GOAL_PERCENT:g} %: {'met' if percent < GOAL_PERCENT else 'NOT met'})")
        write_json(result, args.json)
        return 0
    except (BenchError, subprocess.CalledProcessError, OSError) as e:
        print(f"metrics_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmetrics_bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        ignore_signals()
        problems = minirun.cleanup() if minirun is not None else []
        problems += remove_tree(tmp)
        for p in problems:
            print(f"metrics_bench: cleanup: {p}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
