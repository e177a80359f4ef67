"""Mounts, the read-only root, masked and read-only paths, and paths that are symlinks,
checked from inside the container."""

import os
import subprocess
import tempfile

import pytest

from ocitest import base_config, copy_rootfs, needs_root, oci, rootfs  # noqa: F401
from runctest import needs_runc, runc_run

pytestmark = [needs_root, pytest.mark.root]


def mountinfo_line(output: str, mountpoint: str) -> list[str]:
    for line in output.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == mountpoint:
            return fields
    raise AssertionError(f"{mountpoint} not mounted:\n{output}")


def test_readonly_root(oci, rootfs):
    proc = oci.run(base_config(["sh", "-c", "touch /x 2>&1; echo rc=$?"]), rootfs)
    assert "Read-only file system" in proc.stdout
    assert "rc=1" in proc.stdout


def test_writable_root(oci, rootfs, tmp_path):
    own = copy_rootfs(rootfs, str(tmp_path / "own-rootfs"))
    cfg = base_config(["sh", "-c", "echo data > /written && cat /written"])
    cfg["root"] = {"path": own, "readonly": False}
    proc = oci.run(cfg, rootfs)
    assert proc.stdout == "data\n", proc.stderr
    assert open(os.path.join(own, "written")).read() == "data\n"


def test_bind_mount_ro_and_rw(oci, rootfs, tmp_path):
    ro_dir = tmp_path / "ro"
    rw_dir = tmp_path / "rw"
    for d in (ro_dir, rw_dir):
        d.mkdir()
    (ro_dir / "file").write_text("from host\n")
    cfg = base_config(["sh", "-c",
                       "cat /ro/file; touch /ro/new 2>/dev/null || echo ro-refused; "
                       "echo out > /rw/new; cat /proc/self/mountinfo"])
    cfg["mounts"] += [
        {"destination": "/ro", "type": "bind", "source": str(ro_dir), "options": ["rbind", "ro"]},
        {"destination": "/rw", "type": "bind", "source": str(rw_dir),
         "options": ["bind", "rw", "nosuid", "nodev"]},
    ]
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "from host"
    assert lines[1] == "ro-refused"
    assert (rw_dir / "new").read_text() == "out\n"
    ro = mountinfo_line(proc.stdout, "/ro")
    assert "ro" in ro[5].split(",")
    rw = mountinfo_line(proc.stdout, "/rw")
    assert {"rw", "nosuid", "nodev"} <= set(rw[5].split(","))


def test_bind_mount_of_a_file(oci, rootfs, tmp_path):
    src = tmp_path / "hosts"
    src.write_text("127.0.0.1 special\n")
    cfg = base_config(["cat", "/etc/special-hosts"])
    cfg["mounts"].append({"destination": "/etc/special-hosts", "type": "bind",
                          "source": str(src), "options": ["bind", "ro"]})
    proc = oci.run(cfg, rootfs)
    assert proc.stdout == "127.0.0.1 special\n", proc.stderr


def test_tmpfs_options(oci, rootfs):
    cfg = base_config(["sh", "-c", "cat /proc/self/mountinfo; stat -c %a /scratch"])
    cfg["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "noexec", "size=1m", "mode=1770"]})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    fields = mountinfo_line(proc.stdout, "/scratch")
    assert {"nosuid", "noexec"} <= set(fields[5].split(","))
    assert "size=1024k" in fields[-1]
    assert proc.stdout.splitlines()[-1] == "1770"


def test_mount_destination_symlink_resolves_inside_rootfs(oci, rootfs, tmp_path):
    """CVE-2021-30465: a destination that is a symlink to an absolute host path must land
    inside the rootfs, never on the host."""
    own = copy_rootfs(rootfs, str(tmp_path / "own-rootfs"))
    os.symlink("/minirun-escape-target", os.path.join(own, "evil"))
    os.symlink("../../../../../../../minirun-escape-dotdot", os.path.join(own, "evil2"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("mounted\n")
    cfg = base_config(["sh", "-c", "cat /minirun-escape-target/marker "
                                   "/minirun-escape-dotdot/marker"])
    cfg["root"] = {"path": own, "readonly": False}
    cfg["mounts"] += [
        {"destination": "/evil", "type": "bind", "source": str(src), "options": ["bind"]},
        {"destination": "/evil2", "type": "bind", "source": str(src), "options": ["bind"]},
    ]
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "mounted\nmounted\n"
    assert not os.path.exists("/minirun-escape-target")
    assert not os.path.exists("/minirun-escape-dotdot")
    assert os.path.isdir(os.path.join(own, "minirun-escape-target"))


def test_masked_and_readonly_paths(oci, rootfs):
    cfg = base_config(["sh", "-c",
                       "cat /proc/timer_list 2>&1 | wc -c; ls /proc/acpi | wc -l; "
                       "echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo ro-sys; "
                       "cat /proc/self/mountinfo"])
    cfg["linux"]["maskedPaths"] = ["/proc/timer_list", "/proc/acpi", "/does/not/exist"]
    cfg["linux"]["readonlyPaths"] = ["/proc/sys", "/also/missing"]
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].strip() == "0"  # /proc/timer_list reads as /dev/null
    assert out[1].strip() == "0"  # /proc/acpi is an empty tmpfs
    assert out[2] == "ro-sys"
    assert "ro" in mountinfo_line(proc.stdout, "/proc/sys")[5].split(",")


def test_masking_refuses_symlinked_dev_null(oci, rootfs, tmp_path):
    """A /dev/null that is a symlink (here, /dev bind-mounted from an attacker's dir) is
    not used as the mask source."""
    own = copy_rootfs(rootfs, str(tmp_path / "own-rootfs"))
    fake_dev = tmp_path / "fakedev"
    fake_dev.mkdir()
    os.symlink("/etc/passwd", fake_dev / "null")
    cfg = base_config(["true"])
    cfg["root"] = {"path": own, "readonly": False}
    cfg["mounts"] = [m for m in cfg["mounts"] if not m["destination"].startswith("/dev")]
    cfg["mounts"].append({"destination": "/dev", "type": "bind", "source": str(fake_dev),
                          "options": ["rbind"]})
    cfg["linux"]["maskedPaths"] = ["/proc/kcore", "/proc/timer_list"]
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 1
    assert "/dev/null" in proc.stderr


def test_default_dev_nodes(oci, rootfs):
    proc = oci.run(base_config(["ls", "-l", "/dev"]), rootfs)
    assert proc.returncode == 0
    out = proc.stdout
    for name, nums in (("null", "1,   3"), ("zero", "1,   5"), ("full", "1,   7"),
                       ("random", "1,   8"), ("urandom", "1,   9"), ("tty", "5,   0")):
        line = [x for x in out.splitlines() if x.endswith(" " + name)][0]
        assert line.startswith("crw-rw-rw-"), line
        assert nums in line, line
    assert "ptmx -> pts/ptmx" in out
    assert "fd -> /proc/self/fd" in out


def test_extra_devices(oci, rootfs):
    cfg = base_config(["sh", "-c", "ls -l /dev/fuse-like; echo x > /dev/fuse-like && echo ok"])
    cfg["linux"]["devices"] = [{"path": "/dev/fuse-like", "type": "c", "major": 1, "minor": 3,
                                "fileMode": 0o620, "uid": 0, "gid": 5}]
    cfg["linux"]["resources"]["devices"].append({"allow": True, "type": "c", "major": 1,
                                                 "minor": 3, "access": "rw"})
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("crw--w----") and " tty " in first, first
    assert proc.stdout.splitlines()[-1] == "ok"


def test_device_cgroup_denies_unlisted_device(oci, rootfs):
    """A node created in the container but not allowed by linux.resources.devices cannot
    be opened (v1 devices cgroup)."""
    cfg = base_config(["sh", "-c", "cat /dev/mem-like 2>&1; echo rc=$?"])
    cfg["linux"]["devices"] = [{"path": "/dev/mem-like", "type": "c", "major": 1, "minor": 1,
                                "fileMode": 0o600}]
    proc = oci.run(cfg, rootfs)
    assert "Operation not permitted" in proc.stdout
    assert "rc=1" in proc.stdout


def test_no_pivot(oci, rootfs):
    proc = oci("run", "--no-pivot", "--bundle",
               oci.bundle(base_config(["sh", "-c", "ls /; cat /proc/self/mountinfo"]), rootfs),
               oci.new_id())
    assert proc.returncode == 0, proc.stderr
    assert "bin" in proc.stdout.split()


def test_rootfs_propagation_private(oci, rootfs):
    cfg = base_config(["cat", "/proc/self/mountinfo"])
    cfg["linux"]["rootfsPropagation"] = "private"
    proc = oci.run(cfg, rootfs)
    assert proc.returncode == 0, proc.stderr
    root = mountinfo_line(proc.stdout, "/")
    # optional fields (shared:N / master:N) absent: private
    assert root[6] == "-", root


@pytest.fixture
def traversable_rootfs(rootfs):
    """A rootfs copy a user namespace's root can reach (pytest's directories are 0700),
    with a directory mounts can land on."""
    top = tempfile.mkdtemp(prefix="minirun-mounts-")
    os.chmod(top, 0o755)
    dest = copy_rootfs(rootfs, os.path.join(top, "rootfs"))
    os.mkdir(os.path.join(dest, "mnt"))
    yield dest
    subprocess.run(["rm", "-rf", "--one-file-system", top], check=True)


@needs_runc
def test_bind_sources_under_a_private_directory_with_a_user_namespace(oci, traversable_rootfs,
                                                                      tmp_path):
    """As runc's userns.bats "userns with inaccessible mount": the sources sit in a 0700
    root-owned directory the container's root (host uid 100000) cannot traverse. The
    runtime takes them before it enters the user namespace; inside, they read as their
    own permissions allow."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "dir").mkdir(mode=0o755)
    (private / "dir" / "foo.txt").write_text("from a private place\n")
    (private / "file.txt").write_text("a file too\n")
    os.chmod(private / "dir" / "foo.txt", 0o644)
    os.chmod(private / "file.txt", 0o644)
    cfg = base_config(["sh", "-c", "id -u; cat /mnt/foo.txt /etc/hostname; ls /mnt"])
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["mounts"] += [
        {"destination": "/mnt", "type": "bind", "source": str(private / "dir"),
         "options": ["bind", "ro"]},
        {"destination": "/etc/hostname", "type": "bind", "source": str(private / "file.txt"),
         "options": ["rbind"]},
    ]
    expected = ["0", "from a private place", "a file too", "foo.txt"]
    proc = oci.run(cfg, traversable_rootfs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected
    witness = runc_run(cfg, traversable_rootfs, tmp_path)
    assert witness.returncode == 0, witness.stderr
    assert witness.stdout.splitlines() == expected


def test_bind_source_keeps_the_hosts_locked_flags_in_a_user_namespace(oci, traversable_rootfs,
                                                                       tmp_path):
    """The fds the runtime opens for bind sources name mounts of the container's own
    namespace, whose flags the kernel locked when it copied it from the host's: the
    container's root, even with CAP_SYS_ADMIN in its user namespace, cannot remount the
    bind of a host nosuid mount without nosuid. (A mount made inside, /dev/shm, can be
    remounted: the capability is there.)"""
    host_mount = tmp_path / "nosuid-mount"
    host_mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755,nosuid", "tmpfs",
                    str(host_mount)], check=True)
    try:
        (host_mount / "dir").mkdir()
        cfg = base_config(["sh", "-c", ("mount -o remount,bind,suid /mnt || echo locked; "
                                        "mount -o remount,bind,exec /dev/shm && echo shm-ok")])
        for kind in ("bounding", "permitted", "effective"):
            cfg["process"]["capabilities"][kind].append("CAP_SYS_ADMIN")
        cfg["linux"]["namespaces"].append({"type": "user"})
        cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        cfg["mounts"].append({"destination": "/mnt", "type": "bind",
                              "source": str(host_mount / "dir"), "options": ["bind"]})
        proc = oci.run(cfg, traversable_rootfs)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["locked", "shm-ok"], proc.stdout + proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(host_mount)], check=True)
