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
import signal
import subprocess
import tempfile
import time

import pytest
from clients import remove_tree
from dockerapitest import dockerapi  # noqa: F401 - the fixture
from ocitest import needs_root

pytestmark = [needs_root, pytest.mark.root]


class PodmanService:
    def __init__(self, base: str, cli: str) -> None:
        self.base = base
        self.socket = os.path.join(base, "podman.sock")
        self.cli = cli
        os.makedirs(os.path.join(base, "networks"))
        self.log_path = os.path.join(base, "podman.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run",
                 "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                 "--network-config-dir", f"{base}/networks", "system", "service",
                 "--time", "0", f"unix://{self.socket}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}",
                        DOCKER_CONFIG=os.path.join(base, "docker-config"))
        deadline = time.monotonic() + 30
        while self.docker("version").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"podman's service did not start: {self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def docker(self, *args: str, input: str | bytes | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.cli, *args], env=self.env, capture_output=True,
                              text=not isinstance(input, bytes), input=input,
                              timeout=timeout, check=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def podman(dockerapi):  # noqa: F811
    """podman's service with minirun's busybox loaded into it (docker save | docker load
    across the two sockets)."""
    assert shutil.which("podman"), "podman is not installed: run scripts/install.sh"
    base = tempfile.mkdtemp(prefix="minirun-podman-api-")
    service = None
    try:
        service = PodmanService(base, dockerapi.cli)
        archive = subprocess.run([dockerapi.cli, "save", "busybox"], env=dockerapi.client_env,
                                 capture_output=True, check=True, timeout=120).stdout
        loaded = service.docker("load", input=archive)
        assert loaded.returncode == 0, loaded.stderr
        yield service
    finally:
        if service is not None:
            service.stop()
        remove_tree(base)


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
