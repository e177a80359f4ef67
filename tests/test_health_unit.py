"""The health check pieces that need no container: Go durations both ways, the flags'
and the image's configs merged as dockerd merges them, HEALTHCHECK instructions, and
docker's state machine result by result."""

from __future__ import annotations

import pytest

from minirun import healthcheck as hc
from minirun.errors import InvalidArgument
from minirun.monitor import health


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("1s", 10**9), ("1.5s", 15 * 10**8), (".5s", 5 * 10**8), ("300ms", 3 * 10**8),
    ("1m30s", 90 * 10**9), ("2h45m", (2 * 3600 + 45 * 60) * 10**9), ("10us", 10_000),
    ("10\u00b5s", 10_000), ("7ns", 7), ("-1s", -(10**9)), ("+2m", 120 * 10**9)])
def test_go_durations_parse(text, ns):
    assert hc.parse_go_duration(text) == ns


@pytest.mark.parametrize("text, message", [
    ("", 'time: invalid duration ""'), ("soon", 'time: invalid duration "soon"'),
    ("5", 'time: missing unit in duration "5"'),
    ("5d", 'time: unknown unit "d" in duration "5d"'), (".s", 'time: invalid duration ".s"')])
def test_bad_go_durations_say_what_go_says(text, message):
    with pytest.raises(ValueError, match=message):
        hc.parse_go_duration(text)


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (300 * 10**6, "300ms"), (15 * 10**8, "1.5s"), (90 * 10**9, "1m30s"),
    (3600 * 10**9, "1h0m0s"), (1500, "1.5\u00b5s"), (7, "7ns"), (-(10**9), "-1s")])
def test_go_duration_strings(ns, text):
    assert hc.go_duration(ns) == text


def test_flags_make_dockers_config():
    assert hc.from_flags(None, None, None, None, None, None, False) is None
    assert hc.from_flags("curl -f x", "5s", None, "2", None, None, False) == {
        "Test": ["CMD-SHELL", "curl -f x"], "Interval": 5 * 10**9, "Retries": 2}
    # settings without a command: the image's command with them
    assert hc.from_flags(None, None, "1s", None, None, None, False) == {"Timeout": 10**9}
    assert hc.from_flags(None, None, None, None, None, None, True) == {"Test": ["NONE"]}
    with pytest.raises(InvalidArgument, match='"--health-retries" flag: strconv.ParseInt'):
        hc.from_flags(None, None, None, "x", None, None, False)
    with pytest.raises(InvalidArgument, match="--health-start-period cannot be negative"):
        hc.from_flags(None, None, None, None, "-1s", None, False)


def test_check_is_dockerds():
    hc.check({"Test": ["CMD", "true"], "Interval": 10**6})
    with pytest.raises(InvalidArgument, match="StartPeriod in Healthcheck cannot be less "
                                              "than 1ms"):
        hc.check({"Test": ["CMD", "true"], "StartPeriod": 999_999})
    with pytest.raises(InvalidArgument, match="Retries in Healthcheck cannot be negative"):
        hc.check({"Retries": -1})
    with pytest.raises(InvalidArgument, match="unknown type 'SHELL'"):
        hc.check({"Test": ["SHELL", "true"]})


def test_merge_takes_what_the_user_left_unset_from_the_image():
    image = {"Test": ["CMD", "check"], "Interval": 5, "Timeout": 6, "Retries": 7}
    assert hc.merge(None, image) == image
    assert hc.merge({"Test": ["NONE"]}, image) == dict(image, Test=["NONE"])
    assert hc.merge({"Test": ["CMD-SHELL", "x"], "Retries": 1}, image) == {
        "Test": ["CMD-SHELL", "x"], "Interval": 5, "Timeout": 6, "Retries": 1}
    assert hc.merge({"Interval": 9}, None) == {"Interval": 9}
    assert hc.probe_command({"Test": ["NONE"]}) is None
    assert hc.probe_command({"Interval": 9}) is None
    assert hc.probe_command({"Test": ["CMD-SHELL", "a && b"]}) == ["/bin/sh", "-c", "a && b"]


def test_healthcheck_instructions():
    assert hc.parse_instruction("NONE") == {"Test": ["NONE"]}
    assert hc.parse_instruction("--interval=5s --timeout=3s --start-period=1m --retries=4 "
                                "CMD curl -f http://localhost/ || exit 1") == {
        "Interval": 5 * 10**9, "Timeout": 3 * 10**9, "StartPeriod": 60 * 10**9,
        "Retries": 4, "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]}
    assert hc.parse_instruction('CMD ["pg_isready", "-q"]') == {
        "Test": ["CMD", "pg_isready", "-q"]}
    for bad in ("", "CMD", "--bogus=1 CMD x", "--retries=0 CMD x", "RUN x"):
        with pytest.raises(InvalidArgument):
            hc.parse_instruction(bad)


def result(start: int, code: int) -> health.Result:
    return health.Result(start, start + 1, code, f"run {start}")


def test_the_state_machine_is_dockers():
    state = {"status": "starting", "failing_streak": 0, "log": []}
    # failures that begin within the start period (100 after a start at 0) do not count
    for t in (10, 50, 99):
        state = health.apply_result(state, result(t, 1), retries=2, start_period_ns=100,
                                    started_ns=0)
        assert (state["status"], state["failing_streak"]) == ("starting", 0)
    state = health.apply_result(state, result(100, 1), 2, 100, 0)
    assert (state["status"], state["failing_streak"]) == ("starting", 1)
    state = health.apply_result(state, result(110, -1), 2, 100, 0)
    assert (state["status"], state["failing_streak"]) == ("unhealthy", 2)
    state = health.apply_result(state, result(120, 0), 2, 100, 0)
    assert (state["status"], state["failing_streak"]) == ("healthy", 0)
    # once healthy the start period hides nothing, and one failure is not enough
    healthy = {"status": "healthy", "failing_streak": 0, "log": []}
    state = health.apply_result(healthy, result(1, 1), 2, 100, 0)
    assert (state["status"], state["failing_streak"]) == ("healthy", 1)
    # the last 5 results are kept, oldest first
    assert [r["start_ns"] for r in
            health.apply_result(dict(state, log=[result(i, 0).as_log() for i in range(5)]),
                                result(9, 0), 2, 0, 0)["log"]] == [1, 2, 3, 4, 9]


def test_output_is_capped_as_dockers():
    assert health.cap_output(b"ok\n", False) == "ok\n"
    assert health.cap_output(b"x" * 5000, False) == "x" * 4096 + "..."
    assert health.cap_output(b"x" * 4096, True) == "x" * 4096 + "..."
    assert health.ps_suffix("starting") == " (health: starting)"
    assert health.ps_suffix("unhealthy") == " (unhealthy)"
    assert health.ps_suffix("none") == ""


def test_a_database_from_before_health_checks_gets_the_table(tmp_path):
    import sqlite3

    from minirun.engine import Engine

    root = tmp_path / "lib"
    root.mkdir()
    old = sqlite3.connect(root / "engine.db")
    old.execute("CREATE TABLE containers (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
                " image TEXT NOT NULL, image_id TEXT NOT NULL, command TEXT NOT NULL,"
                " created REAL NOT NULL, status TEXT NOT NULL, exit_code INTEGER,"
                " started REAL, finished REAL, pid INTEGER, options TEXT NOT NULL)")
    old.execute("INSERT INTO containers VALUES ('c1', 'old', 'busybox', 'sha256:x', '[]', 1,"
                " 'exited', 0, 1, 2, 0, '{}')")
    old.commit()
    old.close()
    engine = Engine(str(root), str(tmp_path / "run"))
    rec = {"id": "c1"}
    assert health.status_of(engine, rec) == "none"
    health.reset(engine.db, "c1")
    assert health.status_of(engine, rec) == "starting"
    assert health.inspect_health(engine, rec) == {"Status": "starting", "FailingStreak": 0,
                                                  "Log": []}
