"""The real Docker clients for the Docker API tests: Debian's docker CLI (20.10, API 1.41),
docker-compose 1.29 and docker-py 5 (python3-docker), each pointed at a minirun socket.

The docker CLI is dockerapitest.docker_cli() (scripts/docker-cli.sh extracts it from
Debian's docker.io, whose dockerd never runs here). docker-compose and python3-docker are
installed by scripts/install.sh with --no-install-recommends (docker-compose recommends
docker.io).

The clients run with dockerapitest.DockerService's client_env: DOCKER_HOST on the
service's socket and a DOCKER_CONFIG of the test's own.
"""

from __future__ import annotations

import shutil
import subprocess

DEBIAN_PYTHON = "/usr/bin/python3"  # Debian's, with python3-docker


def docker_compose() -> str | None:
    """docker-compose 1.29 (Debian's), or None when it is not installed."""
    return shutil.which("docker-compose")


def has_docker_py() -> bool:
    """Debian's python3 can import docker (python3-docker)."""
    return subprocess.run([DEBIAN_PYTHON, "-c", "import docker"],
                          capture_output=True, check=False).returncode == 0


def host_links() -> set[str]:
    """The names of the host's network links (to check that none of a test's is left)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
