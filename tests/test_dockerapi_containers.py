"""Debian's docker CLI (20.10, API 1.41) driving minirun's containers through
`minirun system service` (issue 15): what a user types and checks."""

from __future__ import annotations

import json
import os
import time

import pytest
from clients import run_in_pty
from dockerapitest import service_with_busybox


@pytest.fixture(scope="module")
def dockerapi(tmp_path_factory):
    yield from service_with_busybox(tmp_path_factory)


def _names(dockerapi) -> list[str]:
    return dockerapi.docker("ps", "-a", "--format", "{{.Names}}", check=True).stdout.split()


def test_run_rm_prints_the_output_and_leaves_nothing(dockerapi):
    out = dockerapi.docker("run", "--rm", "--name", "hi", "busybox", "echo", "hi")
    assert (out.returncode, out.stdout, out.stderr) == (0, "hi\n", "")
    assert "hi" not in _names(dockerapi)


def test_run_exit_codes_are_dockers(dockerapi):
    own = dockerapi.docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; "
                           "exit 3")
    assert (own.returncode, own.stdout, own.stderr) == (3, "out\n", "err\n")
    missing = dockerapi.docker("run", "--rm", "busybox", "nosuchcmd")
    assert missing.returncode == 127
    assert 'exec: "nosuchcmd": executable file not found in $PATH' in missing.stderr
    cannot = dockerapi.docker("run", "--rm", "busybox", "/etc")
    assert cannot.returncode == 126 and "permission denied" in cannot.stderr
    bad = dockerapi.docker("run", "--rm", "--restart", "always", "busybox", "true")
    assert bad.returncode == 125 and "Conflicting options" in bad.stderr
    refused = dockerapi.docker("run", "--rm", "--link", "x:y", "busybox", "true")
    assert refused.returncode == 125
    assert "HostConfig.Links: minirun does not support links (--link)" in refused.stderr
    deadline = time.monotonic() + 30  # --rm: the failed starts' containers go too
    while _names(dockerapi) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _names(dockerapi) == []


def test_run_detached_then_logs_follow_ps_inspect_wait(dockerapi):
    cid = dockerapi.docker("run", "-d", "--name", "counter", "-l", "role=test", "busybox",
                           "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done; "
                           "echo bye >&2; exit 7", check=True).stdout.strip()
    assert len(cid) == 64
    follow = dockerapi.docker("logs", "-f", "counter", check=True)
    assert follow.stdout == "line1\nline2\nline3\n" and follow.stderr == "bye\n"
    assert dockerapi.docker("wait", "counter", check=True).stdout.strip() == "7"
    tail = dockerapi.docker("logs", "--tail", "1", "-t", "counter", check=True)
    stamp, _, text = tail.stderr.strip().partition(" ")
    assert text == "bye" and stamp.startswith(time.strftime("%Y-", time.gmtime()))
    fmt = dockerapi.docker("ps", "-a", "--filter", "label=role=test", "--format",
                           "{{.ID}} {{.Names}} {{.Image}} {{.Status}}", check=True)
    short, name, image, status = fmt.stdout.split(" ", 3)
    assert (short, name, image) == (cid[:12], "counter", "busybox")
    assert status.startswith("Exited (7)")
    assert dockerapi.docker("ps", "--filter", "label=role=test", "-q").stdout == ""
    assert dockerapi.docker("ps", "-a", "--filter", "status=exited", "--filter",
                            "name=count", "-q").stdout.split() == [cid[:12]]
    got = dockerapi.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} "
                           "{{.Name}} {{index .Config.Labels \"role\"}} {{.Config.Cmd}}",
                           "counter", check=True)
    command = "[sh -c for i in 1 2 3; do echo line$i; sleep 0.3; done; echo bye >&2; exit 7]"
    assert got.stdout.split(" ", 4) == ["exited", "7", "/counter", "test", command + "\n"]
    dockerapi.docker("rm", "counter", check=True)
    gone = dockerapi.docker("container", "inspect", "counter")
    assert gone.returncode == 1 and "No such" in gone.stderr


def test_run_interactive_with_a_terminal(dockerapi):
    code, out = run_in_pty([dockerapi.cli, "run", "-it", "--rm", "busybox", "sh"],
                           b"echo $((6*7)); tty; exit 4\r", wait_for=b"/ # ",
                           env=dockerapi.client_env)
    assert code == 4, out
    assert "\r\n42\r\n/dev/pts/0\r\n" in out


def test_detach_keys_leave_the_container_running(dockerapi):
    code, out = run_in_pty([dockerapi.cli, "run", "-it", "--name", "detached", "busybox",
                            "sh"], b"\x10\x11", wait_for=b"/ # ", env=dockerapi.client_env)
    try:
        assert code == 0, out
        assert dockerapi.docker("inspect", "-f", "{{.State.Running}}", "detached").stdout \
            == "true\n"
    finally:
        dockerapi.docker("rm", "-f", "detached")


def test_run_interactive_stdin_without_a_terminal(dockerapi):
    out = dockerapi.docker("run", "-i", "--rm", "busybox", "sh", "-c", "tr a-z A-Z; exit 2",
                           input="piped text\n")
    assert (out.returncode, out.stdout) == (2, "PIPED TEXT\n")


def test_exec_cp_stats_top_pause_rename(dockerapi, tmp_path):
    dockerapi.docker("run", "-d", "--name", "box", "-m", "48m", "busybox", "sleep", "300",
                     check=True)
    try:
        out = dockerapi.docker("exec", "box", "sh", "-c", "echo in-exec; exit 5")
        assert (out.returncode, out.stdout) == (5, "in-exec\n"), (out.stderr, dockerapi.logs())
        out = dockerapi.docker("exec", "-i", "box", "cat", input="to stdin\n")
        assert (out.returncode, out.stdout) == (0, "to stdin\n")
        out = dockerapi.docker("exec", "box", "nosuch")
        assert out.returncode == 127 and "executable file not found" in out.stderr
        code, tty_out = run_in_pty([dockerapi.cli, "exec", "-it", "box", "sh"],
                                   b"echo $((5*5)); exit 6\r", wait_for=b"/ # ",
                                   env=dockerapi.client_env)
        assert code == 6 and "\r\n25\r\n" in tty_out

        src = tmp_path / "host.txt"
        src.write_text("from the host\n")
        dockerapi.docker("cp", str(src), "box:/tmp/", check=True)
        assert dockerapi.docker("exec", "box", "cat", "/tmp/host.txt").stdout == \
            "from the host\n"
        dockerapi.docker("exec", "box", "sh", "-c", "mkdir -p /d/sub && echo x > "
                         "/d/sub/f", check=True)
        dockerapi.docker("cp", "box:/d", str(tmp_path / "back"), check=True)
        assert (tmp_path / "back" / "sub" / "f").read_text() == "x\n"
        missing = dockerapi.docker("cp", "box:/nope", str(tmp_path / "x"))
        assert (missing.returncode, missing.stderr) == (1, "Error: No such container:path: box:/nope\n")

        stats = dockerapi.docker("stats", "--no-stream", "--format",
                                 "{{.Name}} {{.PIDs}} {{.MemUsage}}", "box", check=True)
        name, pids, mem = stats.stdout.split(" ", 2)
        assert (name, pids) == ("box", "1") and mem.split(" / ")[0].endswith("iB")
        # the same numbers as `minirun stats` of the same container (one stats document)
        ours = dockerapi.env_engine("stats", "--no-stream", "--format",
                                    "{{.Name}} {{.PIDs}} {{.MemUsage}}", "box", check=True)
        o_name, o_pids, o_mem = ours.stdout.split(" ", 2)
        assert (o_name, o_pids) == (name, pids)
        assert mem.split(" / ")[1] == o_mem.split(" / ")[1] == "48MiB\n"
        top = dockerapi.docker("top", "box", check=True).stdout.splitlines()
        assert top[0].split()[:2] == ["UID", "PID"] and top[1].endswith("sleep 300")

        dockerapi.docker("pause", "box", check=True)
        assert dockerapi.docker("ps", "--filter", "status=paused", "--format",
                                "{{.Names}} {{.Status}}").stdout.strip().endswith("(Paused)")
        dockerapi.docker("unpause", "box", check=True)
        dockerapi.docker("rename", "box", "box2", check=True)
        assert dockerapi.docker("inspect", "-f", "{{.Name}} {{.State.Running}}",
                                "box2").stdout == "/box2 true\n"
    finally:
        dockerapi.docker("rm", "-f", "box")
        dockerapi.docker("rm", "-f", "box2")


def test_stop_kill_restart_rm(dockerapi):
    # pid 1 ignores the signals it has no handler for: TERM ends it through the trap
    dockerapi.docker("run", "-d", "--name", "st", "busybox", "sh", "-c",
                     "trap 'exit 3' TERM; echo ready; while :; do sleep 0.2; done",
                     check=True)
    _wait_for_lines(dockerapi, "st", "ready", 1)
    started = time.monotonic()
    dockerapi.docker("stop", "-t", "20", "st", check=True)
    assert time.monotonic() - started < 15  # the trap ended it, not SIGKILL after 20 s
    assert dockerapi.docker("inspect", "-f", "{{.State.ExitCode}}", "st").stdout == "3\n"
    again = dockerapi.docker("kill", "st")
    assert again.returncode == 1 and "is not running" in again.stderr
    dockerapi.docker("start", "st", check=True)
    busy = dockerapi.docker("rm", "st")
    assert busy.returncode == 1 and "cannot remove a running container" in busy.stderr
    dockerapi.docker("restart", "-t", "1", "st", check=True)
    assert dockerapi.docker("inspect", "-f", "{{.State.Running}}", "st").stdout == "true\n"
    _wait_for_lines(dockerapi, "st", "ready", 3)  # its trap is set (run, start, restart)
    dockerapi.docker("kill", "-s", "TERM", "st", check=True)
    assert dockerapi.docker("wait", "st", check=True).stdout.strip() == "3"
    dockerapi.docker("start", "st", check=True)
    dockerapi.docker("kill", "st", check=True)
    assert dockerapi.docker("wait", "st", check=True).stdout.strip() == "137"
    dockerapi.docker("rm", "st", check=True)
    assert "st" not in _names(dockerapi)


def _wait_for_lines(dockerapi, name: str, line: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while dockerapi.docker("logs", name).stdout.splitlines().count(line) < count:
        assert time.monotonic() < deadline, dockerapi.docker("logs", name).stdout
        time.sleep(0.1)


def test_create_translates_the_host_config(dockerapi, tmp_path):
    (tmp_path / "bound").write_text("bound file\n")
    out = dockerapi.docker(
        "run", "--rm", "-e", "A=1", "-w", "/tmp", "-v",
        f"{tmp_path}:/mnt:ro", "--tmpfs", "/scratch", "--read-only", "--cap-drop", "ALL",
        "--hostname", "hosty", "--add-host", "db:10.9.9.9", "--memory", "64m",
        "--pids-limit", "50", "busybox", "sh", "-c",
        "echo $A $(pwd) $(id -u) $(hostname); cat /mnt/bound; touch /x 2>/dev/null || "
        "echo ro; touch /scratch/y && echo tmpfs; grep db /etc/hosts; "
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
        check=True)
    lines = out.stdout.splitlines()
    assert lines[:4] == ["1 /tmp 0 hosty", "bound file", "ro", "tmpfs"]
    assert lines[4].split() == ["10.9.9.9", "db"] and lines[5] == "50"
    out = dockerapi.docker("run", "--rm", "-u", "1000:1000", "--entrypoint", "id",
                           "busybox", "-u", check=True)
    assert out.stdout == "1000\n"


def test_list_and_inspect_over_the_api(dockerapi):
    status, _, body = dockerapi.http("POST", "/v1.41/containers/create?name=api1",
                                     {"Image": "busybox", "Cmd": ["true"],
                                      "Labels": {"k": "v"},
                                      "HostConfig": {"NetworkMode": "none"}})
    assert status == 201, body
    cid = json.loads(body)["Id"]
    status, _, body = dockerapi.http("GET", '/v1.41/containers/json?all=1&filters='
                                     '{"label":["k=v"]}')
    assert status == 200
    (entry,) = json.loads(body)
    assert (entry["Id"], entry["Names"], entry["State"], entry["Labels"]) == \
        (cid, ["/api1"], "created", {"k": "v"})
    status, _, body = dockerapi.http("GET", "/v1.41/containers/nope/json")
    assert (status, json.loads(body)) == (404, {"message": "No such container: nope"})
    status, _, body = dockerapi.http("POST", "/v1.41/containers/create?name=api1",
                                     {"Image": "busybox", "Cmd": ["true"]})
    assert status == 409 and "api1" in json.loads(body)["message"]
    for check, message in (({"Test": ["CMD", "true"], "Interval": 500},
                             "Interval in Healthcheck cannot be less than 1ms"),
                            ({"Test": ["CMD", "true"], "Retries": -1},
                             "Retries in Healthcheck cannot be negative")):
        status, _, body = dockerapi.http("POST", "/v1.41/containers/create",
                                         {"Image": "busybox", "Healthcheck": check})
        assert (status, json.loads(body)["message"]) == (400, message)
    assert dockerapi.http("DELETE", f"/v1.41/containers/{cid}")[0] == 204


def test_health_check(dockerapi):
    dockerapi.docker("run", "-d", "--name", "hc", "--health-cmd", "true",
                     "--health-interval", "1s", "busybox", "sleep", "60", check=True)
    dockerapi.docker("create", "--name", "nohc", "--no-healthcheck", "busybox", "true",
                     check=True)
    try:
        assert dockerapi.health("hc") == "healthy", dockerapi.logs()
        ps = dockerapi.docker("ps", "--filter", "name=hc", "--format", "{{.Status}}",
                              check=True).stdout.strip()
        assert ps.startswith("Up ") and ps.endswith("(healthy)"), ps
        doc = json.loads(dockerapi.docker("inspect", "hc", check=True).stdout)[0]
        assert doc["Config"]["Healthcheck"] == {"Test": ["CMD-SHELL", "true"],
                                                "Interval": 1_000_000_000}
        assert doc["State"]["Health"]["Log"][0]["ExitCode"] == 0
        assert dockerapi.docker("ps", "-q", "--filter", "health=healthy").stdout == \
            doc["Id"][:12] + "\n"
        doc = json.loads(dockerapi.docker("inspect", "nohc", check=True).stdout)[0]
        assert doc["Config"]["Healthcheck"] == {"Test": ["NONE"]}
        assert "Health" not in doc["State"]
    finally:
        dockerapi.docker("rm", "-f", "hc", "nohc")


def test_nothing_is_left_running(dockerapi):
    assert dockerapi.docker("ps", "-aq").stdout == ""
    children = [p for p in os.listdir("/proc") if p.isdigit() and
                _ppid(p) == dockerapi.proc.pid]
    # the daemon it started (if it did) is its only long-lived child: no connection
    # process outlives its connection
    assert len(children) <= 1, children


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
