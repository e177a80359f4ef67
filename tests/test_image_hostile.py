"""Hostile input to `minirun load`, `import` and `pull`, through the real command line: JSON
nested deep enough to blow json's recursion, a config that is not an image config, a load
refused at its second layer, a tarball whose negative member size sends tarfile in circles,
and OCI layout directories (`load -i DIR`, as skopeo writes them) with escaping symlinks or
tampered blobs. Each refusal is exit status 1, one stderr line naming the problem, no
traceback, and the store exactly as it was: blobs, unpacked layers and image list.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
import test_image_store
from registry import StaticRegistry
from test_image_archive import ESCAPING_LAYER, GOOD_LAYER, _info, build_tar, docker_members
from test_image_store import image_config, layer_tar, sha256, store_contents

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and layer owners need root"),
]

MINIRUN = [sys.executable, "-m", "minirun.cli"]
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
HOSTILE_CONFIG = "application/vnd.hostile.config.v1+json"

tmp_root = test_image_store.tmp_root  # unmounts and removes what is left, whatever happened

DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 KB: json's C scanner recurses once a level
NEW_LAYER = layer_tar({"new/": None, "new/file": b"only in the refused image\n"})


@pytest.fixture
def base(tmp_root):
    return tmp_root


@pytest.fixture(autouse=True)
def no_host_credentials(base, monkeypatch):
    """pull reads no credentials of the host's."""
    path = os.path.join(base, "auth.json")
    with open(path, "w") as f:
        f.write("{}")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", path)


@pytest.fixture
def root(base):
    """A store that already holds an image, `kept:1`, of one layer (GOOD_LAYER): a refusal
    must not touch it, nor anything it shares with the refused image."""
    root = os.path.join(base, "root")
    layer = os.path.join(base, "kept-layer.tar")
    with open(layer, "wb") as f:
        f.write(GOOD_LAYER)
    minirun(root, "import", layer, "kept:1")
    return root


def minirun(root: str, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINIRUN_ROOT=root)
    proc = subprocess.run(MINIRUN + list(args), capture_output=True, text=True,
                          timeout=timeout, cwd=CHECKOUT, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"minirun {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip()}")
    return proc


def state(root: str) -> tuple[dict, list]:
    """What a refusal must leave as it was: the store's files and `minirun images`."""
    images = minirun(root, "images", "--no-trunc", "--format", "json").stdout.splitlines()
    return store_contents(root), sorted(images)


def refused(root: str, *args: str, match: str, timeout: float = 120) -> str:
    before = state(root)
    proc = minirun(root, *args, check=False, timeout=timeout)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("minirun: error: ") and re.search(match, lines[0]), lines[0]
    assert state(root) == before
    return lines[0]


# --- OCI layouts built here --------------------------------------------------------------

def oci_layout(layers: list[bytes], *, config: bytes | None = None,
               config_type: str = OCI_CONFIG, manifest: bytes | None = None,
               index: bytes | None = None, name: str = "hostile:1") -> dict[str, bytes]:
    """The files of an OCI image layout (path -> content), every digest and size right, so
    that what is refused is the content itself."""
    config = config if config is not None else image_config([sha256(x) for x in layers])
    if manifest is None:
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": sha256(config),
                       "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(x), "size": len(x)}
                       for x in layers]}).encode()
    if index is None:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": name}}]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    for blob in [config, manifest, *layers]:
        files[f"blobs/sha256/{sha256(blob)[7:]}"] = blob
    return files


def as_tar(files: dict[str, bytes], path: str) -> str:
    with open(path, "wb") as f:
        f.write(build_tar([_info(name, data) for name, data in files.items()]))
    return path


def as_dir(files: dict[str, bytes], path: str) -> str:
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    return path


def docker_archive(path: str, layers: list[bytes], config: bytes | None = None) -> str:
    with open(path, "wb") as f:
        f.write(build_tar(docker_members(layers=tuple(layers), tags=("hostile:1",),
                                         config=config)))
    return path


# --- deeply nested JSON ------------------------------------------------------------------

NESTED = "nests arrays or objects more than 64 deep"


@pytest.mark.parametrize("where", ["docker manifest.json", "docker config", "oci index.json",
                                   "oci manifest", "oci config", "oci layout dir manifest"])
def test_deeply_nested_json_in_an_archive_is_one_line(root, base, where):
    path = os.path.join(base, "deep.tar")
    if where == "docker manifest.json":
        with open(path, "wb") as f:
            f.write(build_tar([_info("manifest.json", DEEP)]))
    elif where == "docker config":
        docker_archive(path, [GOOD_LAYER], config=DEEP)
    elif where == "oci index.json":
        as_tar(oci_layout([GOOD_LAYER], index=DEEP), path)
    elif where == "oci manifest":
        as_tar(oci_layout([GOOD_LAYER], manifest=DEEP), path)
    elif where == "oci config":
        as_tar(oci_layout([GOOD_LAYER], config=DEEP), path)
    else:
        path = as_dir(oci_layout([NEW_LAYER], manifest=DEEP), os.path.join(base, "deep"))
    refused(root, "load", "-i", path, match=NESTED)


def test_brackets_in_strings_and_real_nesting_still_load(root, base):
    """The depth count skips strings (escaped quotes too): a config whose labels hold
    thousands of brackets, nested 42 deep, is an image like any other."""
    config = json.loads(image_config([sha256(NEW_LAYER)]))
    config["config"]["Labels"] = {"brackets": "[{" * 5000 + '\\"[' * 100}
    nest: dict = {}
    for _ in range(20):  # an object and an array each: 42 deep in all
        nest = {"n": [nest]}
    config["nest"] = nest
    data = json.dumps(config).encode()
    path = as_tar(oci_layout([NEW_LAYER], config=data, name="brackets:1"),
                  os.path.join(base, "brackets.tar"))
    assert minirun(root, "load", "-i", path).stdout == "Loaded image: brackets:1\n"
    (doc,) = json.loads(minirun(root, "image", "inspect", "brackets:1").stdout)
    assert doc["Config"]["Labels"] == config["config"]["Labels"]


def serve(manifest: bytes, config: bytes, layers: list[bytes],
          media_type: str = OCI_MANIFEST) -> StaticRegistry:
    blobs = {sha256(x): x for x in [config, *layers]}
    return StaticRegistry({"hostile:1": (media_type, manifest)}, blobs).start()


def manifest_for(config: bytes, layers: list[bytes], config_type: str = OCI_CONFIG) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(x), "size": len(x)}
                   for x in layers]}).encode()


@pytest.mark.parametrize("where", ["manifest", "config"])
def test_deeply_nested_json_from_a_registry_is_one_line(root, where):
    """The manifest is parsed by pull; the config by the store's blob reader, once pull has
    stored it: neither keeps anything."""
    config = DEEP if where == "config" else image_config([sha256(NEW_LAYER)])
    manifest = DEEP if where == "manifest" else manifest_for(config, [NEW_LAYER])
    registry = serve(manifest, config, [NEW_LAYER])
    try:
        refused(root, "pull", f"{registry.host}/hostile:1", match=NESTED)
    finally:
        registry.stop()


# --- config media type -------------------------------------------------------------------

def test_a_config_that_is_not_an_image_config_is_refused(root, base):
    files = oci_layout([NEW_LAYER], config_type=HOSTILE_CONFIG)
    rule = re.escape(f"config media type '{HOSTILE_CONFIG}' is not an image config")
    refused(root, "load", "-i", as_tar(files, os.path.join(base, "a.tar")), match=rule)
    refused(root, "load", "-i", as_dir(files, os.path.join(base, "dir")), match=rule)
    config = image_config([sha256(NEW_LAYER)])
    registry = serve(manifest_for(config, [NEW_LAYER], HOSTILE_CONFIG), config, [NEW_LAYER])
    try:
        refused(root, "pull", f"{registry.host}/hostile:1", match=rule)
    finally:
        registry.stop()
    # the two image config types are loaded; so is a docker-save archive, which has none
    for kind in (OCI_CONFIG, "application/vnd.docker.container.image.v1+json"):
        layout = as_tar(oci_layout([NEW_LAYER], config_type=kind, name=f"ok:{kind[-9:-5]}"),
                        os.path.join(base, "ok.tar"))
        assert minirun(root, "load", "-i", layout).stdout.startswith("Loaded image: ok:")
    plain = docker_archive(os.path.join(base, "docker.tar"), [NEW_LAYER])
    assert minirun(root, "load", "-i", plain).stdout == "Loaded image: hostile:1\n"


# --- a load refused half way -------------------------------------------------------------

@pytest.mark.parametrize("form", ["docker archive", "oci archive", "oci layout dir", "pull"])
def test_a_load_refused_at_a_later_layer_keeps_nothing(root, base, form):
    """Layer 1 is kept:1's own (it must stay), layer 2 is new and unpacks fine (it must go),
    layer 3 escapes its root (refused)."""
    layers = [GOOD_LAYER, NEW_LAYER, ESCAPING_LAYER]
    match = r"member \.\./\.\./escaped-by-layer"
    path = os.path.join(base, "three.tar")
    if form == "docker archive":
        docker_archive(path, layers)
    elif form == "oci archive":
        as_tar(oci_layout(layers), path)
    elif form == "oci layout dir":
        path = as_dir(oci_layout(layers), os.path.join(base, "three"))
    else:
        config = image_config([sha256(x) for x in layers])
        registry = serve(manifest_for(config, layers), config, layers)
        try:
            refused(root, "pull", f"{registry.host}/hostile:1", match=match)
        finally:
            registry.stop()
        return
    refused(root, "load", "-i", path, match=match)
    # the store still runs kept:1 from its layer
    assert minirun(root, "images", "-q").stdout.count("\n") == 1


# --- tarfile's negative sizes --------------------------------------------------------------

def looping_tarball() -> bytes:
    """3 KiB: members a, b, c, where c's size is -1536 (base-256). tarfile steps back by
    that much to b's header and reads b, c, b, c... until its member limit."""
    members = []
    for name in ("a", "b", "c"):
        info = tarfile.TarInfo(name)
        info.size, info.mtime = 1, 1_600_000_000
        members.append((info, b"x"))
    data = bytearray(build_tar(members, gnu=True))
    header = 2048
    data[header + 124:header + 136] = b"\xff" * 10 + (-1536 % 65536).to_bytes(2, "big")
    data[header + 148:header + 156] = b" " * 8
    data[header + 148:header + 156] = b"%06o\0 " % sum(data[header:header + 512])
    assert tarfile.nti(bytes(data[header + 124:header + 136])) == -1536
    return bytes(data[:3072])


def test_a_tarball_with_a_negative_size_is_refused_fast(root, base):
    tarball = os.path.join(base, "loop.tar")
    with open(tarball, "wb") as f:
        f.write(looping_tarball())
    for args in (("import", tarball, "loop:1"), ("load", "-i", tarball)):
        start = time.monotonic()
        refused(root, *args, match="member c: negative size", timeout=30)
        assert time.monotonic() - start < 5
    # the same tarball as a layer of an image
    layer_archive = docker_archive(os.path.join(base, "layer.tar"), [looping_tarball()])
    refused(root, "load", "-i", layer_archive, match="member c: negative size")


# --- OCI layout directories --------------------------------------------------------------

@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_load_a_layout_directory_written_by_skopeo(root, base):
    saved = os.path.join(base, "kept.tar")
    minirun(root, "save", "-o", saved, "kept:1")
    layout = os.path.join(base, "layout")
    subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{saved}", f"oci:{layout}:box:2"],
                   check=True, capture_output=True, timeout=120)
    assert os.path.isdir(os.path.join(layout, "blobs", "sha256"))

    other = os.path.join(base, "other")
    assert minirun(other, "load", "-i", layout).stdout == "Loaded image: box:2\n"
    (doc,) = json.loads(minirun(other, "image", "inspect", "box:2").stdout)
    (kept,) = json.loads(minirun(root, "image", "inspect", "kept:1").stdout)
    assert doc["Id"] == kept["Id"] and doc["RootFS"] == kept["RootFS"]
    lower = doc["GraphDriver"]["Data"]["LowerDir"]
    with open(os.path.join(lower, "etc", "hostname")) as f:
        assert f.read() == "box\n"
    # a layout with several tags, and a trailing slash on the path
    subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{saved}", f"oci:{layout}:box:3"],
                   check=True, capture_output=True, timeout=120)
    out = minirun(other, "load", "-i", layout + "/").stdout
    assert sorted(out.splitlines()) == ["Loaded image: box:2", "Loaded image: box:3"]


def test_a_symlink_inside_a_layout_directory_is_followed(root, base):
    layout = as_dir(oci_layout([NEW_LAYER], name="linked:1"), os.path.join(base, "layout"))
    blob = os.path.join(layout, "blobs", "sha256", _hex(NEW_LAYER))
    os.rename(blob, os.path.join(layout, "layer.tar"))
    os.symlink("../../layer.tar", blob)
    assert minirun(root, "load", "-i", layout).stdout == "Loaded image: linked:1\n"


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _escape_config(layout: str, outside: str) -> None:
    config = image_config([sha256(NEW_LAYER)])
    path = os.path.join(layout, "blobs", "sha256", _hex(config))
    os.unlink(path)
    os.symlink(outside, path)


@pytest.mark.parametrize("case", ["absolute symlink", "relative symlink out", "symlinked blobs",
                                  "tampered layer", "fifo", "missing blob"])
def test_hostile_layout_directory(root, base, case):
    layout = as_dir(oci_layout([NEW_LAYER]), os.path.join(base, "layout"))
    blobs = os.path.join(layout, "blobs", "sha256")
    outside = os.path.join(base, "outside.json")  # a host file the layout tries to reach
    with open(outside, "wb") as f:
        f.write(image_config([sha256(NEW_LAYER)]))
    layer = os.path.join(blobs, _hex(NEW_LAYER))
    if case == "absolute symlink":
        _escape_config(layout, outside)
        match = "is a symlink that leaves the directory"
    elif case == "relative symlink out":
        _escape_config(layout, "../../../outside.json")
        match = "is a symlink that leaves the directory"
    elif case == "symlinked blobs":
        shutil.move(blobs, os.path.join(base, "elsewhere"))
        os.symlink(os.path.join(base, "elsewhere"), blobs)
        match = "is a symlink that leaves the directory"
    elif case == "tampered layer":
        with open(layer, "r+b") as f:
            f.seek(len(NEW_LAYER) - 1)
            f.write(b"\1")
        match = "digest mismatch"
    elif case == "fifo":
        os.unlink(layer)
        os.mkfifo(layer)
        match = "is not a regular file"
    else:
        os.unlink(layer)
        match = "missing"
    refused(root, "load", "-i", layout, match=match, timeout=30)
