"""Detached containers under the daemon: CRI logs, stop, restart policies, and a daemon
killed with SIGKILL while containers run."""

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from enginetest import engine  # noqa: F401
from ocitest import needs_root, wait_for

pytestmark = [needs_root, pytest.mark.root]

CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) [PF] .*$")
TRAP_42 = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done"


def inspect(engine, name):
    return json.loads(engine("inspect", name).stdout)[0]


def test_detached_run_logs_in_cri_format(engine):
    proc = engine("run", "-d", "--name", "logger", "busybox", "sh", "-c",
                  "echo out; echo err >&2; printf partial")
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    assert len(cid) == 64
    assert wait_for(lambda: inspect(engine, "logger")["State"]["Status"] == "exited")
    with open(os.path.join(engine.root, "containers", cid, "ctr.log")) as f:
        lines = f.read().splitlines()
    assert all(CRI_LINE.match(line) for line in lines), lines
    entries = [line.split(" ", 1)[1] for line in lines]
    # two pipes: the order between the streams is not kept, within one it is
    # output after the last newline is a partial line, as containerd writes it
    assert [e for e in entries if e.startswith("stdout")] == ["stdout F out",
                                                              "stdout P partial"]
    assert [e for e in entries if e.startswith("stderr")] == ["stderr F err"]
    logs = engine("logs", "logger")
    # what the container wrote, as docker logs shows it: no newline it did not write
    assert logs.stdout == "out\npartial" and logs.stderr == "err\n"
    tail = engine("logs", "--tail", "1", "logger")
    assert len((tail.stdout + tail.stderr).splitlines()) == 1
    assert inspect(engine, "logger")["State"]["ExitCode"] == 0


def test_logs_follow_while_the_container_writes(engine):
    engine("run", "-d", "--name", "writer", "busybox", "sh", "-c",
           "for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done", check=True)
    proc = engine("logs", "-f", "writer", timeout=60)
    assert proc.stdout.split() == [f"line{i}" for i in range(1, 6)]


def test_stop_trapped_and_ignored_sigterm(engine):
    engine("run", "-d", "--name", "trapper", "busybox", "sh", "-c", TRAP_42, check=True)
    assert wait_for(lambda: "ready" in engine("logs", "trapper").stdout)
    started = time.monotonic()
    assert engine("stop", "trapper").returncode == 0
    assert time.monotonic() - started < 5
    assert inspect(engine, "trapper")["State"]["ExitCode"] == 42
    # pid 1 ignores SIGTERM without a handler: SIGKILL after -t
    engine("run", "-d", "--name", "ignorer", "busybox", "sleep", "100", check=True)
    started = time.monotonic()
    assert engine("stop", "-t", "1", "ignorer").returncode == 0
    assert 1 <= time.monotonic() - started < 10
    assert inspect(engine, "ignorer")["State"]["ExitCode"] == 137


def test_restart_on_failure_exactly_n_times(engine):
    engine("run", "-d", "--name", "flaky", "--restart", "on-failure:3", "busybox", "sh", "-c",
           "echo try; exit 1", check=True)
    done = wait_for(lambda: inspect(engine, "flaky")["RestartCount"] == 3 and
                    inspect(engine, "flaky")["State"]["Status"] == "exited", timeout=30)
    assert done, (inspect(engine, "flaky"), engine.daemon_logs())
    time.sleep(1)  # no fourth restart
    rec = inspect(engine, "flaky")
    assert rec["RestartCount"] == 3 and rec["State"]["ExitCode"] == 1
    assert engine("logs", "flaky").stdout == "try\n" * 4


def test_start_again_and_rm(engine):
    engine("run", "-d", "--name", "again", "busybox", "sh", "-c", "echo hi", check=True)
    assert wait_for(lambda: inspect(engine, "again")["State"]["Status"] == "exited")
    assert engine("start", "again").returncode == 0
    assert wait_for(lambda: engine("logs", "again").stdout == "hi\nhi\n")
    cid = inspect(engine, "again")["Id"]
    assert engine("rm", "again").returncode == 0
    assert not os.path.exists(os.path.join(engine.root, "containers", cid))
    assert engine("inspect", "again").returncode != 0


def test_rm_of_running_needs_force(engine):
    engine("run", "-d", "--name", "busy", "busybox", "sleep", "100", check=True)
    proc = engine("rm", "busy")
    assert proc.returncode == 1 and "running" in proc.stderr
    assert engine("rm", "-f", "busy").returncode == 0


def test_two_runs_with_one_name_at_once(engine):
    def run(_):
        return engine("run", "-d", "--name", "only-one", "busybox", "sleep", "30")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(2)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 125], [(r.returncode, r.stderr) for r in results]
    failed = [r for r in results if r.returncode][0]
    assert "already in use" in failed.stderr
    listed = [json.loads(line) for line in
              engine("ps", "-a", "--format", "json").stdout.splitlines()]
    assert len([c for c in listed if c["Names"] == "only-one"]) == 1
    engine("rm", "-f", "only-one")


def test_daemon_killed_with_20_containers(engine):
    names = [f"survivor{i}" for i in range(20)]
    for name in names:
        proc = engine("run", "-d", "--name", name, "busybox", "sh", "-c", TRAP_42)
        assert proc.returncode == 0, proc.stderr
    daemon = engine.pid_of("daemon")
    os.kill(daemon, 9)
    assert wait_for(lambda: not os.path.exists(f"/proc/{daemon}/cmdline") or
                    open(f"/proc/{daemon}/cmdline", "rb").read() == b"")
    # a new daemon adopts them (started on first need)
    from minirun.daemon.server import ensure_daemon
    from minirun.engine import Engine
    ensure_daemon(Engine(root=engine.root, run_root=engine.run_root))
    assert engine.pid_of("daemon") != daemon
    listed = [json.loads(line) for line in
              engine("ps", "--format", "json").stdout.splitlines()]
    running = {c["Names"] for c in listed if c["State"] == "running"}
    assert set(names) <= running
    for name in names:
        assert engine("stop", name).returncode == 0
    codes = {name: inspect(engine, name)["State"]["ExitCode"] for name in names}
    assert codes == {name: 42 for name in names}
    for name in names:
        engine("rm", name)


def test_exec_and_top_in_a_running_container(engine):
    engine("run", "-d", "--name", "target", "-h", "tgt", "busybox", "sleep", "100",
           check=True)
    proc = engine("exec", "-e", "X=1", "-u", "app", "-w", "/tmp", "target", "sh", "-c",
                  "echo $X; id -u; pwd; hostname; exit 3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split() == ["1", "1000", "/tmp", "tgt"]
    assert engine("exec", "target", "no-such-cmd").returncode == 127
    top = engine("top", "target").stdout.splitlines()
    assert top[0].split()[:2] == ["UID", "PID"]
    assert any(line.rstrip().endswith("sleep 100") for line in top[1:])
    engine("rm", "-f", "target", check=True)
    assert engine("exec", "target", "true").returncode == 125
