"""minirun-oci ps, update and events, through the real command line on real containers.

The values runc 1.1.5 accepts and refuses were taken from runc itself on this host (see
the parse tests); the runc-marked test compares output shapes with runc on one bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from ocitest import (OCI_CMD, base_config, container_cgroup_dirs, needs_root, new_id,  # noqa: F401
                     oci, rootfs, wait_for)

from minirun.ops import filter_ps_output, parse_duration, parse_ram, runc_stats, split_format

MiB = 1024 * 1024
V1_MEMORY = "/sys/fs/cgroup/memory"
RUNC = shutil.which("runc")
IN_V2_GUEST = os.environ.get("MINIRUN_IN_V2_GUEST") == "1"


def root_test(f):
    return needs_root(pytest.mark.root(f))


def cgroup_v1_only(f):
    return pytest.mark.skipif(
        IN_V2_GUEST or not os.path.isdir(V1_MEMORY), reason="needs the v1 memory hierarchy"
    )(f)


def _detached(oci, rootfs, args: list[str], memory: int | None = None, out_dir=None) -> str:
    cfg = base_config(args)
    if memory is not None:
        cfg["linux"]["resources"]["memory"] = {"limit": memory}
    if out_dir is not None:
        cfg["mounts"].append({"destination": "/tmp", "type": "bind", "source": str(out_dir),
                              "options": ["rbind", "rw"]})
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    return cid


def _ps_json(oci, cid: str) -> list[int] | None:
    return json.loads(oci("ps", "-f", "json", cid, check=True).stdout)


def _stats(oci, cid: str) -> dict:
    proc = oci("events", "--stats", cid, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    event = json.loads(lines[0])
    assert (event["type"], event["id"]) == ("stats", cid)
    return event["data"]


def _inside(oci, cid: str, *cmd: str) -> str:
    return oci("exec", cid, *cmd, check=True).stdout.strip()


def _v1_memory_limit(oci, cid: str) -> int:
    """memory.limit_in_bytes as the container sees it."""
    return int(_inside(oci, cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def _one_line_error(proc) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "warning" not in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# --- parsing, as runc 1.1.5 does it ---------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("512m", 512 * MiB), ("1g", 1024 * MiB), ("100M", 100 * MiB), ("100mb", 100 * MiB),
    ("100MiB", 100 * MiB), ("1.5m", 1572864), ("1 m", MiB), ("-1", -1), ("0", 0),
    ("4096", 4096), ("2k", 2048), ("1t", 1 << 40),
])
def test_memory_sizes_parse_as_runc_update_reads_them(text, value):
    assert parse_ram(text) == value


@pytest.mark.parametrize("text", ["1.2.3m", "-5", "abc", "10x", "1e3", "m", "1mm", "-1m",
                                  "99999999999p"])
def test_memory_sizes_runc_refuses_are_refused(text):
    with pytest.raises(Exception, match="invalid size"):
        parse_ram(text)


@pytest.mark.parametrize("text, seconds", [
    ("5s", 5), ("500ms", 0.5), ("1m", 60), ("1m30s", 90), ("1.5h", 5400), ("250us", 0.00025),
    ("0", 0), ("2h45m", 9900),
])
def test_intervals_parse_as_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, why", [("5", "missing unit"), ("5x", "unknown unit"),
                                       ("", "invalid duration"), ("s", "invalid duration")])
def test_bad_intervals_are_refused(text, why):
    with pytest.raises(Exception, match=why):
        parse_duration(text)


def test_ps_output_keeps_the_header_and_the_container_lines():
    output = ("UID   PID  PPID CMD\nroot    1     0 init\nroot   42     1 sleep 1000\n"
              "root  420     1 other\n")
    assert filter_ps_output(output, [42]) == ["UID   PID  PPID CMD", "root   42     1 sleep 1000"]
    with pytest.raises(Exception, match="PID field"):
        filter_ps_output("USER COMMAND\nroot x\n", [1])


def test_ps_format_after_the_id_and_ps_args():
    assert split_format("table", ["-f", "json"]) == ("json", [])
    assert split_format("table", ["--format=json", "--", "-o", "pid"]) == ("json", ["-o", "pid"])
    assert split_format("table", ["-f"]) == ("table", ["-f"])  # ps's own full format
    assert split_format("json", ["-o", "pid,comm"]) == ("json", ["-o", "pid,comm"])


def test_stats_layout_follows_runc_omitempty():
    data = runc_stats({"cpu": {"usage": {"total": 5, "percpu": [5], "kernel": 0, "user": 5},
                               "throttling": {"periods": 0, "throttled_periods": 0,
                                              "throttled_time": 0}},
                       "memory": {"usage": {"usage": 10, "max": 0, "limit": 20, "failcnt": 0},
                                  "working_set": 8, "raw": {"b": 1, "a": 2}},
                       "pids": {"current": 2, "limit": 0}})
    assert data["cpu"] == {"usage": {"total": 5, "percpu": [5], "kernel": 0, "user": 5},
                           "throttling": {}}
    assert data["memory"]["usage"] == {"limit": 20, "usage": 10, "failcnt": 0}
    assert data["memory"]["kernel"] == {"limit": 0, "failcnt": 0}
    assert list(data["memory"]["raw"]) == ["a", "b"]
    assert data["pids"] == {"current": 2}
    assert data["network_interfaces"] is None and data["blkio"] == {}


# --- ps -------------------------------------------------------------------------------------

@root_test
def test_ps_json_lists_the_init_and_its_child(oci, rootfs):
    cid = _detached(oci, rootfs, ["sh", "-c", "sleep 1000 & wait"])
    pids = wait_for(lambda: (p := _ps_json(oci, cid)) and len(p) == 2 and p)
    assert pids, _ps_json(oci, cid)
    init = oci.state(cid)["pid"]
    assert init in pids
    child = next(p for p in pids if p != init)
    with open(f"/proc/{child}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"1000"]
    assert os.getpid() not in pids
    # flags may also follow the id (runc would hand them to ps)
    assert sorted(json.loads(oci("ps", cid, "-f", "json", check=True).stdout)) == sorted(pids)


@root_test
def test_ps_table_has_the_header_and_the_sleep_line(oci, rootfs):
    cid = _detached(oci, rootfs, ["sh", "-c", "sleep 1000 & wait"])
    pids = wait_for(lambda: (p := _ps_json(oci, cid)) and len(p) == 2 and p)
    lines = oci("ps", cid, check=True).stdout.splitlines()
    assert lines[0].split()[:3] == ["UID", "PID", "PPID"]  # ps -ef's header
    assert sorted(int(line.split()[1]) for line in lines[1:]) == sorted(pids)
    assert any(line.endswith("sleep 1000") for line in lines[1:]), lines
    custom = oci("ps", cid, "--", "-o", "pid,comm", check=True).stdout.splitlines()
    assert custom[0].split() == ["PID", "COMMAND"]
    assert sorted(line.split()[1] for line in custom[1:]) == ["sh", "sleep"]
    bad = oci("ps", cid, "-o", "nosuchcolumn")
    assert "ps -o nosuchcolumn: exit status" in _one_line_error(bad)


@root_test
def test_ps_of_a_missing_or_stopped_container(oci, rootfs):
    missing = oci("ps", "nosuchcontainer")
    assert "does not exist" in _one_line_error(missing)
    cid = _detached(oci, rootfs, ["true"])
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    # as runc: nothing listed, Go's encoding of an empty list, the bare header
    assert oci("ps", "-f", "json", cid, check=True).stdout == "null\n"
    table = oci("ps", cid, check=True).stdout.splitlines()
    assert len(table) == 1 and "PID" in table[0].split()


# --- update ---------------------------------------------------------------------------------

@root_test
@cgroup_v1_only
def test_update_memory_is_seen_inside_and_in_stats(oci, rootfs):
    cid = _detached(oci, rootfs, ["sleep", "1000"], memory=64 * MiB)
    assert _v1_memory_limit(oci, cid) == 64 * MiB
    oci("update", "--memory", "48m", cid, check=True)
    assert _v1_memory_limit(oci, cid) == 48 * MiB
    assert _stats(oci, cid)["memory"]["usage"]["limit"] == 48 * MiB
    # a later update of something else keeps it; a paused container can be updated
    oci("pause", cid, check=True)
    oci("update", "--pids-limit", "20", "--memory-reservation", "16m", cid, check=True)
    oci("resume", cid, check=True)
    stats = _stats(oci, cid)
    assert stats["memory"]["usage"]["limit"] == 48 * MiB
    assert stats["pids"]["limit"] == 20
    assert int(_inside(oci, cid, "cat", "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes")) \
        == 16 * MiB
    oci("update", "--memory", "-1", cid, check=True)
    assert _v1_memory_limit(oci, cid) > 1 << 60  # unlimited
    # accepted and ignored with one warning, as runc 1.1 does
    proc = oci("update", "--kernel-memory", "10m", "--kernel-memory-tcp", "1m", cid, check=True)
    assert proc.stderr.count("kernel memory settings are ignored") == 1


@root_test
@cgroup_v1_only
def test_update_from_a_resources_file_and_stdin(oci, rootfs, tmp_path):
    cid = _detached(oci, rootfs, ["sleep", "1000"], memory=64 * MiB)
    doc = tmp_path / "resources.json"
    doc.write_text(json.dumps({"memory": {"limit": 40 * MiB}, "cpu": {"shares": 512},
                               "pids": {"limit": 30}}))
    oci("update", "-r", doc, cid, check=True)
    assert _v1_memory_limit(oci, cid) == 40 * MiB
    assert _inside(oci, cid, "cat", "/sys/fs/cgroup/cpu/cpu.shares") == "512"
    assert _inside(oci, cid, "cat", "/sys/fs/cgroup/pids/pids.max") == "30"
    proc = subprocess.run(OCI_CMD + ["--root", oci.root, "update", "-r", "-", cid],
                          input=json.dumps({"memory": {"limit": 36 * MiB}}), text=True,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert _v1_memory_limit(oci, cid) == 36 * MiB
    # with -r the other flags are ignored, as runc does, and said so
    doc.write_text(json.dumps({"cpu": {"shares": 256}}))
    proc = oci("update", "-r", doc, "--memory", "20m", cid, check=True)
    assert "--memory" in proc.stderr
    assert _v1_memory_limit(oci, cid) == 36 * MiB
    assert _inside(oci, cid, "cat", "/sys/fs/cgroup/cpu/cpu.shares") == "256"
    # what runc's update does not change is named, not dropped silently
    doc.write_text(json.dumps({"memory": {"limit": 30 * MiB, "swappiness": 10},
                               "devices": [{"allow": False, "access": "rwm"}]}))
    proc = oci("update", "-r", doc, cid, check=True)
    assert "devices" in proc.stderr and "memory.swappiness" in proc.stderr
    assert _v1_memory_limit(oci, cid) == 30 * MiB
    assert _inside(oci, cid, "cat", "/dev/null") == ""  # device rules untouched


@root_test
def test_update_pids_limit_makes_further_forks_fail(oci, rootfs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = ("while [ ! -e /tmp/go ]; do sleep 0.05; done; "
              "for i in 1 2 3 4 5 6 7 8; do sleep 1000 & echo $i >> /tmp/forked; done; "
              "echo done >> /tmp/forked; wait")
    cid = _detached(oci, rootfs, ["sh", "-c", script], out_dir=out)
    oci("update", "--pids-limit", "4", cid, check=True)
    (out / "go").write_text("")
    # sh plus three sleeps fill the limit: the fourth fork fails and sh gives up
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped" or
                    len(_ps_json(oci, cid) or []) >= 4, timeout=20)
    time.sleep(0.5)
    forked = (out / "forked").read_text().split() if (out / "forked").exists() else []
    assert forked == ["1", "2", "3"], forked
    assert len(_ps_json(oci, cid) or []) <= 4


@root_test
@cgroup_v1_only
def test_bad_values_leave_the_old_limits_in_place(oci, rootfs, tmp_path):
    cid = _detached(oci, rootfs, ["sleep", "1000"], memory=64 * MiB)
    oci("update", "--cpu-quota", "50000", "--cpu-period", "100000", cid, check=True)
    doc = tmp_path / "bad.json"
    bad_docs = [{"memory": {"limit": -7}}, {"memory": {"limit": "1g"}},
                {"memory": {"limit": 32 * MiB}, "cpu": {"quota": -5}},
                {"memory": {"limit": 32 * MiB}, "nosuchthing": {}}]
    attempts = [["--memory", "abc"], ["--memory", "-5"], ["--memory", "32m", "--cpu-quota", "-5"],
                ["--memory", "32m", "--cpu-share", "-5"], ["--memory", "32m", "--pids-limit", "x"],
                ["--memory", "32m", "--memory-swap", "16m"],
                ["--memory", "32m", "--blkio-weight", "5000"],
                ["--memory", "32m", "--l3-cache-schema", "L3:0=f"],
                # refused by the kernel after the memory write: set back
                ["--memory", "32m", "--cpuset-cpus", "4095"]]
    for args in attempts:
        _one_line_error(oci("update", *args, cid))
    for bad in bad_docs:
        doc.write_text(json.dumps(bad))
        _one_line_error(oci("update", "-r", doc, cid))
    doc.write_text("{not json")
    _one_line_error(oci("update", "-r", doc, cid))
    _one_line_error(oci("update", "-r", tmp_path / "missing.json", cid))
    assert _v1_memory_limit(oci, cid) == 64 * MiB
    assert _inside(oci, cid, "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") == "50000"
    assert _stats(oci, cid)["memory"]["usage"]["limit"] == 64 * MiB


@root_test
def test_update_of_a_stopped_or_missing_container(oci, rootfs):
    assert "does not exist" in _one_line_error(oci("update", "--memory", "32m", "nosuch"))
    cid = _detached(oci, rootfs, ["true"])
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    assert "container not running" in _one_line_error(oci("update", "--memory", "32m", cid))


# --- events ---------------------------------------------------------------------------------

@root_test
def test_events_stats_has_runc_fields_with_plausible_values(oci, rootfs):
    cid = _detached(oci, rootfs, ["sh", "-c", "sleep 1000 & wait"], memory=64 * MiB)
    wait_for(lambda: len(_ps_json(oci, cid) or []) == 2)
    data = _stats(oci, cid)
    assert {"cpu", "memory", "pids", "blkio", "hugetlb", "intel_rdt",
            "network_interfaces"} <= set(data)
    assert data["cpu"]["usage"]["total"] > 0
    assert data["cpu"]["usage"]["kernel"] + data["cpu"]["usage"]["user"] >= 0
    memory = data["memory"]
    assert memory["usage"]["usage"] > 0
    assert memory["usage"]["limit"] == 64 * MiB
    assert 0 < memory["working_set"] <= memory["usage"]["usage"]
    assert data["pids"]["current"] >= 2


@root_test
def test_events_refuses_bad_intervals_and_stopped_containers(oci, rootfs):
    cid = _detached(oci, rootfs, ["sleep", "1000"])
    assert "missing unit" in _one_line_error(oci("events", "--interval", "5", cid))
    assert "greater than 0" in _one_line_error(oci("events", "--interval", "0s", cid))
    assert "does not exist" in _one_line_error(oci("events", "--stats", "nosuch"))
    oci("kill", cid, "KILL", check=True)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    assert f"container with id {cid} is not running" in \
        _one_line_error(oci("events", "--stats", cid))


def _events_process(oci, cid: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(OCI_CMD + ["--root", oci.root, "events", *args, cid],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, list[dict], str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, [json.loads(line) for line in out.splitlines()], err


MEMHOG = "head -c 200000000 /dev/zero | tail -c 100000000 > /dev/null"


@root_test
def test_events_stream_reports_an_oom_kill_and_ends_with_the_container(oci, rootfs):
    cfg = base_config(["sh", "-c", f"sleep 1.5; {MEMHOG}; sleep 1.5"])
    cfg["linux"]["resources"]["memory"] = {"limit": 32 * MiB}
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    proc = _events_process(oci, cid, "--interval", "500ms")
    try:
        time.sleep(1)  # the stream has registered for OOM notifications
        oci("start", cid, check=True)
        code, events, err = _finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert oci.state(cid)["status"] == "stopped"
    ooms = [e for e in events if e["type"] == "oom"]
    # one event per OOM kill: usually tail alone, now and then more of the pipeline
    assert ooms and all(e == {"type": "oom", "id": cid} for e in ooms), events
    stats = [e for e in events if e["type"] == "stats"]
    assert len(stats) >= 2, events  # ~4 s at 500 ms (fewer if the shell itself is killed)
    assert all(e["id"] == cid and e["data"]["memory"]["usage"]["limit"] == 32 * MiB
               for e in stats)


@root_test
def test_events_stream_without_oom_reports_stats_until_killed(oci, rootfs):
    cid = _detached(oci, rootfs, ["sleep", "1000"])
    proc = _events_process(oci, cid, "--interval", "200ms")
    try:
        time.sleep(1.5)
        oci("kill", cid, "KILL", check=True)
        code, events, err = _finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert events and all(e["type"] == "stats" for e in events)
    assert 3 <= len(events) <= 10, len(events)


# --- against runc ---------------------------------------------------------------------------

RUNC_PARENT = "minirun-opsdiff"


def _key_paths(obj, prefix: str = "") -> set[str]:
    """Every key path in a JSON document ("memory.usage.limit"), lists by their first item."""
    paths = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            paths.add(prefix + k)
            paths |= _key_paths(v, prefix + k + ".")
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        paths |= _key_paths(obj[0], prefix + "[].")
    return paths


# What minirun adds to runc's layout, and what its drivers do not read yet.
MINIRUN_ONLY = {"memory.working_set"}
NOT_YET = {"cpuset", "cpu.usage.percpu_kernel", "cpu.usage.percpu_user"}


@root_test
@cgroup_v1_only
@pytest.mark.runc
@pytest.mark.skipif(RUNC is None, reason="runc is not installed")
def test_events_stats_and_ps_json_have_runc_shapes(oci, rootfs, tmp_path):
    args = ["sh", "-c", "sleep 1000 & wait"]
    cfg = base_config(args)
    cfg["linux"]["resources"]["memory"] = {"limit": 64 * MiB}
    rid = new_id("r")
    runc_cfg = json.loads(json.dumps(cfg))
    # Without an absolute cgroupsPath runc would make its cgroup under ours, in this
    # machine's own cgroup.
    runc_cfg["linux"]["cgroupsPath"] = f"/{RUNC_PARENT}/{rid}"
    runc_bundle = oci.bundle(runc_cfg, rootfs, name="runc-bundle")
    runc_root = str(tmp_path / "runc-state")

    def runc(*a: str) -> subprocess.CompletedProcess:
        with open(os.devnull, "rb") as null:
            return subprocess.run([RUNC, "--root", runc_root, *a], stdin=null,
                                  capture_output=True, text=True, timeout=60, check=False)

    try:
        r = subprocess.run([RUNC, "--root", runc_root, "run", "-d", "--bundle", runc_bundle,
                            rid], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=False)
        assert r.returncode == 0
        cid = _detached(oci, rootfs, args, memory=64 * MiB)
        assert wait_for(lambda: len(json.loads(runc("ps", "-f", "json", rid).stdout)) == 2)
        assert wait_for(lambda: len(_ps_json(oci, cid) or []) == 2)

        runc_pids = json.loads(runc("ps", "-f", "json", rid).stdout)
        assert all(isinstance(p, int) for p in runc_pids + _ps_json(oci, cid))
        runc_table = runc("ps", rid).stdout.splitlines()
        ours_table = oci("ps", cid, check=True).stdout.splitlines()
        assert runc_table[0] == ours_table[0] and len(runc_table) == len(ours_table)

        runc_event = json.loads(runc("events", "--stats", rid).stdout)
        ours_event = json.loads(oci("events", "--stats", cid, check=True).stdout)
        assert set(runc_event) == set(ours_event) == {"type", "id", "data"}
        # blkio's entries depend on what each container happened to read from disk
        runc_keys = {k for k in _key_paths(runc_event["data"]) if not k.startswith("blkio.")}
        ours_keys = {k for k in _key_paths(ours_event["data"]) if not k.startswith("blkio.")}
        missing = {k for k in runc_keys - ours_keys
                   if not any(k == n or k.startswith(n + ".") for n in NOT_YET)}
        assert not missing, f"in runc's events --stats, not in ours: {sorted(missing)}"
        assert ours_keys - runc_keys == MINIRUN_ONLY
        for path in ("memory.usage.limit", "pids.current"):
            a, b = runc_event["data"], ours_event["data"]
            for key in path.split("."):
                a, b = a[key], b[key]
            assert a == b, path
        # both stopped: the same answers
        runc("kill", rid, "KILL")
        oci("kill", cid, "KILL", check=True)
        assert wait_for(lambda: json.loads(runc("state", rid).stdout)["status"] == "stopped")
        assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
        assert runc("ps", "-f", "json", rid).stdout == oci("ps", "-f", "json", cid).stdout
        assert runc("events", "--stats", rid).returncode == \
            oci("events", "--stats", cid).returncode == 1
        assert runc("update", "--memory", "32m", rid).returncode == \
            oci("update", "--memory", "32m", cid).returncode == 1
    finally:
        runc("delete", "--force", rid)
        leftovers = container_cgroup_dirs(f"/{RUNC_PARENT}/{rid}")
        for d in container_cgroup_dirs(f"/{RUNC_PARENT}"):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
    assert not leftovers, f"runc left cgroups: {leftovers}"


# --- cgroup v2 (in the QEMU guest) ---------------------------------------------------------

@root_test
@pytest.mark.cgroup_v2
def test_v2_update_stats_and_oom_event(oci, rootfs):
    # smaller than on the host: the emulated guest copies bytes slowly
    memhog = "head -c 40000000 /dev/zero | tail -c 30000000 > /dev/null"
    script = f"while [ ! -e /dev/shm/go ]; do sleep 0.1; done; {memhog}; sleep 2"
    cfg = base_config(["sh", "-c", script])
    cfg["linux"]["resources"]["memory"] = {"limit": 64 * MiB}
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    oci("update", "--memory", "16m", "--pids-limit", "50", cid, check=True)
    cgroup = f"/sys/fs/cgroup/minirun/{cid}"
    with open(f"{cgroup}/memory.max") as f:
        assert int(f.read()) == 16 * MiB
    data = _stats(oci, cid)
    assert data["memory"]["usage"]["limit"] == 16 * MiB
    assert data["memory"]["usage"]["usage"] > 0 and data["pids"]["current"] >= 1
    assert data["pids"]["limit"] == 50
    proc = _events_process(oci, cid, "--interval", "1s")
    try:
        time.sleep(3)  # the guest is slow: let the stream start watching memory.events
        pid = oci.state(cid)["pid"]
        with open(f"/proc/{pid}/root/dev/shm/go", "w"):
            pass
        code, events, err = _finish(proc, timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    # one event per OOM kill: under emulation the kernel may kill both ends of the
    # memhog pipeline, so at least one, each for this container
    ooms = [e for e in events if e["type"] == "oom"]
    assert ooms and all(e == {"type": "oom", "id": cid} for e in ooms), events
