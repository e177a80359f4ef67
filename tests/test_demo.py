"""`minirun demo`: each finished scenario run on a private engine with the busybox image,
checked on what it observed (its --json results), and the host checked unchanged after it
from the host's own files: no container, process, cgroup or mount of the containers the
demo made (their ids from the engine's event log), no mrdemo link, no temporary directory."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from enginetest import EngineEnv, searchable_engine
from ocitest import needs_root

pytestmark = [needs_root, pytest.mark.root]


@pytest.fixture(scope="module")
def engine():
    """enginetest's engine, under a directory others may search (--userns auto)."""
    yield from searchable_engine("mrlab-engine-")


def last_seq(env: EngineEnv) -> int:
    from minirun.engine import Engine

    events = Engine(root=env.root, run_root=env.run_root).events_after(0, limit=1_000_000)
    return events[-1]["seq"] if events else 0


def containers_since(env: EngineEnv, seq: int) -> set[str]:
    from minirun.engine import Engine

    return {e["container"] for e in
            Engine(root=env.root, run_root=env.run_root).events_after(seq, limit=100_000)}


def demo_tempdirs() -> set[str]:
    return set(glob.glob("/tmp/minirun-demo-*"))


def assert_host_clean(env: EngineEnv, seq: int, tempdirs_before: set[str]) -> None:
    ids = containers_since(env, seq)
    assert ids, "the demo made no container"
    assert env("ps", "-a", "-q").stdout.split() == []
    assert not [n for n in env("network", "ls", "-q").stdout.split() if n.startswith("demo-")]
    for cid in ids:
        left = glob.glob(f"/sys/fs/cgroup/*/minirun/{cid}") + \
            glob.glob(f"/sys/fs/cgroup/minirun/{cid}")
        assert not left, f"cgroups left: {left}"
    procs = []
    for path in glob.glob("/proc/[0-9]*/cgroup"):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if any(cid in text for cid in ids):
            procs.append(path)
    assert not procs, f"processes left in the demo's containers: {procs}"
    with open("/proc/self/mountinfo") as f:
        mounts = [line for line in f if any(cid[:12] in line for cid in ids)
                  or "minirun-demo-" in line]
    assert not mounts, f"mounts left: {mounts}"
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith("mrdemo")]
    assert demo_tempdirs() <= tempdirs_before, "a temporary directory was left"


def run_demo(env: EngineEnv, *args: str, timeout: float = 180) -> tuple[int, dict]:
    proc = env("demo", *args, "--json", "--root", env.root, "--run-root", env.run_root,
               timeout=timeout)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, doc


@pytest.fixture
def scenario(engine):
    """Runs one scenario and checks the host clean afterwards (also when it failed)."""
    seq, tempdirs = last_seq(engine), demo_tempdirs()
    ran = []

    def go(name: str, *flags: str) -> dict:
        code, doc = run_demo(engine, name, *flags)
        ran.append(name)
        (result,) = doc["results"]
        assert code == doc["exit_status"] == result["exit_status"]
        return result

    yield go
    if ran:
        assert_host_clean(engine, seq, tempdirs)


def held(result: dict) -> None:
    assert result["verdict"] == "held", json.dumps(result, indent=1)
    assert result["exit_status"] == 0
    assert result["lessons"] and all(x["held"] for x in result["lessons"])


def test_list_is_one_line_per_scenario(engine):
    from minirun.demo import SCENARIOS

    proc = engine("demo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(SCENARIOS)


def test_unknown_scenario_is_one_line(engine):
    proc = engine("demo", "nosuch")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nosuch" in proc.stderr


def test_run_does_not_import_the_demo():
    code = ("import sys; sys.argv=['minirun','run','--help']\n"
            "import minirun.cli as c\n"
            "try: c.main(['run', '--help'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('minirun.demo')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr


def test_kernel(scenario):
    r = scenario("kernel")
    held(r)
    assert r["observed"]["container_release"] == os.uname().release
    assert r["observed"]["host_cmdline"] == "sleep 300"


def test_pidns(scenario):
    r = scenario("pidns")
    held(r)
    obs = r["observed"]
    assert obs["pid_inside"] == "1" and obs["processes_inside"] == 2
    assert obs["nspid"][1] == 1 and obs["nspid"][0] == obs["host_pid"] != 1


def test_caps(scenario):
    r = scenario("caps")
    held(r)
    obs = r["observed"]
    assert obs["date_s_refused"] is True
    assert obs["allowed[default]"] == []
    assert obs["allowed[--cap-add NET_ADMIN]"] == ["ip_link_add"]
    assert obs["allowed[--privileged]"] == ["ip_link_add", "mount", "set_clock"]


def test_seccomp(scenario):
    r = scenario("seccomp")
    held(r)
    obs = r["observed"]
    assert obs["blocked_by_profile"]
    for call in obs["blocked_by_profile"]:
        assert obs["errno[default]"][call] == 1 and obs["errno[unconfined]"][call] != 1


def test_zombies(scenario):
    r = scenario("zombies")
    held(r)
    obs = r["observed"]
    assert obs["zombies[no_init]"] == 3 and obs["zombies[init]"] == 0
    assert obs["stop_seconds[no_init]"] >= 3 > obs["stop_seconds[init]"] + 1


def test_keep_leaves_the_containers(engine):
    seq, tempdirs = last_seq(engine), demo_tempdirs()
    try:
        code, doc = run_demo(engine, "pidns", "--keep")
        kept = doc["results"][0]["kept"]
        assert code == 0 and kept
        names = engine("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert set(kept) <= set(names)
    finally:
        for cid in engine("ps", "-a", "-q").stdout.split():
            engine("rm", "-f", cid)
    assert_host_clean(engine, seq, tempdirs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_demo_cleans_up(engine, sig, tmp_path):
    seq, tempdirs = last_seq(engine), demo_tempdirs()
    narration = tmp_path / "out"
    with narration.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "minirun.cli", "demo", "zombies"],
                                env=engine.env, stdout=out, stderr=subprocess.PIPE,
                                text=True)
    try:
        deadline = time.monotonic() + 60
        # the demo's own narration says when its first container runs (no `minirun ps`
        # meanwhile: the test should not add its own commands to the engine's load)
        while "(started " not in narration.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the demo ended first: {proc.wait()}: "
                                     f"{proc.stderr.read()} {narration.read_text()}")
            time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 130
        assert "interrupted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_host_clean(engine, seq, tempdirs)


def test_no_image_cannot_run(tmp_path):
    env = EngineEnv(str(tmp_path / "empty"))
    try:
        proc = env("demo", "kernel", "--json")
        assert proc.returncode == 3, proc.stderr
        (r,) = json.loads(proc.stdout)["results"]
        assert r["verdict"] == "cannot run" and "busybox" in r["reason"]
    finally:
        env.teardown()


def test_limits(scenario):
    r = scenario("limits")
    held(r)
    obs = r["observed"]
    assert obs["pids_current[limited]"] <= 32 < obs["pids_current[unlimited]"]
    assert obs["forks_refused[limited]"] > 0
    assert obs["exit_status[limited]"] == 137 and obs["oom_killed[limited]"] is True
    assert obs["exit_status[unlimited]"] == 0
    assert 0.35 <= obs["cpu_share[limited]"] <= 0.6 < obs["cpu_share[unlimited]"]


def test_userns(scenario):
    r = scenario("userns")
    held(r)
    obs = r["observed"]
    assert obs["host_owner[host]"] == 0 and obs["read_root_only[host]"] is True
    assert obs["uid_inside[auto]"] == "0" and obs["host_owner[auto]"] > 0
    assert obs["read_root_only[auto]"] is False


def test_filesystem(scenario):
    r = scenario("filesystem")
    held(r)
    obs = r["observed"]
    assert obs["ls_root[jail]"] == ["bin", "escape"]
    assert "jail" in obs["ls_root[escaped]"]  # out of the jail, into the container's root
    assert not set(obs["host_only_entries"]) & set(obs["ls_root[from_top]"])
    assert obs["masked[default]"] and obs["proc_sys[default]"] == "ro"
    assert obs["masked[privileged]"] == [] and obs["proc_sys[privileged]"] != "ro"


def test_osfeatures(scenario):
    with open("/proc/sys/vm/swappiness") as f:
        swappiness = f.read().strip()
    r = scenario("osfeatures")
    held(r)
    obs = r["observed"]
    assert obs["container_init"] == "sh"
    assert "Operation not permitted" in obs["rmmod_default"]
    assert obs["rmmod_privileged"] and "Operation not permitted" not in obs["rmmod_privileged"]
    assert obs["swappiness_inside"] == swappiness
    with open("/proc/sys/vm/swappiness") as f:
        assert f.read().strip() == swappiness


def test_orchestration(scenario):
    r = scenario("orchestration")
    held(r)
    assert r["observed"]["restart_count"] >= 2


def test_network(scenario):
    r = scenario("network")
    held(r)
    obs = r["observed"]
    assert obs["bridge_ping_status"] == 0 and obs["cross_network_ping_status"] != 0
    assert obs["links[none]"] == ["lo"]
    assert "lo" in obs["links[host]"] and len(obs["links[host]"]) > 1


def test_exit_status_is_the_worst():
    from minirun.demo.lab import Result, exit_status

    held_, not_held, cannot = Result("a"), Result("b", "not held"), Result("c", "cannot run")
    assert exit_status([held_]) == 0
    assert exit_status([held_, cannot]) == 3
    assert exit_status([cannot, not_held, held_]) == 1
