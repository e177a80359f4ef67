"""The docker CLI's image, network and volume commands through minirun's socket and
through podman's Docker-compatible service (`podman system service`, podman 4.3 on
private storage and a private network config dir), as the reference for exit statuses
and output (issue 15). Where podman differs from docker (it qualifies image names with
localhost/, lists no host and none networks, words its errors its own way), minirun
follows docker and the case compares only what both share.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from dockerapitest import dockerapi  # noqa: F401 - the fixture
from ocitest import needs_root
from test_dockerapi_podman import podman_api  # noqa: F401 - the fixture

pytestmark = [needs_root, pytest.mark.root, pytest.mark.podman,
              pytest.mark.skipif(shutil.which("podman") is None,
                                 reason="podman is not installed")]


@pytest.fixture(scope="module")
def podman(dockerapi, podman_api):  # noqa: F811
    """podman's service (test_dockerapi_podman.py's, private storage and network config)
    with minirun's busybox loaded into it (docker save | docker load across the two
    sockets), so that both have the same image."""
    archive = subprocess.run([dockerapi.cli, "save", "busybox"], env=dockerapi.client_env,
                             capture_output=True, check=True, timeout=120).stdout
    loaded = subprocess.run([podman_api.cli, "load"], env=podman_api.client_env,
                            input=archive, capture_output=True, timeout=120, check=False)
    assert loaded.returncode == 0, loaded.stderr
    return podman_api


def both(dockerapi, podman, *args: str, input: str | None = None):  # noqa: F811
    return dockerapi.docker(*args, input=input), podman.docker(*args, input=input)


def same(dockerapi, podman, *args: str, input: str | None = None):  # noqa: F811
    """The command's exit status and stdout are podman's."""
    mine, ref = both(dockerapi, podman, *args, input=input)
    assert (mine.returncode, mine.stdout) == (ref.returncode, ref.stdout), \
        f"docker {' '.join(args)}:\nminirun: {mine}\npodman: {ref}"
    return mine


def same_status(dockerapi, podman, *args: str, input: str | None = None):  # noqa: F811
    mine, ref = both(dockerapi, podman, *args, input=input)
    assert mine.returncode == ref.returncode, \
        f"docker {' '.join(args)}:\nminirun: {mine}\npodman: {ref}"
    return mine, ref


def test_networks_as_podman(dockerapi, podman):  # noqa: F811
    mine, ref = same_status(dockerapi, podman, "network", "create", "--label", "k=v",
                            "--subnet", "10.179.0.0/24", "refnet")
    assert mine.returncode == 0 and len(mine.stdout.strip()) == len(ref.stdout.strip()) == 64
    mine, ref = same_status(dockerapi, podman, "network", "create", "refnet")
    assert mine.returncode == 1 and "already" in mine.stderr and "already" in ref.stderr
    same(dockerapi, podman, "network", "inspect", "-f",
         "{{.Name}} {{.Driver}} {{.Scope}} {{.Internal}} {{.EnableIPv6}} {{.Labels}} "
         "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{len .Containers}}",
         "refnet")
    same(dockerapi, podman, "network", "ls", "--filter", "name=refnet", "--format",
         "{{.Name}} {{.Driver}} {{.Scope}}")
    same(dockerapi, podman, "network", "ls", "-q", "--filter", "label=nope")
    same_status(dockerapi, podman, "network", "inspect", "nonet")
    same_status(dockerapi, podman, "network", "create", "-d", "nodriver", "x")
    same(dockerapi, podman, "network", "rm", "refnet")
    mine, _ = same_status(dockerapi, podman, "network", "rm", "refnet")
    assert mine.returncode == 1


def test_volumes_as_podman(dockerapi, podman):  # noqa: F811
    same(dockerapi, podman, "volume", "create", "--label", "k=v", "refvol")
    same(dockerapi, podman, "volume", "create", "refvol")  # again: the same volume
    same(dockerapi, podman, "volume", "inspect", "-f",
         "{{.Name}} {{.Driver}} {{.Scope}} {{.Labels}}", "refvol")
    same(dockerapi, podman, "volume", "ls", "-q", "--filter", "name=refvol")
    same(dockerapi, podman, "volume", "ls", "-q", "--filter", "label=k=v")
    same_status(dockerapi, podman, "volume", "inspect", "novol")
    same(dockerapi, podman, "volume", "rm", "refvol")
    same_status(dockerapi, podman, "volume", "rm", "refvol")
    same(dockerapi, podman, "volume", "rm", "-f", "novol")


def test_images_as_podman(dockerapi, podman):  # noqa: F811
    # (Size differs: podman adds the config's and manifest's bytes; docker and minirun
    # count the layers' files)
    same(dockerapi, podman, "image", "inspect", "-f",
         "{{.Id}} {{.Os}} {{.Architecture}} {{len .RootFS.Layers}} {{.RootFS.Layers}}",
         "busybox")
    same(dockerapi, podman, "images", "-q", "busybox")
    same(dockerapi, podman, "tag", "busybox", "example.org/ref/tool:7")
    # docker lists only the tags the reference matched; podman 4.3 every tag of the image
    mine, ref = same_status(dockerapi, podman, "images", "--format",
                            "{{.Repository}}:{{.Tag}} {{.ID}}", "example.org/ref/tool")
    assert mine.stdout.splitlines() == [r for r in ref.stdout.splitlines()
                                        if r.startswith("example.org/")]
    same(dockerapi, podman, "rmi", "example.org/ref/tool:7")
    for args in (("rmi", "nope:1"), ("image", "inspect", "nope:1"), ("history", "nope:1"),
                 ("tag", "nope:1", "other:1"),
                 ("save", "-o", os.path.join(podman.base, "out.tar"), "nope:1")):
        mine, ref = same_status(dockerapi, podman, *args)
        assert mine.returncode == 1 and "nope" in mine.stderr
    mine, _ = same_status(dockerapi, podman, "load", input="not an image archive\n")
    assert mine.returncode == 1
    same(dockerapi, podman, "system", "df", "--format", "{{.Type}}")
