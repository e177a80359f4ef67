"""The Docker API service on a private engine, and Debian's docker CLI pointed at it.

  service = DockerService(engine_env)   `minirun system service` on <top>/docker.sock
  service.docker("run", "--rm", "busybox", "echo", "hi")   the docker CLI (20.10, API
                                        1.41: scripts/docker-cli.sh fetches it, no dockerd)
  service.http("GET", "/v1.41/version") a raw request: (status, headers, body bytes)
  service.stop()                        SIGTERM by pid; the socket file must be gone

The fixture `dockerapi` (module scope) gives one on engine_with_busybox; a test module
makes its own with `yield from service_with_busybox(tmp_path_factory)` (or DockerService
on its own EngineEnv).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from enginetest import engine_with_busybox
from ocitest import REPO

CLI_CACHE = os.environ.get("MINIRUN_DOCKER_CLI_DIR", "/var/cache/minirun/docker-cli")


def docker_cli() -> str:
    """The path of Debian's docker CLI, fetched (once) by scripts/docker-cli.sh."""
    path = os.path.join(CLI_CACHE, "usr/bin/docker")
    if not os.access(path, os.X_OK):
        proc = subprocess.run([os.path.join(REPO, "scripts", "docker-cli.sh"), CLI_CACHE],
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"cannot get the docker CLI: {proc.stderr}"
    return path


class DockerService:
    def __init__(self, env, top: str | None = None, extra_args=()) -> None:
        self.env_engine = env
        self.top = top or env.top
        self.socket = os.path.join(self.top, "docker.sock")
        self.log_path = os.path.join(self.top, "dockerapi.log")
        self.config = tempfile.mkdtemp(prefix="docker-config-", dir=self.top)
        self.cli = docker_cli()
        # this checkout's minirun for the service and the daemon it starts (cwd "/")
        service_env = dict(env.env, PYTHONPATH=os.pathsep.join(
            p for p in (REPO, env.env.get("PYTHONPATH")) if p))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "minirun.cli", "system", "service", "--socket",
                 self.socket, *extra_args], env=service_env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not start:\n{self.logs()}")
            time.sleep(0.05)
        self.client_env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}",
                               DOCKER_CONFIG=self.config)
        for k in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            self.client_env.pop(k, None)

    def _answers(self) -> bool:
        try:
            return self.http("GET", "/_ping", timeout=2)[0] == 200
        except OSError:
            return False

    def logs(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def docker(self, *args, timeout: float = 120, input=None, check: bool = False,
               **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.cli, *args], env=self.client_env, capture_output=True,
                              text=True, timeout=timeout, input=input, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {proc.returncode}: "
                                 f"{proc.stderr}\n{self.logs()}")
        return proc

    def health(self, name: str, want: str = "healthy", timeout: float = 60) -> str:
        """`docker inspect -f {{.State.Health.Status}}` of a container, polled until it
        says `want` or `timeout` has passed: the last answer."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.docker("inspect", "-f", "{{.State.Health.Status}}", name,
                                 check=True).stdout.strip()
            if status == want or time.monotonic() > deadline:
                return status
            time.sleep(0.5)

    def http(self, method: str, path: str, body=None, headers: dict | None = None,
             timeout: float = 60) -> tuple[int, dict, bytes]:
        """One request on a fresh connection (Connection: close): status, headers
        (lower-case names), body."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        body = body or b""
        head = {"Host": "docker", "Connection": "close", "Content-Length": str(len(body))}
        if body:
            head["Content-Type"] = "application/json"
        head.update(headers or {})
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.socket)
            s.sendall(f"{method} {path} HTTP/1.1\r\n".encode() +
                      b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items()) +
                      b"\r\n" + body)
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        return parse_response(data)

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.config, ignore_errors=True)


def terminate(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to a service we started, SIGKILL after `grace` seconds; reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_response(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2:]
        body = out
    return status, headers, body


def service_with_busybox(tmp_path_factory):
    """A DockerService on engine_with_busybox, stopped (its socket file gone) and the
    engine torn down at the end: for a module's fixture to `yield from`."""
    gen = engine_with_busybox(str(tmp_path_factory.mktemp("dockerapi")))
    env = next(gen)
    service = None
    try:
        service = DockerService(env)
        yield service
    finally:
        try:
            if service is not None:
                service.stop()
                assert not os.path.exists(service.socket), "the socket file was left"
        finally:
            gen.close()


@pytest.fixture(scope="module")
def dockerapi(tmp_path_factory):
    yield from service_with_busybox(tmp_path_factory)
