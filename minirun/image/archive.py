"""Image archives: `docker save` / `podman save` archives, OCI image layout archives and
directories, and root filesystem tarballs (`minirun import`).

An archive is untrusted input, and so is a layout directory. Every path in it and in its
documents must be plain (relative, no "..", no link leaving it), every JSON document is
size- and depth-bounded, every blob is checked against the digest that names it, a tar is
parsed by the layers' bounded reader (never tarfile), and an archive that fails any check
is refused with one line naming the problem. A load is all or nothing: every image of the
archive is stored and its layers unpacked before any record is added, and what a failed
load wrote (blobs and layers the store did not have) is deleted.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import posixpath
import re
import shlex
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Self

from .. import sys as msys
from ..errors import InvalidArgument, KernelFeatureMissing, MiniRunError
from . import InvalidImage
from .documents import MEDIA_OCI_CONFIG, check_config_media_type, parse_json
from .reference import Reference, parse_reference
from .store import ImageRecord, ImageStore, check_digest, normalize_name
from .unpack import Limits, TarMember, iter_tar_members

MAX_JSON_SIZE = 4 << 20        # manifest.json, index.json, manifests, configs
MAX_MEMBERS = 100_000
MAX_IMAGES = 1000
MAX_HEADER_SIZE = 1 << 20      # one PAX or GNU long-name header
MAX_LINK_DEPTH = 8
MAX_INDEX_DEPTH = 4
MAX_ARCHIVE_SIZE = 64 << 30    # a compressed or piped archive, once decompressed

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
LAYER_MEDIA_TYPES = (
    MEDIA_OCI_LAYER, MEDIA_OCI_LAYER + "+gzip", MEDIA_OCI_LAYER + "+zstd",
    MEDIA_DOCKER_LAYER, MEDIA_DOCKER_LAYER + ".gzip", MEDIA_DOCKER_LAYER + ".zstd",
)
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"
_HEX64_JSON_RE = re.compile(r"([0-9a-f]{64})\.json")


# --- reading archives and layout directories ---------------------------------------------------

def clean_path(name: Any, what: str = "archive member") -> str:
    """A path inside the archive, normalized; absolute paths and ".." are refused (they
    could only be meant to reach outside it)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InvalidImage(f"{what} {name!r}: not a plain relative path")
    if name.startswith("/"):
        raise InvalidImage(f"{what} {name}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidImage(f"{what} {name}: path with '..'")
    if not parts:
        return "."
    return "/".join(parts)


class _ImageSource:
    """Where load reads images from: the files of an archive or of a layout directory, by
    cleaned path, links followed inside it only."""

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def read_json(self, name: str, what: str) -> tuple[Any, bytes]:
        size = self.size(name)
        if size > MAX_JSON_SIZE:
            raise InvalidImage(f"{what} {name} is {size} bytes, more than {MAX_JSON_SIZE}")
        with self.open(name) as f:
            data = f.read(MAX_JSON_SIZE + 1)
        if len(data) > MAX_JSON_SIZE:
            raise InvalidImage(f"{what} {name} is more than {MAX_JSON_SIZE} bytes")
        return parse_json(data, f"{what} {name}"), data


class _Archive(_ImageSource):
    """The members of an image archive by cleaned name; only directories, regular files
    and links that resolve to regular files inside the archive are allowed. The tar is
    parsed by the layers' own reader (iter_tar_members), never by tarfile."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.members: dict[str, TarMember] = {}
        for info in iter_tar_members(f, _ARCHIVE_LIMITS, "image archive"):
            name = clean_path(info.name)
            if info.type == tarfile.DIRTYPE:
                continue
            if info.type not in _ARCHIVE_TYPES:
                raise InvalidImage(f"archive member {info.name}: a {_kind(info)} has no "
                                   "place in an image archive")
            if name in self.members:
                raise InvalidImage(f"archive member {name} appears twice")
            self.members[name] = info

    def has(self, name: str) -> bool:
        return name in self.members

    def resolve(self, name: str) -> TarMember:
        """The regular member `name` is, following links inside the archive only."""
        name = clean_path(name, "path")
        for _ in range(MAX_LINK_DEPTH):
            info = self.members.get(name)
            if info is None:
                raise InvalidImage(f"archive has no {name}")
            if info.type in _REGULAR_TYPES:
                return info
            if info.type == tarfile.SYMTYPE:
                target = info.linkname
                if target.startswith("/"):
                    raise InvalidImage(f"archive member {name}: symlink to absolute {target}")
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if joined == ".." or joined.startswith("../"):
                    raise InvalidImage(f"archive member {name}: symlink leaves the archive")
                name = clean_path(joined, "symlink target")
            else:
                name = clean_path(info.linkname, "hardlink target")
        raise InvalidImage(f"archive member {name}: more than {MAX_LINK_DEPTH} links")

    def open(self, name: str) -> IO[bytes]:
        info = self.resolve(name)
        return _Section(self.f, info.offset, info.size)  # type: ignore[return-value]

    def size(self, name: str) -> int:
        return self.resolve(name).size


_ARCHIVE_LIMITS = Limits(max_size=MAX_ARCHIVE_SIZE, max_members=MAX_MEMBERS,
                         max_header_size=MAX_HEADER_SIZE)
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_ARCHIVE_TYPES = _REGULAR_TYPES + (tarfile.SYMTYPE, tarfile.LNKTYPE)


def _kind(info: TarMember) -> str:
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        return "device node"
    if info.type == tarfile.FIFOTYPE:
        return "fifo"
    return f"member of type {info.type!r}"


class _Section:
    """`size` bytes of `f` from `offset`: one member's data. It seeks before each read, so
    that two open members do not disturb each other."""

    def __init__(self, f: IO[bytes], offset: int, size: int) -> None:
        self.f, self.offset, self.left = f, offset, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        if n == 0:
            return b""
        self.f.seek(self.offset)
        data = self.f.read(n)
        if not data:
            raise InvalidImage("archive is truncated")
        self.offset += len(data)
        self.left -= len(data)
        return data

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _LayoutDir(_ImageSource):
    """An OCI image layout directory (as `skopeo copy ... oci:DIR` and umoci write it), or
    an unpacked docker-save archive. As untrusted as an archive: every path is resolved
    with openat2(RESOLVE_BENEATH), so a symlink leaving the directory (or an absolute one)
    is refused rather than followed to a host file, and only regular files are read."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise MiniRunError(f"cannot open {path}: {e.strerror}") from None

    def close(self) -> None:
        os.close(self.fd)

    def _open(self, name: str) -> int | None:
        """An O_PATH fd of the regular file `name`, or None when there is none."""
        name = clean_path(name, "path")
        try:
            fd = msys.openat2(self.fd, name, os.O_PATH | os.O_CLOEXEC,
                              resolve=msys.RESOLVE_BENEATH | msys.RESOLVE_NO_MAGICLINKS)
        except msys.SysError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            if e.errno == errno.EXDEV:
                raise InvalidImage(f"{self.path}: {name} is a symlink that leaves the "
                                   "directory") from None
            if e.errno == errno.ELOOP:
                raise InvalidImage(f"{self.path}: {name}: too many symlinks") from None
            if e.errno == errno.ENOSYS:
                raise KernelFeatureMissing(f"openat2 is not available: {e}") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidImage(f"{self.path}: {name} is not a regular file")
        return fd

    def _must_open(self, name: str) -> int:
        fd = self._open(name)
        if fd is None:
            raise InvalidImage(f"{self.path} has no {clean_path(name, 'path')}")
        return fd

    def has(self, name: str) -> bool:
        fd = self._open(name)
        if fd is not None:
            os.close(fd)
        return fd is not None

    def size(self, name: str) -> int:
        fd = self._must_open(name)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def open(self, name: str) -> IO[bytes]:
        fd = self._must_open(name)
        try:
            # reopened through the O_PATH fd: the same file, never a path looked up again
            return open(f"/proc/self/fd/{fd}", "rb")
        finally:
            os.close(fd)


@contextlib.contextmanager
def _open_archive(store: ImageStore, source: str | IO[bytes]) -> Iterator[_ImageSource]:
    """A layout directory as it is, or a seekable, uncompressed view of the archive: a
    plain file is read in place, a compressed or piped one is first written (decompressed,
    size-bounded) under the store's tmp dir, and removed afterwards."""
    if isinstance(source, str) and os.path.isdir(source):
        layout = _LayoutDir(source)
        try:
            yield layout
        finally:
            layout.close()
        return
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(_open_source(source))
        head = src.read(6)
        compressed = _compression_of(head)
        if compressed == "zstd":
            raise InvalidImage("zstd-compressed archives are not supported: decompress it "
                               "first (unzstd)")
        if compressed is None and _seekable(src):
            src.seek(0)
            plain = src
        else:
            plain = stack.enter_context(tempfile.TemporaryFile(dir=store.tmp_dir))
            _spool(head, src, compressed, plain)
            plain.seek(0)
        yield _Archive(plain)


@contextlib.contextmanager
def _open_source(source: str | IO[bytes]) -> Iterator[IO[bytes]]:
    """A path opened (and closed after), or a file object as it is."""
    if not isinstance(source, str):
        yield source
        return
    try:
        f = open(source, "rb")  # noqa: SIM115 -- closed by the with below
    except OSError as e:
        raise MiniRunError(f"cannot open {source}: {e.strerror}") from None
    with f:
        yield f


def _seekable(f: IO[bytes]) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _compression_of(head: bytes) -> str | None:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head.startswith(_BZIP2_MAGIC):
        return "bzip2"
    return None


class _Rest:
    """`head` (already read to sniff the format), then the rest of `src`."""

    def __init__(self, head: bytes, src: IO[bytes]) -> None:
        self.head, self.src = head, src

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.src.read(n)
        if n < 0:
            out, self.head = self.head + self.src.read(), b""
        else:
            out, self.head = self.head[:n], self.head[n:]
        return out


def _decompressing(head: bytes, src: IO[bytes], compression: str | None) -> Any:
    rest = _Rest(head, src)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=rest, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(rest, "rb")
    if compression == "bzip2":
        return bz2.BZ2File(rest, "rb")
    return rest


def _spool(head: bytes, src: IO[bytes], compression: str | None, out: IO[bytes],
           limit: int = MAX_ARCHIVE_SIZE) -> None:
    stream = _decompressing(head, src, compression)
    total = 0
    try:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise InvalidImage(f"archive is larger than {limit} bytes once decompressed")
            out.write(chunk)
    except _DECOMPRESS_ERRORS as e:
        if _is_host_error(e):
            raise
        raise InvalidImage(f"archive does not decompress: {e}") from None


# gzip raises BadGzipFile (an OSError) and EOFError, bz2 a bare OSError, zlib and lzma
# their own errors; an OSError with an errno is the host's (a read error, a full disk).
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _is_host_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile) and bool(e.errno)


# --- load --------------------------------------------------------------------------------------

@dataclass
class _Layer:
    member: str
    digest: str | None          # known from the archive's documents; checked on write
    media_type: str | None      # None: detected from the first bytes
    size: int | None = None


@dataclass
class _Image:
    config_member: str
    config_digest: str | None
    layers: list[_Layer]
    names: list[str]
    manifest: bytes | None = None
    manifest_digest: str | None = None
    layer_descs: list[dict] = field(default_factory=list)


def load(store: ImageStore, source: str | IO[bytes]) -> list[ImageRecord]:
    """Load every image of a docker-save or OCI layout archive (plain, gzip, xz or bzip2;
    a path or a file object such as stdin) or of a layout directory. All or nothing."""
    return [record for record, _ in load_with_names(store, source)]


def load_with_names(store: ImageStore,
                    source: str | IO[bytes]) -> list[tuple[ImageRecord, list[str]]]:
    """load(), also giving the names each image got from the archive (for `Loaded image:`);
    an image the archive lists twice is returned once."""
    new_blobs: list[str] = []
    new_chains: list[str] = []
    try:
        with _open_archive(store, source) as archive, store.lease():
            if archive.has("oci-layout") and archive.has("index.json"):
                images = _oci_images(archive)
            elif archive.has("manifest.json"):
                images = _docker_images(archive)
            else:
                raise InvalidImage("not an image archive: no manifest.json (docker save) and "
                                   "no oci-layout with index.json (OCI layout)")
            if not images:
                raise InvalidImage("archive holds no image")
            for image in images:
                _store_blobs(store, archive, image, new_blobs)
                store.unpack_layers(image.config_digest, image.layer_descs, new_chains)
            loaded: dict[str, tuple[ImageRecord, list[str]]] = {}
            for i in images:
                record = store.add_image(i.manifest_digest, i.config_digest, i.layer_descs,
                                         i.names)
                names = loaded.get(record.id, (record, []))[1]
                names += [n for n in i.names if n not in names]
                loaded[record.id] = (record, names)
    except BaseException:
        store.discard(new_blobs, new_chains)
        raise
    for record, names in loaded.values():
        store.record_event("load", record.id,
                           parse_reference(names[0]).familiar() if names else None)
    return [(store.get(record.id), names) for record, names in loaded.values()]


def _put(store: ImageStore, data: IO[bytes] | bytes, expected: str | None,
         new_blobs: list[str], max_size: int | None = None) -> str:
    digest, created = store.put_blob_ex(data, expected, max_size)
    if created:
        new_blobs.append(digest)
    return digest


def _store_blobs(store: ImageStore, archive: _Archive, image: _Image,
                 new_blobs: list[str]) -> None:
    _, config_data = archive.read_json(image.config_member, "image config")
    image.config_digest = _put(store, config_data, image.config_digest, new_blobs)
    if image.manifest is not None:
        image.manifest_digest = _put(store, image.manifest, image.manifest_digest, new_blobs)
    for layer in image.layers:
        size = archive.size(layer.member)
        if layer.size is not None and layer.size != size:
            raise InvalidImage(f"layer {layer.member}: {size} bytes in the archive, "
                               f"{layer.size} in its descriptor")
        media_type = layer.media_type
        if media_type is None:
            with archive.open(layer.member) as f:
                media_type = _docker_layer_type(f.read(6))
        with archive.open(layer.member) as f:
            digest = _put(store, f, layer.digest, new_blobs)
        image.layer_descs.append({"digest": digest, "media_type": media_type, "size": size})


def _docker_layer_type(head: bytes) -> str:
    compression = _compression_of(head)
    if compression == "gzip":
        return MEDIA_DOCKER_LAYER + ".gzip"
    if compression == "zstd":
        return MEDIA_DOCKER_LAYER + ".zstd"
    return MEDIA_DOCKER_LAYER


def _blob_member(digest: str) -> str:
    return f"blobs/sha256/{check_digest(digest)}"


def _digest_of_path(path: str) -> str | None:
    """docker-save paths that name their content: blobs/sha256/<hex> and <hex>.json."""
    parts = path.split("/")
    if len(parts) == 3 and parts[:2] == ["blobs", "sha256"]:
        return "sha256:" + check_digest("sha256:" + parts[2], f"blob name {path}")
    m = _HEX64_JSON_RE.fullmatch(path)
    return "sha256:" + m.group(1) if m else None


def _names(values: Any, what: str) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise InvalidImage(f"{what} is not a list")
    names = []
    for value in values:
        try:
            names.append(str(normalize_name(value)))
        except InvalidArgument as e:
            raise InvalidImage(f"{what}: {e}") from None
    return names


def _docker_images(archive: _Archive) -> list[_Image]:
    manifest, _ = archive.read_json("manifest.json", "file")
    if not isinstance(manifest, list):
        raise InvalidImage("manifest.json is not a list")
    if len(manifest) > MAX_IMAGES:
        raise InvalidImage(f"manifest.json lists more than {MAX_IMAGES} images")
    images = []
    for entry in manifest:
        if not isinstance(entry, dict):
            raise InvalidImage("manifest.json: an entry is not an object")
        config = clean_path(entry.get("Config"), "manifest.json Config")
        layers = entry.get("Layers")
        if not isinstance(layers, list):
            raise InvalidImage("manifest.json: Layers is not a list")
        images.append(_Image(
            config_member=config,
            config_digest=_digest_of_path(config),
            layers=[_Layer(p, _digest_of_path(p), None)
                    for p in (clean_path(p, "manifest.json layer") for p in layers)],
            names=_names(entry.get("RepoTags"), "manifest.json RepoTags"),
        ))
    return images


def host_platform() -> tuple[str, str]:
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x"}.get(machine, machine)
    return "linux", arch


def _descriptor(desc: Any, what: str) -> tuple[str, str, int]:
    if not isinstance(desc, dict):
        raise InvalidImage(f"{what}: descriptor is not an object")
    digest = desc.get("digest")
    check_digest(digest, f"{what} digest")
    size = desc.get("size")
    media_type = desc.get("mediaType", "")
    if not isinstance(size, int) or size < 0 or not isinstance(media_type, str):
        raise InvalidImage(f"{what} {digest}: bad size or media type")
    return digest, media_type, size


def _read_blob_json(archive: _Archive, digest: str, size: int, what: str) -> tuple[Any, bytes]:
    member = _blob_member(digest)
    if not archive.has(member):
        raise InvalidImage(f"{what} {digest} is missing from the archive")
    if archive.size(member) != size:
        raise InvalidImage(f"{what} {digest}: {archive.size(member)} bytes in the archive, "
                           f"{size} in its descriptor")
    doc, data = archive.read_json(member, what)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise InvalidImage(f"{what}: digest mismatch: expected {digest}, got {actual}")
    return doc, data


def _oci_images(archive: _Archive) -> list[_Image]:
    layout, _ = archive.read_json("oci-layout", "file")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise InvalidImage("oci-layout has no imageLayoutVersion")
    index, _ = archive.read_json("index.json", "file")
    images: list[_Image] = []
    _walk_index(archive, index, [], images, depth=0)
    return images


def _walk_index(archive: _Archive, index: Any, names: list[str], images: list[_Image],
                depth: int) -> None:
    if depth > MAX_INDEX_DEPTH:
        raise InvalidImage(f"image indexes nested more than {MAX_INDEX_DEPTH} deep")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidImage("index has no manifests list")
    wanted = host_platform()
    candidates = []
    for desc in index["manifests"]:
        digest, media_type, size = _descriptor(desc, "index entry")
        plat = desc.get("platform")
        if isinstance(plat, dict) and (plat.get("os"), plat.get("architecture")) != wanted:
            continue
        candidates.append((desc, digest, media_type, size))
    if depth > 0:
        # a multi-platform index: the host's image only, once
        candidates = candidates[:1]
        if not candidates:
            raise InvalidImage(f"no {'/'.join(wanted)} image in the archive's index")
    for desc, digest, media_type, size in candidates:
        entry_names = names or _index_names(desc)
        if len(images) >= MAX_IMAGES:
            raise InvalidImage(f"archive holds more than {MAX_IMAGES} images")
        doc, data = _read_blob_json(archive, digest, size, "manifest")
        kind = media_type or (doc.get("mediaType", "") if isinstance(doc, dict) else "")
        if kind in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST):
            _walk_index(archive, doc, entry_names, images, depth + 1)
        elif kind in (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST):
            images.append(_manifest_image(archive, doc, data, digest, entry_names))
        else:
            raise InvalidImage(f"manifest {digest}: unsupported media type {kind!r}")


def _index_names(desc: dict) -> list[str]:
    annotations = desc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise InvalidImage("index entry: annotations is not an object")
    name = annotations.get(ANNOTATION_CONTAINERD_NAME)
    if name is None:
        name = annotations.get(ANNOTATION_REF_NAME)
        # A bare tag ("latest", as umoci writes) names no repository: leave it unnamed.
        if isinstance(name, str) and ":" not in name and "/" not in name:
            name = None
    return _names([name] if name is not None else [], "index entry name")


def _manifest_image(archive: _Archive, doc: Any, data: bytes, digest: str,
                    names: list[str]) -> _Image:
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise InvalidImage(f"manifest {digest}: not a schema 2 image manifest")
    config_digest, config_type, config_size = _descriptor(doc.get("config"), "config")
    check_config_media_type(config_type, f"manifest {digest}")
    config_member = _blob_member(config_digest)
    if not archive.has(config_member):
        raise InvalidImage(f"config {config_digest} is missing from the archive")
    if archive.size(config_member) != config_size:
        raise InvalidImage(f"config {config_digest}: size differs from its descriptor")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidImage(f"manifest {digest}: layers is not a list")
    out = []
    for desc in layers:
        layer_digest, media_type, size = _descriptor(desc, "layer")
        if media_type not in LAYER_MEDIA_TYPES:
            raise InvalidImage(f"layer {layer_digest}: unsupported media type {media_type!r}")
        member = _blob_member(layer_digest)
        if not archive.has(member):
            raise InvalidImage(f"layer {layer_digest} is missing from the archive")
        out.append(_Layer(member, layer_digest, media_type, size))
    return _Image(config_member=config_member, config_digest=config_digest, layers=out,
                  names=names, manifest=data, manifest_digest=digest)


# --- import ------------------------------------------------------------------------------------

def parse_cmd(text: str) -> list[str]:
    """`--cmd` as docker's CMD: a JSON array (`["sh", "-c", "x"]`) or a shell-like line."""
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError as e:
            raise InvalidArgument(f"--cmd {text}: not a JSON array: {e}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"--cmd {text}: want a JSON array of strings")
        return value
    try:
        return shlex.split(text)
    except ValueError as e:
        raise InvalidArgument(f"--cmd {text}: {e}") from None


def import_rootfs(store: ImageStore, tar_path: str | IO[bytes], name: str | None,
                  *, cmd: list[str] | None = None) -> ImageRecord:
    """A single-layer image from a root filesystem tarball (plain, gzip, xz or bzip2), as
    `docker import`: the layer is stored uncompressed, the config has only PATH in Env (and
    `cmd` as Cmd when given). `created` is the newest mtime in the tarball, so importing the
    same tarball twice gives the same image id."""
    ref = normalize_name(name) if name else None
    if ref is not None and ref.digest is not None:
        raise InvalidArgument(f"cannot import as {name}: a name with a digest")
    new_blobs: list[str] = []
    new_chains: list[str] = []
    try:
        with _open_source(tar_path) as src, store.lease():
            head = src.read(6)
            compression = _compression_of(head)
            if compression == "zstd":
                raise InvalidImage("zstd-compressed tarballs are not supported: decompress "
                                   "it first (unzstd)")
            stream = _decompressing(head, src, compression)
            try:
                layer = _put(store, stream, None, new_blobs)
            except _DECOMPRESS_ERRORS as e:
                if _is_host_error(e):
                    raise
                raise InvalidImage(f"tarball does not decompress: {e}") from None
            created = _newest_mtime(store.blob_path(layer))
            config = {
                "created": created,
                "architecture": host_platform()[1],
                "os": "linux",
                "config": {"Env": [f"PATH={DEFAULT_PATH}"], **({"Cmd": cmd} if cmd else {})},
                "rootfs": {"type": "layers", "diff_ids": [layer]},
                "history": [{"created": created, "created_by": "minirun import"}],
            }
            config_data = json.dumps(config, separators=(",", ":")).encode()
            config_digest = _put(store, config_data, None, new_blobs)
            layer_desc = {"digest": layer, "media_type": MEDIA_OCI_LAYER,
                          "size": store.blob_size(layer)}
            manifest = json.dumps({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest,
                           "size": len(config_data)},
                "layers": [{"mediaType": MEDIA_OCI_LAYER, "digest": layer,
                            "size": layer_desc["size"]}],
            }, separators=(",", ":")).encode()
            manifest_digest = _put(store, manifest, None, new_blobs)
            store.unpack_layers(config_digest, [layer_desc], new_chains)
            record = store.add_image(manifest_digest, config_digest, [layer_desc],
                                     [str(ref)] if ref else [])
    except BaseException:
        store.discard(new_blobs, new_chains)
        raise
    store.record_event("import", record.id)
    return record


def _newest_mtime(tar_file: str) -> str:
    newest = 0
    with open(tar_file, "rb") as f:
        for info in iter_tar_members(f, Limits(), "tarball"):
            newest = max(newest, info.mtime_ns // 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))


# --- save --------------------------------------------------------------------------------------

def save(store: ImageStore, images: list[str | ImageRecord], path: str | IO[bytes]) -> None:
    """Write a docker-save archive that is also an OCI image layout (as docker 25 writes):
    manifest.json with RepoTags for `docker load` and `podman load`, a `repositories` file
    as docker writes it, index.json with image names for OCI tools, every blob once under
    blobs/sha256/. Which images and names, as `docker save` picks them: see
    select_for_save."""
    entries = select_for_save(store, images)
    _write_save(store, entries, path)
    for image_id in dict.fromkeys(record.id for record, _ in entries):
        store.record_event("save", image_id)


def _write_save(store: ImageStore, entries, path: str | IO[bytes]) -> None:
    if isinstance(path, str):
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".minirun-save-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                _write_archive(store, entries, out, stream=False)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    else:
        _write_archive(store, entries, path, stream=not _seekable(path))


def select_for_save(store: ImageStore,
                    images: list[str | ImageRecord]) -> list[tuple[ImageRecord, list[str]]]:
    """The images to save and the names each is saved with, by docker's rule (moby
    image/tarexport parseNames): a repository without tag or digest (`busybox`) is every
    tagged name of that repository, each image once with all its tags; if the repository
    has no name in the store, the argument is tried as an image id prefix. A tagged name
    (`busybox:1.36`) is that name. An image id, or a name with a digest, is the image
    without names (the archive does not say which of its tags were meant)."""
    entries: dict[str, tuple[ImageRecord, list[str]]] = {}
    all_records: list[ImageRecord] | None = None

    def add(record: ImageRecord, name: str | None) -> None:
        names = entries.setdefault(record.id, (record, []))[1]
        if name is not None and name not in names:
            names.append(name)

    for image in images:
        if isinstance(image, ImageRecord):
            add(store.get(image), None)
            continue
        ref = _repository_only(image)
        if ref is not None:
            if all_records is None:
                all_records = store.images()
            matched = False
            for record in all_records:
                for name in record.names:
                    named = parse_reference(name)
                    if named.name != ref.name:
                        continue
                    matched = True
                    add(record, name if named.tag and not named.digest else None)
            if matched:
                continue
        record = store.get(image)
        ref = None
        with contextlib.suppress(InvalidArgument):
            ref = parse_reference(image)
        tagged = ref is not None and ref.digest is None and str(ref) in record.names
        add(record, str(ref) if tagged else None)
    return list(entries.values())


def _repository_only(text: str) -> Reference | None:
    """The parsed reference when `text` names a repository without tag or digest."""
    if "@" in text or ":" in text.rsplit("/", 1)[-1]:
        return None
    try:
        return parse_reference(text)
    except InvalidArgument:
        return None


def _write_archive(store: ImageStore, entries: list[tuple[ImageRecord, list[str]]],
                   out: IO[bytes], stream: bool) -> None:
    written: set[str] = set()
    docker_manifest = []
    index_entries = []
    # docker's legacy `repositories`: repository -> tag -> the top layer's file in the archive
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(fileobj=out, mode="w|" if stream else "w",
                      format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")

        def add_blob(digest: str) -> None:
            if digest not in written:
                written.add(digest)
                with store.open_blob(digest) as f:
                    _add_file(tar, _blob_member(digest), f, os.fstat(f.fileno()).st_size)

        for record, names in entries:
            add_blob(record.id)
            for layer in record.layers:
                add_blob(layer["digest"])
            stored = _stored_manifest(store, record)
            if stored is not None:
                manifest_digest, media_type = stored
                manifest_size = store.blob_size(manifest_digest)
                add_blob(manifest_digest)
            else:
                data = _synthesized_manifest(store, record)
                manifest_digest = "sha256:" + hashlib.sha256(data).hexdigest()
                media_type = MEDIA_OCI_MANIFEST
                manifest_size = len(data)
                if manifest_digest not in written:
                    written.add(manifest_digest)
                    _add_bytes(tar, _blob_member(manifest_digest), data)
            docker_manifest.append({
                "Config": _blob_member(record.id),
                # Full names: podman reads an unqualified "saved:1" as localhost/saved:1.
                "RepoTags": names,
                "Layers": [_blob_member(layer["digest"]) for layer in record.layers],
            })
            for name in names or [None]:
                desc = {"mediaType": media_type, "digest": manifest_digest,
                        "size": manifest_size}
                if name:
                    ref = parse_reference(name)
                    if ref.tag and record.layers:
                        repositories.setdefault(ref.familiar_name(), {})[ref.tag] = \
                            check_digest(record.layers[-1]["digest"])
                    # ref.name as skopeo and podman write it, so that
                    # `skopeo copy oci-archive:FILE:busybox:latest` finds it
                    desc["annotations"] = {ANNOTATION_CONTAINERD_NAME: str(ref),
                                           ANNOTATION_REF_NAME: ref.familiar()}
                index_entries.append(desc)
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, "index.json", json.dumps(
            {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
             "manifests": index_entries}).encode())
        _add_bytes(tar, "manifest.json", json.dumps(docker_manifest).encode())
        if repositories:
            _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def _stored_manifest(store: ImageStore, record: ImageRecord) -> tuple[str, str] | None:
    """The image's own manifest (digest, media type) when it describes exactly the stored
    config and layers; a pulled multi-platform image records its index instead, whose
    other platforms' manifests are not in the store."""
    if not record.manifest_digest or not store.has_blob(record.manifest_digest):
        return None
    doc = store.read_json_blob(record.manifest_digest, "manifest")
    media_type = doc.get("mediaType", MEDIA_OCI_MANIFEST) if isinstance(doc, dict) else None
    if media_type not in (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST):
        return None
    config = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config, dict) or config.get("digest") != record.id or \
            not isinstance(layers, list) or \
            [x.get("digest") if isinstance(x, dict) else None for x in layers] != \
            [x["digest"] for x in record.layers]:
        return None
    return record.manifest_digest, media_type


def _synthesized_manifest(store: ImageStore, record: ImageRecord) -> bytes:
    layers = []
    for layer in record.layers:
        with store.open_blob(layer["digest"]) as f:
            compression = _compression_of(f.read(6))
        media_type = MEDIA_OCI_LAYER + {"gzip": "+gzip", "zstd": "+zstd"}.get(compression, "")
        layers.append({"mediaType": media_type, "digest": layer["digest"],
                       "size": store.blob_size(layer["digest"])})
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": record.id,
                   "size": store.blob_size(record.id)},
        "layers": layers,
    }, separators=(",", ":")).encode()


def _tarinfo(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 0  # the same archive for the same images
    return info


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_tarinfo(name, kind=tarfile.DIRTYPE))


def _add_file(tar: tarfile.TarFile, name: str, f: IO[bytes], size: int) -> None:
    tar.addfile(_tarinfo(name, size), f)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
