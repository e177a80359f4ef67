"""A foreground `minirun run` through the daemon (minirun/client.py, daemon/foreground.py):
stdin only with -i, docker's exit statuses, signals passed on, logs, type-ahead on a
terminal, and a killed client that leaves the container to the daemon (and --rm)."""

import fcntl
import glob
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time

import pytest
from enginetest import engine  # noqa: F401
from ocitest import needs_root, wait_for

from minirun import client

pytestmark = [needs_root, pytest.mark.root]


def fast(engine, *args, env=None, **kw) -> subprocess.CompletedProcess:
    """Through the thin client, the way the `minirun` console script runs it."""
    return subprocess.run([sys.executable, "-m", "minirun.client", *args],
                          env=env or engine.env, capture_output=True, text=True, timeout=60, check=False,
                          **kw)


def spawn(engine, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "minirun.client", *args], env=engine.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def status_of(engine, name: str) -> str | None:
    """The container's state by `ps -a`, None once it has no record."""
    recs = map(json.loads, engine("ps", "-a", "--format", "json", check=True).stdout.splitlines())
    return next((c["State"] for c in recs if c["Names"] == name), None)


def full_id(engine, name: str) -> str:
    return json.loads(engine("inspect", name, check=True).stdout)[0]["Id"]


def leftovers(engine, cid: str) -> list[str]:
    """What the host still has of a container: its cgroups, snapshot, netns, veth."""
    left = glob.glob(f"/sys/fs/cgroup/*/minirun/{cid}") + \
        glob.glob(f"/sys/fs/cgroup/minirun/{cid}")
    left += [p for p in (os.path.join(engine.root, "containers", cid),
                         f"/run/netns/minirun-{cid[:12]}", f"/sys/class/net/mr{cid[:12]}")
             if os.path.exists(p)]
    return left


# --- parsing (the client's table is click's) ------------------------------------------------

def test_the_client_knows_every_run_option():
    from minirun.cli_container import run

    declared = {}
    for param in run.params:
        for name in param.opts:
            if name.startswith("-"):
                declared[name] = param.name
    assert set(declared) == set(client.RUN_OPTIONS)


def test_parse_run_and_what_it_leaves_to_click():
    image, opts = client.parse_run(["-it", "--rm", "-eA=1", "--env", "B=2", "--name=x",
                                    "--pids-limit", "5", "busybox", "sh", "-c", "--rm"])
    assert image == "busybox"
    assert opts == {"interactive": True, "tty": True, "remove": True, "env": ["A=1", "B=2"],
                    "name": "x", "pids_limit": 5, "command": ["sh", "-c", "--rm"]}
    for args in (["--bogus", "busybox"], ["--help"], ["--pids-limit", "x", "busybox"],
                 ["--name"], ["-it"], ["-ti=1", "busybox"]):
        assert client.parse_run(args) is None, args


def test_version_without_click_says_what_click_says():
    from click.testing import CliRunner

    from minirun.cli import cli

    fast_out = subprocess.run([sys.executable, "-m", "minirun.client", "--version"],
                              capture_output=True, text=True, check=True).stdout
    assert fast_out == CliRunner().invoke(cli, ["--version"]).output


def test_an_unknown_flag_gets_dockers_usage_error(engine):
    proc = fast(engine, "run", "--bogus", "busybox", "true")
    assert proc.returncode == 125
    assert proc.stderr == "minirun: unknown flag: --bogus\nSee 'minirun run --help'.\n"


def test_the_run_path_imports_no_click(engine):
    assert fast(engine, "run", "--rm", "--network", "none", "busybox", "true").returncode == 0
    proc = fast(engine, "run", "--rm", "--network", "none", "busybox", "true",
                env=dict(engine.env, PYTHONPROFILEIMPORTTIME="1"))
    assert proc.returncode == 0, proc.stderr
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines()]
    assert "minirun.daemon.proto" in imported  # the run went through the client
    assert not {"click", "sqlite3", "minirun.engine"} & set(imported)


# --- stdin, exit statuses, logs ---------------------------------------------------------------

def test_stdin_only_with_i(engine):
    proc = fast(engine, "run", "--rm", "busybox", "cat", input="x\n")
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    proc = fast(engine, "run", "--rm", "-i", "busybox", "cat", input="x\n")
    assert (proc.returncode, proc.stdout) == (0, "x\n"), proc.stderr
    proc = fast(engine, "run", "--rm", "-i", "busybox", "sh", "-c", "wc -c; echo err >&2",
                input="abc")
    assert (proc.stdout.strip(), proc.stderr) == ("3", "err\n")


def test_the_callers_environment_and_directory(engine, tmp_path):
    """The daemon prepares the container, but what the request means is the caller's:
    `-e NAME` takes the caller's value, a relative --env-file is the caller's file."""
    (tmp_path / "vars.env").write_text("FROM_FILE=file value\n")
    env = dict(engine.env, FROM_CALLER="caller value")
    proc = fast(engine, "run", "--rm", "-e", "FROM_CALLER", "--env-file", "vars.env",
                "busybox", "sh", "-c", 'echo "$FROM_CALLER|$FROM_FILE"', env=env,
                cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "caller value|file value\n"
    # and the daemon keeps its own: the next caller without them gets neither
    proc = fast(engine, "run", "--rm", "-e", "FROM_CALLER", "busybox", "sh", "-c",
                'echo "[$FROM_CALLER]"')
    assert proc.stdout == "[]\n", proc.stderr


def test_exit_statuses_pass_through(engine):
    for args, code in ((["true"], 0), (["sh", "-c", "exit 3"], 3),
                       (["no-such-command"], 127), (["/etc/passwd"], 126)):
        proc = fast(engine, "run", "--rm", "--network", "none", "busybox", *args)
        assert proc.returncode == code, (args, proc.stderr)
    # pid 1 cannot SIGKILL itself: under tini the shell is pid 2
    proc = fast(engine, "run", "--rm", "--network", "none", "--init", "busybox",
                "sh", "-c", "kill -9 $$")
    assert proc.returncode == 137, proc.stderr
    proc = fast(engine, "run", "--rm", "--pull", "never", "no-such-image:latest", "true")
    assert proc.returncode == 125 and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_killed_from_the_host_is_137(engine):
    client_proc = spawn(engine, "run", "--rm", "--name", "hostkill", "busybox", "sleep", "60")
    try:
        assert wait_for(lambda: status_of(engine, "hostkill") == "running", 20)
        engine("kill", "hostkill", check=True)
        assert client_proc.wait(timeout=20) == 137
    finally:
        client_proc.kill()
        engine("rm", "-f", "hostkill")


def test_logs_of_a_foreground_container(engine):
    proc = fast(engine, "run", "--name", "fglog", "busybox", "sh", "-c",
                "echo out; echo err >&2")
    try:
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")
        logs = engine("logs", "fglog", check=True)
        assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
        assert status_of(engine, "fglog") == "exited"
    finally:
        engine("rm", "-f", "fglog")


# --- signals and a dying client ---------------------------------------------------------------

def test_sigterm_to_the_client_stops_the_container(engine):
    proc = spawn(engine, "run", "--rm", "--name", "term", "busybox", "sh", "-c",
                 "trap 'echo got TERM; exit 42' TERM; echo up; while :; do sleep 0.1; done")
    try:
        assert proc.stdout.readline() == b"up\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 42
        assert proc.stdout.read() == b"got TERM\n"
        assert status_of(engine, "term") is None  # --rm
    finally:
        proc.kill()
        engine("rm", "-f", "term")


def test_sigkilled_client_leaves_the_container_to_the_daemon(engine):
    proc = spawn(engine, "run", "--rm", "--name", "orphan", "busybox", "sh", "-c",
                 "echo up; sleep 2; echo done")
    cid = None
    try:
        assert proc.stdout.readline() == b"up\n"
        cid = full_id(engine, "orphan")
        assert leftovers(engine, cid)  # the witnesses see the live container
        proc.kill()
        proc.wait()
        assert status_of(engine, "orphan") == "running"  # as docker's, when its CLI dies
        assert wait_for(lambda: status_of(engine, "orphan") is None, 15), \
            engine.daemon_logs()
        assert wait_for(lambda: not leftovers(engine, cid), 5), leftovers(engine, cid)
    finally:
        proc.kill()
        engine("rm", "-f", "orphan")


def test_sigkilled_client_without_rm_records_the_exit(engine):
    proc = spawn(engine, "run", "--name", "kept", "busybox", "sh", "-c",
                 "echo up; sleep 1; exit 5")
    try:
        assert proc.stdout.readline() == b"up\n"
        proc.kill()
        proc.wait()
        assert wait_for(lambda: status_of(engine, "kept") == "exited", 15)
        state = json.loads(engine("inspect", "kept", check=True).stdout)[0]["State"]
        assert state["ExitCode"] == 5
        assert engine("logs", "kept", check=True).stdout == "up\n"
    finally:
        proc.kill()
        engine("rm", "-f", "kept")


# --- a terminal: type-ahead -------------------------------------------------------------------

def test_type_ahead_reaches_the_shell(engine):
    master, slave = os.openpty()

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "minirun.client", "run", "-it", "--rm",
                             "--network", "none", "busybox", "sh"],
                            stdin=slave, stdout=slave, stderr=slave, env=engine.env,
                            start_new_session=True, preexec_fn=controlling_tty)  # noqa: PLW1509
    os.close(slave)
    out = b""
    try:
        # at once: before the client has even started Python, let alone the container
        os.write(master, b"echo typed-$((6*7)); exit 7\r")
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    out += os.read(master, 4096)
                except OSError:
                    break
        assert proc.wait(timeout=5) == 7, out
        assert b"typed-42" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def _read_until(master: int, proc: subprocess.Popen, want: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while want not in out and proc.poll() is None and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                out += os.read(master, 4096)
            except OSError:
                break
    return out


def test_a_resized_terminal_resizes_the_container(engine):
    """-it: the client's terminal size at the start, and again on each SIGWINCH (the
    kernel sends it when the terminal is resized)."""
    import struct

    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "minirun.client", "run", "-it", "--rm",
                             "--network", "none", "busybox", "sh"],
                            stdin=slave, stdout=slave, stderr=slave, env=engine.env,
                            start_new_session=True, preexec_fn=controlling_tty)  # noqa: PLW1509
    os.close(slave)
    try:
        os.write(master, b"echo size-$(stty size | tr ' ' x)\r")
        out = _read_until(master, proc, b"size-30x100", 20)
        assert b"size-30x100" in out, out
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        time.sleep(0.5)  # the client's SIGWINCH handler sets the container's pty
        os.write(master, b"echo size-$(stty size | tr ' ' x); exit 3\r")
        out = _read_until(master, proc, b"size-40x120", 20)
        assert b"size-40x120" in out, out
        assert proc.wait(timeout=10) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
