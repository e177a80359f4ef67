"""minirun.monitor.events without containers: docker's time forms, filters, the message a
row becomes and the line docker prints for it; the recording helpers on a temp engine."""

from __future__ import annotations

import calendar
import json
import os
import time

import pytest

from minirun.engine import Engine
from minirun.gotemplate import parse
from minirun.monitor import events as ev

NOW = 1_796_560_000_123_456_789  # 2026-12-06T11:46:40.123456789Z
SEC = 1_000_000_000


def utc(*fields) -> int:
    return calendar.timegm(fields) * SEC


# --- --since / --until -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("10m", (NOW - 600 * SEC) // SEC * SEC),
    ("1h30m", (NOW - 5400 * SEC) // SEC * SEC),
    ("1.5s", (NOW - 1_500_000_000) // SEC * SEC),
    ("300ms", (NOW - 300_000_000) // SEC * SEC),
    ("-1m", (NOW + 60 * SEC) // SEC * SEC),  # a negative duration is in the future
    ("0", 0),  # "0" is unix time 0, not a duration
    ("1796560000", 1796560000 * SEC),
    ("1796560000.5", 1796560000 * SEC + 500_000_000),
    ("1796560000.000000001", 1796560000 * SEC + 1),
    ("2026-12-06T12:00:00Z", utc(2026, 12, 6, 12, 0, 0)),
    ("2026-12-06T12:00:00.25Z", utc(2026, 12, 6, 12, 0, 0) + 250_000_000),
    ("2026-12-06T12:00:00.123456789Z", utc(2026, 12, 6, 12, 0, 0) + 123_456_789),
    ("2026-12-06T13:00:00+01:00", utc(2026, 12, 6, 12, 0, 0)),
    ("2026-12-06T10:30:00-01:30", utc(2026, 12, 6, 12, 0, 0)),
    ("2026-12-06T12:00Z", utc(2026, 12, 6, 12, 0, 0)),
    ("2026-12-06T12Z", utc(2026, 12, 6, 12, 0, 0)),
    ("2026-12-06Z", utc(2026, 12, 6, 0, 0, 0)),
])
def test_times_in_dockers_forms(text, expected):
    assert ev.parse_time(text, NOW) == expected


def test_a_time_without_zone_is_local(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")  # UTC+1 in December
    time.tzset()
    try:
        assert ev.parse_time("2026-12-06T13:00:00", NOW) == utc(2026, 12, 6, 12, 0, 0)
        assert ev.parse_time("2026-12-06", NOW) == utc(2026, 12, 5, 23, 0, 0)
        assert ev.parse_time("2026-12-06T13:00:00.5", NOW) == \
            utc(2026, 12, 6, 12, 0, 0) + SEC // 2
        # docker prints local time with its offset
        assert ev.rfc3339_nano(utc(2026, 12, 6, 12, 0, 0) + 5) == \
            "2026-12-06T13:00:00.000000005+01:00"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("text", ["yesterday", "10x", "1h30", "2026-13-01", "2026-12-06T25:00Z",
                                  "12:00", "1.2.3", "-5", ""])
def test_bad_times_are_one_line_errors(text):
    with pytest.raises(ev.BadEventsQuery) as e:
        ev.parse_time(text, NOW)
    assert e.value.exit_code == 125
    assert str(e.value).startswith("failed to parse value as time or duration: ")
    assert "\n" not in str(e.value)


def test_until_before_since_is_refused():
    with pytest.raises(ev.BadEventsQuery, match="cannot be after `until` time"):
        ev.check_window(NOW, NOW - 1)
    ev.check_window(NOW, NOW)


def test_go_durations():
    assert ev.parse_duration("1h2m3s") == 3723 * SEC
    assert ev.parse_duration("1.5h") == 5400 * SEC
    assert ev.parse_duration("2us") == ev.parse_duration("2µs") == 2000
    assert ev.parse_duration("10") is None
    assert ev.parse_duration("h") is None
    assert ev.parse_duration("1h 2m") is None


# --- messages -----------------------------------------------------------------------------------

CID = "c0ffee" + "0" * 58
NAMES = {CID: {"name": "foo", "image": "busybox", "labels": {"team": "a", "tier": "web"}}}


def row(type_, container=CID, attrs=None, time_ns=NOW, pod=None):
    return {"seq": 1, "time_ns": time_ns, "type": type_, "container": container, "pod": pod,
            "attrs": attrs or {}}


def message(type_, container=CID, attrs=None):
    return ev.to_message(row(type_, container, attrs), lambda cid: NAMES.get(cid, {}))


def test_a_die_as_dockers_message():
    msg = message("stopped", attrs={"exit_code": 137, "reason": "OOMKilled"})
    assert json.loads(json.dumps(msg)) == {
        "status": "die", "id": CID, "from": "busybox", "Type": "container", "Action": "die",
        "Actor": {"ID": CID, "Attributes": {"team": "a", "tier": "web", "image": "busybox",
                                            "name": "foo", "exitCode": "137"}},
        "scope": "local", "time": NOW // SEC, "timeNano": NOW}
    assert ev.text_line(msg) == (
        f"{ev.rfc3339_nano(NOW)} container die {CID} "
        "(exitCode=137, image=busybox, name=foo, team=a, tier=web)")


def test_historical_types_map_to_dockers_actions():
    assert [message(t)["Action"] for t in ("created", "started", "stopped", "deleted")] == \
        ["create", "start", "die", "destroy"]
    # a removed container: the name and image its own row kept win
    msg = message("deleted", container="f" * 64, attrs={"name": "gone", "image": "alpine"})
    assert msg["Actor"]["Attributes"] == {"image": "alpine", "name": "gone"}
    assert msg["from"] == "alpine"


def test_actions_with_their_suffix():
    assert message("health_status", attrs={"status": "healthy"})["Action"] == \
        "health_status: healthy"
    created = message("exec_create", attrs={"execID": "e1", "command": "ls /"})
    assert created["Action"] == "exec_create: ls /"
    assert created["Actor"]["Attributes"]["execID"] == "e1"
    assert "command" not in created["Actor"]["Attributes"]
    assert message("kill", attrs={"signal": "15"})["Actor"]["Attributes"]["signal"] == "15"


def test_objects_other_than_containers():
    net = message("connect", container="n" * 64,
                  attrs={"object": "network", "name": "front", "type": "bridge",
                         "container": CID})
    assert (net["Type"], net["Action"], net["Actor"]["ID"]) == ("network", "connect", "n" * 64)
    assert net["Actor"]["Attributes"] == {"name": "front", "type": "bridge", "container": CID}
    assert "status" not in net and "from" not in net
    img = message("pull", container="busybox:latest",
                  attrs={"object": "image", "name": "busybox:latest"})
    assert (img["Type"], img["status"], img["id"]) == ("image", "pull", "busybox:latest")
    vol = message("create", container="data", attrs={"object": "volume", "driver": "local"})
    assert (vol["Type"], vol["Actor"]["ID"]) == ("volume", "data")


def test_pod_sandbox_rows_are_not_dockers_events():
    assert ev.to_message(row("started", "p" * 64, {"sandbox": True}, pod="p" * 64),
                         lambda cid: {}) is None


def test_templates_see_go_field_names():
    msg = message("stopped", attrs={"exit_code": 3})
    out = parse("{{.Status}} {{.ID}} {{.From}} {{.Type}} {{.Action}} {{.Actor.ID}} "
                "{{.Actor.Attributes.exitCode}} {{.Scope}} {{.Time}} {{.TimeNano}} "
                "{{.Actor.Attributes.nolabel}}", strict=True).render(msg)
    assert out == f"die {CID} busybox container die {CID} 3 local {NOW // SEC} {NOW} <no value>"
    assert json.loads(parse("{{json .}}", strict=True).render(msg))["status"] == "die"


# --- filters ------------------------------------------------------------------------------------

def passes(msg, *filters):
    return ev.matches(msg, ev.parse_filters(filters))


def test_filters_as_docker():
    die = message("stopped", attrs={"exit_code": 0})
    start = message("started")
    net = message("connect", container="n" * 64,
                  attrs={"object": "network", "name": "front", "container": CID})
    pull = message("pull", container="busybox:1.36",
                   attrs={"object": "image", "name": "busybox:1.36"})
    assert passes(die, "container=foo") and passes(die, f"container={CID}")
    assert passes(die, "container=c0ffee")  # an id prefix
    assert not passes(die, "container=bar")
    assert passes(die, "container=bar", "container=foo")  # one key: ORed
    assert not passes(die, "container=foo", "event=start")  # two keys: ANDed
    assert passes(die, "event=start", "event=die") and passes(start, "event=start")
    assert passes(die, "type=container") and not passes(net, "type=container")
    assert not passes(net, "container=foo")  # docker's: the actor must be the container
    assert passes(net, "network=front") and not passes(die, "network=front")
    assert passes(die, "image=busybox") and passes(pull, "image=busybox")
    assert passes(pull, "image=busybox:1.36") and not passes(pull, "image=alpine")
    assert passes(die, "label=team") and passes(die, "label=team=a")
    assert not passes(die, "label=team=b") and not passes(die, "label=team", "label=x")
    assert passes(die, "scope=local") and not passes(die, "scope=swarm")
    health = message("health_status", attrs={"status": "unhealthy"})
    assert passes(health, "event=health_status")
    assert passes(health, "event=health_status: unhealthy")
    assert not passes(health, "event=health")


@pytest.mark.parametrize("value, error", [
    ("container", ('invalid argument "container" for "-f, --filter" flag: bad format of '
                   "filter (expected name=value)")),
    ("colour=red", "invalid filter 'colour'"),
])
def test_bad_filters(value, error):
    with pytest.raises(ev.BadEventsQuery) as e:
        ev.parse_filters([value])
    assert str(e.value) == error
    assert e.value.exit_code == 125


# --- recording and reading on a temp engine -------------------------------------------------------

def test_object_events_round_trip(tmp_path):
    eng = Engine(str(tmp_path / "lib"), str(tmp_path / "run"))
    seq = eng.record_object_event("network", "connect", "n1", name="front",
                                  container=CID, type="bridge")
    eng.record_object_event("container", "kill", CID, signal="9")
    rows = eng.events_after(seq - 1)
    assert [(r["type"], r["container"], r["pod"]) for r in rows] == \
        [("connect", "n1", None), ("kill", CID, None)]
    assert rows[0]["attrs"] == {"name": "front", "container": CID, "type": "bridge",
                                "object": "network"}
    assert rows[1]["attrs"] == {"signal": "9"}  # a container's: no object attribute
    got = list(ev.follow(eng.db, since_ns=0, until_ns=time.time_ns(),
                         filters=ev.parse_filters(["type=network"])))
    assert [(m["Type"], m["Action"], m["Actor"]["ID"]) for m in got] == \
        [("network", "connect", "n1")]


def test_follow_stops_at_until_and_keeps_the_window(tmp_path):
    eng = Engine(str(tmp_path / "lib"), str(tmp_path / "run"))
    for i in range(3):
        eng.record_object_event("volume", "create", f"v{i}", driver="local")
    rows = eng.events_after(0)
    since, until = rows[1]["time_ns"], rows[1]["time_ns"]  # both bounds included
    got = list(ev.follow(eng.db, since_ns=since, until_ns=until))
    assert [m["Actor"]["ID"] for m in got] == ["v1"]
    # --until alone: everything recorded until then
    got = list(ev.follow(eng.db, until_ns=rows[2]["time_ns"]))
    assert [m["Actor"]["ID"] for m in got] == ["v0", "v1", "v2"]


def test_follow_without_since_starts_now(tmp_path):
    eng = Engine(str(tmp_path / "lib"), str(tmp_path / "run"))
    eng.record_object_event("volume", "create", "old", driver="local")
    polls = []

    def stopped() -> bool:
        polls.append(1)
        if len(polls) == 2:  # after the first poll, something happens
            eng.record_object_event("volume", "create", "new", driver="local")
        return len(polls) > 3

    got = list(ev.follow(eng.db, poll=0.01, stopped=stopped))
    assert [m["Actor"]["ID"] for m in got] == ["new"]


def test_names_of_a_removed_container_come_from_its_last_row(tmp_path):
    eng = Engine(str(tmp_path / "lib"), str(tmp_path / "run"))
    eng.record_event("started", CID)
    eng.record_event("deleted", CID, name="foo", image="busybox", labels={"k": "v"})
    got = list(ev.follow(eng.db, since_ns=0, until_ns=time.time_ns()))
    assert [(m["Action"], m["Actor"]["Attributes"]) for m in got] == [
        ("start", {"k": "v", "image": "busybox", "name": "foo"}),
        ("destroy", {"k": "v", "image": "busybox", "name": "foo"})]
    assert os.path.exists(tmp_path / "lib" / "engine.db")
