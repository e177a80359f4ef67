"""The daemon as one supervisor that heals itself (issue 10): a stop always wins over a
restart policy, one daemon per run root brought back without a user command after
SIGKILL (no output lost or blocked, log times from when the container wrote), docker's
restart back-off, `run -d --rm`, and logs that keep what they promise."""

import json
import os
import random
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest

from enginetest import engine  # noqa: F401
from ocitest import needs_root, wait_for

pytestmark = [needs_root, pytest.mark.root]

# each line: a counter and the container's clock (/proc/uptime: the host's, to 10 ms)
TICKER = 'i=0; while :; do read up _ < /proc/uptime; echo "tick $i $up"; i=$((i+1)); ' \
         'sleep 0.05; done'
EXIT_3 = "read up _ < /proc/uptime; echo start $up; sleep 0.2; exit 3"
LOGGERS = [f"logger{n}" for n in range(17)]


def inspect(engine, name):
    return json.loads(engine("inspect", name).stdout)[0]


def uptime_offset() -> float:
    """wall clock minus /proc/uptime: turns a container's uptime into the time it was."""
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return time.time() - up


def stamp_seconds(stamp: str) -> float:
    """A log line's RFC 3339 nano time as epoch seconds."""
    day, frac = stamp.rstrip("Z").split(".")
    return time.mktime(time.strptime(day, "%Y-%m-%dT%H:%M:%S")) - time.timezone + \
        float("0." + frac)


def daemons(engine) -> list[int]:
    """The live `minirun daemon` processes of this engine's roots."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"daemon" in args and engine.run_root.encode() in args:
            out.append(int(pid))
    return out


def serving_since(engine, pid: int) -> float | None:
    """When daemon pid said it serves (it has taken the pipes), from its log line."""
    with open(os.path.join(engine.run_root, "daemon.log")) as f:
        for line in f:
            if line.startswith("{"):
                entry = json.loads(line)
                if entry["message"].startswith(f"minirun daemon {pid} serving"):
                    return stamp_seconds(entry["@timestamp"])
    return None


def kill_daemon(engine) -> int:
    pid = engine.pid_of("daemon")
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: pid not in daemons(engine), timeout=5)
    return pid


def remove(engine, *names) -> None:
    for name in names:
        engine("rm", "-f", name)


def test_stop_during_restart_25_rounds(engine):
    """Containers that exit 3 after a short sleep under --restart always, stopped at
    random moments (running, between exit and restart, during a back-off): each stop
    leaves it exited for good, and no request fails meanwhile."""
    rng = random.Random(10)
    delays = [rng.uniform(0, 1.6) for _ in range(25)]
    problems = []
    lock = threading.Lock()

    def round_(n: int) -> None:
        name = f"rr{n}"
        try:
            proc = engine("run", "-d", "--name", name, "--restart", "always", "busybox", "sh",
                          "-c", "sleep 0.3; exit 3")
            if proc.returncode:
                raise AssertionError(f"run -d {name}: {proc.stderr}")
            time.sleep(delays[n])
            proc = engine("stop", "-t", "1", name)
            if proc.returncode:
                raise AssertionError(f"stop {name}: {proc.stderr}")
            after = inspect(engine, name)
            if after["State"]["Status"] != "exited":
                raise AssertionError(f"{name} is {after['State']['Status']} after stop")
            time.sleep(1.0)  # longer than any back-off it had reached: no restart comes
            later = inspect(engine, name)
            if later["State"]["Status"] != "exited" or \
                    later["RestartCount"] != after["RestartCount"]:
                raise AssertionError(f"{name} restarted after stop: {later['State']}, "
                                     f"{after['RestartCount']} -> {later['RestartCount']}")
        except AssertionError as e:
            with lock:
                problems.append(str(e))
        finally:
            remove(engine, name)

    try:
        with ThreadPoolExecutor(5) as pool:
            list(pool.map(round_, range(25)))
        running = engine("ps", "--format", "{{.Names}}").stdout.split()
        assert not problems, (problems, engine.daemon_logs())
        assert running == []
        with open(os.path.join(engine.run_root, "daemon.log")) as f:
            failed = [line for line in f if "failed" in line or '"error' in line]
        assert not failed, failed
    finally:
        remove(engine, *[f"rr{n}" for n in range(25)])


def test_daemon_sigkill_heals_without_a_command(engine, tmp_path):
    trigger = tmp_path / "t"
    trigger.mkdir()
    chatty = ('while [ ! -e /t/go ]; do sleep 0.02; done; read t0 _ < /proc/uptime; '
              'seq 1 30000; read t1 _ < /proc/uptime; echo "$t0 $t1" > /t/done; sleep 100')
    try:
        engine("run", "-d", "--name", "ticker", "busybox", "sh", "-c", TICKER, check=True)
        engine("run", "-d", "--name", "chatty", "-v", f"{trigger}:/t", "busybox", "sh", "-c",
               chatty, check=True)
        engine("run", "-d", "--name", "again", "--restart", "always", "busybox", "sh", "-c",
               EXIT_3, check=True)
        # 17 more loggers: the new daemon takes back 20 containers in all
        for name in LOGGERS:
            engine("run", "-d", "--network", "none", "--name", name, "busybox", "sh", "-c",
                   'i=0; while :; do echo "line $i"; i=$((i+1)); sleep 0.1; done', check=True)
        time.sleep(1.5)
        offset = uptime_offset()
        killed_at = time.time()
        old = kill_daemon(engine)
        (trigger / "go").touch()
        # no minirun command from here until the checks below: the keeper brings it back
        new = wait_for(lambda: [p for p in daemons(engine) if p != old], timeout=3)
        assert new, engine.daemon_logs()
        serving = wait_for(lambda: serving_since(engine, new[0]), timeout=5)
        assert serving, engine.daemon_logs()
        assert wait_for(lambda: (trigger / "done").exists(), timeout=5)
        t0, t1 = map(float, (trigger / "done").read_text().split())
        time.sleep(1.5)
        assert len(daemons(engine)) == 1, daemons(engine)
        assert serving - killed_at < 2.0
        # the burst (170 KB, more than a pipe holds) was over before the new daemon took
        # the pipes: the keeper read it (else it blocks until then, ~0.3 s here)
        assert t1 + offset < serving, (t0 + offset - killed_at, t1 - t0, serving - killed_at)
        back_at = serving

        logs = engine("logs", "chatty")
        assert logs.stdout.split() == [str(n) for n in range(1, 30001)]

        lines = engine("logs", "-t", "ticker").stdout.splitlines()
        ticks = [(stamp_seconds(ln.split()[0]), int(ln.split()[2]), float(ln.split()[3]))
                 for ln in lines]
        assert [n for _, n, _ in ticks] == list(range(len(ticks))), "a line was lost"
        # written while no daemon was there: the keeper read them at once (elsewhere the
        # daemon may be in a keeper call, starting `again`, for a few tenths of a second)
        gap = [t for t in ticks if killed_at < t[2] + offset < back_at]
        late = [(round(s - (up + offset), 3), n) for s, n, up in gap
                if abs(s - (up + offset)) > 0.15]
        assert not late, f"stamped when read, not when written: {late[:5]}"
        late = [(round(s - (up + offset), 3), n) for s, n, up in ticks
                if abs(s - (up + offset)) > 1.0]
        assert not late, late[:5]

        starts = [float(ln.split()[1]) + offset
                  for ln in engine("logs", "again").stdout.splitlines()]
        assert [s for s in starts if s > back_at], "restarts did not resume"
        log = engine.daemon_logs()
        assert f"pid {old}, ended without a clean exit" in log
        for name in LOGGERS:  # every one still logging, none of its lines lost
            seen = engine("logs", name).stdout.splitlines()
            assert seen == [f"line {n}" for n in range(len(seen))], name
            assert len(seen) > 30, (name, len(seen))
    finally:
        remove(engine, "ticker", "chatty", "again", *LOGGERS)


def test_three_concurrent_runs_after_a_kill_leave_one_daemon(engine):
    from minirun.daemon.server import ensure_daemon
    from minirun.engine import Engine

    ensure_daemon(Engine(root=engine.root, run_root=engine.run_root))
    kill_daemon(engine)
    names = [f"conc{i}" for i in range(3)]
    try:
        # each finds no daemon (or a dying one) and may start one, as does the keeper
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(
                lambda n: engine("run", "-d", "--name", n, "busybox", "sleep", "30"), names))
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
        time.sleep(1.0)
        assert len(daemons(engine)) == 1
        # a second daemon started by hand: one line, at once, and the first one stays
        begun = time.monotonic()
        second = engine("daemon")
        assert second.returncode == 1 and time.monotonic() - begun < 5
        assert re.fullmatch(r"minirun: error: another minirun daemon \(pid \d+\) serves "
                            + re.escape(engine.run_root) + "\n", second.stderr), second.stderr
        assert len(daemons(engine)) == 1
        running = set(engine("ps", "--format", "{{.Names}}").stdout.split())
        assert set(names) <= running
    finally:
        remove(engine, *names)


def test_run_detached_rm_leaves_nothing(engine):
    proc = engine("run", "-d", "--rm", "--name", "gone", "busybox", "sh", "-c",
                  "echo bye; sleep 0.3")
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    try:
        assert wait_for(lambda: engine("inspect", "gone").returncode != 0, timeout=10)
        assert "No such object: gone" in engine("inspect", "gone").stderr
        assert cid not in engine("ps", "-a", "-q").stdout
        assert not os.path.exists(os.path.join(engine.root, "containers", cid))
        assert not os.path.exists(os.path.join(engine.run_root, "engine", cid))
        assert not os.path.exists(os.path.join(engine.run_root, "exits", cid))
        import sqlite3
        db = sqlite3.connect(os.path.join(engine.root, "engine.db"))
        try:
            leases = db.execute("SELECT COUNT(*) FROM endpoints WHERE container = ?",
                                (cid,)).fetchone()[0]
        except sqlite3.OperationalError:  # no network table: nothing was leased
            leases = 0
        finally:
            db.close()
        assert leases == 0
    finally:
        remove(engine, "gone")


@pytest.mark.parametrize("args", [["-d", "--rm", "--restart", "always"],
                                  ["--rm", "--restart", "on-failure:3"]])
def test_rm_with_a_restart_policy_is_refused(engine, args):
    before = engine("ps", "-a", "-q").stdout
    proc = engine("run", *args, "--name", "conflict", "busybox", "true")
    assert proc.returncode == 125
    assert proc.stderr == "minirun: error: Conflicting options: --restart and --rm\n"
    assert engine("ps", "-a", "-q").stdout == before


def test_restart_back_off(engine):
    engine("run", "-d", "--name", "backoff", "--restart", "always", "busybox", "sh", "-c",
           "read up _ < /proc/uptime; echo $up; exit 3", check=True)
    try:
        time.sleep(3.5)
        engine("stop", "backoff", check=True)
        starts = [float(x) for x in engine("logs", "backoff").stdout.split()]
        gaps = [b - a for a, b in pairwise(starts)]
        # 100 ms, 200, 400, 800, 1600 (plus each start's own time): 4 to 6 starts, not ~80
        assert 4 <= len(starts) <= 7, starts
        assert gaps[0] >= 0.1
        assert all(b > a - 0.05 for a, b in pairwise(gaps)), gaps
        assert gaps[-1] > 2 * gaps[0], gaps
        assert inspect(engine, "backoff")["RestartCount"] == len(starts) - 1
    finally:
        remove(engine, "backoff")


def test_three_megabytes_of_short_lines_all_in_logs(engine):
    """450000 short lines (3 MB of output, 21 MB of log with the CRI prefixes)."""
    engine("run", "-d", "--name", "lines", "busybox", "seq", "1", "450000", check=True)
    try:
        assert wait_for(lambda: inspect(engine, "lines")["State"]["Status"] == "exited",
                        timeout=30)
        out = engine("logs", "lines").stdout
        assert len(out) > 3_000_000
        assert out == "".join(f"{n}\n" for n in range(1, 450001))
    finally:
        remove(engine, "lines")


def test_log_opt_rotation(engine):
    """max-size counts output bytes: 4 files of 1 MiB keep 3 MB; 2 files keep a tail of
    at least 1 MiB, whole lines, the newest last."""
    try:
        for name, files in (("rot4", "4"), ("rot2", "2")):
            engine("run", "-d", "--name", name, "--log-opt", "max-size=1m", "--log-opt",
                   f"max-file={files}", "busybox", "seq", "1", "450000", check=True)
        for name in ("rot4", "rot2"):
            assert wait_for(lambda n=name: inspect(engine, n)["State"]["Status"] == "exited",
                            timeout=30)
        assert engine("logs", "rot4").stdout == "".join(f"{n}\n" for n in range(1, 450001))
        tail = engine("logs", "rot2").stdout
        numbers = [int(x) for x in tail.split()]
        assert len(tail) >= 1024 * 1024 and numbers[-1] == 450000
        assert numbers == list(range(numbers[0], 450001))
        cid = inspect(engine, "rot2")["Id"]
        log = os.path.join(engine.root, "containers", cid, "ctr.log")
        assert os.path.exists(log + ".1") and not os.path.exists(log + ".2")
    finally:
        remove(engine, "rot4", "rot2")
    for bad, what in ((["--log-opt", "max-size=lots"], "max-size"),
                      (["--log-opt", "max-file=0"], "max-file"),
                      (["--log-opt", "mode=non-blocking"], "mode")):
        proc = engine("run", "-d", *bad, "busybox", "true")
        assert proc.returncode == 125 and what in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [["ps"], ["logs", "waiting"], ["stop", "waiting"]])
def test_a_command_brings_back_a_daemon_that_is_gone(engine, command):
    """SIGTERM is a clean exit (the keeper starts no other daemon); then the next
    command that needs the daemon starts it, and the output written meanwhile (kept
    by the keeper) is in the log."""
    engine("run", "-d", "--name", "waiting", "busybox", "sh", "-c",
           "echo before; sleep 1; echo after; sleep 100", check=True)
    try:
        old = engine.pid_of("daemon")
        os.kill(old, signal.SIGTERM)
        assert wait_for(lambda: old not in daemons(engine), timeout=5)
        time.sleep(1.5)
        assert daemons(engine) == [], "the keeper started a daemon after a clean exit"
        proc = engine(*command)
        assert proc.returncode == 0, proc.stderr
        assert len(daemons(engine)) == 1
        assert engine("logs", "waiting").stdout == "before\nafter\n"
    finally:
        remove(engine, "waiting")


def test_rm_cancels_a_pending_restart(engine):
    """rm (without -f) between an exit and its restart: the restart does not come, nor
    any error about it."""
    engine("run", "-d", "--name", "pending", "--restart", "always", "busybox", "sh", "-c",
           "exit 3", check=True)
    try:
        # after four restarts the next waits 1.6 s: time to catch it exited
        assert wait_for(lambda: inspect(engine, "pending")["RestartCount"] >= 4, timeout=10)
        assert wait_for(lambda: inspect(engine, "pending")["State"]["Status"] == "exited")
        proc = engine("rm", "pending")
        assert proc.returncode == 0, proc.stderr
        time.sleep(2.0)
        assert "pending" not in engine("ps", "-a").stdout
        with open(os.path.join(engine.run_root, "daemon.log")) as f:
            assert "failed" not in f.read()
    finally:
        remove(engine, "pending")
