"""Image references (`busybox`, `localhost:5000/x/y:t`, `name@sha256:<hex>`) with docker's
normalization: a name without a registry is on docker.io, a one-component docker.io name is
under library/, and a reference without tag or digest means the tag `latest`.

Grammar from distribution/reference (what docker and podman accept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
NAME_TOTAL_MAX = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])"
_DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def familiar_name(self) -> str:
        """The repository as docker shows it: `busybox`, `user/app`, `localhost:5000/x`."""
        if self.registry != DEFAULT_REGISTRY:
            return self.name
        repo = self.repository
        if repo.startswith("library/") and repo.count("/") == 1:
            return repo[len("library/"):]
        return repo

    def familiar(self) -> str:
        return self.familiar_name() + self._suffix()

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def parse_reference(text: str) -> Reference:
    """Parse and normalize an image reference; InvalidArgument names what is wrong."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument("invalid reference format: empty image name")
    if _HEX64_RE.fullmatch(text):
        # docker refuses these too: they would shadow an image id
        raise InvalidArgument(f"invalid reference format: {text}: a 64-character hexadecimal "
                              "string is an image id, not a name")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidArgument(f"invalid reference format: {text}: bad digest {digest!r} "
                                  "(want sha256:<64 hex digits>)")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidArgument(f"invalid reference format: {text}: bad tag {tag!r}")
    registry, repository = _split_registry(rest, text)
    if len(registry) + 1 + len(repository) > NAME_TOTAL_MAX:
        raise InvalidArgument(f"invalid reference format: {text}: name longer than "
                              f"{NAME_TOTAL_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def _split_registry(name: str, text: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if not sep or (not any(c in first for c in ".:") and first != "localhost"
                   and first.lower() == first):
        registry, remainder = DEFAULT_REGISTRY, name
    else:
        registry = first
        if not _DOMAIN_RE.fullmatch(registry):
            raise InvalidArgument(f"invalid reference format: {text}: bad registry {registry!r}")
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if not _PATH_RE.fullmatch(remainder):
        if remainder.lower() != remainder and _PATH_RE.fullmatch(remainder.lower()):
            raise InvalidArgument(f"invalid reference format: {text}: repository name must be "
                                  "lowercase")
        raise InvalidArgument(f"invalid reference format: {text}")
    if registry == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = "library/" + remainder
    return registry, remainder
