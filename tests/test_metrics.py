"""The daemon's Prometheus endpoint (minirun/monitor/metrics.py) with real busybox
containers on a private engine whose daemon.json asks for metrics on a free loopback port
(so the daemon `run -d` starts on demand serves them, and the one the keeper brings back).

Witnesses: the kernel's own files (the container's cgroup, found through /proc/<pid>/cgroup,
not through minirun; /proc/<pid>/net/dev for its netns), prometheus_client's parser,
Debian's promtool, and a real Debian prometheus (both from the package, not installed:
scripts/deb-tool.sh) that scrapes the daemon and is queried
through its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

import pytest
from debtools import deb_tool
from enginetest import engine_serving_metrics
from nettest import free_port
from ocitest import needs_root
from ocitest import wait_for as poll
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [needs_root, pytest.mark.root]

MIB = 1 << 20


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from engine_serving_metrics(str(tmp_path_factory.mktemp("metrics")))


def scrape(addr: str, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def samples(text: str) -> list:
    """(name, labels, value) of every sample, through prometheus_client's parser."""
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples]


def value(text: str, metric: str, /, **labels) -> float | None:
    found = [v for n, lb, v in samples(text)
             if n == metric and all(lb.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, f"{metric}{labels}: {len(found)} samples"
    return found[0] if found else None


def run_d(env, *args: str) -> str:
    return env("run", "-d", *args, check=True).stdout.strip()


def inspect(env, cid: str) -> dict:
    return json.loads(env("inspect", cid, check=True).stdout)[0]


def stamp(text: str) -> float:
    """An RFC3339Nano time as unix seconds (to the microsecond)."""
    whole, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (frac or "0"))


def cgroup_of(pid: int, controller: str) -> str:
    """The cgroup path of a process in a v1 controller, as the kernel says it."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def cgroup_file(pid: int, controller: str, name: str) -> str:
    mount = {"cpuacct": "cpu,cpuacct"}.get(controller, controller)
    base = f"/sys/fs/cgroup/{mount}"
    if not os.path.isdir(base):
        base = f"/sys/fs/cgroup/{controller}"
    with open(base + cgroup_of(pid, controller) + "/" + name) as f:
        return f.read()


def blkio_bytes(pid: int) -> dict[str, tuple[int, int]]:
    """(read, write) bytes per MAJ:MIN from the throttle layer's recursive counters."""
    out: dict[str, list[int]] = {}
    for line in cgroup_file(pid, "blkio", "blkio.throttle.io_service_bytes_recursive").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in ("Read", "Write"):
            out.setdefault(fields[0], [0, 0])[fields[1] == "Write"] += int(fields[2])
    return {dev: (r, w) for dev, (r, w) in out.items()}


def devname(majmin: str) -> str:
    with open(f"/sys/dev/block/{majmin}/uevent") as f:
        return "/dev/" + next(ln.split("=", 1)[1].strip() for ln in f if ln.startswith("DEVNAME="))


def net_dev(pid: int) -> dict[str, tuple[int, int]]:
    with open(f"/proc/{pid}/net/dev") as f:
        lines = f.read().splitlines()[2:]
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    got = poll(predicate, timeout, 0.1)
    assert got, f"timed out waiting for {what}"
    return got


def disk_of(path: str) -> str:
    """MAJ:MIN of the whole disk holding path (throttle rules take disks, not partitions)."""
    st = os.stat(path)
    majmin = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sys_dir = os.path.realpath(f"/sys/dev/block/{majmin}")
    if os.path.exists(os.path.join(sys_dir, "partition")):
        with open(os.path.join(os.path.dirname(sys_dir), "dev")) as f:
            majmin = f.read().strip()
    return majmin


@pytest.fixture(scope="module")
def two(env):
    """A: bridge network, a 64 MiB limit, 4 MiB written and read back with O_DIRECT (so
    the block layer sees it) by an exec, then asleep. B: the host's network, no limit,
    asleep. Kernels since 5.x (6.18 here) count a v1 cgroup's block I/O in
    blkio.throttle.* only on a device with a throttle rule: A gets a rule no I/O reaches
    (10 GB/s) on the disk of the engine's root first, as `--device-write-bps` would."""
    a = run_d(env, "--name", "ma", "-m", "64m", "busybox", "sleep", "600")
    b = run_d(env, "--name", "mb", "--network", "host", "busybox", "sleep", "600")
    pid = inspect(env, a)["State"]["Pid"]
    rule = f"/sys/fs/cgroup/blkio{cgroup_of(pid, 'blkio')}/blkio.throttle.write_bps_device"
    with open(rule, "w") as f:
        f.write(f"{disk_of(env.root)} 10000000000\n")
    env("exec", a, "sh", "-c", "dd if=/dev/zero of=/x bs=1M count=4 oflag=direct &&"
        " dd if=/x of=/dev/null bs=1M iflag=direct", check=True)
    yield inspect(env, a), inspect(env, b)
    env("rm", "-f", a, b)


# --- values against the kernel's files ------------------------------------------------------

def test_container_series_match_the_cgroup_files(env, two):
    a, b = two
    pid = a["State"]["Pid"]
    cpu_before = int(cgroup_file(pid, "cpuacct", "cpuacct.usage"))
    net_before = net_dev(pid)
    text = scrape(env.addr)
    cpu_after = int(cgroup_file(pid, "cpuacct", "cpuacct.usage"))
    net_after = net_dev(pid)
    cg = cgroup_of(pid, "memory")
    assert cg.endswith(a["Id"])
    labels = {"id": cg, "name": "ma", "image": "busybox", "pod": "", "namespace": "",
              "container": ""}
    # every series of A carries the same identity
    mine = [(n, lb) for n, lb, _ in samples(text) if lb.get("name") == "ma"]
    assert mine and all({k: lb[k] for k in labels} == labels for _, lb in mine)

    cpu = value(text, "container_cpu_usage_seconds_total", id=cg, cpu="total")
    assert cpu_before / 1e9 <= cpu <= cpu_after / 1e9
    assert value(text, "container_spec_memory_limit_bytes", id=cg) == 64 * MIB == \
        int(cgroup_file(pid, "memory", "memory.limit_in_bytes"))
    usage = value(text, "container_memory_usage_bytes", id=cg)
    assert abs(usage - int(cgroup_file(pid, "memory", "memory.usage_in_bytes"))) < MIB
    stat = dict(line.split() for line in cgroup_file(pid, "memory", "memory.stat").splitlines())
    ws = value(text, "container_memory_working_set_bytes", id=cg)
    assert abs(ws - (usage - int(stat["total_inactive_file"]))) < MIB
    assert value(text, "container_processes", id=cg) == \
        int(cgroup_file(pid, "pids", "pids.current")) == 1
    oom_control = dict(ln.split() for ln in cgroup_file(pid, "memory",
                                                        "memory.oom_control").splitlines())
    assert value(text, "container_oom_events_total", id=cg) == int(oom_control["oom_kill"]) == 0
    assert abs(value(text, "container_start_time_seconds", id=cg) -
               stamp(a["State"]["StartedAt"])) < 0.001

    # block I/O per device, as the throttle layer counted it (at least the 4 MiB each way)
    io = blkio_bytes(pid)
    assert io, "no block I/O counted for A"
    for majmin, (read, written) in io.items():
        dev = devname(majmin)
        assert value(text, "container_fs_reads_bytes_total", id=cg, device=dev) == read
        assert value(text, "container_fs_writes_bytes_total", id=cg, device=dev) == written
    assert sum(r for r, _ in io.values()) >= 4 * MIB
    assert sum(w for _, w in io.values()) >= 4 * MIB

    # its netns's eth0, lo left out
    rx = value(text, "container_network_receive_bytes_total", id=cg, interface="eth0")
    tx = value(text, "container_network_transmit_bytes_total", id=cg, interface="eth0")
    assert net_before["eth0"][0] <= rx <= net_after["eth0"][0]
    assert net_before["eth0"][1] <= tx <= net_after["eth0"][1]
    assert value(text, "container_network_receive_bytes_total", id=cg, interface="lo") is None

    # B: on the host's network (no network series), unlimited (0, as cAdvisor)
    cg_b = cgroup_of(b["State"]["Pid"], "memory")
    assert value(text, "container_spec_memory_limit_bytes", id=cg_b, name="mb") == 0
    assert not [n for n, lb, _ in samples(text)
                if lb.get("id") == cg_b and n.startswith("container_network_")]


def test_states_follow_the_records(env, two):
    stopped = run_d(env, "--name", "mstopped", "busybox", "true")
    wait_for(lambda: inspect(env, stopped)["State"]["Status"] == "exited", what="its exit")
    try:
        created = env("create", "--name", "mcreated", "busybox", "true", check=True).stdout.strip()
        try:
            text = scrape(env.addr)
            ps = env("ps", "-a", "--format", "{{.State}}", check=True).stdout.split()
            for state in ("running", "created", "exited"):
                assert value(text, "minirun_containers", state=state) == ps.count(state), state
            assert ps.count("running") >= 2 and ps.count("created") >= 1
        finally:
            env("rm", "-f", created)
    finally:
        env("rm", "-f", stopped)


def test_a_paused_container_is_counted_paused_and_keeps_its_series(env, two):
    paused = run_d(env, "--name", "mpaused", "busybox", "sleep", "600")
    try:
        env("pause", paused, check=True)
        text = scrape(env.addr)
        ps = env("ps", "-a", "--format", "{{.State}}", check=True).stdout.split()
        assert ps.count("paused") == 1
        for state in ("running", "paused"):
            assert value(text, "minirun_containers", state=state) == ps.count(state), state
        assert value(text, "container_processes", name="mpaused") == 1
    finally:
        env("rm", "-f", paused)


def test_oom_kills_are_counted(env):
    # sh (pid 1) survives; the tail that fills the 8 MiB is what the OOM killer takes
    cid = run_d(env, "-m", "8m", "--memory-swap", "8m", "busybox", "sh", "-c",
                "tail /dev/zero; echo killed; exec sleep 600")
    try:
        wait_for(lambda: "killed" in env("logs", cid).stdout, what="the OOM kill")
        pid = inspect(env, cid)["State"]["Pid"]
        cg = cgroup_of(pid, "memory")
        oom_control = dict(ln.split() for ln in cgroup_file(pid, "memory",
                                                            "memory.oom_control").splitlines())
        text = scrape(env.addr)
        assert value(text, "container_oom_events_total", id=cg) == \
            int(oom_control["oom_kill"]) >= 1
    finally:
        env("rm", "-f", cid)


def test_starts_and_their_durations(env, two):
    before = scrape(env.addr)
    ids = [run_d(env, "busybox", "true") for _ in range(3)]
    # a container that fails twice more under its restart policy: 3 starts, 1 first start
    flaky = run_d(env, "--restart", "on-failure:2", "busybox", "false")
    try:
        def done() -> bool:
            rec = inspect(env, flaky)
            return rec["RestartCount"] == 2 and rec["State"]["Status"] == "exited"

        wait_for(done, what="the restarts")
        after = scrape(env.addr)
        recs = [inspect(env, cid) for cid in ids + [flaky]]
    finally:
        env("rm", "-f", *ids, flaky)

    def delta(name):
        return value(after, name) - value(before, name)

    assert delta("minirun_container_starts_total") == 3 + 3
    assert delta("minirun_container_start_duration_seconds_count") == 4
    # the first start of each: its record's creation to its start (the flaky one's first
    # start is no longer in its record: bounded by its creation and its last start)
    firsts = [stamp(r["State"]["StartedAt"]) - stamp(r["Created"]) for r in recs[:3]]
    low = sum(firsts)
    high = low + stamp(recs[3]["State"]["StartedAt"]) - stamp(recs[3]["Created"])
    got = delta("minirun_container_start_duration_seconds_sum")
    assert low < got <= high + 0.01
    inf = value(after, "minirun_container_start_duration_seconds_bucket", le="+Inf")
    assert inf == value(after, "minirun_container_start_duration_seconds_count")


def test_a_cri_pod_container_carries_pod_namespace_and_container(env):
    from minirun.engine import Engine, RunOptions
    from minirun.pods import Pods, PodSpec

    eng = Engine(env.root, env.run_root)
    pods = Pods(eng)
    uid = os.urandom(4).hex()
    # the node's namespaces: no CNI needed; the container as CreateContainer names it
    pod_id = pods.run(PodSpec(name="web", namespace="shop", uid=uid, network="node",
                              ipc="node"))
    cid = None
    try:
        cid = eng.run_detached("busybox:latest", RunOptions(
            command=["sleep", "600"], detach=True, pod=pod_id, network="host",
            name=f"k8s_app_web_shop_{uid}_0"))
        pid = eng.get(cid)["pid"]
        text = scrape(env.addr)
        cg = cgroup_of(pid, "memory")
        assert value(text, "container_processes", id=cg) == 1
        series = [lb for n, lb, _ in samples(text) if lb.get("id") == cg]
        assert series and all((lb["pod"], lb["namespace"], lb["container"]) ==
                              ("web", "shop", "app") for lb in series)
    finally:
        if cid:
            eng.remove(cid, force=True)
        pods.remove(pod_id)


# --- the endpoint ----------------------------------------------------------------------------

def test_promtool_check_metrics_passes(env, two):
    promtool = deb_tool("prometheus", "usr/bin/promtool")
    text = scrape(env.addr)
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_other_paths_and_methods(env, two):
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(env.addr, "/")
    assert e.value.code == 404
    req = urllib.request.Request(f"http://{env.addr}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 405
    # a client that connects and says nothing does not hold the daemon up
    idle = [socket.create_connection(env.addr.rsplit(":", 1)) for _ in range(20)]
    try:
        assert "container_processes" in scrape(env.addr)
        assert env("ps", check=True).returncode == 0
    finally:
        for s in idle:
            s.close()


def test_prometheus_scrapes_the_daemon(env, two, tmp_path):
    prometheus = deb_tool("prometheus", "usr/bin/prometheus")
    a, _ = two
    pid = a["State"]["Pid"]
    cg = cgroup_of(pid, "memory")
    web = f"127.0.0.1:{free_port()}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: minirun\n    scrape_interval: 1s\n"
        f"    static_configs:\n      - targets: ['{env.addr}']\n")
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={web}"], stdout=log, stderr=log,
            start_new_session=True)
    try:
        def query(q: str) -> list:
            url = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = json.load(r)
            except OSError:
                return []
            assert body["status"] == "success", body
            return body["data"]["result"]

        up = wait_for(lambda: query('up{job="minirun"} == 1'), what="prometheus's first scrape",
                      timeout=90)
        assert up[0]["metric"]["instance"] == env.addr
        limit = wait_for(lambda: query(f'container_spec_memory_limit_bytes{{id="{cg}"}}'),
                         what="the limit series")
        assert float(limit[0]["value"][1]) == \
            int(cgroup_file(pid, "memory", "memory.limit_in_bytes")) == 64 * MIB
        assert limit[0]["metric"]["name"] == "ma" and limit[0]["metric"]["image"] == "busybox"
        procs = query(f'container_processes{{id="{cg}"}}')
        assert float(procs[0]["value"][1]) == int(cgroup_file(pid, "pids", "pids.current"))
        cpu_before = int(cgroup_file(pid, "cpuacct", "cpuacct.usage"))
        cpu = float(query(f'container_cpu_usage_seconds_total{{id="{cg}"}}')[0]["value"][1])
        # scraped at most a few seconds ago; asleep, A used no cpu since
        assert abs(cpu - cpu_before / 1e9) < 0.01
        written = sum(w for _, w in blkio_bytes(pid).values())
        got = query(f'sum(container_fs_writes_bytes_total{{id="{cg}"}})')
        assert float(got[0]["value"][1]) == written
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_daemon_restarts_are_counted_across_restarts(env, two):
    before = value(scrape(env.addr), "minirun_daemon_restarts_total")
    old = env.pid_of("daemon")
    os.kill(old, signal.SIGKILL)
    # the keeper brings one back, with the metrics address it was started with

    def answered():
        if env.pid_of("daemon") in (None, old):
            return None
        try:
            return scrape(env.addr)
        except OSError:
            return None

    text = wait_for(answered, timeout=90, what="the keeper's new daemon")
    assert value(text, "minirun_daemon_restarts_total") == before + 1
    assert value(text, "container_processes", name="ma") == 1  # its containers adopted


# --- bad addresses -------------------------------------------------------------------------

@pytest.mark.parametrize("addr", ["nonsense", "127.0.0.1:99999", "localhost:9323", ":9323"])
def test_a_bad_address_is_one_line_and_leaves_nothing(addr):
    top = tempfile.mkdtemp(prefix="minirun-metrics-")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "minirun.cli", "daemon", "--root", f"{top}/lib",
             "--run-root", f"{top}/run", "--metrics", addr],
            capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "--metrics" in proc.stderr, proc.stderr
        assert os.listdir(top) == []
    finally:
        shutil.rmtree(top)


def test_a_port_in_use_is_one_line_and_leaves_nothing():
    top = tempfile.mkdtemp(prefix="minirun-metrics-")
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "minirun.cli", "daemon", "--root", f"{top}/lib",
             "--run-root", f"{top}/run", "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 1
        assert proc.stderr == f"minirun: error: --metrics 127.0.0.1:{port}: cannot listen: " \
            "Address already in use\n"
        # the data root is made before (as for any daemon); nothing under the run root
        assert not os.path.exists(f"{top}/run")
    finally:
        holder.close()
        shutil.rmtree(top)


@pytest.mark.parametrize("how", ["env", "daemon.json"])
def test_the_other_ways_to_give_the_address_are_checked_too(how):
    top = tempfile.mkdtemp(prefix="minirun-metrics-")
    try:
        env = dict(os.environ)
        env.pop("MINIRUN_METRICS", None)
        if how == "env":
            env["MINIRUN_METRICS"] = "127.0.0.1:http"
        else:
            os.makedirs(f"{top}/lib")
            with open(f"{top}/lib/daemon.json", "w") as f:
                f.write('{"metrics-addr": 9323}')
        proc = subprocess.run(
            [sys.executable, "-m", "minirun.cli", "daemon", "--root", f"{top}/lib",
             "--run-root", f"{top}/run"],
            capture_output=True, text=True, timeout=60, check=False, env=env)
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert ("127.0.0.1:http" if how == "env" else "daemon.json: metrics-addr") in proc.stderr
        assert not os.path.exists(f"{top}/run")
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("how", ["env", "daemon.json", "port in use"])
def test_a_daemon_started_on_demand_with_a_bad_address_says_why_at_once(how):
    """`minirun run` starts the daemon on first need: the daemon's own error is the
    command's, at once, not a 15 s wait for an answer that cannot come."""
    top = tempfile.mkdtemp(prefix="minirun-metrics-")
    holder = socket.socket()
    try:
        env = dict(os.environ, MINIRUN_ROOT=f"{top}/lib", MINIRUN_RUN_ROOT=f"{top}/run")
        env.pop("MINIRUN_METRICS", None)
        if how == "env":
            env["MINIRUN_METRICS"] = "127.0.0.1:http"
            why = "--metrics '127.0.0.1:http': not HOST:PORT"
        elif how == "daemon.json":
            os.makedirs(f"{top}/lib")
            with open(f"{top}/lib/daemon.json", "w") as f:
                f.write('{"metrics-addr": 9323}')
            why = "daemon.json: metrics-addr must be a string"
        else:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            env["MINIRUN_METRICS"] = f"127.0.0.1:{holder.getsockname()[1]}"
            why = "cannot listen: Address already in use"
        proc = subprocess.run([sys.executable, "-m", "minirun.cli", "run", "--rm", "--pull",
                               "never", "busybox", "true"], capture_output=True, text=True,
                              timeout=60, check=False, env=env)
        assert proc.returncode == 125
        assert proc.stderr.startswith("minirun: error: the minirun daemon did not start: ")
        assert proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr
        assert not os.path.exists(f"{top}/run/daemon.pid")
        # the daemon's log stays JSON lines (Filebeat's ndjson parser): its error is one
        with open(f"{top}/run/daemon.log") as f:
            lines = [json.loads(line) for line in f]
        assert [(d["log.level"], why in d["message"]) for d in lines] == [("error", True)]
    finally:
        holder.close()
        shutil.rmtree(top)
