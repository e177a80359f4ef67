"""Runtime conformance (issue 9): what runc accepts, minirun-oci accepts too.

ociVersion 1.x (the runtime-tools validation suite and newer podman/containerd send
1.3.0), object keys in another case (Go's encoding/json), device access letters runc
drops, an exec process.json without user, and `kill ID 0`. Checked from inside the
container, and against runc where it runs the same bundle.
"""

import json
import os
import shutil
import subprocess

import pytest
from ocitest import base_config, needs_root, oci, rootfs, wait_for  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

RUNC = shutil.which("runc")
needs_runc = pytest.mark.skipif(RUNC is None, reason="runc is not on PATH")
V1_DEVICES = "/sys/fs/cgroup/devices"


@pytest.mark.parametrize("version", ["1.3.0", "1.3.0-rc.1", "1.0.2-dev", "1.2.1"])
def test_known_versions_run_without_a_word(oci, rootfs, version):
    cfg = base_config(["echo", "ran"])
    cfg["ociVersion"] = version
    proc = oci.run(cfg, rootfs)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ran\n", "")


def test_newer_minor_runs_with_one_warning(oci, rootfs):
    cfg = base_config(["echo", "ran"])
    cfg["ociVersion"] = "1.4.0"
    proc = oci.run(cfg, rootfs)
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc.stderr
    assert proc.stderr.splitlines() == [
        ("minirun: warning: config.json: ociVersion 1.4.0 is newer than minirun knows (1.3.0); "
         "fields it does not know are refused")
    ]


@pytest.mark.parametrize("version", ["2.0.0", "0.6.0", "latest"])
def test_other_majors_and_garbage_are_refused(oci, rootfs, version):
    cfg = base_config(["echo", "ran"])
    cfg["ociVersion"] = version
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 1
    assert proc.stderr.startswith("minirun-oci: config.json: ociVersion: "), proc.stderr
    assert json.dumps(version) in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert not os.path.exists(os.path.join(oci.root, cid))


def test_features_advertise_what_is_accepted_without_warning(oci):
    doc = json.loads(oci("features", check=True).stdout)
    assert doc["ociVersionMax"] == "1.3.0"
    assert "tmpcopyup" in doc["mountOptions"]


def test_resource_keys_in_another_case_are_applied(oci, rootfs):
    """{"Pids": {"LIMIT": 7}} is pids.limit 7 under runc (Go matches keys without case)."""
    cfg = base_config(["sh", "-c", ("cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || "
                                    "cat /sys/fs/cgroup/pids.max")])
    cfg["linux"]["Resources"] = {"Pids": {"LIMIT": 7}, "DEVICES": [{"Allow": False,
                                                                     "ACCESS": "rwm"}]}
    proc = oci.run(cfg, rootfs)
    assert (proc.returncode, proc.stdout) == (0, "7\n"), proc.stderr


@pytest.mark.skipif(not os.path.isdir(V1_DEVICES), reason="no cgroup v1 devices controller")
@pytest.mark.parametrize("access,granted", [("rwa", "rw"), ("wr", "rw"), ("mrw", "rwm"),
                                             ("wa", "w"), ("rwm", "rwm"), ("", "rwm")])
def test_device_access_letters_as_runc_reads_them(oci, rootfs, access, granted):
    cfg = base_config(["cat", "/sys/fs/cgroup/devices/devices.list"])
    cfg["linux"]["resources"]["devices"].append(
        {"allow": True, "type": "c", "major": 1, "minor": 11, "access": access})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert f"c 1:11 {granted}" in proc.stdout.splitlines(), proc.stdout
    if "a" in access:
        assert proc.stderr.splitlines() == [
            (f"minirun: warning: linux.resources.devices[1].access: ignoring 'a' in "
             f"{access!r} (only r, w and m mean something, as runc reads it)")]


@needs_runc
@pytest.mark.runc
@pytest.mark.skipif(not os.path.isdir(V1_DEVICES), reason="no cgroup v1 devices controller")
def test_device_access_rwa_gives_what_runc_gives(oci, rootfs, tmp_path):
    cfg = base_config(["cat", "/sys/fs/cgroup/devices/devices.list"])
    cfg["linux"]["resources"]["devices"].append(
        {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rwa"})
    bundle = oci.bundle(cfg, rootfs)
    ours = oci("run", "--bundle", bundle, oci.new_id())
    assert ours.returncode == 0, ours.stderr
    theirs = subprocess.run([RUNC, "--root", str(tmp_path / "runc"), "run", "--bundle", bundle,
                             oci.new_id()], capture_output=True, text=True, timeout=60,
                            check=False)
    assert theirs.returncode == 0, theirs.stderr
    # (the lists differ elsewhere: runc also allows /dev/net/tun by default)
    rule = [line for line in theirs.stdout.splitlines() if line.startswith("c 1:11 ")]
    assert rule == ["c 1:11 rw"]
    assert rule == [line for line in ours.stdout.splitlines() if line.startswith("c 1:11 ")]


def test_device_access_without_r_w_or_m_is_refused(oci, rootfs):
    cfg = base_config()
    cfg["linux"]["resources"]["devices"].append(
        {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "x"})
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("minirun-oci: linux.resources.devices[1].access: 'x' has "
                                   "none of r, w, m")


def test_exec_process_json_without_user_runs_as_root(oci, rootfs, tmp_path):
    """runc reads a missing process.user as uid 0, gid 0 (the container runs as 1000)."""
    cfg = base_config(["sleep", "100"])
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    process = tmp_path / "process.json"
    process.write_text(json.dumps({
        "args": ["sh", "-c", "grep -E '^(Uid|Gid):' /proc/self/status"],
        "cwd": "/", "env": ["PATH=/bin:/usr/bin"]}))
    proc = oci("exec", "-p", process, cid)
    assert proc.returncode == 0, proc.stderr
    assert [line.split() for line in proc.stdout.splitlines()] == [
        ["Uid:", "0", "0", "0", "0"], ["Gid:", "0", "0", "0", "0"]]


def test_kill_signal_zero_checks_the_container_is_alive(oci, rootfs):
    cid = oci.new_id()
    oci("create", "--bundle", oci.bundle(base_config(["sleep", "100"]), rootfs), cid,
        check=True)
    assert oci("kill", cid, "0").returncode == 0  # created
    oci("start", cid, check=True)
    assert oci("kill", cid, "0").returncode == 0  # running
    assert oci.state(cid)["status"] == "running"  # signal 0 delivered nothing
    oci("pause", cid, check=True)
    assert oci("kill", cid, "0").returncode == 0  # paused
    oci("resume", cid, check=True)
    oci("kill", cid, "KILL", check=True)
    assert wait_for(lambda: oci.state(cid)["status"] == "stopped")
    proc = oci("kill", cid, "0")
    assert (proc.returncode, proc.stderr) == (1, "minirun-oci: container not running\n")


def test_update_resources_file_keys_in_another_case(oci, rootfs, tmp_path):
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(base_config(["sleep", "100"]), rootfs), cid,
        check=True)
    resources = tmp_path / "resources.json"
    resources.write_text(json.dumps({"PIDS": {"Limit": 9}}))
    oci("update", "-r", resources, cid, check=True)
    proc = oci("exec", cid, "sh", "-c", "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || "
                                        "cat /sys/fs/cgroup/pids.max")
    assert (proc.returncode, proc.stdout) == (0, "9\n"), proc.stderr
