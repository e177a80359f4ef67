"""Helpers for the registry tests: a real registry (Debian's `docker-registry`, the CNCF
distribution server) on 127.0.0.1, OCI layouts built here and pushed with skopeo, a token
server for the registry's bearer-token auth, and a forwarding proxy that injects faults
(5xx, cut transfers, altered bytes) in front of the real registry.

Everything listens on 127.0.0.1 only, and every process started here is stopped by pid.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- the registry ------------------------------------------------------------------------


class Registry:
    """`docker-registry serve` on 127.0.0.1:<port> with a filesystem storage root.

    Several instances may share one storage root (one without auth to push to, others with
    basic or token auth that serve the same images)."""

    def __init__(
        self,
        workdir: str,
        storage: str,
        *,
        name: str = "registry",
        auth: dict | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.storage = storage
        self.name = name
        self.auth = auth
        self.tls = tls
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: minirun-test-secret",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.auth:
            lines.append("auth:")
            for kind, options in self.auth.items():
                lines.append(f"  {kind}:")
                lines += [f"    {k}: {v}" for k, v in options.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> Registry:
        cfg = os.path.join(self.workdir, f"{self.name}.yml")
        with open(cfg, "w") as f:
            f.write(self.config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", cfg],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode}: {self.log()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.host}: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def requests(self, method: str = "GET", path_re: str = ".*") -> list[str]:
        """Request paths the registry logged ("response completed"), filtered."""
        out = []
        for line in self.log().splitlines():
            if "response completed" not in line:
                continue
            m = re.search(r"http\.request\.method=(\w+)", line)
            u = re.search(r'http\.request\.uri="?([^"\s]+)', line)
            if m and u and m.group(1) == method and re.search(path_re, u.group(1)):
                out.append(u.group(1))
        return out

    def blob_gets(self) -> list[str]:
        return self.requests("GET", r"/blobs/sha256:")


# --- building images ---------------------------------------------------------------------


MEDIA_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def tar_bytes(files: dict[str, bytes | str]) -> bytes:
    """A layer tarball: path -> content; a value ending a path with '/' makes a directory;
    parent directories are added first."""
    buf = io.BytesIO()
    seen: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in files.items():
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                    tar.addfile(info)
            name = "/".join(parts)
            if path.endswith("/"):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                seen.add(name)
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    return data


@dataclass
class Image:
    """An image written into an OCI layout: its manifest and config digests, its layers'
    diff ids and what each file should contain once unpacked."""

    manifest_digest: str
    config_digest: str
    diff_ids: list[str]
    layer_digests: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


class Layout:
    """An OCI image layout directory that skopeo reads with `oci:<dir>:<tag>`."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.index: list[dict] = []

    def blob(self, data: bytes) -> str:
        digest = sha256(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return digest

    def image(
        self,
        layers: list[dict[str, bytes | str]],
        *,
        compression: str = "gzip",
        arch: str = "amd64",
        layer_blobs: list[tuple[bytes, str]] | None = None,
        config: dict | None = None,
    ) -> Image:
        """An image from layers given as {path: content} (or as ready blobs with their
        media type); returns its descriptor data without tagging it."""
        diff_ids, descs, files = [], [], {}
        if layer_blobs is None:
            layer_blobs = []
            for layer in layers:
                raw = tar_bytes(layer)
                layer_blobs.append((compress(raw, compression), MEDIA_LAYER[compression]))
                for path, content in layer.items():
                    if not path.endswith("/"):
                        files[path.strip("/")] = (
                            content.encode() if isinstance(content, str) else content
                        )
        for blob, media in layer_blobs:
            raw = blob
            if media.endswith("gzip"):
                raw = gzip.decompress(blob)
            elif media.endswith("zstd"):
                raw = subprocess.run(
                    ["zstd", "-q", "-d", "-c"], input=blob, capture_output=True, check=True
                ).stdout
            diff_ids.append(sha256(raw))
            descs.append({"mediaType": media, "digest": self.blob(blob), "size": len(blob)})
        image_config = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": config or {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin:/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(descs))],
        }
        config_data = json.dumps(image_config, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.blob(config_data),
                "size": len(config_data),
            },
            "layers": descs,
        }
        data = json.dumps(manifest, sort_keys=True).encode()
        return Image(
            self.blob(data),
            sha256(config_data),
            diff_ids,
            [d["digest"] for d in descs],
            files,
            manifest,
        )

    def tag(self, name: str, digest: str, media_type: str) -> None:
        path = os.path.join(self.path, "blobs", "sha256", digest[7:])
        self.index.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": os.path.getsize(path),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }
        )
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.index}, f)

    def tag_image(self, name: str, image: Image) -> None:
        self.tag(name, image.manifest_digest, "application/vnd.oci.image.manifest.v1+json")

    def multi_arch(self, name: str, images: dict[str, Image]) -> str:
        """An image index with one entry per architecture, tagged `name`; returns its digest."""
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": img.manifest_digest,
                    "size": os.path.getsize(
                        os.path.join(self.path, "blobs", "sha256", img.manifest_digest[7:])
                    ),
                    "platform": {
                        "os": "linux",
                        "architecture": arch,
                        **({"variant": "v8"} if arch == "arm64" else {}),
                    },
                }
                for arch, img in images.items()
            ],
        }
        digest = self.blob(json.dumps(index, sort_keys=True).encode())
        self.tag(name, digest, "application/vnd.oci.image.index.v1+json")
        return digest


def skopeo_copy(src: str, dest: str, *args: str) -> None:
    cmd = [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        *args,
        src,
        dest,
    ]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")


def serve_one_image(top: str, repo_tag: str, image_of) -> Iterator[str]:
    """For module fixtures to `yield from`: a registry on 127.0.0.1 (storage under `top`)
    serving the image `image_of(layout)` makes, pushed as <host>/<repo_tag>; yields that
    reference; stops the registry and removes `top` at the end. Fails (not skips) without
    docker-registry and skopeo."""
    import shutil

    import pytest

    if not os.path.exists(REGISTRY_BIN) or shutil.which("skopeo") is None:
        pytest.fail("docker-registry and skopeo are needed: run scripts/install.sh")
    reg = Registry(top, os.path.join(top, "storage"))
    try:
        reg.start()
        layout = Layout(os.path.join(top, "layout"))
        layout.tag_image("1", image_of(layout))
        skopeo_copy(f"oci:{layout.path}:1", f"docker://{reg.host}/{repo_tag}")
        yield f"{reg.host}/{repo_tag}"
    finally:
        reg.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", top], check=False)


def raw_manifest(registry: Registry, repo_ref: str) -> tuple[dict, str]:
    """The manifest skopeo sees at docker://host/repo:tag, and its digest."""
    out = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.host}/{repo_ref}",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return json.loads(out), sha256(out)


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the registry accepts bcrypt only), from apache2-utils."""
    return subprocess.run(
        ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True
    ).stdout.strip()


def auth_file(path: str, entries: dict[str, tuple[str, str]]) -> str:
    auths = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
        for host, (u, p) in entries.items()
    }
    with open(path, "w") as f:
        json.dump({"auths": auths}, f)
    return path


# --- a token server for `auth: token:` ---------------------------------------------------


def make_cert(workdir: str, name: str, *, cn: str, sans: str) -> tuple[str, str]:
    """A self-signed certificate and its RSA key (openssl), returns (cert, key) paths."""
    cert, key = os.path.join(workdir, f"{name}.crt"), os.path.join(workdir, f"{name}.key")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            key,
            "-out",
            cert,
            "-subj",
            f"/CN={cn}",
            "-addext",
            f"subjectAltName={sans}",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return cert, key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _LocalServer:
    """An HTTP server on 127.0.0.1:<port> in a daemon thread, until stop()."""

    port: int
    _server: http.server.ThreadingHTTPServer | None = None

    def _serve(self, handler: type) -> None:
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", self.port), _tls_refusing(handler)
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


class TokenServer(_LocalServer):
    """Docker's token protocol: GET /token?service=..&scope=repository:<name>:pull with basic
    auth -> {"token": <RS256 JWT>}, signed with openssl by a key whose certificate the
    registry trusts (rootcertbundle); the certificate travels in the JWT's x5c header."""

    def __init__(
        self,
        workdir: str,
        users: dict[str, str],
        *,
        service: str = "minirun-test",
        issuer: str = "minirun-test-issuer",
        anonymous: bool = False,
    ) -> None:
        self.cert, self.key = make_cert(
            workdir, "token-signer", cn="token signer", sans="DNS:token"
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", self.cert, "-outform", "DER"],
            capture_output=True,
            check=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.users = users
        self.service = service
        self.issuer = issuer
        self.anonymous = anonymous
        self.denied: set[str] = set()  # repositories whose tokens grant nothing
        self.refresh_tokens: dict[str, str] = {}  # OAuth2 refresh token -> user (POST)
        self.seen: list[dict] = []  # one per token request: user, scope, service
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict:
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": self.cert,
            }
        }

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def start(self) -> TokenServer:
        server = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    u, _, p = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(u) != p:
                        return self._reply(401, {"details": "bad credentials"})
                    user = u
                scopes = query.get("scope", [])
                server.seen.append({"user": user, "scope": scopes, "service": query.get("service")})
                if user is None and not server.anonymous:
                    return self._reply(401, {"details": "credentials required"})
                self._reply(200, {"token": self._grant(user, scopes), "expires_in": 300})

            def do_POST(self) -> None:
                # docker's OAuth2 flow: grant_type=refresh_token with an identity token
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                scopes = " ".join(form.get("scope", [])).split()
                user = server.refresh_tokens.get((form.get("refresh_token") or [""])[0])
                server.seen.append({"user": user, "scope": scopes, "service": form.get("service"),
                                    "grant_type": form.get("grant_type")})
                if form.get("grant_type") != ["refresh_token"] or user is None:
                    return self._reply(401, {"error": "invalid_grant"})
                self._reply(200, {"access_token": self._grant(user, scopes), "expires_in": 300})

            def _grant(self, user: str | None, scopes: list[str]) -> str:
                now = int(time.time())
                access = []
                for scope in scopes:
                    kind, name, actions = scope.split(":", 2)
                    granted = [] if name in server.denied else actions.split(",")
                    access.append({"type": kind, "name": name, "actions": granted})
                return server.sign(
                    {
                        "iss": server.issuer,
                        "sub": user or "",
                        "aud": server.service,
                        "exp": now + 300,
                        "nbf": now - 10,
                        "iat": now,
                        "jti": hashlib.sha256(os.urandom(8)).hexdigest(),
                        "access": access,
                    }
                )

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._serve(Handler)
        return self


def _tls_refusing(handler: type) -> type:
    """A handler that hangs up on a TLS ClientHello at once (clients probing https on an
    http port would otherwise wait for a request line that never comes)."""

    class Refusing(handler):
        def handle(self) -> None:
            try:
                first = self.request.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first == b"\x16":
                return
            super().handle()

    return Refusing


# --- a fault-injecting proxy in front of the real registry -------------------------------


class FaultProxy(_LocalServer):
    """Forwards every request to a real registry, except that a rule may answer for it:
    rules are (method, path regex, action, count) with action one of "503", "reset" (cut
    the body halfway), "corrupt" (flip one byte of the body), "drop-digest-header",
    "delay:<seconds>" (answer that much later)."""

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.rules: list[list] = []
        self.log: list[tuple[str, str, str]] = []  # method, path, what happened

    def add(self, method: str, path_re: str, action: str, count: int = 1) -> None:
        self.rules.append([method, re.compile(path_re), action, count])

    def _take(self, method: str, path: str) -> str | None:
        for rule in self.rules:
            if rule[0] == method and rule[1].search(path) and rule[3] > 0:
                rule[3] -= 1
                return rule[2]
        return None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                self._forward()

            def do_GET(self) -> None:
                self._forward()

            def _forward(self) -> None:
                action = proxy._take(self.command, self.path)
                proxy.log.append((self.command, self.path, action or "forward"))
                if action and action.startswith("delay:"):
                    time.sleep(float(action.split(":", 1)[1]))
                if action == "503":
                    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream.host
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if action == "corrupt" and body:
                    body = body[:-1] + bytes([body[-1] ^ 0x01])
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in ("transfer-encoding", "connection", "content-length"):
                        continue
                    if action == "drop-digest-header" and k.lower() == "docker-content-digest":
                        continue
                    if k.lower() == "location":
                        v = v.replace(proxy.upstream.host, proxy.host)
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                if action == "reset":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.request.shutdown(socket.SHUT_RDWR)
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self._serve(Handler)
        return self


# --- a registry that serves fixed documents -----------------------------------------------


class StaticRegistry(_LocalServer):
    """A registry serving exactly the manifests and blobs it is given, whatever they hold:
    for documents a real registry would refuse to store (a manifest nested 100000 deep).
    `manifests` maps "<repo>:<tag>" or "<repo>@<digest>" to (media type, bytes); `blobs`
    maps a digest to bytes (any repository)."""

    def __init__(self, manifests: dict[str, tuple[str, bytes]], blobs: dict[str, bytes]) -> None:
        self.manifests = manifests
        self.blobs = blobs
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"

    def start(self) -> StaticRegistry:
        registry = self

        class Handler(_QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", self.path)
                found: tuple[str, bytes] | None = None
                if self.path == "/v2/":
                    found = ("application/json", b"{}")
                elif m and m.group(2) == "manifests":
                    sep = "@" if m.group(3).startswith("sha256:") else ":"
                    found = registry.manifests.get(f"{m.group(1)}{sep}{m.group(3)}")
                elif m and m.group(3) in registry.blobs:
                    found = ("application/octet-stream", registry.blobs[m.group(3)])
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", found[0])
                self.send_header("Content-Length", str(len(found[1])))
                self.end_headers()
                self.wfile.write(found[1])

        self._serve(Handler)
        return self
