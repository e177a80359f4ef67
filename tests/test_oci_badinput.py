"""Bad input gets a one-line error naming the problem, exit status 1, and leaves nothing:
no state dir, cgroup, mount or process."""

import json
import os

import pytest

from ocitest import (  # noqa: F401 - fixtures are used by name
    base_config, container_cgroup_dirs, mounts_mentioning, needs_root, oci,
    processes_rooted_in, rootfs)

pytestmark = [needs_root, pytest.mark.root]


def assert_refused(oci, proc, *words, cid=None, rootfs=None):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    if cid:
        assert not os.path.exists(os.path.join(oci.root, cid))
        assert container_cgroup_dirs(f"/minirun/{cid}") == []
    if rootfs:
        assert processes_rooted_in(rootfs) == []
        assert mounts_mentioning(rootfs) == []


def create_raw(oci, text: str, rootfs):
    cid = oci.new_id()
    bundle = oci.tmp / f"raw-{cid}"
    bundle.mkdir()
    (bundle / "config.json").write_text(text)
    return cid, oci("create", "--bundle", bundle, cid)


@pytest.mark.parametrize("text,words", [
    ("", ["invalid JSON"]),
    ("{", ["invalid JSON", "line 1"]),
    ('{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/"', ["invalid JSON"]),
    ("[]", ["config.json"]),
])
def test_malformed_config(oci, rootfs, text, words):
    cid, proc = create_raw(oci, text, rootfs)
    assert_refused(oci, proc, *words, cid=cid)


def test_missing_config(oci, tmp_path):
    cid = oci.new_id()
    proc = oci("create", "--bundle", tmp_path / "nothing-here", cid)
    assert_refused(oci, proc, "config.json", cid=cid)


@pytest.mark.parametrize("mutate,words", [
    (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), ["namespaces", "bogus"]),
    (lambda c: c["linux"]["namespaces"].append({"type": "ipc"}), ["namespaces", "ipc"]),
    (lambda c: c["process"].update(args=[]), ["process.args"]),
    (lambda c: c["process"].update(cwd="relative"), ["cwd"]),
    (lambda c: c["process"].update(cwd="/proc/self/fd/3"), ["cwd", "/proc/self/fd/3"]),
    (lambda c: c["mounts"].append({"destination": "rel", "type": "tmpfs"}), ["mounts"]),
    (lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_BOGUS"}),
     ["linux.seccomp.defaultAction", "SCMP_ACT_BOGUS"]),
    (lambda c: c["linux"].update(sysctl={"kernel.panic": "1"}), ["kernel.panic"]),
    (lambda c: c["process"].update(rlimits=[{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]),
     ["RLIMIT_BOGUS"]),
    (lambda c: c["linux"].update(namespaces=[n for n in c["linux"]["namespaces"]
                                             if n["type"] != "mount"]), ["mount namespace"]),
    (lambda c: [n.update(path="/nonexistent/ns") for n in c["linux"]["namespaces"]
                if n["type"] == "network"], ["/nonexistent/ns"]),
])
def test_invalid_config_fields(oci, rootfs, mutate, words):
    cfg = base_config(["true"])
    mutate(cfg)
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert_refused(oci, proc, *words, cid=cid, rootfs=rootfs)


@pytest.mark.parametrize("bad_id", ["a/b", "..", ".", "../escape", "x y", ""])
def test_invalid_container_id(oci, rootfs, bad_id):
    bundle = oci.bundle(base_config(["true"]), rootfs)
    proc = oci("create", "--bundle", bundle, bad_id)
    assert_refused(oci, proc, "invalid container id")
    assert not os.path.exists(oci.root) or os.listdir(oci.root) == []


def test_missing_rootfs(oci, rootfs):
    cfg = base_config(["true"])
    cfg["root"]["path"] = "/nonexistent/rootfs"
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert_refused(oci, proc, "rootfs", "/nonexistent/rootfs", cid=cid)


def test_duplicate_id(oci, rootfs):
    cid = oci.new_id()
    bundle = oci.bundle(base_config(["sleep", "60"]), rootfs)
    oci("create", "--bundle", bundle, cid, check=True)
    pid = oci.state(cid)["pid"]
    proc = oci("create", "--bundle", bundle, cid)
    assert proc.returncode == 1
    assert "already exists" in proc.stderr
    # the first container is untouched
    assert oci.state(cid)["status"] == "created"
    assert oci.state(cid)["pid"] == pid


def test_operations_on_missing_container(oci):
    for verb in (["start"], ["state"], ["kill"], ["delete"], ["pause"], ["resume"]):
        proc = oci(*verb, "no-such-ctr")
        assert proc.returncode == 1, verb
        assert "does not exist" in proc.stderr, verb
    # runc: delete --force of a missing container is not an error
    assert oci("delete", "--force", "no-such-ctr").returncode == 0


def test_failing_mount_leaves_nothing(oci, rootfs):
    cfg = base_config(["true"])
    cfg["mounts"].append({"destination": "/data", "type": "bind",
                          "source": "/nonexistent-source", "options": ["bind"]})
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert_refused(oci, proc, "/nonexistent-source", cid=cid, rootfs=rootfs)


def test_failing_kernel_mount_leaves_nothing(oci, rootfs):
    cfg = base_config(["true"])
    cfg["mounts"].append({"destination": "/data", "type": "nosuchfs", "source": "x"})
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert_refused(oci, proc, "/data", cid=cid, rootfs=rootfs)


def test_spec_refuses_to_overwrite(oci, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    proc = oci("spec", "--bundle", tmp_path)
    assert proc.returncode == 1
    assert "exists" in proc.stderr
    assert (tmp_path / "config.json").read_text() == "{}"


def test_spec_writes_default_config(oci, tmp_path):
    oci("spec", "--bundle", tmp_path, check=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["process"]["args"] == ["sh"]
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts",
                                                              "mount"}


def test_features_json(oci):
    feats = json.loads(oci("features", check=True).stdout)
    assert feats["ociVersionMin"] and feats["ociVersionMax"]
    assert set(feats["hooks"]) == {"prestart", "createRuntime", "createContainer",
                                  "startContainer", "poststart", "poststop"}
    assert "pid" in feats["linux"]["namespaces"]
    assert feats["linux"]["cgroup"]["v1"] is True
    assert feats["linux"]["cgroup"]["systemd"] is False


def test_systemd_cgroup_flag_is_refused(oci):
    proc = oci("--systemd-cgroup", "list")
    assert proc.returncode == 1
    assert "systemd" in proc.stderr and "not supported" in proc.stderr
