"""tmpcopyup (runc's and crun's mount extension, podman's --read-only and --tmpfs): a tmpfs
mounted on a directory of the rootfs starts with that directory's contents, writable,
while the image stays as it was; symlinks are copied, never followed out of the rootfs."""

import os
import stat

import pytest
from ocitest import base_config, copy_rootfs, needs_root, oci, rootfs  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

MTIME = 978307200  # 2001-01-01


@pytest.fixture
def image(rootfs, tmp_path):
    """A rootfs of our own with an /etc worth copying, and a host directory it must not
    reach."""
    root = copy_rootfs(rootfs, str(tmp_path / "image"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    etc = os.path.join(root, "etc")
    with open(os.path.join(etc, "owned"), "w") as f:
        f.write("owned by 1000\n")
    os.chown(os.path.join(etc, "owned"), 1000, 1001)
    os.chmod(os.path.join(etc, "owned"), 0o640)
    os.utime(os.path.join(etc, "owned"), (MTIME, MTIME))
    os.makedirs(os.path.join(etc, "deep", "er"))
    with open(os.path.join(etc, "deep", "er", "file"), "w") as f:
        f.write("nested\n")
    os.chmod(os.path.join(etc, "deep"), 0o751)
    os.symlink("/etc/owned", os.path.join(etc, "inside-link"))
    os.symlink(str(outside / "secret"), os.path.join(etc, "host-link"))
    os.symlink(str(outside), os.path.join(root, "evil"))  # a destination leading out
    os.mkfifo(os.path.join(etc, "fifo"))
    os.chmod(os.path.join(etc, "fifo"), 0o620)
    os.chmod(os.path.join(etc, "hosts"), 0o4755)  # set-id bits survive the chown
    return root, outside


def _config(script: str, destination: str = "/etc") -> dict:
    cfg = base_config(["sh", "-c", script])
    cfg["process"]["capabilities"] = {k: ["CAP_DAC_OVERRIDE"] for k in
                                      ("bounding", "effective", "permitted")}
    cfg["mounts"].append({"destination": destination, "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "nodev", "mode=755", "tmpcopyup"]})
    return cfg


def test_tmpfs_starts_with_the_directory_contents(oci, image):
    root, _ = image
    script = ("grep ' /etc ' /proc/mounts | cut -d' ' -f3; "
              "stat -c '%n %u %g %a %Y' /etc/owned /etc/deep /etc/hosts; "
              "stat -c '%n %F %a' /etc/fifo; "
              "cat /etc/owned /etc/deep/er/file; readlink /etc/inside-link; cat /etc/inside-link; "
              "echo new > /etc/new && cat /etc/new; echo changed > /etc/owned")
    cfg = _config(script)
    cfg["root"]["path"] = root
    proc = oci.run(cfg, root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "tmpfs",
        f"/etc/owned 1000 1001 640 {MTIME}",
        f"/etc/deep 0 0 751 {int(os.stat(os.path.join(root, 'etc', 'deep')).st_mtime)}",
        f"/etc/hosts 0 0 4755 {int(os.stat(os.path.join(root, 'etc', 'hosts')).st_mtime)}",
        "/etc/fifo fifo 620",
        "owned by 1000",
        "nested",
        "/etc/owned",
        "owned by 1000",
        "new",
    ]
    # the image is untouched: the writes went to the container's tmpfs
    assert not os.path.exists(os.path.join(root, "etc", "new"))
    with open(os.path.join(root, "etc", "owned")) as f:
        assert f.read() == "owned by 1000\n"
    assert stat.S_ISFIFO(os.lstat(os.path.join(root, "etc", "fifo")).st_mode)


def test_symlinks_are_copied_not_followed(oci, image):
    """CVE-2021-30465's lesson: the copy never reads through a symlink, so a link to a host
    path stays a link, resolved inside the container where that path does not exist."""
    root, outside = image
    cfg = _config("readlink /etc/host-link; cat /etc/host-link 2>/dev/null || echo unreadable")
    cfg["root"]["path"] = root
    proc = oci.run(cfg, root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(outside / "secret"), "unreadable"]


def test_a_destination_symlink_leading_out_stays_in_the_rootfs(oci, image):
    root, outside = image
    cfg = _config("ls -A /evil; echo end", destination="/evil")
    cfg["root"]["path"] = root
    proc = oci.run(cfg, root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["end"]  # nothing of the host directory was copied
    assert os.listdir(outside) == ["secret"]


def test_tmpcopyup_over_a_missing_directory_is_an_empty_tmpfs(oci, image):
    root, _ = image
    cfg = _config("ls -A /fresh; grep ' /fresh ' /proc/mounts | cut -d' ' -f3",
                  destination="/fresh")
    cfg["root"]["path"] = root
    proc = oci.run(cfg, root)
    assert (proc.returncode, proc.stdout) == (0, "tmpfs\n"), proc.stderr


def test_other_unsupported_mount_options_are_named(oci, rootfs):
    cfg = base_config()
    cfg["mounts"].append({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "idmap"]})
    cid = oci.new_id()
    proc = oci("create", "--bundle", oci.bundle(cfg, rootfs), cid)
    assert proc.returncode == 1
    assert proc.stderr == ('minirun-oci: config.json: mounts[7].options[1] "idmap": not '
                           "supported by minirun yet\n")
