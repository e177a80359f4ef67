"""`minirun save` picks images and names as `docker save` does (moby image/tarexport
parseNames): a repository without tag saves every tag of it, NAME:TAG that tag, an image id
or NAME@DIGEST the image without names. Checked through the command line: what the archive
lists, what `minirun load` and `podman load` give back, and what `minirun images` shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
from clients import build_rootfs_tarball, mounts_under, remove_tree
from test_image_archive import Podman

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="layer owners need root"),
]

MINIRUN = [sys.executable, "-m", "minirun.cli"]


def minirun(root: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(MINIRUN + list(args), capture_output=True, text=True,
                          env=dict(os.environ, MINIRUN_ROOT=root), timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"minirun {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip()}")
    return proc


def image_rows(root: str) -> set[tuple[str, str, str]]:
    """(repository, tag, short id) as `minirun images` shows them."""
    lines = minirun(root, "images").stdout.strip().splitlines()
    assert re.split(r"\s{2,}", lines[0].strip())[:3] == ["REPOSITORY", "TAG", "IMAGE ID"]
    return {tuple(re.split(r"\s{2,}", line.strip())[:3]) for line in lines[1:]}


def archive_docs(path: str) -> tuple[list, dict | None, dict]:
    """manifest.json, repositories (None when absent) and index.json of a saved archive."""
    with tarfile.open(path) as tar:
        names = tar.getnames()

        def doc(name: str):
            return json.load(tar.extractfile(name)) if name in names else None

        return doc("manifest.json"), doc("repositories"), doc("index.json")


def repo_tags(manifest: list) -> dict[str, set[str]]:
    """config blob hex -> the RepoTags saved for it."""
    return {entry["Config"].rsplit("/", 1)[1]: set(entry["RepoTags"] or []) for entry in manifest}


@pytest.fixture(scope="module")
def work():
    base = tempfile.mkdtemp(prefix="minirun-save-tags-")
    try:
        yield base
    finally:
        remove_tree(base)
        assert not mounts_under(base)


@pytest.fixture(scope="module")
def images(work):
    """Two images: A named busybox:latest, busybox:stable and other/app:1; B named
    busybox:1.36 and localhost:5000/busybox:x (another repository of the same path)."""
    root = os.path.join(work, "root")
    rootfs = build_rootfs_tarball(work)
    a = minirun(root, "import", rootfs, "busybox:latest").stdout.strip()
    b = minirun(root, "import", "--cmd", "sh", rootfs, "busybox:1.36").stdout.strip()
    assert a != b
    minirun(root, "tag", "busybox", "busybox:stable")
    minirun(root, "tag", "busybox", "other/app:1")
    minirun(root, "tag", "busybox:1.36", "localhost:5000/busybox:x")
    return root, a, b


@pytest.fixture
def fresh_root(work):
    base = tempfile.mkdtemp(prefix="load-", dir=work)
    try:
        yield os.path.join(base, "root")
    finally:
        remove_tree(base)


def test_a_repository_saves_every_tag_and_load_gives_them_back(images, work, fresh_root):
    root, a, b = images
    out = os.path.join(work, "busybox-all.tar")
    minirun(root, "save", "-o", out, "busybox")

    manifest, repositories, index = archive_docs(out)
    assert repo_tags(manifest) == {
        a[7:]: {"docker.io/library/busybox:latest", "docker.io/library/busybox:stable"},
        b[7:]: {"docker.io/library/busybox:1.36"},
    }  # neither other/app:1 nor localhost:5000/busybox:x: other repositories
    assert set(repositories) == {"busybox"}
    assert set(repositories["busybox"]) == {"latest", "stable", "1.36"}
    assert sorted(m["annotations"]["io.containerd.image.name"] for m in index["manifests"]) == \
        ["docker.io/library/busybox:1.36", "docker.io/library/busybox:latest",
         "docker.io/library/busybox:stable"]

    loaded = minirun(fresh_root, "load", "-i", out).stdout.splitlines()
    assert sorted(loaded) == ["Loaded image: busybox:1.36", "Loaded image: busybox:latest",
                              "Loaded image: busybox:stable"]
    assert image_rows(fresh_root) == {("busybox", "latest", a[7:19]),
                                      ("busybox", "stable", a[7:19]),
                                      ("busybox", "1.36", b[7:19])}


def test_a_tag_saves_that_tag_only(images, work, fresh_root):
    root, a, _ = images
    out = os.path.join(work, "busybox-stable.tar")
    minirun(root, "save", "-o", out, "busybox:stable")
    manifest, repositories, _ = archive_docs(out)
    assert repo_tags(manifest) == {a[7:]: {"docker.io/library/busybox:stable"}}
    assert repositories == {"busybox": {"stable": repositories["busybox"]["stable"]}}
    minirun(fresh_root, "load", "-i", out)
    assert image_rows(fresh_root) == {("busybox", "stable", a[7:19])}


def test_an_id_or_a_digest_saves_the_image_without_names(images, work, fresh_root):
    root, a, b = images
    digest = json.loads(minirun(root, "image", "inspect", "busybox:1.36").stdout)[0][
        "RepoDigests"][0].split("@")[1]
    out = os.path.join(work, "by-id.tar")
    minirun(root, "save", "-o", out, a[7:19], f"busybox@{digest}")
    manifest, repositories, _ = archive_docs(out)
    assert repo_tags(manifest) == {a[7:]: set(), b[7:]: set()}
    assert repositories is None  # docker writes it only for tagged images
    loaded = minirun(fresh_root, "load", "-i", out).stdout.splitlines()
    assert sorted(loaded) == sorted([f"Loaded image ID: {a}", f"Loaded image ID: {b}"])
    assert image_rows(fresh_root) == {("<none>", "<none>", a[7:19]),
                                      ("<none>", "<none>", b[7:19])}


def test_arguments_naming_one_image_twice_save_it_once(images, work):
    root, a, _ = images
    out = os.path.join(work, "twice.tar")
    minirun(root, "save", "-o", out, "busybox", "busybox:latest", a, "other/app:1")
    manifest, _, _ = archive_docs(out)
    assert len(manifest) == 2
    assert repo_tags(manifest)[a[7:]] == {"docker.io/library/busybox:latest",
                                          "docker.io/library/busybox:stable",
                                          "docker.io/other/app:1"}


def test_an_unknown_repository_is_one_error_and_no_file(images, work):
    root, _, _ = images
    out = os.path.join(work, "nothing.tar")
    proc = minirun(root, "save", "-o", out, "busybox", "nosuch", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "minirun: error: no such image: nosuch:latest"
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(work) if n.startswith(".minirun-save-")]


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_podman_loads_every_tag(images, work):
    root, a, b = images
    out = os.path.join(work, "for-podman.tar")
    minirun(root, "save", "-o", out, "busybox")
    base = os.path.join(work, "podman")
    os.mkdir(base)
    podman = Podman(base)
    loaded = podman("load", "-i", out)
    assert sorted(re.findall(r"^Loaded image: (\S+)$", loaded, re.MULTILINE)) == \
        ["docker.io/library/busybox:1.36", "docker.io/library/busybox:latest",
         "docker.io/library/busybox:stable"]
    ids = {name: i["Id"] for i in json.loads(podman("images", "--format", "json"))
           for name in i.get("Names") or []}
    assert ids == {"docker.io/library/busybox:latest": a[7:],
                   "docker.io/library/busybox:stable": a[7:],
                   "docker.io/library/busybox:1.36": b[7:]}
