"""`minirun images / import / load / save / rmi / tag / image inspect / image prune` as a user
runs them: the real command line against a temporary root, output checked as docker's, and
two `minirun import` at once."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

import pytest
from clients import build_rootfs_tarball, mounts_under, remove_tree, run_in_pty

from minirun.image.store import ImageStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and layer owners need root"),
]

MINIRUN = [sys.executable, "-m", "minirun.cli"]


@pytest.fixture(scope="module")
def rootfs_tar():
    base = tempfile.mkdtemp(prefix="minirun-image-cli-rootfs-")
    try:
        yield build_rootfs_tarball(base)
    finally:
        remove_tree(base)


@pytest.fixture
def root():
    base = tempfile.mkdtemp(prefix="minirun-image-cli-")
    try:
        yield os.path.join(base, "root")
    finally:
        remove_tree(base)
        assert not mounts_under(base)


def minirun(root: str, *args: str, check: bool = True, input: bytes | str | None = None,
            stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINIRUN_ROOT=root)
    text = not isinstance(input, bytes)
    proc = subprocess.run(MINIRUN + list(args), input=input, stdout=stdout,
                          stderr=subprocess.PIPE, text=text, env=env, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"minirun {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip()}")
    return proc


def table(output: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


def variant_tarball(rootfs_tar: str, dest: str) -> str:
    """The rootfs tarball plus one file: another layer, another image."""
    out = os.path.join(dest, "variant.tar")
    with tarfile.open(rootfs_tar) as src, tarfile.open(out, "w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        info = tarfile.TarInfo("etc/variant")
        info.size = 3
        dst.addfile(info, io.BytesIO(b"v2\n"))
    return out


def test_import_images_tag_rmi(root, rootfs_tar):
    image_id = minirun(root, "import", rootfs_tar, "busybox:latest").stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    short = image_id[7:19]
    minirun(root, "tag", "busybox", "localhost:5000/team/box:v1")

    rows = table(minirun(root, "images").stdout)
    assert rows[0] == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    assert sorted(r[:3] for r in rows[1:]) == [["busybox", "latest", short],
                                               ["localhost:5000/team/box", "v1", short]]
    assert rows[1][3].endswith(" ago") and rows[1][4] == "2.14MB"
    assert minirun(root, "image", "ls").stdout == minirun(root, "images").stdout
    assert minirun(root, "images", "-q").stdout.split() == [short]
    assert minirun(root, "images", "-q", "--no-trunc").stdout.split() == [image_id]
    assert [r[0] for r in table(minirun(root, "images", "busybox").stdout)[1:]] == ["busybox"]
    lines = [json.loads(x) for x in minirun(root, "images", "--format", "json").stdout.split("\n")
             if x]
    assert {(x["Repository"], x["Tag"], x["ID"]) for x in lines} == {
        ("busybox", "latest", short), ("localhost:5000/team/box", "v1", short)}

    out = minirun(root, "rmi", "localhost:5000/team/box:v1").stdout
    assert out == "Untagged: localhost:5000/team/box:v1\n"
    out = minirun(root, "rmi", "busybox").stdout
    assert out == f"Untagged: busybox:latest\nDeleted: {image_id}\n"
    assert table(minirun(root, "images").stdout)[1:] == []
    assert os.listdir(os.path.join(root, "blobs", "sha256")) == []
    assert os.listdir(os.path.join(root, "layers")) == []

    proc = minirun(root, "rmi", "nope", check=False)
    assert proc.returncode == 1
    assert proc.stderr == "minirun: error: no such image: nope:latest\n"


def test_import_with_cmd_and_image_inspect(root, rootfs_tar):
    minirun(root, "import", "--cmd", '["sh", "-c", "echo hi"]', rootfs_tar, "box:cmd")
    (doc,) = json.loads(minirun(root, "image", "inspect", "box:cmd").stdout)
    assert doc["RepoTags"] == ["box:cmd"]
    assert doc["Config"]["Cmd"] == ["sh", "-c", "echo hi"]
    assert doc["Os"] == "linux" and doc["RootFS"]["Type"] == "layers"
    assert len(doc["RootFS"]["Layers"]) == 1
    assert doc["RepoDigests"][0].startswith("box@sha256:")
    proc = minirun(root, "image", "inspect", "box:cmd", "missing", check=False)
    assert proc.returncode == 1 and "no such image: missing:latest" in proc.stderr
    assert len(json.loads(proc.stdout)) == 1


def test_rmi_refused_while_a_container_uses_the_image(root, rootfs_tar):
    image_id = minirun(root, "import", rootfs_tar, "busybox").stdout.strip()
    store = ImageStore(root)
    store.snapshot("busybox", "c1")
    try:
        proc = minirun(root, "rmi", "busybox", check=False)
        assert proc.returncode == 1
        assert proc.stderr == "minirun: error: image busybox:latest is in use by container c1\n"
        assert minirun(root, "rmi", "-f", "busybox").stdout == "Untagged: busybox:latest\n"
        assert table(minirun(root, "images").stdout)[1][:3] == ["<none>", "<none>",
                                                                 image_id[7:19]]
        # in use: prune keeps it
        out = minirun(root, "image", "prune", "-f").stdout
        assert "deleted" not in out
    finally:
        store.release("c1")
        store.close()
    out = minirun(root, "image", "prune", "-f").stdout
    assert f"deleted: {image_id}" in out and "Total reclaimed space:" in out
    assert table(minirun(root, "images").stdout)[1:] == []


def test_prune_asks_first(root, rootfs_tar):
    minirun(root, "import", rootfs_tar)  # no name: dangling
    out = minirun(root, "image", "prune", input="n\n").stdout
    assert "Are you sure you want to continue?" in out and "deleted" not in out
    assert len(table(minirun(root, "images").stdout)) == 2
    out = minirun(root, "image", "prune", input="y\n").stdout
    assert "deleted: sha256:" in out
    assert len(table(minirun(root, "images").stdout)) == 1


def test_save_and_load_through_files_and_pipes(root, rootfs_tar):
    base = os.path.dirname(root)  # the fixture removes all of it
    image_id = minirun(root, "import", rootfs_tar, "busybox").stdout.strip()
    archive_path = os.path.join(base, "busybox.tar")
    minirun(root, "save", "-o", archive_path, "busybox")
    with open(archive_path, "rb") as f:
        saved = f.read()
    piped = subprocess.run(MINIRUN + ["save", "busybox"], capture_output=True, check=True,
                           env=dict(os.environ, MINIRUN_ROOT=root)).stdout
    assert piped == saved  # the same archive either way

    other = os.path.join(base, "other")
    out = minirun(other, "load", "-i", archive_path).stdout
    assert out == "Loaded image: busybox:latest\n"
    assert minirun(other, "images", "-q", "--no-trunc").stdout.split() == [image_id]
    third = os.path.join(base, "third")
    out = minirun(third, "load", input=piped).stdout
    assert out == b"Loaded image: busybox:latest\n"
    assert minirun(third, "images", "-q", "--no-trunc").stdout.split() == [image_id]


def test_save_refuses_a_terminal(root, rootfs_tar):
    minirun(root, "import", rootfs_tar, "busybox")
    status, out = run_in_pty(MINIRUN + ["save", "busybox"], send=b"",
                             env=dict(os.environ, MINIRUN_ROOT=root))
    assert status == 1
    assert "refusing to write an archive to a terminal" in out


def test_hostile_load_is_one_line_and_exit_1(root, tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    proc = minirun(root, "load", "-i", str(bad), check=False)
    assert proc.returncode == 1
    assert proc.stderr == "minirun: error: archive member ../escape: path with '..'\n"
    proc = minirun(root, "load", "-i", str(tmp_path / "missing.tar"), check=False)
    assert proc.returncode == 1
    assert "cannot open" in proc.stderr and "No such file" in proc.stderr


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_imports_of_two_names_both_land(root, rootfs_tar, tmp_path, round_):
    variant = variant_tarball(rootfs_tar, str(tmp_path))
    env = dict(os.environ, MINIRUN_ROOT=root)
    procs = [subprocess.Popen(MINIRUN + ["import", tar, name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for tar, name in ((rootfs_tar, "first:1"), (variant, "second:1"),
                               (rootfs_tar, "third:1"))]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0], [r[2] for r in results]
    ids = [r[1].strip() for r in results]
    assert ids[0] == ids[2] != ids[1]  # same tarball, same image
    rows = {(r[0], r[1]): r[2] for r in table(minirun(root, "images").stdout)[1:]}
    assert rows == {("first", "1"): ids[0][7:19], ("second", "1"): ids[1][7:19],
                    ("third", "1"): ids[0][7:19]}
    # the shared layer unpacked once, the variant's once
    assert len(os.listdir(os.path.join(root, "layers"))) == 2


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_imports_of_one_name_give_one_record(root, rootfs_tar, round_):
    env = dict(os.environ, MINIRUN_ROOT=root)
    procs = [subprocess.Popen(MINIRUN + ["import", rootfs_tar, "busybox:latest"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(3)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0], [r[2] for r in results]
    assert len({r[1] for r in results}) == 1
    rows = table(minirun(root, "images").stdout)[1:]
    assert [r[:2] for r in rows] == [["busybox", "latest"]]
    store = ImageStore(root)
    try:
        assert len(store.images()) == 1
    finally:
        store.close()
    assert len(os.listdir(os.path.join(root, "layers"))) == 1
    assert not [n for n in os.listdir(os.path.join(root, "blobs", "sha256"))
                if n.startswith(".tmp-")]
