"""Health checks (docker's --health-* flags and the image's HEALTHCHECK), run by the daemon
through exec into real containers: the status docker's rules give, what ps and inspect
show, the health_status events, timeouts, the start period, and nothing left running
once a container stops. Checks read the container's own files (its hostname, a file
the test drops into a bind mount), so a result can only come from inside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from enginetest import engine  # noqa: F401
from ocitest import needs_root, wait_for

from minirun.engine import Engine

pytestmark = [needs_root, pytest.mark.root]

FAST = ["--health-interval", "200ms"]
WAIT = 60  # a loaded host: generous deadlines, nothing timed asserted


@pytest.fixture(autouse=True)
def clean(engine):
    """Each test's containers go with it: their checks would load the host, and the
    filters see only the test's own."""
    yield
    for cid in engine("ps", "-a", "-q").stdout.split():
        engine("rm", "-f", cid)


def inspect(engine, name):
    return json.loads(engine("inspect", name, check=True).stdout)[0]


def health(engine, name):
    proc = engine("inspect", name)
    if proc.returncode != 0:  # not made yet (a foreground run is on its way)
        return {}
    return json.loads(proc.stdout)[0]["State"].get("Health") or {}


def wait_status(engine, name, status):
    assert wait_for(lambda: health(engine, name).get("Status") == status, timeout=WAIT), \
        (health(engine, name), engine.daemon_logs())


def events(engine, cid):
    eng = Engine(engine.root, engine.run_root)
    return [(e["type"], e["attrs"].get("status")) for e in eng.events_after(0, 100000)
            if e["container"] == cid and e["type"] == "health_status"]


def probes_of(cid):
    """Host processes running a check of the container (monitor/probe.py), by pgrep."""
    proc = subprocess.run(["pgrep", "-f", rf"minirun\.monitor\.probe .*{cid}"],
                          capture_output=True, text=True, check=False)
    return [int(p) for p in proc.stdout.split()]


def in_pidns(init_pid, argv0):
    """The processes of the container's pid namespace whose cmdline starts with argv0."""
    want = os.readlink(f"/proc/{init_pid}/ns/pid")
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != want:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(argv0):
                    out.append(int(pid))
        except OSError:
            continue
    return out


def test_a_passing_check_is_healthy_in_ps_inspect_and_events(engine):
    cid = engine("run", "-d", "--name", "hok", "--health-cmd", "cat /etc/hostname", *FAST,
                 "busybox", "sleep", "1000", check=True).stdout.strip()
    wait_status(engine, "hok", "healthy")
    doc = inspect(engine, "hok")
    h = doc["State"]["Health"]
    assert h["FailingStreak"] == 0
    # the check ran inside the container: its hostname, not the host's
    assert h["Log"][0]["ExitCode"] == 0 and h["Log"][0]["Output"] == cid[:12] + "\n"
    assert h["Log"][0]["Start"] <= h["Log"][0]["End"]
    assert doc["Config"]["Healthcheck"] == {"Test": ["CMD-SHELL", "cat /etc/hostname"],
                                            "Interval": 200_000_000}
    ps = engine("ps", "--filter", "name=hok", "--format", "{{.Status}}", check=True).stdout
    assert ps.startswith("Up ") and ps.strip().endswith("(healthy)"), ps
    assert engine("ps", "-q", "--filter", "health=healthy").stdout.split() == [cid[:12]]
    assert cid[:12] not in engine("ps", "-q", "--filter", "health=none").stdout
    assert events(engine, cid) == [("health_status", "healthy")]
    bad = engine("ps", "--filter", "health=fine")
    assert bad.returncode != 0 and "Unrecognised filter value for health: fine" in bad.stderr


def test_a_failing_check_is_unhealthy_after_its_retries(engine):
    cid = engine("run", "-d", "--name", "hbad", "--health-cmd", "echo nope; false", *FAST,
                 "--health-retries", "2", "busybox", "sleep", "1000",
                 check=True).stdout.strip()
    ps = engine("ps", "--filter", "name=hbad", "--format", "{{.Status}}").stdout
    assert "(health: starting)" in ps or "(unhealthy)" in ps, ps
    wait_status(engine, "hbad", "unhealthy")
    assert health(engine, "hbad")["FailingStreak"] >= 2
    # the streak goes on; only the last 5 results are kept
    assert wait_for(lambda: health(engine, "hbad")["FailingStreak"] >= 7, timeout=WAIT)
    h = health(engine, "hbad")
    assert len(h["Log"]) == 5
    assert all(r["ExitCode"] == 1 and r["Output"] == "nope\n" for r in h["Log"])
    assert engine("ps", "-q", "--filter", "health=unhealthy").stdout.split() == [cid[:12]]
    assert "(unhealthy)" in engine("ps", "--filter", "name=hbad").stdout
    assert events(engine, cid) == [("health_status", "unhealthy")]


def test_failures_in_the_start_period_do_not_count(engine, tmp_path):
    ready = tmp_path / "w"
    ready.mkdir()
    engine("run", "-d", "--name", "hstart", "-v", f"{ready}:/w",
           "--health-cmd", "test -f /w/ready", *FAST, "--health-start-interval", "200ms",
           "--health-retries", "1", "--health-start-period", "10m", "busybox", "sleep",
           "1000", check=True)
    assert wait_for(lambda: len(health(engine, "hstart").get("Log") or []) >= 3,
                    timeout=WAIT)
    h = health(engine, "hstart")
    # failures, each recorded, none counted: still starting
    assert h["Status"] == "starting" and h["FailingStreak"] == 0
    assert {r["ExitCode"] for r in h["Log"]} == {1}
    (ready / "ready").write_text("")
    wait_status(engine, "hstart", "healthy")
    # once healthy the start period no longer hides anything: one failure (retries 1)
    (ready / "ready").unlink()
    wait_status(engine, "hstart", "unhealthy")
    assert health(engine, "hstart")["FailingStreak"] >= 1


def test_a_check_past_its_timeout_is_killed_and_fails(engine):
    cid = engine("run", "-d", "--name", "hslow", "--health-cmd", "echo begun; sleep 30",
                 *FAST, "--health-timeout", "300ms", "--health-retries", "1", "busybox",
                 "sleep", "1000", check=True).stdout.strip()
    wait_status(engine, "hslow", "unhealthy")
    assert wait_for(lambda: len(health(engine, "hslow")["Log"]) >= 3, timeout=WAIT)
    log = health(engine, "hslow")["Log"]
    assert all(r["ExitCode"] == -1 for r in log)
    assert all(r["Output"] == "Health check exceeded timeout (300ms): begun\n"
               for r in log), log
    # each timed-out check was killed: at most the current one sleeps in the container
    pid = inspect(engine, "hslow")["State"]["Pid"]
    assert len(in_pidns(pid, b"sleep\x0030")) <= 1
    assert events(engine, cid) == [("health_status", "unhealthy")]


def test_image_healthcheck_used_overridden_and_disabled(engine):
    engine("create", "--name", "hbase", "busybox", "true", check=True)
    engine("commit", "--change",
           'HEALTHCHECK --interval=200ms --retries=1 CMD ["cat", "/etc/hostname"]',
           "hbase", "hcimage:1", check=True)
    image = json.loads(engine("image", "inspect", "hcimage:1", check=True).stdout)[0]
    assert image["Config"]["Healthcheck"] == {"Test": ["CMD", "cat", "/etc/hostname"],
                                              "Interval": 200_000_000, "Retries": 1}
    img = engine("run", "-d", "--name", "himg", "hcimage:1", "sleep", "1000",
                 check=True).stdout.strip()
    off = engine("run", "-d", "--name", "hoff", "--no-healthcheck", "hcimage:1", "sleep",
                 "1000", check=True).stdout.strip()
    flags = engine("run", "-d", "--name", "hflags", "--health-cmd", "false", "hcimage:1",
                   "sleep", "1000", check=True).stdout.strip()
    wait_status(engine, "himg", "healthy")
    assert health(engine, "himg")["Log"][0]["Output"] == img[:12] + "\n"
    # the flags' command with the image's interval and retries
    wait_status(engine, "hflags", "unhealthy")
    assert inspect(engine, "hflags")["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "false"], "Interval": 200_000_000, "Retries": 1}
    # --no-healthcheck: NONE (the image's other settings merged in, as dockerd's merge
    # does), and no check ever ran while the others did
    assert inspect(engine, "hoff")["Config"]["Healthcheck"]["Test"] == ["NONE"]
    assert "Health" not in inspect(engine, "hoff")["State"]
    assert engine("ps", "-q", "--filter", "health=none").stdout.split() == [off[:12]]
    assert flags[:12] in engine("ps", "-q", "--filter", "health=unhealthy").stdout


@pytest.mark.parametrize("flags, message", [
    (["--health-interval", "-1s"], "--health-interval cannot be negative"),
    (["--health-retries", "-1"], "--health-retries cannot be negative"),
    (["--health-cmd", "true", "--health-timeout", "500us"],
     "Timeout in Healthcheck cannot be less than 1ms"),
    (["--no-healthcheck", "--health-cmd", "true"],
     "--no-healthcheck conflicts with --health-* options"),
    (["--health-interval", "soon"],
     'invalid argument "soon" for "--health-interval" flag: time: invalid duration "soon"'),
])
def test_bad_values_are_refused_with_125(engine, flags, message):
    for verb in ("run", "create"):
        proc = engine(verb, "--name", "hrefused", *flags, "busybox", "true")
        assert proc.returncode == 125 and message in proc.stderr, (verb, proc.stderr)
    assert "hrefused" not in engine("ps", "-a").stdout


def test_a_stopped_container_has_no_checks_left(engine):
    cid = engine("run", "-d", "--name", "hstop", "--health-cmd", "sleep 0.3",
                 "--health-interval", "50ms", "busybox", "sleep", "1000",
                 check=True).stdout.strip()
    wait_status(engine, "hstop", "healthy")
    engine("stop", "-t", "1", "hstop", check=True)
    # docker's: a stopped monitor leaves the status unhealthy
    assert health(engine, "hstop")["Status"] == "unhealthy"
    assert wait_for(lambda: not probes_of(cid), timeout=WAIT), probes_of(cid)
    runs = len(health(engine, "hstop")["Log"])
    time.sleep(1)
    assert len(health(engine, "hstop")["Log"]) == runs
    assert "(health" not in engine("ps", "-a", "--filter", "name=hstop").stdout
    # a new start begins again at starting
    engine("start", "hstop", check=True)
    assert health(engine, "hstop")["Status"] in ("starting", "healthy")
    wait_status(engine, "hstop", "healthy")
    assert [s for _, s in events(engine, cid)] == ["healthy", "healthy"]


def test_checks_go_on_after_the_daemon_is_killed(engine):
    cid = engine("run", "-d", "--name", "hrestart", "--health-cmd", "true", *FAST,
                 "busybox", "sleep", "1000", check=True).stdout.strip()
    wait_status(engine, "hrestart", "healthy")
    os.kill(engine.pid_of("daemon"), signal.SIGKILL)
    last = health(engine, "hrestart")["Log"][-1]["End"]
    # the keeper starts another daemon, which adopts the container and checks it again
    assert wait_for(lambda: health(engine, "hrestart")["Log"][-1]["End"] > last,
                    timeout=WAIT), engine.daemon_logs()
    assert health(engine, "hrestart")["Status"] == "healthy"
    assert events(engine, cid) == [("health_status", "healthy")]


def test_a_foreground_run_is_checked_too(engine, tmp_path):
    """`minirun run` without -d: the daemon starts and holds the container (the client
    only relays), so it is checked as every docker container is."""
    gate = tmp_path / "g"
    gate.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "minirun.client", "run", "--name", "hfg", "-v", f"{gate}:/g",
         "--health-cmd", "true", *FAST, "busybox", "sh", "-c",
         "while [ ! -f /g/done ]; do sleep 0.1; done; echo bye"],
        env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_status(engine, "hfg", "healthy")
        (gate / "done").write_text("")
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0 and out == "bye\n", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert health(engine, "hfg")["Status"] == "unhealthy"  # docker's, once stopped


def test_output_is_capped_at_4096_bytes(engine):
    engine("run", "-d", "--name", "hloud", "--health-cmd",
           "head -c 6000 /dev/zero | tr '\\0' x; echo err >&2", *FAST, "busybox", "sleep",
           "1000", check=True)
    wait_status(engine, "hloud", "healthy")
    assert health(engine, "hloud")["Log"][0]["Output"] == "x" * 4096 + "..."


def test_a_paused_container_is_not_checked(engine):
    engine("run", "-d", "--name", "hpause", "--health-cmd", "true", *FAST, "busybox",
           "sleep", "1000", check=True)
    wait_status(engine, "hpause", "healthy")
    engine("pause", "hpause", check=True)
    time.sleep(0.5)  # a check begun before the pause may still end
    ends = [r["End"] for r in health(engine, "hpause")["Log"]]
    time.sleep(1.5)
    assert [r["End"] for r in health(engine, "hpause")["Log"]] == ends
    engine("unpause", "hpause", check=True)
    assert wait_for(lambda: health(engine, "hpause")["Log"][-1]["End"] > ends[-1],
                    timeout=WAIT)
    assert health(engine, "hpause")["Status"] == "healthy"


def test_a_daemon_that_exits_takes_its_running_checks_along(engine):
    cid = engine("run", "-d", "--name", "hterm", "--health-cmd", "sleep 30",
                 "--health-interval", "100ms", "--health-timeout", "1m", "busybox", "sleep",
                 "1000", check=True).stdout.strip()
    pid = inspect(engine, "hterm")["State"]["Pid"]
    assert wait_for(lambda: probes_of(cid) and in_pidns(pid, b"sleep\x0030"), timeout=WAIT)
    os.kill(engine.pid_of("daemon"), signal.SIGTERM)
    # well before the check's own 30 s: the probe and its check are gone
    assert wait_for(lambda: not probes_of(cid) and not in_pidns(pid, b"sleep\x0030"),
                    timeout=15), (probes_of(cid), in_pidns(pid, b"sleep\x0030"))
    # the container runs on; the next daemon checks it again
    assert inspect(engine, "hterm")["State"]["Running"]
    assert wait_for(lambda: probes_of(cid), timeout=WAIT)
