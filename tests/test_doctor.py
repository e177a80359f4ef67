"""`minirun doctor` against real leftovers: each test makes one kind on purpose (a record
removed behind the engine's back, a foreground run and its daemon killed with SIGKILL, a
bundle file removed, a stale pid file), shows doctor finding it with the command that
fixes it, `--fix` (or that command) repairing it, and then the host clean, checked by
witnesses other than doctor (/sys/class/net, /run/netns, the cgroup tree, nft, /proc).

Every audit is scoped to the test's own roots (they are not the defaults), so the
containers other tests run at the same time are never judged, let alone touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from enginetest import EngineEnv, engine  # noqa: F401
from nettest import free_port
from ocitest import needs_root, wait_for

from minirun.container import proc_start_time

pytestmark = [needs_root, pytest.mark.root]

HTTPD = "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www"
PIDS_CGROUP = "/sys/fs/cgroup/pids/minirun"


def doctor(env, *args) -> tuple[int, dict]:
    proc = env("doctor", "--json", "--no-host-checks", "--grace", "0", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def kinds(doc: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in doc["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def about(doc: dict, text: str) -> list[dict]:
    return [f for f in doc["findings"] if text in f["what"] or text in f["fix"]]


def db(env) -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(env.root, "engine.db"), timeout=30,
                           isolation_level=None)


def cid_of(env, name: str) -> str:
    return env("inspect", "--format", "{{.Id}}", name, check=True).stdout.strip()


def cgroup_procs(cid: str) -> list[int]:
    try:
        with open(os.path.join(PIDS_CGROUP, cid, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def nft_rules(env) -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                          check=True).stdout


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(path)]


def run_by_hand(env, finding: dict) -> None:
    """The command a finding prints, run as a user would (its MINIRUN_* prefix included,
    `minirun` being this tree's CLI)."""
    words = shlex.split(finding["fix"])
    extra = {}
    while words and "=" in words[0] and words[0].split("=")[0].isupper():
        k, _, v = words.pop(0).partition("=")
        extra[k] = v
    if words[0] == "minirun":
        words = [sys.executable, "-m", "minirun.cli"] + words[1:]
    subprocess.run(words, env=dict(env.env, **extra), check=True, capture_output=True,
                   timeout=120)


def test_a_record_removed_behind_the_engines_back(engine):  # noqa: F811
    env = engine
    port, other_port = free_port(), free_port()
    env("run", "-d", "--name", "gone", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
        HTTPD, check=True)
    env("run", "-d", "--name", "stays", "-p", f"127.0.0.1:{other_port}:80", "busybox", "sh",
        "-c", HTTPD, check=True)
    cid, other = cid_of(env, "gone"), cid_of(env, "stays")
    pids = wait_for(lambda: cgroup_procs(cid), 30)
    assert pids, "the container's processes"
    starts = {pid: proc_start_time(pid) for pid in pids}
    db(env).execute("DELETE FROM containers WHERE id = ?", (cid,))

    rc, doc = doctor(env)
    assert rc == 1
    found = kinds(doc)
    assert {"process", "state", "snapshot", "netns", "link", "nft", "lease", "cgroup"} <= \
        set(found), doc
    assert about(doc, f"/minirun/{cid}")[0]["fix"].startswith("kill -9 ")
    assert about(doc, f"ip netns delete minirun-{cid[:12]}")
    assert about(doc, f"ip link delete mr{cid[:12]}")
    assert any(f"dport {port} " in f["what"] for f in found["nft"])
    assert not about(doc, other[:12]), "the running container was judged"
    assert all(f["safe"] for f in doc["findings"]), doc

    rc, fixed = doctor(env, "--fix")
    assert rc == 0 and fixed["summary"]["left"] == 0, fixed
    rc, again = doctor(env)
    assert (rc, again["findings"]) == (0, []), (fixed["findings"], again["findings"])

    # the host, seen without doctor
    for pid, start in starts.items():  # gone (a pid reused since has another start time)
        assert proc_start_time(pid) != start
    assert not os.path.exists(os.path.join(PIDS_CGROUP, cid))
    assert not os.path.exists(f"/sys/class/net/mr{cid[:12]}")
    assert not os.path.exists(f"/run/netns/minirun-{cid[:12]}")
    assert not mounts_under(os.path.join(env.root, "containers", cid))
    assert not os.path.exists(os.path.join(env.run_root, "engine", cid))
    rules = nft_rules(env)
    assert f"dport {port} " not in rules and f"dport {other_port} " in rules
    # the other container was left as it was
    assert os.path.exists(f"/sys/class/net/mr{other[:12]}") and cgroup_procs(other)
    assert env("inspect", "--format", "{{.State.Status}}", "stays").stdout.strip() == "running"
    env("rm", "-f", "stays", check=True)


@pytest.mark.parametrize("moment", ["record", "cgroup", "running"])
def test_a_foreground_run_and_its_daemon_killed(engine, moment):  # noqa: F811
    """SIGKILL the `minirun run` client, the keeper and the daemon at a moment seen from
    outside (the record is written; the container's cgroup exists; it runs), then the
    container's processes: whatever that left, doctor finds, and its fixes (--fix, then
    the by-hand commands it prints) leave nothing behind."""
    env = engine
    name = f"fg-{moment}"
    client = subprocess.Popen([sys.executable, "-m", "minirun.cli", "run", "--name", name,
                               "busybox", "sleep", "1000"], env=env.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def record():
            try:
                row = db(env).execute("SELECT id, status FROM containers WHERE name = ?",
                                      (name,)).fetchone()
            except sqlite3.OperationalError:  # no table yet: the engine has not begun
                return None
            if row is None:
                return None
            if moment == "cgroup" and not os.path.isdir(os.path.join(PIDS_CGROUP, row[0])):
                return None
            if moment == "running" and row[1] != "running":
                return None
            return row[0]

        cid = wait_for(record, 60)
        assert cid, f"the {moment} moment never came"
    finally:
        client.kill()
        client.wait()
    env.stop_process("keeper")
    env.stop_process("daemon")
    # a start the keeper's worker had under way goes on without it: let it finish, then
    # kill what runs in the container's cgroup (as a host's crash or OOM kill would)
    deadline = time.monotonic() + 5
    quiet_since = time.monotonic()
    while time.monotonic() < deadline or time.monotonic() - quiet_since < 1:
        pids = cgroup_procs(cid)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if pids:
            quiet_since = time.monotonic()
        time.sleep(0.1)

    rc, doc = doctor(env)
    assert rc == 1
    found = kinds(doc)
    files = {os.path.basename(f["what"]) for f in found.get("file", [])}
    assert {"daemon.pid", "keeper.pid"} <= files, doc
    if moment == "running":
        [record] = found["record"]
        assert "says running but its init" in record["why"] and record["safe"], doc
        assert about(doc, f"ip netns delete minirun-{cid[:12]}")
        assert about(doc, f"ip link delete mr{cid[:12]}")
    rc, fixed = doctor(env, "--fix")
    for f in fixed["findings"]:
        assert f["fixed"] or not f["safe"], f
        if not f["fixed"]:
            run_by_hand(env, f)
    rc, again = doctor(env)
    assert (rc, again["findings"]) == (0, []), (fixed["findings"], again["findings"])

    for path in ("daemon.pid", "keeper.pid", "keeper.sock", "minirun.sock"):
        assert not os.path.exists(os.path.join(env.run_root, path))
    assert not cgroup_procs(cid)
    status = db(env).execute("SELECT status FROM containers WHERE id = ?", (cid,)).fetchone()
    status = status[0] if status else None
    if status == "created":
        # killed before the keeper's create: a container as `minirun create` leaves one,
        # wired and not started, which starts
        assert not os.path.exists(os.path.join(env.run_root, "engine", cid))
        env("start", name, check=True)
    else:
        assert status in (None, "exited"), status
        assert not os.path.exists(f"/sys/class/net/mr{cid[:12]}")
        assert not os.path.exists(f"/run/netns/minirun-{cid[:12]}")
    env("rm", "-f", name)
    assert not os.path.exists(f"/sys/class/net/mr{cid[:12]}")
    assert not os.path.exists(f"/run/netns/minirun-{cid[:12]}")
    assert not os.path.exists(os.path.join(PIDS_CGROUP, cid))
    assert not mounts_under(os.path.join(env.root, "containers", cid))


def test_a_bundle_file_removed(engine):  # noqa: F811
    env = engine
    env("run", "--name", "nobundle", "busybox", "true", check=True)
    cid = cid_of(env, "nobundle")
    os.unlink(os.path.join(env.root, "containers", cid, "config.json"))
    rc, doc = doctor(env)
    assert rc == 1
    [finding] = doc["findings"]
    assert finding["kind"] == "record" and "bundle is gone" in finding["why"]
    assert not finding["safe"] and finding["fix"].endswith("minirun rm -f nobundle")
    rc, fixed = doctor(env, "--fix")  # not safe: --fix leaves the record alone
    assert rc == 1 and not fixed["findings"][0]["fixed"]
    assert env("inspect", "nobundle").returncode == 0
    run_by_hand(env, finding)
    assert doctor(env) == (0, doctor(env)[1]) and doctor(env)[1]["findings"] == []
    assert env("inspect", "nobundle").returncode != 0
    assert not os.path.exists(os.path.join(env.root, "containers", cid))


def test_stale_pid_files_and_sockets_but_not_while_the_locks_are_held(engine):  # noqa: F811
    """The daemon and keeper killed with SIGKILL leave their pid files and sockets; they
    are stale only once nobody holds the lock next to them."""
    import fcntl

    env = engine
    env("run", "--rm", "busybox", "true", check=True)  # a daemon and keeper for this root
    pids = [env.pid_of("keeper"), env.pid_of("daemon")]
    env.stop_process("keeper")
    env.stop_process("daemon")
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10)
    stale = sorted(os.path.join(env.run_root, n) for n in
                   ("daemon.pid", "keeper.pid", "minirun.sock", "keeper.sock"))
    assert all(os.path.lexists(p) for p in stale)
    locks = [os.open(os.path.join(env.run_root, f"{n}.lock"), os.O_RDWR) for n in
             ("daemon", "keeper")]
    try:
        for fd in locks:
            fcntl.flock(fd, fcntl.LOCK_EX)
        rc, doc = doctor(env, "--fix")  # held: the files are the holder's, whatever they say
        assert (rc, doc["findings"]) == (0, [])
        assert all(os.path.lexists(p) for p in stale)
    finally:
        for fd in locks:
            os.close(fd)
    rc, doc = doctor(env)
    assert rc == 1
    assert sorted(f["what"] for f in doc["findings"]) == stale
    assert all(f["kind"] == "file" and f["fix"].startswith("rm ") for f in doc["findings"])
    rc, doc = doctor(env, "--fix")
    assert rc == 0 and all(f["fixed"] for f in doc["findings"])
    assert not any(os.path.lexists(p) for p in stale)
    env("run", "--rm", "busybox", "true", check=True)  # and minirun starts afresh


HALF_START = """
import sys
from minirun.engine import Engine, RunOptions
cid, c = Engine().create("busybox", RunOptions(command=["sleep", "1000"], name="stuck",
                                               network="none"))
print(cid, c.pid, flush=True)
sys.stdin.read()
"""


def test_an_init_created_by_the_keeper_and_never_started(engine):  # noqa: F811
    """What the keeper's worker does for a start is create, then start. A process with
    the keeper's command line creates a container and is SIGKILLed before the start: the
    init is left in the container's cgroup, still showing the keeper's command line (it
    has not called execve), waiting on its fifo. Doctor says what it is."""
    env = engine
    helper = subprocess.Popen([sys.executable, "-c", HALF_START, "-m", "minirun.daemon.keeper",
                               env.run_root], env=env.env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        cid, pid = helper.stdout.readline().split()
    finally:
        helper.kill()
        helper.wait()
    pid = int(pid)
    start = proc_start_time(pid)
    assert int(pid) in cgroup_procs(cid)
    rc, doc = doctor(env)
    assert rc == 1
    [stuck] = [f for f in doc["findings"] if f"pid {pid} " in f["what"]]
    assert stuck["what"] == f"minirun keeper pid {pid} in cgroup /minirun/{cid}"
    assert "the init of container stuck" in stuck["why"] and not stuck["safe"]
    run_by_hand(env, stuck)
    rc, doc = doctor(env)
    assert (rc, doc["findings"]) == (0, []), doc
    assert proc_start_time(pid) != start
    assert not os.path.exists(os.path.join(PIDS_CGROUP, cid))


def test_what_is_in_order_is_no_finding(engine):  # noqa: F811
    """A created container (wired, not started), a running one with a published port, an
    exited one: all as the engine keeps them, so nothing to report or fix."""
    env = engine
    port = free_port()
    env("create", "--name", "made", "-p", f"127.0.0.1:{free_port()}:80", "busybox", "true",
        check=True)
    env("run", "-d", "--name", "up", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
        HTTPD, check=True)
    env("run", "--name", "done", "busybox", "true", check=True)
    try:
        assert os.path.exists(f"/run/netns/minirun-{cid_of(env, 'made')[:12]}")
        rc, doc = doctor(env, "--fix")
        assert (rc, doc["findings"]) == (0, []), doc
        env("start", "made", check=True)  # its network untouched: it starts
    finally:
        env("rm", "-f", "made", "up", "done")


def test_a_daemon_and_keeper_whose_run_root_is_gone(tmp_path):
    """The run root removed under a running daemon and keeper (a test's cleanup, a
    tmpfs unmounted): they serve nothing. Doctor, run with that root, names both and
    the command that ends them."""
    env = EngineEnv(str(tmp_path))
    daemon = subprocess.Popen([sys.executable, "-m", "minirun.cli", "daemon", "--root",
                               env.root, "--run-root", env.run_root], env=env.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = [daemon.pid]
    try:
        keeper = wait_for(lambda: env.pid_of("keeper"), 30)
        assert keeper, "the daemon started no keeper"
        pids.append(keeper)
        subprocess.run(["rm", "-rf", "--one-file-system", env.run_root], check=True)
        rc, doc = doctor(env)
        assert rc == 1
        assert sorted(f["what"] for f in doc["findings"]) == [
            f"minirun daemon pid {daemon.pid} (run root {env.run_root})",
            f"minirun keeper pid {keeper} (run root {env.run_root})"]
        for f in doc["findings"]:
            assert not f["safe"] and "run root is gone" in f["why"]
            run_by_hand(env, f)
        daemon.wait(timeout=30)
        assert wait_for(lambda: proc_start_time(keeper) is None, 30)
        rc, doc = doctor(env)
        assert (rc, doc["findings"]) == (0, [])
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        daemon.wait()
