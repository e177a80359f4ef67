"""`minirun events` on real containers, networks, volumes and images (a private engine
root, enginetest's; a real local registry for pull): what docker prints for each, its
filters and time window, and the stream a user follows and ends with ^C."""

from __future__ import annotations

import datetime
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from enginetest import engine  # noqa: F401 - the module's engine fixture
from ocitest import REPO, wait_for

ID = re.compile(r"[0-9a-f]{64}")


def now() -> str:
    return f"{time.time():.9f}"


def events(engine, since: str, *args: str, until: str | None = None) -> list[dict]:  # noqa: F811
    """The events from `since` until now (or `until`), as docker's JSON messages."""
    proc = engine("events", "--since", since, "--until", until or now(), "--format", "json",
                  *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def actions(msgs: list[dict]) -> list[str]:
    return [m["Action"] for m in msgs]


def ok(engine, *args) -> str:  # noqa: F811
    proc = engine(*args)
    assert proc.returncode == 0, f"minirun {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


# --- containers ---------------------------------------------------------------------------------

def test_run_rm_gives_create_start_die_destroy(engine):  # noqa: F811
    since = now()
    proc = engine("run", "--rm", "--name", "ev-rm", "-l", "team=a", "busybox", "sh", "-c",
                  "exit 3")
    assert proc.returncode == 3, proc.stderr
    got = events(engine, since, "--filter", "container=ev-rm")
    assert actions(got) == ["create", "start", "die", "destroy"]
    cid = got[0]["id"]
    assert ID.fullmatch(cid) and {m["Actor"]["ID"] for m in got} == {cid}
    assert got[2]["Actor"]["Attributes"] == {"exitCode": "3", "image": "busybox",
                                             "name": "ev-rm", "team": "a"}
    assert all(m["Type"] == "container" and m["from"] == "busybox" and m["scope"] == "local"
               and m["status"] == m["Action"] and m["time"] == m["timeNano"] // 10**9
               for m in got)
    assert [m["timeNano"] for m in got] == sorted(m["timeNano"] for m in got)
    # docker's default line
    proc = engine("events", "--since", since, "--until", now(), "-f", "container=ev-rm",
                  "-f", "event=die")
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d) container die " + cid +
        r" \(exitCode=3, image=busybox, name=ev-rm, team=a\)\n", proc.stdout), proc.stdout


def test_kill_with_term_gives_kill_then_die(engine):  # noqa: F811
    since = now()
    ok(engine, "run", "-d", "--name", "ev-kill", "busybox", "sh", "-c",
       "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done")
    try:
        assert wait_for(lambda: "ready" in engine("logs", "ev-kill").stdout, timeout=60)
        ok(engine, "kill", "-s", "TERM", "ev-kill")
        assert ok(engine, "wait", "ev-kill") == "7"
        got = events(engine, since, "-f", "container=ev-kill")
        assert actions(got) == ["create", "start", "kill", "die"]
        assert got[2]["Actor"]["Attributes"]["signal"] == "15"
        assert got[3]["Actor"]["Attributes"]["exitCode"] == "7"
    finally:
        engine("rm", "-f", "ev-kill")


def test_oom_then_die(engine):  # noqa: F811
    since = now()
    flags = ["-m", "16m"]
    with open("/proc/swaps") as f:
        if len(f.read().splitlines()) > 1:
            flags += ["--memory-swap", "16m"]
    proc = engine("run", "--rm", "--name", "ev-oom", *flags, "busybox", "sh", "-c",
                  "head -c 64m /dev/zero | tail")
    assert proc.returncode == 137, proc.stderr
    got = events(engine, since, "-f", "container=ev-oom")
    assert actions(got) == ["create", "start", "oom", "die", "destroy"]
    assert got[3]["Actor"]["Attributes"]["exitCode"] == "137"


def test_restart_policy_gives_restart_events(engine):  # noqa: F811
    since = now()
    ok(engine, "run", "-d", "--name", "ev-policy", "--restart", "on-failure:2", "busybox",
       "sh", "-c", "exit 1")
    try:
        assert wait_for(lambda: actions(events(engine, since, "-f",
                                               "container=ev-policy")).count("die") == 3,
                        timeout=60), "two restarts and three exits"
        time.sleep(0.5)  # no third restart comes
        got = events(engine, since, "-f", "container=ev-policy")
        assert actions(got) == ["create", "start", "die", "start", "restart", "die", "start",
                                "restart", "die"]
        assert all(m["Actor"]["Attributes"]["exitCode"] == "1" for m in got
                   if m["Action"] == "die")
    finally:
        engine("rm", "-f", "ev-policy")


def test_stop_and_restart_as_docker(engine):  # noqa: F811
    ok(engine, "run", "-d", "--name", "ev-stop", "busybox", "sleep", "300")
    try:
        since = now()
        # sleep as pid 1 ignores TERM: stop signals it, waits 1 s, then kills
        ok(engine, "restart", "-t", "1", "ev-stop")
        got = events(engine, since, "-f", "container=ev-stop")
        assert actions(got) == ["kill", "kill", "die", "stop", "start", "restart"]
        assert [m["Actor"]["Attributes"]["signal"] for m in got[:2]] == ["15", "9"]
        assert got[2]["Actor"]["Attributes"]["exitCode"] == "137"
    finally:
        engine("rm", "-f", "ev-stop")


def test_pause_exec_rename(engine):  # noqa: F811
    since = now()
    cid = ok(engine, "run", "-d", "--name", "ev-p", "busybox", "sleep", "300")
    try:
        ok(engine, "pause", "ev-p")
        ok(engine, "unpause", "ev-p")
        assert engine("exec", "ev-p", "sh", "-c", "exit 4").returncode == 4
        ok(engine, "rename", "ev-p", "ev-p2")
    finally:
        engine("rm", "-f", "ev-p2")
        engine("rm", "-f", "ev-p")
    got = events(engine, since, "-f", f"container={cid}")
    assert actions(got) == ["create", "start", "pause", "unpause", "exec_create: sh -c exit 4",
                            "exec_start: sh -c exit 4", "exec_die", "rename", "die",
                            "destroy"]
    exec_ids = {m["Actor"]["Attributes"]["execID"] for m in got[4:7]}
    assert len(exec_ids) == 1 and ID.fullmatch(exec_ids.pop())
    assert got[6]["Actor"]["Attributes"]["exitCode"] == "4"
    assert got[7]["Actor"]["Attributes"]["oldName"] == "/ev-p"
    assert got[7]["Actor"]["Attributes"]["name"] == "ev-p2"
    # event= with docker's fuzzy match for exec_start
    assert actions(events(engine, since, "-f", f"container={cid}", "-f",
                          "event=exec_start")) == ["exec_start: sh -c exit 4"]


# --- networks, volumes, images ---------------------------------------------------------------

def test_network_create_connect_disconnect_destroy(engine):  # noqa: F811
    since = now()
    nid = ok(engine, "network", "create", "ev-net")
    try:
        proc = engine("run", "--rm", "--network", "ev-net", "--name", "ev-n", "busybox", "true")
        assert proc.returncode == 0, proc.stderr
    finally:
        engine("network", "rm", "ev-net")
    got = events(engine, since, "-f", "network=ev-net")
    assert actions(got) == ["create", "connect", "disconnect", "destroy"]
    assert {m["Type"] for m in got} == {"network"}
    assert {m["Actor"]["ID"] for m in got} == {nid}
    # container=ev-n alone would match the network ev-net too (a prefix, as docker)
    cid = events(engine, since, "-f", "container=ev-n", "-f", "type=container")[0]["id"]
    for m in got:
        expected = {"name": "ev-net", "type": "bridge"}
        if m["Action"] in ("connect", "disconnect"):
            expected["container"] = cid
        assert m["Actor"]["Attributes"] == expected


def test_volume_create_destroy(engine):  # noqa: F811
    since = now()
    ok(engine, "volume", "create", "ev-vol")
    assert engine("run", "--rm", "-v", "ev-vol2:/data", "busybox", "true").returncode == 0
    ok(engine, "volume", "rm", "ev-vol", "ev-vol2")
    got = events(engine, since, "-f", "type=volume")
    assert [(m["Action"], m["Actor"]["ID"]) for m in got] == [
        ("create", "ev-vol"), ("create", "ev-vol2"), ("destroy", "ev-vol"),
        ("destroy", "ev-vol2")]
    assert got[0]["Actor"]["Attributes"] == {"driver": "local"}


@pytest.fixture(scope="module")
def registry_ref(tmp_path_factory):
    """A one-layer image on a registry on 127.0.0.1, as <host>/evimg:1."""
    from registry import serve_one_image

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    yield from serve_one_image(str(tmp_path_factory.mktemp("evreg")), "evimg:1",
                               lambda layout: layout.image([{"hello.txt": "hi\n"}], arch=arch))


def test_pull_tag_rmi(engine, registry_ref):  # noqa: F811
    since = now()
    image_id = ok(engine, "pull", "-q", registry_ref)
    ok(engine, "tag", registry_ref, "ev-tagged:1")
    ok(engine, "rmi", "ev-tagged:1")  # another name left: untagged only
    ok(engine, "rmi", registry_ref)
    got = events(engine, since, "-f", "type=image")
    assert [(m["Action"], m["Actor"]["ID"], m["Actor"]["Attributes"]["name"])
            for m in got] == [
        ("pull", registry_ref, registry_ref),
        ("tag", image_id, "ev-tagged:1"),
        ("untag", image_id, image_id),
        ("untag", image_id, image_id),
        ("delete", image_id, image_id)]
    assert all(m["status"] == m["Action"] and m["id"] == m["Actor"]["ID"] for m in got)
    # image= matches an image event's name, with or without its tag
    assert actions(events(engine, since, "-f", "image=ev-tagged")) == ["tag"]


def test_save_load_import(engine, tmp_path):  # noqa: F811
    since = now()
    archive = str(tmp_path / "bb.tar")
    ok(engine, "save", "-o", archive, "busybox:latest")
    image_id = json.loads(ok(engine, "image", "inspect", "busybox:latest"))[0]["Id"]
    assert ok(engine, "load", "-i", archive) == "Loaded image: busybox:latest"
    imported = ok(engine, "import", os.path.join(engine.top, "busybox.tar"), "ev-imported:1")
    try:
        got = events(engine, since, "-f", "type=image")
        assert [(m["Action"], m["Actor"]["ID"], m["Actor"]["Attributes"]["name"])
                for m in got] == [("save", image_id, image_id),
                                  ("load", image_id, "busybox:latest"),
                                  ("import", imported, imported)]
    finally:
        engine("rmi", "ev-imported:1")


# --- windows, filters, errors -----------------------------------------------------------------

def test_since_until_window(engine):  # noqa: F811
    since = now()
    ok(engine, "volume", "create", "ev-w1")
    time.sleep(0.05)
    middle = now()
    time.sleep(0.05)
    ok(engine, "volume", "create", "ev-w2")
    try:
        ids = lambda msgs: [m["Actor"]["ID"] for m in msgs]
        assert ids(events(engine, since, "-f", "type=volume", until=middle)) == ["ev-w1"]
        assert ids(events(engine, middle, "-f", "type=volume")) == ["ev-w2"]
        # a Go duration back from now (to the second) and RFC3339
        assert ids(events(engine, "1m", "-f", "volume=ev-w")) == ["ev-w1", "ev-w2"]
        stamp = datetime.datetime.now(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        assert ids(events(engine, since, "-f", "volume=ev-w", until=stamp)) == \
            ["ev-w1", "ev-w2"]
        # one key's values ORed, different keys ANDed
        assert ids(events(engine, since, "-f", "volume=ev-w1", "-f", "volume=ev-w2",
                          "-f", "event=create")) == ["ev-w1", "ev-w2"]
        assert ids(events(engine, since, "-f", "volume=ev-w1", "-f", "event=destroy")) == []
    finally:
        engine("volume", "rm", "ev-w1", "ev-w2")


def test_until_in_the_future_waits_for_the_events_before_it(engine):  # noqa: F811
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "minirun.cli", "events", "--since",
                             f"{start:.9f}", "--until", f"{start + 6:.9f}", "-f",
                             "volume=ev-future", "--format", "{{.Action}} {{.Actor.ID}}"],
                            env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        time.sleep(1)
        ok(engine, "volume", "create", "ev-future")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        engine("volume", "rm", "ev-future")
    assert (proc.returncode, out, err) == (0, "create ev-future\n", "")
    assert time.time() >= start + 6  # it waited for --until


@pytest.mark.parametrize("args, error", [
    (["-f", "colour=red"], "invalid filter 'colour'"),
    (["-f", "container"], ('invalid argument "container" for "-f, --filter" flag: bad '
                           "format of filter (expected name=value)")),
    (["--since", "yesterday"], "failed to parse value as time or duration: 'yesterday'"),
    (["--since", "10m", "--until", "20m"], "cannot be after `until` time"),
])
def test_bad_filters_and_times_exit_125(engine, args, error):  # noqa: F811
    proc = engine("events", *args, timeout=30)
    assert proc.returncode == 125
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and error in proc.stderr, proc.stderr


# --- following ----------------------------------------------------------------------------------

def follower(engine, *args) -> subprocess.Popen:  # noqa: F811
    """`minirun events ARGS` following, once it is reading the table."""
    proc = subprocess.Popen([sys.executable, "-m", "minirun.cli", "events", *args],
                            env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    db = os.path.join(engine.root, "engine.db")

    def reading() -> bool:
        assert proc.poll() is None, proc.communicate()
        fds = f"/proc/{proc.pid}/fd"
        return any(os.path.realpath(os.path.join(fds, fd)) == db for fd in os.listdir(fds))

    assert wait_for(reading, timeout=60), "the events command did not open the table"
    time.sleep(0.5)  # its first read (the last sequence number) is done
    return proc


def read_lines(proc: subprocess.Popen, until: str, timeout: float = 60) -> list[str]:
    """Its lines up to `until` (a thread reads them: the pipe is buffered)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n"))
                                     for line in iter(proc.stdout.readline, "")],
                     daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not got or got[-1] != until:
        try:
            got.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"no {until!r} line: {got}") from None
    return got


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_following_sees_new_events_and_ends_quietly(engine, sig):  # noqa: F811
    name = f"ev-follow-{sig.name.lower()}"
    proc = follower(engine, "-f", f"container={name}", "--format", "{{.Action}}")
    try:
        run = engine("run", "--rm", "--name", name, "busybox", "sh", "-c", "exit 5")
        assert run.returncode == 5, run.stderr
        assert read_lines(proc, "destroy") == ["create", "start", "die", "destroy"]
        assert proc.poll() is None  # still following
        proc.send_signal(sig)
        returncode = proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (returncode, err) == (0, "")  # as docker's: quietly, status 0
