"""The Docker API's images, networks, volumes, /system/df and /events (issue 15), driven
by Debian's docker CLI (20.10) on a private engine's socket, with pulls from a real
local registry (Debian's docker-registry on 127.0.0.1, fed by skopeo). Each check is on
what a user sees: the CLI's output and exit status, and for networks the host's links.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess

import pytest
from dockerapitest import dockerapi  # noqa: F401 - the fixture
from dockerclients import host_links
from ocitest import needs_root
from registry import FaultProxy, Layout, Registry, auth_file, htpasswd_line, skopeo_copy

pytestmark = [needs_root, pytest.mark.root]


def lines(proc: subprocess.CompletedProcess) -> list[str]:
    return proc.stdout.splitlines()


@pytest.fixture(scope="module")
def registry(dockerapi):  # noqa: F811
    """A registry on 127.0.0.1 holding `app:1` and `app:2` (one image): the busybox rootfs
    with a config of its own (the engine's busybox tarball, gzipped)."""
    top = os.path.join(dockerapi.top, "registry")
    os.makedirs(top)
    reg = Registry(top, os.path.join(top, "storage"), name="open").start()
    try:
        layout = Layout(os.path.join(top, "layout"))
        with open(os.path.join(dockerapi.top, "busybox.tar"), "rb") as f:
            blob = gzip.compress(f.read(), mtime=0)
        media = "application/vnd.oci.image.layer.v1.tar+gzip"
        image = layout.image([], layer_blobs=[(blob, media)],
                             config={"Cmd": ["echo", "from app"],
                                     "Env": ["PATH=/bin:/usr/bin"],
                                     "Labels": {"tier": "demo"}})
        layout.tag_image("app", image)
        for tag in ("1", "2"):
            skopeo_copy(f"oci:{layout.path}:app", f"docker://{reg.host}/app:{tag}",
                        "--preserve-digests")
        reg.image = image
        yield reg
    finally:
        reg.stop()


# --- images -----------------------------------------------------------------------------------

def small_tarball(top) -> str:
    """A root filesystem tarball of one file (an image other than busybox's)."""
    tree = top / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("imported\n")
    tarball = str(top / "tree.tar")
    subprocess.run(["tar", "-C", str(tree), "-cf", tarball, "."], check=True)
    return tarball


def test_images_inspect_history_tag_and_rmi(dockerapi, tmp_path):  # noqa: F811
    d = dockerapi.docker
    out = d("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", check=True)
    [row] = [r for r in lines(out) if r.startswith("busybox:latest ")]
    short_id = row.split()[1]
    assert len(short_id) == 12
    inspect = json.loads(d("image", "inspect", "busybox", check=True).stdout)[0]
    assert inspect["Id"].startswith(f"sha256:{short_id}")
    assert inspect["RepoTags"] == ["busybox:latest"]
    assert any(e.startswith("PATH=") for e in inspect["Config"]["Env"])
    assert inspect["RootFS"]["Type"] == "layers" and len(inspect["RootFS"]["Layers"]) == 1
    assert d("image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", "busybox",
             check=True).stdout.strip() in ("linux/amd64", "linux/arm64")
    history = lines(d("history", "--format", "{{.ID}} {{.CreatedBy}}", "busybox", check=True))
    assert history == [f"{short_id} minirun import"]

    d("tag", "busybox", "example.org/team/tool:2", check=True)
    tags = lines(d("images", "--format", "{{.Repository}}:{{.Tag}}", check=True))
    assert "example.org/team/tool:2" in tags
    assert lines(d("images", "-q", "--filter", "reference=example.org/*/*", check=True)) == \
        [short_id]
    rmi = d("rmi", "example.org/team/tool:2", check=True)
    assert lines(rmi) == ["Untagged: example.org/team/tool:2"]  # busybox keeps the image
    assert "example.org/team/tool:2" not in d("images", check=True).stdout

    # by id: every tag of one repository goes with the image; several repositories
    # need force (docker's 409)
    image_id = d("import", small_tarball(tmp_path), "twotags:1", check=True).stdout.strip()
    d("tag", "twotags:1", "twotags:2", check=True)
    d("tag", "twotags:1", "elsewhere:1", check=True)
    refused = d("rmi", image_id[7:19])
    assert refused.returncode == 1 and "referenced in multiple repositories" in refused.stderr
    d("rmi", "elsewhere:1", check=True)
    assert lines(d("rmi", image_id[7:19], check=True)) == [
        "Untagged: twotags:1", "Untagged: twotags:2", f"Deleted: {image_id}"]

    missing = d("rmi", "nope:1")
    assert missing.returncode == 1 and "No such image: nope:1" in missing.stderr
    missing = d("image", "inspect", "nope:1")
    assert missing.returncode == 1 and "No such image: nope:1" in missing.stderr


def test_pull_from_the_local_registry(dockerapi, registry):  # noqa: F811
    d = dockerapi.docker
    ref = f"{registry.host}/app:1"
    layer = registry.image.layer_digests[0].split(":")[1][:12]
    first = d("pull", ref, check=True)
    assert lines(first) == [
        "1: Pulling from app",
        f"{layer}: Pulling fs layer",
        f"{layer}: Download complete",
        f"{layer}: Pull complete",
        f"Digest: {registry.image.manifest_digest}",
        f"Status: Downloaded newer image for {ref}",
        ref,
    ], first.stdout
    again = d("pull", ref, check=True)
    assert lines(again) == ["1: Pulling from app", f"Digest: {registry.image.manifest_digest}",
                            f"Status: Image is up to date for {ref}", ref]
    inspect = json.loads(d("image", "inspect", ref, check=True).stdout)[0]
    assert inspect["Id"] == registry.image.config_digest
    assert inspect["RepoDigests"] == [f"{registry.host}/app@{registry.image.manifest_digest}"]
    assert inspect["Config"]["Labels"] == {"tier": "demo"}
    labelled = d("images", "--filter", "label=tier=demo", "--format", "{{.Repository}}",
                 check=True)
    assert lines(labelled) == [f"{registry.host}/app"]

    by_digest = d("pull", f"{registry.host}/app@{registry.image.manifest_digest}", check=True)
    assert "Status: Image is up to date" in by_digest.stdout

    # another name of the same image: nothing to fetch, but the name is new
    other = d("pull", f"{registry.host}/app:2", check=True)
    assert lines(other) == ["2: Pulling from app", f"Digest: {registry.image.manifest_digest}",
                            f"Status: Downloaded newer image for {registry.host}/app:2",
                            f"{registry.host}/app:2"]
    assert lines(d("rmi", f"{registry.host}/app:2", check=True)) == \
        [f"Untagged: {registry.host}/app:2"]

    # the pulled image runs, with its own command
    ran = d("run", "--rm", ref, check=True)
    assert ran.stdout == "from app\n"

    # an unknown tag: an HTTP error before any progress, as docker's
    missing = d("pull", f"{registry.host}/app:nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error response from daemon: ") and "app:nope" in \
        missing.stderr and "not found" in missing.stderr
    # the last tag of the repository goes: its digest name (from the pull by digest) goes
    # with it, then the image, as docker's
    removed = d("rmi", ref, check=True)
    assert lines(removed) == [f"Untagged: {ref}",
                              f"Untagged: {registry.host}/app@{registry.image.manifest_digest}",
                              f"Deleted: {registry.image.config_digest}"]


def test_a_pull_that_fails_midway_reports_in_the_stream(dockerapi, registry):  # noqa: F811
    """A layer whose bytes do not match its digest: the progress stream has begun, so the
    error is its last message (docker's errorDetail); the CLI prints it and exits 1, and
    nothing is kept."""
    layer = registry.image.layer_digests[0]
    proxy = FaultProxy(registry).start()
    try:
        proxy.add("GET", f"/blobs/{layer}$", "corrupt")
        ref = f"{proxy.host}/app:1"
        failed = dockerapi.docker("pull", ref)
    finally:
        proxy.stop()
    assert failed.returncode == 1
    assert f"{layer.split(':')[1][:12]}: Pulling fs layer" in failed.stdout
    assert "digest mismatch" in failed.stderr and "Error response" not in failed.stderr
    assert ref not in dockerapi.docker("images", check=True).stdout


def test_pull_with_the_clients_credentials(dockerapi, registry, tmp_path):  # noqa: F811
    """A registry that wants a password: the CLI's X-Registry-Auth (from its config's
    auths) is what the pull uses; without it the pull is refused."""
    htpasswd = str(tmp_path / "htpasswd")
    with open(htpasswd, "w") as f:
        f.write(htpasswd_line("alice", "wonderland") + "\n")
    basic = Registry(str(tmp_path), registry.storage, name="basic",
                     auth={"htpasswd": {"realm": "minirun-test", "path": htpasswd}}).start()
    try:
        ref = f"{basic.host}/app:1"
        refused = dockerapi.docker("pull", ref)
        assert refused.returncode == 1 and "requires authentication" in refused.stderr
        config = tmp_path / "config"
        config.mkdir()
        auth_file(str(config / "config.json"), {basic.host: ("alice", "wonderland")})
        env = dict(dockerapi.client_env, DOCKER_CONFIG=str(config))
        pulled = subprocess.run([dockerapi.cli, "pull", ref], env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout.splitlines()[-1] == ref
        dockerapi.docker("rmi", ref, check=True)
    finally:
        basic.stop()


def test_save_and_load(dockerapi, tmp_path):  # noqa: F811
    d = dockerapi.docker
    d("tag", "busybox", "saved:1", check=True)
    archive = str(tmp_path / "saved.tar")
    d("save", "-o", archive, "saved:1", check=True)
    listing = subprocess.run(["tar", "-tf", archive], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "manifest.json" in listing and "index.json" in listing
    assert lines(d("rmi", "saved:1", check=True)) == ["Untagged: saved:1"]
    loaded = d("load", "-i", archive, check=True)
    assert lines(loaded) == ["Loaded image: saved:1"]
    assert "saved:1" in lines(d("images", "--format", "{{.Repository}}:{{.Tag}}", check=True))
    # a pipe, as `docker save | docker load`
    piped = subprocess.run(f"{dockerapi.cli} save saved:1 | {dockerapi.cli} load -q",
                           shell=True, env=dockerapi.client_env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert piped.returncode == 0 and piped.stdout.strip() == "Loaded image: saved:1", piped
    d("rmi", "saved:1", check=True)
    bad = d("load", input="this is not a tarball\n")
    assert bad.returncode == 1 and "archive" in bad.stderr
    missing = d("save", "-o", archive, "nope:1")
    assert missing.returncode == 1 and "No such image: nope:1" in missing.stderr


def test_import_and_prune(dockerapi, tmp_path):  # noqa: F811
    d = dockerapi.docker
    tarball = small_tarball(tmp_path)
    imported = d("import", tarball, "imported:1", check=True)
    image_id = imported.stdout.strip()
    assert image_id.startswith("sha256:")
    assert d("image", "inspect", "-f", "{{.Id}}", "imported:1", check=True).stdout.strip() \
        == image_id
    # untagged, the image is dangling: `image prune` removes it
    d("rmi", "imported:1", check=True)
    dangling = d("import", tarball, check=True).stdout.strip()
    assert d("images", "-q", "--filter", "dangling=true", "--no-trunc",
             check=True).stdout.split() == [dangling]
    pruned = d("image", "prune", "-f", check=True)
    assert f"deleted: {dangling}" in pruned.stdout
    assert d("images", "-q", "--filter", "dangling=true", check=True).stdout == ""
    assert "busybox" in d("images", check=True).stdout  # named images stay

    # -a: every image no container uses, its names first in the report; a filter spares
    prunable = d("import", tarball, "prunable:1", check=True).stdout.strip()
    pin = d("create", "busybox", "true", check=True).stdout.strip()
    try:
        spared = d("image", "prune", "-a", "-f", "--filter", "label=none=1", check=True)
        assert lines(spared) == ["Total reclaimed space: 0B"]
        pruned = lines(d("image", "prune", "-a", "-f", check=True))
        at = pruned.index("untagged: prunable:1")
        assert pruned[at + 1] == f"deleted: {prunable}"
        assert "busybox" in d("images", check=True).stdout  # a container uses it
    finally:
        d("rm", "-f", pin)


# --- networks ------------------------------------------------------------------------------

def test_network_create_ls_inspect_rm(dockerapi):  # noqa: F811
    d = dockerapi.docker
    created = d("network", "create", "--subnet", "10.177.3.0/24", "--gateway", "10.177.3.254",
                "--label", "team=blue", "--internal", "objnet", check=True)
    net_id = created.stdout.strip()
    assert len(net_id) == 64
    listed = lines(d("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}",
                     check=True))
    assert {"bridge bridge local", "host host local", "none null local",
            "objnet bridge local"} <= set(listed)
    assert lines(d("network", "ls", "-q", "--filter", "label=team=blue", check=True)) == \
        [net_id[:12]]
    assert lines(d("network", "ls", "--filter", "type=custom", "--format", "{{.Name}}",
                   check=True)) == ["objnet"]
    doc = json.loads(d("network", "inspect", "objnet", check=True).stdout)[0]
    assert doc["Id"] == net_id and doc["Internal"] is True
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.177.3.0/24", "Gateway": "10.177.3.254"}]
    assert doc["Labels"] == {"team": "blue"}
    assert d("network", "inspect", "-f", "{{.Name}}", net_id[:12], check=True).stdout \
        .strip() == "objnet"

    dup = d("network", "create", "objnet")
    assert dup.returncode == 1 and "network with name objnet already exists" in dup.stderr
    overlap = d("network", "create", "--subnet", "10.177.3.0/25", "other")
    assert overlap.returncode == 1 and "overlaps" in overlap.stderr
    overlay = d("network", "create", "-d", "overlay", "swarmy")
    assert overlay.returncode == 1 and "not supported" in overlay.stderr
    builtin = d("network", "rm", "bridge")
    assert builtin.returncode == 1 and "pre-defined network" in builtin.stderr

    assert lines(d("network", "rm", "objnet", check=True)) == ["objnet"]
    gone = d("network", "inspect", "objnet")
    assert gone.returncode == 1 and "objnet" in gone.stderr
    d("network", "create", "pruneme", check=True)
    pruned = d("network", "prune", "-f", check=True)
    assert "pruneme" in lines(pruned)
    assert "pruneme" not in d("network", "ls", check=True).stdout


# --- volumes -------------------------------------------------------------------------------

def test_volume_create_ls_inspect_rm_prune(dockerapi):  # noqa: F811
    d = dockerapi.docker
    assert d("volume", "create", "--label", "keep=yes", "objvol", check=True).stdout.strip() \
        == "objvol"
    anonymous = d("volume", "create", check=True).stdout.strip()
    assert len(anonymous) == 64
    names = lines(d("volume", "ls", "-q", check=True))
    assert {"objvol", anonymous} <= set(names)
    assert lines(d("volume", "ls", "-q", "--filter", "label=keep", check=True)) == ["objvol"]
    doc = json.loads(d("volume", "inspect", "objvol", check=True).stdout)[0]
    assert doc["Driver"] == "local" and doc["Labels"] == {"keep": "yes"}
    assert doc["Mountpoint"] == os.path.join(dockerapi.env_engine.root, "volumes", "objvol",
                                             "_data")
    assert os.path.isdir(doc["Mountpoint"])
    with open(os.path.join(doc["Mountpoint"], "data"), "w") as f:
        f.write("x" * 1000)
    # created again: the same volume, as docker's
    assert d("volume", "create", "objvol", check=True).stdout.strip() == "objvol"
    assert os.path.exists(os.path.join(doc["Mountpoint"], "data"))

    missing = d("volume", "rm", "nope")
    assert missing.returncode == 1 and "no such volume" in missing.stderr.lower()
    assert d("volume", "rm", "-f", "nope").returncode == 0
    assert lines(d("volume", "rm", anonymous, check=True)) == [anonymous]
    pruned = d("volume", "prune", "-f", check=True)
    assert lines(pruned) == ["Deleted Volumes:", "objvol", "", "Total reclaimed space: 1kB"]
    assert not os.path.exists(doc["Mountpoint"])
    assert d("volume", "ls", "-q", check=True).stdout == ""


# --- raw API: what the CLI does not show ---------------------------------------------------

def test_filters_in_docker_old_map_form_and_bad_filters(dockerapi):  # noqa: F811
    import urllib.parse

    old = urllib.parse.quote(json.dumps({"reference": {"busybox": True}}))
    status, _, body = dockerapi.http("GET", f"/v1.41/images/json?filters={old}")
    assert status == 200
    assert [i["RepoTags"] for i in json.loads(body)] == [["busybox:latest"]]
    bad = urllib.parse.quote(json.dumps({"colour": ["red"]}))
    for path in ("/images/json", "/networks", "/volumes"):
        status, _, body = dockerapi.http("GET", f"/v1.41{path}?filters={bad}")
        assert status == 400 and json.loads(body) == {"message": "invalid filter 'colour'"}


def test_network_options_minirun_lacks_are_501(dockerapi):  # noqa: F811
    for body, word in (({"Name": "v6", "EnableIPv6": True}, "IPv6"),
                       ({"Name": "o", "Options": {"com.docker.network.bridge.name": "x"}},
                        "option"),
                       ({"Name": "r", "IPAM": {"Config": [{"Subnet": "10.178.0.0/24",
                                                           "IPRange": "10.178.0.0/25"}]}},
                        "IPRange")):
        status, _, reply = dockerapi.http("POST", "/v1.41/networks/create", body)
        assert status == 501 and word in json.loads(reply)["message"], reply
    status, _, _ = dockerapi.http("GET", "/v1.41/networks/v6")
    assert status == 404


def test_connect_and_disconnect_a_created_container(dockerapi):  # noqa: F811
    """compose's way: a container made on a network is disconnected and connected again
    with aliases before it starts; its peers then find it by them."""
    d, m = dockerapi.docker, dockerapi.env_engine
    net_id = d("network", "create", "aliasnet", check=True).stdout.strip()
    made = []
    try:
        for name in ("c1", "c2"):
            made.append(m("create", "--name", name, "--network", "aliasnet", "busybox",
                          "sleep", "300", check=True).stdout.strip())
        c1, c2 = made
        d("network", "disconnect", "aliasnet", "c1", check=True)
        assert list(json.loads(d("network", "inspect", "-f", "{{json .Containers}}",
                                 "aliasnet", check=True).stdout)) == [c2]
        d("network", "connect", "--alias", "web", "--alias", "www", "aliasnet", "c1",
          check=True)
        members = json.loads(d("network", "inspect", "-f", "{{json .Containers}}",
                               "aliasnet", check=True).stdout)
        assert sorted(members) == sorted(made)
        assert members[c1]["Name"] == "c1" and members[c1]["IPv4Address"].endswith("/24")
        again = d("network", "connect", "aliasnet", "c1")
        assert again.returncode == 1 and "already exists in network aliasnet" in again.stderr
        second = d("network", "connect", "bridge", "c1")
        assert second.returncode == 1 and "one network" in second.stderr

        m("start", "c1", "c2", check=True)
        ip = members[c1]["IPv4Address"].split("/")[0]
        ping = m("exec", "c2", "ping", "-c", "1", "-W", "5", "www", check=True)
        assert f"from {ip}" in ping.stdout
        running = d("network", "disconnect", "aliasnet", "c1")
        assert running.returncode == 1 and "while it is running" in running.stderr
    finally:
        for cid in made:
            m("rm", "-f", cid)
    assert lines(d("network", "rm", "aliasnet", check=True)) == ["aliasnet"]
    left = {f"mrbr{net_id[:10]}"} | {f"mr{cid[:12]}" for cid in made}
    assert not left & host_links()


# --- system df and events --------------------------------------------------------------------

def test_system_df(dockerapi):  # noqa: F811
    d = dockerapi.docker
    cid = d("run", "-d", "-v", "dfvol:/data", "busybox", "sh", "-c",
            "head -c 5000 /dev/zero > /data/zeros; sleep 300", check=True).stdout.strip()
    try:
        rows = {}
        for _ in range(50):  # the file is written by the container: wait for it
            out = d("system", "df", "--format", "{{.Type}}|{{.TotalCount}}|{{.Active}}|"
                    "{{.Size}}", check=True)
            rows = {r.split("|")[0]: r.split("|")[1:] for r in lines(out)}
            if rows["Local Volumes"][2] == "5kB":
                break
            subprocess.run(["sleep", "0.1"], check=True)
        images = set(lines(d("images", "-q", "--no-trunc", check=True)))
        assert rows["Images"][:2] == [str(len(images)), "1"]
        assert rows["Containers"][:2] == ["1", "1"]
        assert rows["Local Volumes"] == ["1", "1", "5kB"]
        verbose = d("system", "df", "-v", check=True).stdout
        assert cid[:12] in verbose and "dfvol" in verbose
    finally:
        d("rm", "-f", cid)
    d("volume", "rm", "dfvol", check=True)


def test_events_since_until_and_filters(dockerapi):  # noqa: F811
    import time

    d = dockerapi.docker
    since = f"{time.time():.9f}"
    d("network", "create", "evnet", check=True)
    d("volume", "create", "evvol", check=True)
    d("tag", "busybox", "ev:1", check=True)
    d("rmi", "ev:1", check=True)
    d("network", "rm", "evnet", check=True)
    d("volume", "rm", "evvol", check=True)
    until = f"{time.time() + 0.5:.9f}"
    fmt = "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}"
    seen = lines(d("events", "--since", since, "--until", until, "--format", fmt,
                   "--filter", "type=network", check=True))
    assert seen == ["network create evnet", "network destroy evnet"], seen
    seen = lines(d("events", "--since", since, "--until", until, "--format",
                   "{{.Type}} {{.Action}} {{.Actor.ID}}", "--filter", "volume=evvol",
                   check=True))
    assert seen == ["volume create evvol", "volume destroy evvol"], seen
    images = lines(d("events", "--since", since, "--until", until, "--format",
                     "{{.Type}} {{.Action}}", "--filter", "image=ev:1", check=True))
    assert images == ["image tag"], images
    bad = d("events", "--since", since, "--until", until, "--filter", "colour=red")
    assert bad.returncode != 0 and "colour" in bad.stderr


def test_events_follow_new_ones(dockerapi):  # noqa: F811
    """Without --until the stream follows: volumes made while it is open show up (with
    --since now, so that one made before the CLI's request arrives is not missed), in
    order, as they happen."""
    import select
    import time

    since = f"{time.time():.9f}"
    proc = subprocess.Popen([dockerapi.cli, "events", "--since", since, "--filter",
                             "type=volume", "--format", "{{.Action}} {{.Actor.ID}}"],
                            env=dockerapi.client_env, stdout=subprocess.PIPE, text=True)
    try:
        for name in ("followed", "followed2"):
            dockerapi.docker("volume", "create", name, check=True)
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "no event within 30 s"
            assert proc.stdout.readline().strip() == f"create {name}"
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(10)
        dockerapi.docker("volume", "rm", "followed", "followed2")


def test_docker_py_pulls_and_lists(dockerapi, registry):  # noqa: F811
    """docker-py 5's images.pull (the progress stream, then the image by name) and
    images.list / images.get."""
    from dockerclients import DEBIAN_PYTHON, has_docker_py

    assert has_docker_py(), "python3-docker is not installed: run scripts/install.sh"
    script = f"""
import json, docker
client = docker.from_env(version="auto")
image = client.images.pull("{registry.host}/app", tag="1")
out = {{"pulled": image.tags, "id": image.id,
        "listed": sorted(t for i in client.images.list() for t in i.tags),
        "labels": client.images.get("{registry.host}/app:1").labels}}
client.images.remove("{registry.host}/app:1")
try:
    client.images.get("{registry.host}/app:1")
except docker.errors.ImageNotFound:
    out["removed"] = True
print(json.dumps(out))
"""
    proc = subprocess.run([DEBIAN_PYTHON, "-c", script], env=dockerapi.client_env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"{proc.stderr}\n{dockerapi.logs()}"
    out = json.loads(proc.stdout)
    assert out["pulled"] == [f"{registry.host}/app:1"]
    assert out["id"] == registry.image.config_digest
    assert f"{registry.host}/app:1" in out["listed"] and "busybox:latest" in out["listed"]
    assert out["labels"] == {"tier": "demo"}
    assert out["removed"] is True
