"""Namespaces: new ones, joined ones, the user namespace with id maps."""

import os
import signal
import subprocess
import time

import pytest

from ocitest import (base_config, copy_rootfs, mounts_mentioning, needs_root, oci,  # noqa: F401
                     rootfs, wait_for)
from runctest import needs_runc, runc_run

pytestmark = [needs_root, pytest.mark.root]

NS_FILES = ["pid", "net", "mnt", "ipc", "uts", "cgroup", "user", "time"]


def ns_report() -> list[str]:
    return ["sh", "-c", "for n in " + " ".join(NS_FILES) +
            "; do echo $n $(readlink /proc/self/ns/$n); done"]


def parse_ns(out: str) -> dict:
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


def host_ns() -> dict:
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in NS_FILES}


def test_default_namespaces_are_new_others_shared(oci, rootfs):
    proc = oci.run(base_config(ns_report()), rootfs)
    inside = parse_ns(proc.stdout)
    host = host_ns()
    for n in ("pid", "net", "mnt", "ipc", "uts"):
        assert inside[n] != host[n], n
    for n in ("cgroup", "user", "time"):
        assert inside[n] == host[n], n


def test_cgroup_and_time_namespaces(oci, rootfs):
    cfg = base_config(["sh", "-c", ns_report()[2] + "; cat /proc/self/cgroup"])
    cfg["linux"]["namespaces"] += [{"type": "cgroup"}, {"type": "time"}]
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    inside = parse_ns("\n".join(proc.stdout.splitlines()[:len(NS_FILES)]))
    host = host_ns()
    assert inside["cgroup"] != host["cgroup"]
    assert inside["time"] != host["time"]
    # in its own cgroup namespace the container sees itself at the root
    for line in proc.stdout.splitlines()[len(NS_FILES):]:
        assert line.split(":", 2)[2] == "/", line


def test_network_namespace_has_only_loopback(oci, rootfs):
    proc = oci.run(base_config(["ls", "/sys/class/net"]), rootfs)
    assert proc.stdout.split() == ["lo"]


LOOPBACK_PROBE = ("cat /sys/class/net/lo/flags; ip -4 addr show lo | grep -o 'inet [0-9./]*'; "
                  "nc -l -p 8080 -e echo pong & sleep 0.3; "
                  "echo ping | nc 127.0.0.1 8080")


@needs_runc
def test_new_network_namespace_has_loopback_up(oci, rootfs, tmp_path):
    """As runc (its loopback network for a netns it makes): lo is up with 127.0.0.1, so a
    service on 127.0.0.1 answers inside; both runtimes print the same."""
    cfg = base_config(["sh", "-c", LOOPBACK_PROBE])
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    flags, addr, reply = proc.stdout.split("\n")[:3]
    assert int(flags, 16) & 0x1, flags  # IFF_UP
    assert addr == "inet 127.0.0.1/8"
    assert reply == "pong"
    witness = runc_run(cfg, rootfs, tmp_path)
    assert witness.returncode == 0, witness.stderr
    assert witness.stdout == proc.stdout


def test_joined_network_namespace_keeps_its_loopback_as_found(oci, rootfs, tmp_path):
    """A netns given by path is the caller's: its lo is left as it is (down here)."""
    netns = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        time.sleep(0.3)
        cfg = base_config(["cat", "/sys/class/net/lo/flags"])
        cfg["linux"]["namespaces"] = [
            n for n in cfg["linux"]["namespaces"] if n["type"] != "network"
        ] + [{"type": "network", "path": f"/proc/{netns.pid}/ns/net"}]
        proc = oci.run(cfg, rootfs)
        assert proc.returncode == 0, proc.stderr
        assert not int(proc.stdout.strip(), 16) & 0x1
    finally:
        netns.kill()
        netns.wait()


def test_hostname_and_domainname(oci, rootfs):
    cfg = base_config(["sh", "-c", "hostname; cat /proc/sys/kernel/domainname"])
    cfg["hostname"] = "inside"
    cfg["domainname"] = "example.test"
    proc = oci.run(cfg, rootfs)
    assert proc.stdout.split() == ["inside", "example.test"]
    assert os.uname().nodename != "inside"


def test_join_namespaces_by_path(oci, rootfs):
    holder = subprocess.Popen(["unshare", "--net", "--uts", "--ipc", "sh", "-c",
                               "hostname joined-uts; exec sleep 100"])
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/uts") !=
                        os.readlink("/proc/self/ns/uts") and
                        open(f"/proc/{holder.pid}/cmdline", "rb").read().startswith(b"sleep"))
        cfg = base_config(["sh", "-c", ns_report()[2] + "; hostname"])
        for ns in cfg["linux"]["namespaces"]:
            if ns["type"] in ("network", "uts", "ipc"):
                ns["path"] = f"/proc/{holder.pid}/ns/" + {"network": "net"}.get(ns["type"],
                                                                                  ns["type"])
        cfg.pop("hostname", None)
        proc = oci.run(cfg, rootfs)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        inside = parse_ns("\n".join(lines[:len(NS_FILES)]))
        for n in ("net", "uts", "ipc"):
            assert inside[n] == os.readlink(f"/proc/{holder.pid}/ns/{n}"), n
        assert lines[-1] == "joined-uts"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.fixture
def userns_rootfs(rootfs):
    """The mapped root must reach the rootfs (as with runc): a copy under a directory
    anyone may traverse, since pytest's own temporary directories are 0700."""
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="minirun-userns-")
    os.chmod(top, 0o755)
    dest = os.path.join(top, "rootfs")
    shutil.copytree(rootfs, dest, symlinks=True)
    yield dest
    subprocess.run(["rm", "-rf", "--one-file-system", top], check=True)


def test_user_namespace_with_mappings(oci, userns_rootfs):
    rootfs = userns_rootfs
    cfg = base_config(["sh", "-c", "id -u; cat /proc/self/uid_map /proc/self/gid_map; "
                                   "readlink /proc/self/ns/user; sleep 60"])
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    proc = oci("run", "-d", "--bundle", bundle, cid)
    assert proc.returncode == 0, proc.stderr
    pid = oci.state(cid)["pid"]
    # from the host the container's root is uid 100000
    assert wait_for(lambda: open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sleep"))
    with open(f"/proc/{pid}/status") as f:
        uids = [line for line in f if line.startswith("Uid:")][0].split()[1:]
    assert uids == ["100000"] * 4
    with open(f"/proc/{pid}/uid_map") as f:
        assert f.read().split() == ["0", "100000", "65536"]
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    oci("delete", "--force", cid, check=True)


def test_user_namespace_sees_itself_as_root(oci, userns_rootfs):
    rootfs = userns_rootfs
    cfg = base_config(["sh", "-c", "id -u; id -g; grep CapEff /proc/self/status; ls /dev"])
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[:2] == ["0", "0"]
    assert "null" in proc.stdout.split()


def test_pid_namespace_shared_with_host_when_absent(oci, rootfs):
    cfg = base_config(["sh", "-c", "echo $$"])
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "pid"]
    cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] != "/proc"]
    cfg["mounts"].append({"destination": "/proc", "type": "bind", "source": "/proc",
                          "options": ["rbind"]})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 1


def host_propagation() -> list[tuple[str, str]]:
    """Each host mount with its propagation (shared:N, master:N or none)."""
    with open("/proc/self/mountinfo") as f:
        return [(line.split()[4], " ".join(line.split(" - ")[0].split()[6:])) for line in f]


def no_mount_namespace(cfg: dict) -> dict:
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "mount"]
    return cfg


def test_no_mount_namespace_sets_up_on_the_host_and_cleans_up(oci, rootfs, tmp_path):
    """Without a mount namespace the rootfs is set up in the caller's (runc runs such a
    config too): the container's mounts are the host's while it runs, it is chrooted into
    its rootfs, and delete leaves nothing mounted. runc 1.1.5 itself is not run here: it
    makes the host's "/" a recursive slave and leaves every mount behind after delete."""
    own = copy_rootfs(rootfs, str(tmp_path / "own-rootfs"))
    report = tmp_path / "report"
    report.mkdir()
    script = ("(readlink /proc/self/ns/mnt; ls /; touch /x 2>/dev/null || echo ro) > /tmp/out;"
              " sleep 60")
    cfg = no_mount_namespace(base_config(["sh", "-c", script]))
    cfg["root"] = {"path": own, "readonly": True}
    cfg["mounts"].append({"destination": "/tmp", "type": "bind", "source": str(report),
                          "options": ["bind"]})
    del cfg["linux"]["maskedPaths"], cfg["linux"]["readonlyPaths"]
    before = host_propagation()
    cid = oci.new_id()
    oci("run", "-d", "--bundle", oci.bundle(cfg, rootfs), cid, check=True)
    out = report / "out"
    assert wait_for(lambda: out.exists() and "ro" in out.read_text().split())
    lines = out.read_text().split()
    assert lines[0] == os.readlink("/proc/self/ns/mnt")
    assert "bin" in lines and "etc" in lines
    points = {line.split()[4] for line in mounts_mentioning(own)}
    assert {own, f"{own}/proc", f"{own}/dev", f"{own}/dev/pts", f"{own}/sys"} <= points
    oci("delete", "--force", cid, check=True)
    assert mounts_mentioning(own) == []
    assert host_propagation() == before


@needs_runc
def test_no_mount_namespace_refuses_masked_paths(oci, rootfs, tmp_path):
    """Masked and read-only paths cannot be kept from a container in the host's mount
    namespace: refused, as runc refuses them, with nothing left behind."""
    cfg = no_mount_namespace(base_config(["true"]))
    cid = oci.new_id()
    proc = oci("run", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "minirun-oci: config.json: linux.maskedPaths needs a mount namespace"]
    assert not os.path.exists(os.path.join(oci.root, cid))
    assert mounts_mentioning(rootfs) == []
    witness = runc_run(cfg, rootfs, tmp_path)
    assert witness.returncode == 1 and "MNT namespace" in witness.stderr, witness.stderr
