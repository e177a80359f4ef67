"""Pulling images from registries that speak the OCI distribution API (v2).

`pull` resolves a reference to one image manifest (choosing a platform from an index or a
docker manifest list), then streams the config and the layers into the store, each checked
against its digest by `ImageStore.put_blob`; blobs already in the store are not fetched
again, and a pull by digest whose manifest is stored makes no request at all.

Transport rules, as docker's: https with certificate verification, except for loopback
registries and those named insecure in the config, which get https without verification and
then plain http. Authentication answers the registry's `WWW-Authenticate` challenge: a bearer
token from the realm it names (anonymous, or with the user's credentials) or basic auth, with
credentials from a docker `config.json`-style file ("auths": base64 "user:password").

Only the standard library: this module is imported by `minirun pull` alone.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import platform as platform_module
import re
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

from ..errors import InvalidArgument, MiniRunError, NotFound
from . import InvalidImage
from .documents import check_config_media_type, parse_json

if TYPE_CHECKING:
    from .reference import Reference
    from .store import ImageRecord, ImageStore

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
ACCEPT = f"{MEDIA_OCI_INDEX}, {MEDIA_OCI_MANIFEST}, {MEDIA_DOCKER_LIST}, {MEDIA_DOCKER_MANIFEST}"

LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)

# A manifest is a few KiB; containerd caps it at 4 MiB so that a hostile registry cannot
# make the client buffer without end. Configs are larger (history) but still bounded.
MAX_MANIFEST_SIZE = 4 << 20
MAX_CONFIG_SIZE = 16 << 20
MAX_TOKEN_RESPONSE = 1 << 20
MAX_REDIRECTS = 5
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_ALIASES = (
    DOCKER_HUB,
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
)

DEFAULT_CONFIG_PATH = "/etc/minirun/registries.json"


class RegistryError(MiniRunError):
    """The registry could not be reached or answered outside the protocol."""


class AuthenticationError(RegistryError):
    """The registry wants credentials that are missing or were refused."""


class DeadlineExceeded(RegistryError):
    """The caller's deadline passed before the pull finished (the CRI's PullImage)."""


# --- configuration -----------------------------------------------------------------------


@dataclass
class RegistryConfig:
    """What the registries config file says: which registries may go without verified TLS,
    and which mirrors to try first for a registry."""

    insecure: tuple[str, ...] = ()
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    path: str | None = None


def load_config(path: str | None = None) -> RegistryConfig:
    """Read the registries config: `path`, else $MINIRUN_REGISTRIES_CONF, else
    /etc/minirun/registries.json; a missing default file means an empty config.

    Format: {"insecure": ["host:port", ...], "mirrors": {"docker.io": ["host:port", ...]}}
    """
    explicit = path or os.environ.get("MINIRUN_REGISTRIES_CONF")
    path = explicit or DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        if explicit:
            raise NotFound(f"registries config {path} does not exist") from None
        return RegistryConfig()
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"registries config {path}: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"registries config {path}: not a json object")
    insecure = data.get("insecure", [])
    mirrors = data.get("mirrors", {})
    if not isinstance(insecure, list) or not all(isinstance(h, str) for h in insecure):
        raise InvalidArgument(f"registries config {path}: 'insecure' must be a list of hosts")
    if not isinstance(mirrors, dict) or not all(
        isinstance(v, list) and all(isinstance(h, str) for h in v) for v in mirrors.values()
    ):
        raise InvalidArgument(
            f"registries config {path}: 'mirrors' must map a registry to a list of hosts"
        )
    return RegistryConfig(
        insecure=tuple(_normalize_registry(h) for h in insecure),
        mirrors={
            _normalize_registry(k): tuple(_normalize_registry(h) for h in v)
            for k, v in mirrors.items()
        },
        path=path,
    )


def _normalize_registry(name: str) -> str:
    """'https://Host:5000/v1/' -> 'host:5000'; docker hub's names -> 'docker.io'."""
    name = name.strip()
    if "://" in name:
        name = name.split("://", 1)[1]
    name = name.split("/", 1)[0].lower()
    return DOCKER_HUB if name in DOCKER_HUB_ALIASES else name


def _host_of(registry: str) -> str:
    """The host part of 'host', 'host:port', '[::1]:port'."""
    if registry.startswith("["):
        return registry[1:].split("]", 1)[0]
    if registry.count(":") > 1:
        return registry  # a bare IPv6 address
    return registry.rsplit(":", 1)[0] if ":" in registry else registry


def is_loopback(registry: str) -> bool:
    """True for localhost, *.localhost and loopback addresses, by name (no DNS lookup)."""
    host = _host_of(registry).lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- credentials -------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # the file they came from, for error messages
    # docker's AuthConfig tokens (the CRI's PullImage passes them): a bearer token sent to
    # the registry as is, and an OAuth2 refresh token traded at the token server
    registry_token: str = ""
    identity_token: str = ""


def default_auth_files() -> list[str]:
    """Where credentials are looked for without --authfile: $REGISTRY_AUTH_FILE, then
    podman's and docker's usual files."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return [env]
    files = []
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        files.append(os.path.join(runtime_dir, "containers", "auth.json"))
    files.append(os.path.join(os.path.expanduser("~"), ".docker", "config.json"))
    return files


def load_credentials(
    registry: str, repository: str, auth_file: str | None = None
) -> Credentials | None:
    """The credentials for `registry` from a config.json-style "auths" map.

    Keys may be 'host', 'host:port', 'https://host/v1/' (docker hub's historic key) or
    'host/namespace' (podman's per-repository entries, the longest match wins)."""
    files = [auth_file] if auth_file else default_auth_files()
    wanted = _normalize_registry(registry)
    for path in files:
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            if auth_file:
                raise NotFound(f"auth file {path} does not exist") from None
            continue
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"auth file {path}: {e}") from None
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            continue
        best: tuple[int, dict] | None = None
        for key, entry in auths.items():
            if not isinstance(entry, dict):
                continue
            bare = key.split("://", 1)[-1].rstrip("/")
            host, _, path_part = bare.partition("/")
            if _normalize_registry(host) != wanted:
                continue
            if path_part and path_part != "v1":
                if not (repository == path_part or repository.startswith(path_part + "/")):
                    continue
                weight = len(path_part)
            else:
                weight = 0
            if best is None or weight > best[0]:
                best = (weight, entry)
        if best is not None:
            found = _decode_entry(best[1], registry, path)
            if found is not None:
                return found
    return None


def _decode_entry(entry: dict, registry: str, path: str) -> Credentials | None:
    """The entry's user and password; None for an entry that holds none (docker leaves
    `{}` there when a credential helper keeps the secret, which this client cannot run)."""
    if entry.get("auth"):
        try:
            user, sep, password = (
                base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(
                f"auth file {path}: entry for {registry} is not base64 'user:password'"
            ) from None
        if not sep:
            raise InvalidArgument(
                f"auth file {path}: entry for {registry} has no ':' between user and password"
            )
        return Credentials(user, password, path)
    if entry.get("username") and "password" in entry:
        return Credentials(entry["username"], entry["password"], path)
    return None


# --- platforms ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_MACHINE_TO_ARCH = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> Platform:
    arch, variant = _MACHINE_TO_ARCH.get(
        platform_module.machine(), (platform_module.machine(), None)
    )
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """'linux/arm64', 'linux/arm/v7', 'arm64' -> Platform."""
    parts = text.strip().lower().split("/")
    if len(parts) == 1 and parts[0]:
        parts = ["linux", parts[0]]
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _platform_matches(want: Platform, entry: dict) -> bool:
    got = entry.get("platform") or {}
    if got.get("os") != want.os or got.get("architecture") != want.architecture:
        return False
    if want.variant is None:
        return True
    variant = got.get("variant")
    # arm64's only variant is v8, and images often leave it out.
    if variant is None and want.architecture == "arm64" and want.variant == "v8":
        return True
    return variant == want.variant


def choose_manifest(index: dict, want: Platform, reference: str) -> dict:
    """The descriptor in an index or manifest list for `want`."""
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    for entry in entries:
        if _platform_matches(want, entry):
            return entry
    # An entry that names no variant is taken for one that was asked for (arm/v7 runs an
    # entry that only says arm), never an entry with another variant (v7 code on a v6 cpu).
    if want.variant:
        for entry in entries:
            plain = Platform(want.os, want.architecture)
            if _platform_matches(plain, entry) and not entry["platform"].get("variant"):
                return entry
    available = sorted(
        {
            str(Platform(p.get("os", "?"), p.get("architecture", "?"), p.get("variant")))
            for p in (e.get("platform") or {} for e in entries)
            if p
        }
    )
    raise NotFound(
        f"no {want} image in {reference} (it has: {', '.join(available) or 'no platforms'})"
    )


# --- progress ----------------------------------------------------------------------------


class Progress(Protocol):
    def start(self, digest: str, size: int | None) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finish(self, status: str) -> None: ...


class TerminalProgress:
    """One line per blob on a terminal, redrawn in place:
    'sha256:0123456789ab [####    ] 1.2 KiB/3.4 KiB'."""

    WIDTH = 30

    def __init__(self, stream: IO[str] | None = None, min_interval: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._label = ""
        self._size: int | None = None
        self._done = 0
        self._last_draw = 0.0

    def start(self, digest: str, size: int | None) -> None:
        self._label = digest[:19]
        self._size = size
        self._done = 0
        self._last_draw = 0.0
        self._draw(force=True)

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        self._draw()

    def finish(self, status: str) -> None:
        self.stream.write(f"\r\x1b[2K{self._label} {status}\n")
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        if self._size:
            filled = min(self.WIDTH, self.WIDTH * self._done // self._size)
            bar = "#" * filled + " " * (self.WIDTH - filled)
            text = f"{self._label} [{bar}] {_human(self._done)}/{_human(self._size)}"
        else:
            text = f"{self._label} {_human(self._done)}"
        self.stream.write(f"\r\x1b[2K{text}")
        self.stream.flush()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


# --- HTTP --------------------------------------------------------------------------------


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="https://auth",service="reg",scope="repository:x:pull"'
    -> ('bearer', {'realm': ..., 'service': ..., 'scope': ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


class _Response:
    """An open HTTP response and the connection it came over (closed together)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str):
        self.conn = conn
        self.resp = resp
        self.url = url
        self.status = resp.status
        self.headers = resp.headers

    def read(self, n: int = -1) -> bytes:
        return self.resp.read(n)

    def read_limited(self, limit: int, what: str) -> bytes:
        data = self.resp.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"{what} is larger than {limit} bytes")
        return data

    def close(self) -> None:
        self.resp.close()
        self.conn.close()

    def error_detail(self) -> str:
        """The registry's error messages ('manifest unknown'), if its body has any."""
        try:
            body = parse_json(self.resp.read(64 << 10) or b"{}", "error body")
            errors = body.get("errors") or []
            return "; ".join(
                str(e.get("message") or e.get("code") or "").lower() for e in errors
            ).strip("; ")
        except (MiniRunError, AttributeError, TypeError, OSError, http.client.HTTPException):
            return ""


class RegistryClient:
    """Requests to one registry host for one repository, with its auth state."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        insecure: bool = False,
        insecure_hosts: tuple[str, ...] = (),
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        deadline: float | None = None,
    ) -> None:
        self.registry = registry
        self.api_host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.repository = repository
        self.insecure = insecure or is_loopback(registry)
        self.insecure_hosts = insecure_hosts
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline  # time.monotonic() by which the pull must be done
        self._scheme: str | None = None
        self._authorization: str | None = None
        if credentials is not None and credentials.registry_token:
            self._authorization = "Bearer " + credentials.registry_token
        self.requests = 0  # how many HTTP requests were sent, for callers' statistics

    # Transport ---------------------------------------------------------------------

    def _host_is_insecure(self, host: str) -> bool:
        host = host.lower()
        return (
            is_loopback(host)
            or host in self.insecure_hosts
            or _host_of(host) in self.insecure_hosts
        )

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            if self._host_is_insecure(netloc) or (netloc == self.api_host and self.insecure):
                context = ssl._create_unverified_context()
            else:
                context = ssl.create_default_context()
            return http.client.HTTPSConnection(netloc, timeout=self._timeout(), context=context)
        return http.client.HTTPConnection(netloc, timeout=self._timeout())

    def check_deadline(self, what: str) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(f"{what}: deadline exceeded")

    def _timeout(self) -> float:
        """The socket timeout: never past the deadline."""
        if self.deadline is None:
            return self.timeout
        return max(0.001, min(self.timeout, self.deadline - time.monotonic()))

    def _base_url(self) -> str:
        """'https://host' or, for an insecure registry that does not speak TLS, 'http://host'."""
        if self._scheme is None:
            if not self.insecure:
                self._scheme = "https"
            else:
                self._scheme = self._probe_scheme()
        return f"{self._scheme}://{self.api_host}"

    def _probe_scheme(self) -> str:
        """https (unverified) if the insecure registry speaks it, else http: as docker does."""
        self.requests += 1
        conn = self._connect("https", self.api_host)
        try:
            conn.request("GET", "/v2/", headers={"User-Agent": _user_agent()})
            conn.getresponse().close()
            return "https"
        except (OSError, http.client.HTTPException):  # TLS refused, reset, timed out, ...
            return "http"
        finally:
            conn.close()

    def _send_once(self, method: str, url: str, headers: dict[str, str]) -> _Response:
        """One request, following redirects; Authorization is only sent to the registry host."""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise RegistryError(f"registry {self.registry} redirected to unsupported url {url}")
            if (
                parts.scheme == "http"
                and not self._host_is_insecure(parts.netloc)
                and not (parts.netloc == self.api_host and self.insecure)
            ):
                raise RegistryError(
                    f"refusing plain http to {parts.netloc}: name it in the insecure registries"
                )
            send = dict(headers)
            if parts.netloc != self.api_host:
                # A redirect to blob storage must not carry the registry's token or password.
                send.pop("Authorization", None)
            conn = self._connect(parts.scheme, parts.netloc)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            self.requests += 1
            try:
                conn.request(method, path or "/", headers=send)
                resp = conn.getresponse()
            except BaseException:
                conn.close()
                raise
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                location = urllib.parse.urljoin(url, resp.headers["Location"])
                resp.close()
                conn.close()
                url = location
                if resp.status == 303:
                    method = "GET"
                continue
            return _Response(conn, resp, url)
        raise RegistryError(f"registry {self.registry}: too many redirects for {url}")

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, *, what: str
    ) -> _Response:
        """A request to the registry with auth and bounded retries on 5xx/429/connection
        errors. Returns any other response, open; raises for 401/403."""
        base_headers = {"User-Agent": _user_agent(), **(headers or {})}
        auth_attempts = 0
        attempt = 0
        while True:
            self.check_deadline(what)
            url = self._base_url() + path
            send = dict(base_headers)
            if self._authorization:
                send["Authorization"] = self._authorization
            try:
                resp = self._send_once(method, url, send)
            except ssl.SSLCertVerificationError as e:
                raise RegistryError(
                    f"tls certificate of {self.registry} not trusted ({e.verify_message}): "
                    "add it to the insecure registries to skip verification"
                ) from None
            except ConnectionRefusedError:
                raise RegistryError(
                    f"cannot connect to registry {self.registry}: connection refused"
                ) from None
            except socket.gaierror as e:
                raise RegistryError(
                    f"cannot resolve registry {self.registry}: {e.strerror}"
                ) from None
            except ssl.SSLError as e:
                # A handshake failure does not go away on retry: most often the registry
                # speaks plain http.
                raise RegistryError(
                    f"tls handshake with {self.registry} failed ({e.reason or e}): if it only "
                    "speaks http, add it to the insecure registries"
                ) from None
            except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
                self.check_deadline(what)
                if attempt >= self.retries:
                    raise RegistryError(
                        f"{what}: {self.registry} failed after {attempt + 1} attempts: "
                        f"{_describe(e)}"
                    ) from None
                self._sleep(attempt)
                attempt += 1
                continue
            except OSError as e:  # no route, network unreachable, ...
                raise RegistryError(
                    f"cannot connect to registry {self.registry}: {_describe(e)}"
                ) from None
            if resp.status in TRANSIENT_STATUSES and attempt < self.retries:
                resp.close()
                self._sleep(attempt, resp.headers.get("Retry-After"))
                attempt += 1
                continue
            if resp.status == 401:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                if auth_attempts >= 2:
                    raise self._denied(what, challenge)
                auth_attempts += 1
                self._answer_challenge(challenge, what)
                continue
            if resp.status == 403:
                detail = resp.error_detail()
                resp.close()
                raise AuthenticationError(
                    f"{what}: access denied by {self.registry}" + (f" ({detail})" if detail else "")
                )
            return resp

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.backoff * (2**attempt)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 30.0))
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - time.monotonic()))
        time.sleep(delay)

    # Authentication ------------------------------------------------------------------

    def _denied(self, what: str, challenge: str = "") -> AuthenticationError:
        if parse_challenge(challenge)[1].get("error") == "insufficient_scope":
            # Token registries answer so for a repository that does not exist too.
            return AuthenticationError(
                f"{what}: {self.registry} denied access to {self.repository}: it does not "
                "exist or needs other credentials"
            )
        if self.credentials:
            c = self.credentials
            whose = ("the registry token" if c.registry_token else
                     "the identity token" if c.identity_token and not c.username else
                     f"the credentials of user {c.username!r}")
            return AuthenticationError(
                f"{what}: {self.registry} refused {whose} (from {c.source})"
            )
        return AuthenticationError(
            f"{what}: {self.registry} requires authentication and no credentials were found "
            "for it (use --authfile or REGISTRY_AUTH_FILE)"
        )

    def _answer_challenge(self, header: str, what: str) -> None:
        scheme, params = parse_challenge(header)
        if self.credentials is not None and self.credentials.registry_token:
            raise self._denied(what)  # it was sent and refused; nothing else to try
        if scheme == "basic":
            if not self.credentials or self.credentials.identity_token and \
                    not self.credentials.username:
                raise self._denied(what)
            if self._authorization and self._authorization.startswith("Basic "):
                raise self._denied(what)
            self._authorization = _basic(self.credentials)
        elif scheme == "bearer" and params.get("realm"):
            scope = params.get("scope") or f"repository:{self.repository}:pull"
            self._authorization = "Bearer " + self._fetch_token(
                params["realm"], params.get("service"), scope, what
            )
        else:
            raise AuthenticationError(
                f"{what}: {self.registry} asked for an unsupported authentication {header!r}"
            )

    def _fetch_token(self, realm: str, service: str | None, scope: str, what: str) -> str:
        """GET <realm>?service=..&scope=.. (with basic auth when we have credentials)."""
        parts = urllib.parse.urlsplit(realm)
        query = [("scope", s) for s in scope.split(" ") if s]
        if service:
            query.insert(0, ("service", service))
        if parts.query:
            query = urllib.parse.parse_qsl(parts.query) + query
        url = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path or "/", urllib.parse.urlencode(query), "")
        )
        if self.credentials and self.credentials.identity_token:
            return self._fetch_oauth_token(realm, service, scope, what)
        headers = {"User-Agent": _user_agent()}
        if self.credentials:
            if parts.scheme != "https" and not self._host_is_insecure(parts.netloc):
                raise AuthenticationError(
                    f"{what}: refusing to send credentials to token server {realm} over plain http"
                )
            headers["Authorization"] = _basic(self.credentials)
        for attempt in range(self.retries + 1):
            try:
                resp = self._send_token_request(url, headers)
            except ssl.SSLCertVerificationError as e:
                raise RegistryError(
                    f"{what}: tls certificate of token server {parts.netloc} not trusted "
                    f"({e.verify_message})"
                ) from None
            except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as e:
                transient = isinstance(
                    e, (ConnectionError, TimeoutError, http.client.HTTPException)
                )
                if (
                    attempt >= self.retries
                    or not transient
                    or isinstance(e, ConnectionRefusedError)
                ):
                    raise RegistryError(
                        f"{what}: token server {parts.netloc}: {_describe(e)}"
                    ) from None
                self._sleep(attempt)
                continue
            if resp.status in TRANSIENT_STATUSES and attempt < self.retries:
                resp.close()
                self._sleep(attempt)
                continue
            break
        return self._token_from(resp, parts.netloc, what, refused=(401,))

    def _token_from(self, resp: _Response, netloc: str, what: str,
                    refused: tuple[int, ...]) -> str:
        """The token in a token server's answer ("token", or OAuth2's "access_token")."""
        try:
            if resp.status in refused:
                raise self._denied(what)
            if resp.status != 200:
                raise AuthenticationError(
                    f"{what}: token server {netloc} answered {resp.status} {resp.resp.reason}"
                )
            body = parse_json(resp.read_limited(MAX_TOKEN_RESPONSE, "token response"),
                              f"{what}: token server {netloc}: its answer",
                              AuthenticationError)
        finally:
            resp.close()
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthenticationError(f"{what}: token server {netloc} sent no token")
        return token

    def _fetch_oauth_token(self, realm: str, service: str | None, scope: str,
                           what: str) -> str:
        """Docker's OAuth2 flow for an identity token: POST <realm> with
        grant_type=refresh_token; the answer's access_token is the bearer token."""
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme != "https" and not self._host_is_insecure(parts.netloc):
            raise AuthenticationError(
                f"{what}: refusing to send an identity token to {realm} over plain http"
            )
        form = [("grant_type", "refresh_token"), ("client_id", "minirun"),
                ("refresh_token", self.credentials.identity_token)]
        if service:
            form.append(("service", service))
        form.append(("scope", scope))
        headers = {"User-Agent": _user_agent(),
                   "Content-Type": "application/x-www-form-urlencoded"}
        try:
            resp = self._send_token_request(realm, headers, "POST",
                                            urllib.parse.urlencode(form).encode())
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"{what}: token server {parts.netloc}: {_describe(e)}") from None
        # OAuth2 answers a bad refresh token with 400 invalid_grant
        return self._token_from(resp, parts.netloc, what, refused=(400, 401, 403))

    def _send_token_request(self, url: str, headers: dict[str, str], method: str = "GET",
                            body: bytes | None = None) -> _Response:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and not self._host_is_insecure(parts.netloc):
            raise AuthenticationError(f"refusing plain http to token server {parts.netloc}")
        conn = self._connect(parts.scheme, parts.netloc)
        self.requests += 1
        path = f"{parts.path}?{parts.query}" if parts.query else (parts.path or "/")
        try:
            conn.request(method, path, body=body, headers=headers)
            return _Response(conn, conn.getresponse(), url)
        except BaseException:
            conn.close()
            raise

    # The API ------------------------------------------------------------------------

    def get_manifest(self, reference: str, display: str) -> tuple[bytes, str | None, str | None]:
        """The raw manifest for a tag or digest, its Content-Type and Docker-Content-Digest."""
        path = f"/v2/{self.repository}/manifests/{reference}"
        resp = self.request("GET", path, {"Accept": ACCEPT}, what=f"pull {display}")
        try:
            if resp.status == 404:
                detail = resp.error_detail()
                raise NotFound(f"image {display} not found" + (f" ({detail})" if detail else ""))
            if resp.status != 200:
                detail = resp.error_detail()
                raise RegistryError(
                    f"pull {display}: {self.registry} answered {resp.status} {resp.resp.reason}"
                    + (f" ({detail})" if detail else "")
                )
            data = resp.read_limited(MAX_MANIFEST_SIZE, f"manifest of {display}")
            content_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip() or None
            return data, content_type, resp.headers.get("Docker-Content-Digest")
        finally:
            resp.close()

    def fetch_blob(
        self,
        store: ImageStore,
        digest: str,
        size: int | None,
        display: str,
        progress: Progress | None = None,
        max_size: int | None = None,
    ) -> str:
        """Stream one blob into the store, checked against its digest; a broken transfer is
        started again (bounded), a wrong digest is not."""
        path = f"/v2/{self.repository}/blobs/{digest}"
        what = f"pull {display}: blob {digest}"
        attempt = 0
        while True:
            resp = self.request("GET", path, what=what)
            try:
                if resp.status == 404:
                    raise NotFound(f"{what} not found on {self.registry}")
                if resp.status != 200:
                    raise RegistryError(
                        f"{what}: {self.registry} answered {resp.status} {resp.resp.reason}"
                    )
                length = resp.headers.get("Content-Length")
                if size is not None and length and length.isdigit() and int(length) != size:
                    raise InvalidImage(
                        f"{what}: registry sends {length} bytes, the manifest says {size}"
                    )
                if progress:
                    progress.start(digest, size)
                reader = _ProgressReader(resp, progress, size, self, what)
                limit = size if size is not None else max_size
                try:
                    return store.put_blob(reader, expected_digest=digest, max_size=limit)
                except (
                    ConnectionError,
                    TimeoutError,
                    http.client.HTTPException,
                    ssl.SSLEOFError,
                ) as e:
                    self.check_deadline(what)
                    if attempt >= self.retries:
                        raise RegistryError(
                            f"{what}: transfer failed after {attempt + 1} attempts: {_describe(e)}"
                        ) from None
            finally:
                resp.close()
            if progress:
                progress.finish("retrying")
            self._sleep(attempt)
            attempt += 1


class _ProgressReader:
    """A file-like view of a response body that reports bytes read, and turns a body that
    ends early into IncompleteRead (http.client returns a short read there), so that a cut
    transfer is retried instead of failing its digest check."""

    def __init__(self, resp: _Response, progress: Progress | None, size: int | None,
                 client: RegistryClient | None = None, what: str = "") -> None:
        self.resp = resp
        self.progress = progress
        self.expected = size
        self.got = 0
        self.client = client
        self.what = what

    def read(self, n: int = -1) -> bytes:
        if self.client is not None:
            self.client.check_deadline(self.what)
        data = self.resp.read(n if n and n > 0 else 1 << 20)
        if data:
            self.got += len(data)
            if self.progress:
                self.progress.advance(len(data))
            return data
        missing = self.resp.resp.length or 0
        if self.expected is not None and self.got < self.expected:
            missing = max(missing, self.expected - self.got)
        if missing:
            raise http.client.IncompleteRead(b"", missing)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _describe(e: BaseException) -> str:
    """A transport error in words, for one-line messages."""
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed with {e.expected} bytes still to come"
    if isinstance(e, http.client.RemoteDisconnected):
        return "connection closed by the server"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    text = str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


def _user_agent() -> str:
    from .. import __version__

    return f"minirun/{__version__}"


# --- pull --------------------------------------------------------------------------------


def _digest_of(data: bytes, digest: str) -> str:
    algorithm = digest.split(":", 1)[0] if ":" in digest else "sha256"
    if algorithm not in ("sha256", "sha512"):
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _media_type(manifest: dict, content_type: str | None) -> str:
    media = manifest.get("mediaType")
    if isinstance(media, str) and media:
        return media
    if content_type in INDEX_TYPES + MANIFEST_TYPES:
        return content_type
    # OCI allows leaving mediaType out: tell the two shapes apart by their fields.
    if "manifests" in manifest:
        return MEDIA_OCI_INDEX
    if "layers" in manifest:
        return MEDIA_OCI_MANIFEST
    return content_type or "unknown"


@dataclass
class PullStats:
    """What a pull did, for tests and the CLI's summary."""

    requests: int = 0
    blobs_fetched: list[str] = field(default_factory=list)
    blobs_present: list[str] = field(default_factory=list)


class _Puller:
    def __init__(
        self,
        store: ImageStore,
        ref: Reference,
        client: RegistryClient,
        progress: Progress | None,
        stats: PullStats,
        new_blobs: list[str],
    ) -> None:
        self.store = store
        self.ref = ref
        self.client = client
        self.progress = progress
        self.stats = stats
        self.display = str(ref)
        self.new_blobs = new_blobs  # what a failed pull deletes again

    def manifest(self, reference: str, expected_digest: str | None) -> tuple[dict, str, str | None]:
        """A manifest by tag or digest: from the store if we have that digest, else from the
        registry, checked against the digest asked for or the one the registry names."""
        content_type = None
        if expected_digest and self._have(expected_digest):
            with self.store.open_blob(expected_digest) as f:
                data = f.read(MAX_MANIFEST_SIZE + 1)
            digest = expected_digest
        else:
            data, content_type, header_digest = self.client.get_manifest(reference, self.display)
            claimed = expected_digest or header_digest
            if claimed:
                got = _digest_of(data, claimed)
                if got != claimed:
                    raise InvalidImage(
                        f"pull {self.display}: manifest digest mismatch: expected {claimed}, "
                        f"got {got}"
                    )
            # The store names everything by sha256, whatever algorithm the registry used.
            digest, created = self.store.put_blob_ex(data)
            if created:
                self.new_blobs.append(digest)
        manifest = parse_json(data, f"pull {self.display}: manifest {digest}")
        if not isinstance(manifest, dict):
            raise InvalidImage(f"pull {self.display}: manifest {digest} is not a json object")
        return manifest, digest, content_type

    def _have(self, digest: str) -> bool:
        return digest.startswith("sha256:") and self.store.has_blob(digest)

    def blob(self, descriptor: dict, max_size: int | None = None) -> str:
        digest = descriptor.get("digest")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise InvalidImage(
                f"pull {self.display}: descriptor without a sha256 digest: {descriptor}"
            )
        size = descriptor.get("size")
        if not isinstance(size, int) or size < 0:
            size = None
        if max_size is not None and size is not None and size > max_size:
            raise InvalidImage(
                f"pull {self.display}: blob {digest} is {size} bytes, over {max_size}"
            )
        if self.store.has_blob(digest):
            self.stats.blobs_present.append(digest)
            if self.progress:
                self.progress.start(digest, size)
                self.progress.finish("already present")
            return digest
        self.client.fetch_blob(self.store, digest, size, self.display, self.progress, max_size)
        self.new_blobs.append(digest)
        self.stats.blobs_fetched.append(digest)
        if self.progress:
            self.progress.finish("done")
        return digest


def pull(
    store: ImageStore,
    reference: str | Reference,
    *,
    platform: str | Platform | None = None,
    auth_file: str | None = None,
    insecure_registries: tuple[str, ...] | list[str] = (),
    progress: Progress | None = None,
    config: RegistryConfig | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    stats: PullStats | None = None,
    credentials: dict[str, Credentials] | None = None,
    deadline: float | None = None,
) -> ImageRecord:
    """Pull NAME[:TAG|@DIGEST] into the store, unpack its layers and return its record.
    Mirrors configured for the registry are tried first, in order. A pull that fails
    deletes the blobs and layers it wrote (never those the store already had).

    The record's manifest digest is the one the reference resolved to (an index's for a
    multi-platform image, as docker's repo digests), so `NAME@<that digest>` finds it.

    `credentials` maps a registry (host[:port]) to credentials that win over the auth
    files (the CRI's PullImage brings its own). With a `deadline` (time.monotonic()), a
    pull still going then stops with DeadlineExceeded and deletes what it wrote."""
    from .reference import Reference, parse_reference

    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    want = (
        platform
        if isinstance(platform, Platform)
        else (parse_platform(platform) if platform else host_platform())
    )
    config = config if config is not None else load_config()
    insecure = tuple(_normalize_registry(h) for h in insecure_registries) + config.insecure
    stats = stats if stats is not None else PullStats()
    registry = _normalize_registry(ref.registry)

    endpoints = list(config.mirrors.get(registry, ())) + [registry]
    last_error: MiniRunError | None = None
    new_blobs: list[str] = []
    new_chains: list[str] = []
    try:
        for endpoint in endpoints:
            client = RegistryClient(
                endpoint,
                ref.repository,
                insecure=endpoint in insecure or _host_of(endpoint) in insecure,
                insecure_hosts=insecure,
                credentials=(credentials or {}).get(endpoint)
                or load_credentials(endpoint, ref.repository, auth_file),
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                deadline=deadline,
            )
            puller = _Puller(store, ref, client, progress, stats, new_blobs)
            try:
                # The lease keeps a concurrent prune from deleting blobs fetched here before
                # add_image references them.
                with store.lease():
                    record = _pull_from(puller, want, new_chains)
                break
            except (RegistryError, NotFound) as e:
                if endpoint == registry or isinstance(e, DeadlineExceeded):
                    raise
                # A mirror that lacks the image or is down: fall through to the next, as
                # docker does.
                last_error = e
            finally:
                stats.requests += client.requests
        else:
            raise last_error or RegistryError(f"pull {ref}: no endpoint")
    except BaseException:
        store.discard(new_blobs, new_chains)
        raise
    store.record_event("pull", ref.familiar(), ref.familiar())  # docker's: id = reference
    return record


def _pull_from(puller: _Puller, want: Platform, new_chains: list[str]) -> ImageRecord:
    store, ref = puller.store, puller.ref
    manifest, digest, content_type = puller.manifest(ref.digest or ref.tag or "latest", ref.digest)
    top_digest = digest
    media = _media_type(manifest, content_type)
    for _depth in range(3):
        if media in MEDIA_DOCKER_SCHEMA1 or manifest.get("schemaVersion") == 1:
            raise InvalidImage(f"pull {ref}: docker schema 1 manifests are not supported")
        if media not in INDEX_TYPES:
            break
        entry = choose_manifest(manifest, want, str(ref))
        if not isinstance(entry.get("digest"), str):
            raise InvalidImage(f"pull {ref}: index entry without a digest")
        manifest, digest, content_type = puller.manifest(entry["digest"], entry["digest"])
        media = _media_type(manifest, content_type or entry.get("mediaType"))
    if media not in MANIFEST_TYPES:
        raise InvalidImage(f"pull {ref}: unsupported manifest media type {media!r}")

    config_desc = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config_desc, dict) or not isinstance(layers, list):
        raise InvalidImage(f"pull {ref}: manifest {digest} lacks config or layers")
    check_config_media_type(config_desc.get("mediaType"), f"pull {ref}: manifest {digest}")
    records = []
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("mediaType") not in LAYER_TYPES:
            kind = layer.get("mediaType") if isinstance(layer, dict) else layer
            raise InvalidImage(f"pull {ref}: unsupported layer media type {kind!r}")
    config_digest = puller.blob(config_desc, MAX_CONFIG_SIZE)
    for layer in layers:
        records.append(
            {
                "digest": puller.blob(layer),
                "media_type": layer["mediaType"],
                "size": layer.get("size"),
            }
        )
    # add_image unpacks the layers, each checked against the config's diff_ids.
    return store.add_image(top_digest, config_digest, records, [str(ref)], new_chains)
