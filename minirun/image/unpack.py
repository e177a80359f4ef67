"""Apply one image layer (an OCI/docker layer tarball) to a directory, for hostile input.

A layer is untrusted: it may come from any registry or archive. What this module promises,
whatever the archive holds: nothing outside `dest_dir` is created, changed or read through
the layer, and the archive is either applied or refused with an `InvalidImage` naming the
member and the reason.

How:
- The tar stream is parsed here, block by block (tarfile's headers only): each read is
  bounded, so a member, an extended header or the whole stream larger than `Limits` is
  refused before it is read into memory, and an endless stream stops at `Limits.max_size`.
  The diff_id is the sha256 of the uncompressed stream, every byte of it (the trailing
  zero blocks too), computed while reading.
- Member names are cleaned as docker does: a leading "/" is dropped, "a/../b" becomes "b",
  and a name that climbs above the root ("../x", "a/../../x") is refused.
- Every member's parent directory is opened with openat2(RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS) from an O_PATH fd of `dest_dir`: a symlink in the layer means what
  it means inside the image. "link/x" with link -> /etc lands in dest_dir/etc/x (as in
  docker's chrooted unpack and containerd's fs.RootPath), never in the host's /etc. The
  last component is then created and changed relative to that fd without following it.
  Python's tarfile filters would refuse the absolute symlinks every image has.
- Symlinks are kept as they are (absolute ones too): the kernel resolves them inside the
  container's root once it runs. Code on the host that opens paths in an unpacked layer or
  a merged rootfs must resolve them in the root too (minirun.mounts.open_in_root).
- Hardlinks: the target is resolved the same way and must be an entry this layer already
  extracted (not a directory); linkat() between the two directory fds, never a host path.
- Whiteouts become overlayfs's format, since layers are stacked with overlayfs: `.wh.name`
  a char device 0:0 named `name`, `.wh..wh..opq` the xattr trusted.overlay.opaque="y" on its
  directory. Both are resolved in the root like any member. Whiteouts need root (mknod,
  trusted.* xattrs). docker's old aufs metadata (`.wh..wh.plnk`, ...) is skipped.
- Device nodes: char and block devices are created only with `Limits.allow_devices`;
  otherwise they are skipped and listed in `UnpackResult.skipped` (a container's /dev is the
  runtime's, and some old base images carry /dev/null & co.). A char device 0:0 (an
  overlayfs whiteout already in overlay form) is always created. FIFOs are created.
- Owners (numeric uid/gid, when running as root), modes with setuid/setgid/sticky (chmod
  after chown, which clears them), mtimes (directories' at the end, after their children)
  and xattrs from PAX SCHILY.xattr.* records are kept. xattr policy: overlayfs's own
  metadata (trusted.overlay.*, user.overlay.*) refuses the layer, since it could forge
  whiteouts, opaque dirs or redirects; security.capability is kept (file capabilities such
  as ping's cap_net_raw, which docker keeps too); other security.* (SELinux labels belong
  to the host's policy) and other trusted.* are dropped and listed in `skipped`; an xattr
  the filesystem refuses (EPERM/ENOTSUP: user.* on a symlink) is listed in `skipped` too.
- The root entry ("./") is ignored, as containerd does.
- On error `dest_dir` is left as it is, partly filled: the caller removes it (it unpacks
  into a temporary directory and renames it into place only on success).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import logging
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .. import sys as _sys
from ..errors import KernelFeatureMissing, MiniRunError
from . import InvalidImage

log = logging.getLogger(__name__)

GiB = 1 << 30
_BLOCK = 512
_CHUNK = 1 << 20
_RESOLVE = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS
_MAX_SYMLINK_HOPS = 40

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"

# Environment failures are not the image's fault: reported as MiniRunError, not InvalidImage.
_HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}


@dataclass(frozen=True)
class Limits:
    """Bounds on what one layer may make us read and write."""

    max_size: int = 8 * GiB           # the uncompressed stream, trailing padding included
    max_file_size: int = 8 * GiB      # one member's data
    max_members: int = 1_000_000
    max_path_length: int = 4096       # a member's name or link target, in bytes
    max_header_size: int = 1 << 20    # one PAX or GNU long-name header's data
    allow_devices: bool = False       # create char/block devices other than whiteouts


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str                      # "sha256:<hex>" of the uncompressed tar stream
    size: int                         # bytes in the uncompressed tar stream
    files: int                        # entries applied (whiteouts included)
    skipped: tuple[str, ...] = ()     # "<name>: <why>" for what was left out on purpose


class _Refused(Exception):
    """A member that cannot be applied; the message says why."""


class _LayerError(Exception):
    """The stream itself is bad (not about one member)."""


def unpack_layer(fileobj: BinaryIO, dest_dir: str, *, compression: str = "auto",
                 limits: Limits = Limits(), label: str | None = None) -> UnpackResult:
    """Apply the layer read from `fileobj` to `dest_dir` (created if missing).

    `compression` is "auto" (from the first bytes: gzip, zstd, xz, bzip2 or none), "gzip",
    "zstd", "xz", "bzip2" or "none". `label` (the layer's digest) prefixes error messages:
    "layer <label>: member <name>: <why>"."""
    prefix = f"layer {label}: " if label else ""
    os.makedirs(dest_dir, 0o755, exist_ok=True)
    rootfd = os.open(dest_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    member = None
    try:
        stream = _HashingReader(_decompressor(fileobj, compression), limits.max_size)
        applier = _Applier(rootfd, limits)
        reader = _TarReader(stream, limits)
        for info, data in reader.members():
            member = info.name
            applier.apply(info, data)
            data.skip_rest()
            member = None  # a bad header next is the stream's fault, not this member's
        applier.finish()
        stream.drain()
        return UnpackResult(stream.digest(), stream.size, applier.files, tuple(applier.skipped))
    except _Refused as e:
        raise InvalidImage(f"{prefix}member {member}: {e}") from None
    except _LayerError as e:
        where = f"member {member}: " if member is not None else ""
        raise InvalidImage(f"{prefix}{where}{e}") from None
    except _sys.SysError as e:
        if e.errno == errno.ENOSYS:
            raise KernelFeatureMissing(f"{prefix}openat2 is not available: {e}") from None
        raise _os_error(prefix, member, e.call, e.errno) from None
    except OSError as e:
        call = getattr(e, "_call", None) or "unpack"
        raise _os_error(prefix, member, call, e.errno or 0, e.strerror) from None
    except (OverflowError, ValueError) as e:
        # a value no syscall takes (an id, time or device number out of range)
        where = f"member {member}: " if member is not None else ""
        raise InvalidImage(f"{prefix}{where}invalid value: {e}") from None
    finally:
        os.close(rootfd)


def _os_error(prefix: str, member: str | None, call: str, err: int,
              text: str | None = None) -> MiniRunError:
    where = f"member {member}: " if member is not None else ""
    msg = f"{prefix}{where}{call}: {text or os.strerror(err)}"
    return MiniRunError(msg) if err in _HOST_ERRNOS else InvalidImage(msg)


# ---------------------------------------------------------------- the stream


def _decompressor(fileobj: BinaryIO, compression: str) -> BinaryIO:
    if compression == "auto":
        head = _read_upto(fileobj, 6)
        fileobj = _Prefixed(head, fileobj)
        if head.startswith(_GZIP_MAGIC):
            compression = "gzip"
        elif head.startswith(_ZSTD_MAGIC):
            compression = "zstd"
        elif head.startswith(_XZ_MAGIC):
            compression = "xz"
        elif head.startswith(_BZIP2_MAGIC):
            compression = "bzip2"
        else:
            compression = "none"
    if compression == "gzip":
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    if compression == "zstd":
        # The zstandard package (not the zstd binary through a pipe): it streams in-process
        # with bounded memory (zstd's default 128 MiB window limit), reports errors as
        # exceptions and needs no process or thread to feed a pipe from a Python file.
        try:
            import zstandard
        except ImportError:
            raise KernelFeatureMissing("zstd layers need the zstandard package "
                                       "(pip install zstandard)") from None
        return zstandard.ZstdDecompressor().stream_reader(fileobj, read_across_frames=True,
                                                          closefd=False)
    if compression == "xz":
        return lzma.LZMAFile(fileobj, "rb")
    if compression == "bzip2":
        return bz2.BZ2File(fileobj, "rb")
    if compression == "none":
        return fileobj
    raise InvalidImage(f"unknown layer compression {compression!r}")


def _read_upto(fileobj: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = fileobj.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class _Prefixed:
    """`head` (bytes already read to sniff the compression), then the rest of `fileobj`."""

    def __init__(self, head: bytes, fileobj: BinaryIO) -> None:
        self._head = head
        self._fileobj = fileobj

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._fileobj.read(n)

    def readable(self) -> bool:
        return True


_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _decompress_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:
        return _DECOMPRESS_ERRORS
    return _DECOMPRESS_ERRORS + (zstandard.ZstdError,)


class _Stream:
    """An uncompressed tar stream; `size` is how far into it we are."""

    size = 0

    def read(self, n: int) -> bytes:
        raise NotImplementedError

    def read_exact(self, n: int, what: str) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self.read(min(n - got, _CHUNK))
            if not chunk:
                raise _LayerError(f"truncated archive: unexpected end of data in {what}")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def skip(self, n: int, what: str) -> None:
        while n:
            n -= len(self.read_exact(min(n, _CHUNK), what))


class _HashingReader(_Stream):
    """The uncompressed tar stream: hashed as it is read, and stopped at `limit` bytes."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._hash = hashlib.sha256()
        self._errors = _decompress_errors()
        self.size = 0

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; b"" only at the end of the stream."""
        try:
            data = self._source.read(n)
        except self._errors as e:
            raise _LayerError(f"corrupt compressed stream: {e or type(e).__name__}") from None
        except OSError as e:
            # bz2 reports corrupt data as OSError("Invalid data stream")
            if e.errno is None:
                raise _LayerError(f"corrupt compressed stream: {e}") from None
            raise
        if data:
            self.size += len(data)
            if self.size > self._limit:
                raise _LayerError(f"uncompressed layer exceeds the limit of {self._limit} bytes")
            self._hash.update(data)
        return data

    def drain(self) -> None:
        # The diff_id covers the whole stream, the padding after the end-of-archive
        # blocks too (as docker and containerd hash it), and an endless tail hits the limit.
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _SeekingReader(_Stream):
    """A tar file read for its headers only: member data is seeked over, not read."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._start = source.tell()
        self._end = source.seek(0, os.SEEK_END)
        source.seek(self._start)

    def read(self, n: int) -> bytes:
        self._source.seek(self._start + self.size)
        data = self._source.read(n)
        self.size += len(data)
        if self.size > self._limit:
            raise _LayerError(f"archive exceeds the limit of {self._limit} bytes")
        return data

    def skip(self, n: int, what: str) -> None:
        if self._start + self.size + n > self._end:
            raise _LayerError(f"truncated archive: unexpected end of data in {what}")
        self.size += n
        if self.size > self._limit:
            raise _LayerError(f"archive exceeds the limit of {self._limit} bytes")


def iter_tar_members(fileobj: BinaryIO, limits: Limits = Limits(),
                     what: str = "tar archive") -> Iterator[TarMember]:
    """The members of an uncompressed tar file (seekable), parsed as unpack_layer parses
    them (bounded headers and member count, negative sizes refused) without reading their
    data: tarfile follows a negative size backwards and lists the same members again and
    again (seen: `minirun import` of a 3 KiB tarball, 21 s and 470 MiB before its member
    limit). Each member's `offset` says where its data is in `fileobj`. A bad archive is an
    InvalidImage prefixed with `what`."""
    reader = _TarReader(_SeekingReader(fileobj, limits.max_size), limits)
    try:
        for member, data in reader.members():
            data.skip_rest()
            yield member
    except _LayerError as e:
        raise InvalidImage(f"{what}: {e}") from None
    except (OverflowError, ValueError) as e:
        raise InvalidImage(f"{what}: invalid value: {e}") from None


class _Data:
    """One member's data (and its padding to the next 512-byte block)."""

    def __init__(self, stream: _Stream, size: int) -> None:
        self._stream = stream
        self._left = size
        self._pad = -size % _BLOCK

    def chunks(self):
        while self._left:
            chunk = self._stream.read_exact(min(self._left, _CHUNK), "member data")
            self._left -= len(chunk)
            yield chunk

    def skip_rest(self) -> None:
        if self._left:
            self._stream.skip(self._left, "member data")
            self._left = 0
        if self._pad:
            self._stream.skip(self._pad, "member padding")
            self._pad = 0


_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_KNOWN = _REGULAR + (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                     tarfile.DIRTYPE, tarfile.FIFOTYPE)
_TYPE_NAMES = {tarfile.GNUTYPE_SPARSE: "GNU sparse file", b"V": "volume label",
               b"M": "multi-volume continuation", b"N": "GNU old long name"}
_POSIX_MAGIC = b"ustar\x0000"


class TarMember:
    """A member's header, with its GNU long names and PAX records applied; `offset` is where
    its data starts in the uncompressed stream."""

    def __init__(self, info: tarfile.TarInfo, offset: int = 0) -> None:
        self.offset = offset
        self.name: str = info.name
        self.type: bytes = info.type
        self.mode: int = info.mode
        self.uid: int = info.uid
        self.gid: int = info.gid
        self.size: int = info.size
        self.mtime_ns: int = int(info.mtime) * 10**9
        self.atime_ns: int | None = None
        self.linkname: str = info.linkname
        self.devmajor: int = info.devmajor
        self.devminor: int = info.devminor
        self.xattrs: list[tuple[str, bytes]] = []


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _nts(raw: bytes) -> str:
    return _decode(raw.split(b"\0", 1)[0])


class _TarReader:
    """Yields (member, data) from a tar stream; handles GNU L/K and PAX x/g headers."""

    def __init__(self, stream: _Stream, limits: Limits) -> None:
        self._stream = stream
        self._limits = limits

    def _header(self) -> tarfile.TarInfo | None:
        offset = self._stream.size
        buf = self._stream.read(_BLOCK)
        while buf and len(buf) < _BLOCK:
            more = self._stream.read(_BLOCK - len(buf))
            if not more:
                break
            buf += more
        if not buf:
            return None  # end of data without end-of-archive blocks: accepted, as Go's tar
        if len(buf) < _BLOCK:
            raise _LayerError(f"truncated archive: partial header at offset {offset}")
        if buf.count(0) == _BLOCK:
            return None
        try:
            info = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            what = "not a tar archive" if offset == 0 else "invalid tar header"
            raise _LayerError(f"{what} at offset {offset}: {e}") from None
        if buf[257:265] != _POSIX_MAGIC and info.type not in (b"L", b"K"):
            # GNU and v7 headers have no ustar prefix field (GNU keeps times there), but
            # tarfile joins it to the name whatever the magic.
            info.name = _nts(buf[0:100])
            if info.type == tarfile.DIRTYPE:
                info.name = info.name.rstrip("/")
        return info

    def _extended(self, info: tarfile.TarInfo) -> bytes:
        if info.size > self._limits.max_header_size:
            raise _LayerError(f"extended header of {info.size} bytes exceeds the limit of "
                              f"{self._limits.max_header_size}")
        data = self._stream.read_exact(info.size, "an extended header")
        self._stream.read_exact(-info.size % _BLOCK, "an extended header")
        return data

    def members(self):
        count = 0
        long_name = long_link = None
        pax: dict[str, bytes] = {}
        while True:
            info = self._header()
            if info is None:
                if long_name is not None or long_link is not None or pax:
                    raise _LayerError("truncated archive: extended header without a member")
                return
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = _nts(self._extended(info))
                continue
            if info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = _nts(self._extended(info))
                continue
            if info.type == tarfile.XHDTYPE:
                pax.update(_parse_pax(self._extended(info)))
                continue
            if info.type == tarfile.XGLTYPE:
                self._extended(info)  # ignored, as docker does
                continue
            count += 1
            if count > self._limits.max_members:
                raise _LayerError(f"more than {self._limits.max_members} members")
            member = TarMember(info, self._stream.size)
            if long_name is not None:
                member.name = long_name
                if member.type == tarfile.DIRTYPE:
                    member.name = member.name.rstrip("/")
            if long_link is not None:
                member.linkname = long_link
            _apply_pax(member, pax)
            _check_numbers(member)
            long_name = long_link = None
            pax = {}
            data = _Data(self._stream, member.size if member.type not in
                         (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE,
                          tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE) else 0)
            yield member, data
            data.skip_rest()


_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown


def _check_numbers(m: TarMember) -> None:
    if m.size < 0:
        raise _LayerError(f"member {m.name}: negative size")
    for what, value in (("uid", m.uid), ("gid", m.gid)):
        if not 0 <= value <= _MAX_ID:
            raise _LayerError(f"member {m.name}: {what} {value} out of range")
    for what, value in (("device major", m.devmajor), ("device minor", m.devminor)):
        if not 0 <= value < 2**31:
            raise _LayerError(f"member {m.name}: {what} {value} out of range")


def _parse_pax(buf: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(buf):
        if buf[pos] == 0:
            break
        space = buf.find(b" ", pos, pos + 20)
        digits = buf[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _LayerError("malformed pax header: bad record length")
        length = int(digits)
        record = buf[space + 1:pos + length]
        if length <= space + 1 - pos or pos + length > len(buf) or not record.endswith(b"\n"):
            raise _LayerError("malformed pax header: bad record")
        key, eq, value = record[:-1].partition(b"=")
        if not eq:
            raise _LayerError("malformed pax header: record without '='")
        records[_decode(key)] = value
        pos += length
    return records


def _pax_int(key: str, value: bytes) -> int:
    if not value.isdigit():
        raise _LayerError(f"malformed pax header: {key}={_decode(value)!r}")
    return int(value)


def _pax_time_ns(key: str, value: bytes) -> int:
    text = value.decode("ascii", "replace")
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise _LayerError(f"malformed pax header: {key}={text!r}")
    return sign * (int(whole) * 10**9 + int((frac + "000000000")[:9]))


def _apply_pax(member: TarMember, pax: dict[str, bytes]) -> None:
    for key, value in pax.items():
        if key.startswith("GNU.sparse."):
            raise _LayerError(f"member {member.name}: sparse files are not supported")
        if key.startswith("SCHILY.xattr."):
            member.xattrs.append((key[len("SCHILY.xattr."):], value))
        elif not value:
            continue  # an empty record unsets a global one; there are none here
        elif key == "path":
            member.name = _decode(value)
            if member.type == tarfile.DIRTYPE:
                member.name = member.name.rstrip("/")
        elif key == "linkpath":
            member.linkname = _decode(value)
        elif key == "size":
            member.size = _pax_int(key, value)
        elif key == "uid":
            member.uid = _pax_int(key, value)
        elif key == "gid":
            member.gid = _pax_int(key, value)
        elif key == "mtime":
            member.mtime_ns = _pax_time_ns(key, value)
        elif key == "atime":
            member.atime_ns = _pax_time_ns(key, value)


# ---------------------------------------------------------------- the filesystem


def _clean_name(name: str, what: str = "name") -> str:
    """The member's path relative to the layer root ("" for the root itself)."""
    if "\0" in name:
        raise _Refused(f"{what} contains a NUL byte")
    rel = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
    # "../x" or "a/../../x": docker refuses what climbs above the root.
    if rel == ".." or rel.startswith("../"):
        raise _Refused(f"{what} {name!r} climbs above the layer root")
    return "" if rel == "." else rel


def _oserror(call: str, e: OSError) -> OSError:
    """Tag `e` with the call that failed (the innermost tag wins), for the message."""
    if not getattr(e, "_call", None):
        e._call = call  # type: ignore[attr-defined]
    return e


class _Applier:
    def __init__(self, rootfd: int, limits: Limits) -> None:
        self.rootfd = rootfd
        self.limits = limits
        self.files = 0
        self.skipped: list[str] = []
        self.same_owner = os.geteuid() == 0
        self._dir_times: list[tuple[str, int, int]] = []

    def skip(self, name: str, why: str) -> None:
        log.warning("layer member %s skipped: %s", name, why)
        self.skipped.append(f"{name}: {why}")

    # -- resolution

    def open_dir(self, rel: str, create: bool, _hops: int = 0) -> int:
        """O_PATH fd of the directory `rel` resolved inside the root; with `create`,
        missing directories are made (0755), and a dangling symlink on the way gets its
        target made inside the root, as containerd does."""
        if _hops > _MAX_SYMLINK_HOPS:
            raise _Refused(f"too many levels of symbolic links in {rel!r}")
        try:
            return self._openat2(rel)
        except _sys.SysError as e:
            if e.errno == errno.ENOTDIR:
                raise _Refused(f"{rel!r} is not a directory") from None
            if e.errno == errno.ELOOP:
                raise _Refused(f"too many levels of symbolic links in {rel!r}") from None
            if e.errno != errno.ENOENT or not create:
                raise
        parent, name = posixpath.split(rel)
        if name in ("", ".", ".."):
            # "missing/.." or "missing/.": make the missing part, then resolve again.
            os.close(self.open_dir(parent, True, _hops + 1))
            return self._openat2(rel)
        pfd = self.open_dir(parent, True, _hops + 1)
        try:
            try:
                target = os.readlink(name, dir_fd=pfd)
            except FileNotFoundError:
                target = None
            except OSError as e:
                raise _oserror("readlink", e) from None
            if target is not None:
                joined = target if target.startswith("/") else posixpath.join(parent, target)
                os.close(self.open_dir(joined.lstrip("/"), True, _hops + 1))
            else:
                try:
                    os.mkdir(name, 0o755, dir_fd=pfd)
                except OSError as e:
                    raise _oserror("mkdir", e) from None
        finally:
            os.close(pfd)
        return self._openat2(rel)

    def _openat2(self, rel: str) -> int:
        for _ in range(8):
            try:
                # RESOLVE_IN_ROOT: symlinks (absolute too) and ".." stay inside dest_dir,
                # so a layer's "link -> /etc" never redirects a later write to the host.
                return _sys.openat2(self.rootfd, rel or ".", os.O_PATH | os.O_DIRECTORY,
                                    0, _RESOLVE)
            except _sys.SysError as e:
                if e.errno != errno.EAGAIN:  # a concurrent rename: the kernel asks to retry
                    raise
        raise _Refused(f"could not resolve {rel!r}: kept changing")

    # -- members

    def apply(self, m: TarMember, data: _Data) -> None:
        lim = self.limits
        if len(os.fsencode(m.name)) > lim.max_path_length:
            raise _Refused(f"name longer than {lim.max_path_length} bytes")
        if len(os.fsencode(m.linkname)) > lim.max_path_length:
            raise _Refused(f"link target longer than {lim.max_path_length} bytes")
        if m.type not in _KNOWN:
            what = _TYPE_NAMES.get(m.type, f"member type {m.type!r}")
            raise _Refused(f"unsupported {what}")
        if m.type in _REGULAR and m.size > lim.max_file_size:
            raise _Refused(f"file of {m.size} bytes exceeds the limit of {lim.max_file_size}")
        rel = _clean_name(m.name)
        parent, base = posixpath.split(rel)
        if not rel:
            return  # the root itself: left as the caller made it, as containerd does
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(m, parent, base)
            return
        if any(part.startswith(WHITEOUT_META_PREFIX) for part in parent.split("/")):
            self.skip(m.name, "aufs metadata")
            return
        if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) and not lim.allow_devices and (
                m.type == tarfile.BLKTYPE or (m.devmajor, m.devminor) != (0, 0)):
            kind = "char" if m.type == tarfile.CHRTYPE else "block"
            self.skip(m.name, f"{kind} device {m.devmajor}:{m.devminor} not created "
                              "(devices are not allowed in layers)")
            return
        pfd = self.open_dir(parent, True)
        try:
            if m.type == tarfile.LNKTYPE:
                self.hardlink(m, pfd, base)
            else:
                self.create(m, pfd, rel, data)
        finally:
            os.close(pfd)
        self.files += 1

    def _clear(self, pfd: int, base: str, keep_dir: bool) -> bool:
        """Make room for a new entry: True if an existing directory is kept (a directory
        member over a directory merges, as in docker)."""
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise _oserror("lstat", e) from None
        try:
            if stat.S_ISDIR(st.st_mode):
                if keep_dir:
                    return True
                # fd-based walk that never follows symlinks (shutil's _rmtree_safe_fd)
                shutil.rmtree(base, dir_fd=pfd)
            else:
                os.unlink(base, dir_fd=pfd)
        except OSError as e:
            raise _oserror("remove existing entry", e) from None
        return False

    def create(self, m: TarMember, pfd: int, rel: str, data: _Data) -> None:
        base = posixpath.basename(rel)
        t = m.type
        keep = self._clear(pfd, base, keep_dir=t == tarfile.DIRTYPE)
        try:
            if t in _REGULAR:
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=pfd)
                try:
                    for chunk in data.chunks():
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                    self.metadata_fd(m, fd)
                finally:
                    os.close(fd)
                return
            if t == tarfile.DIRTYPE:
                if not keep:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=pfd)
                try:
                    self.metadata_fd(m, fd, times=False)
                finally:
                    os.close(fd)
                self._dir_times.append((rel, *self._times(m)))
                return
            if t == tarfile.SYMTYPE:
                if not m.linkname:
                    raise _Refused("symlink with an empty target")
                if "\0" in m.linkname:
                    raise _Refused("link target contains a NUL byte")
                os.symlink(m.linkname, base, dir_fd=pfd)
                self.metadata_at(m, pfd, base, chmod=False)
                return
            kind = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                    tarfile.FIFOTYPE: stat.S_IFIFO}[t]
            dev = os.makedev(m.devmajor, m.devminor) if kind != stat.S_IFIFO else 0
            os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
            self.metadata_at(m, pfd, base, chmod=True)
        except OSError as e:
            if getattr(e, "_call", None):
                raise
            raise _oserror({tarfile.DIRTYPE: "mkdir", tarfile.SYMTYPE: "symlink",
                            tarfile.CHRTYPE: "mknod", tarfile.BLKTYPE: "mknod",
                            tarfile.FIFOTYPE: "mknod"}.get(t, "write"), e) from None

    def hardlink(self, m: TarMember, pfd: int, base: str) -> None:
        if not m.linkname:
            raise _Refused("hardlink with an empty target")
        target = _clean_name(m.linkname, "hardlink target")
        if target == _clean_name(m.name):
            raise _Refused("hardlink to itself")
        tparent, tbase = posixpath.split(target)
        if not tbase:
            raise _Refused("hardlink to the layer root")
        try:
            tpfd = self.open_dir(tparent, False)
        except _sys.SysError as e:
            if e.errno == errno.ENOENT:
                raise _Refused(f"hardlink target {m.linkname!r} is not in the layer") from None
            raise
        try:
            try:
                st = os.lstat(tbase, dir_fd=tpfd)
            except FileNotFoundError:
                # A link to the host's /etc/passwd (or any file the layer did not
                # write) must not be made: the target must be one of this layer's files.
                raise _Refused(f"hardlink target {m.linkname!r} is not in the layer") from None
            if stat.S_ISDIR(st.st_mode):
                raise _Refused(f"hardlink target {m.linkname!r} is a directory")
            self._clear(pfd, base, keep_dir=False)
            try:
                # linkat() between two fds resolved inside the root, not following a
                # symlink target (AT_SYMLINK_FOLLOW unset): never a host path.
                os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
            except OSError as e:
                raise _oserror("link", e) from None
        finally:
            os.close(tpfd)

    def whiteout(self, m: TarMember, parent: str, base: str) -> None:
        if base.startswith(WHITEOUT_META_PREFIX) and base != WHITEOUT_OPAQUE:
            self.skip(m.name, "aufs metadata")
            return
        pfd = self.open_dir(parent, True)
        try:
            if base == WHITEOUT_OPAQUE:
                try:
                    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
                    finally:
                        os.close(fd)
                except OSError as e:
                    raise _oserror(f"setxattr {OVERLAY_OPAQUE_XATTR} (needs root)", e) from None
            else:
                name = base[len(WHITEOUT_PREFIX):]
                if name in ("", ".", ".."):
                    raise _Refused(f"invalid whiteout {base!r}")
                self._clear(pfd, name, keep_dir=False)
                try:
                    # overlayfs's whiteout: a char device 0:0 with the hidden name
                    os.mknod(name, stat.S_IFCHR, 0, dir_fd=pfd)
                except OSError as e:
                    raise _oserror("mknod whiteout (needs root)", e) from None
                if self.same_owner:
                    try:
                        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
                    except OSError as e:
                        raise _oserror("lchown", e) from None
        finally:
            os.close(pfd)
        self.files += 1

    # -- metadata

    def _times(self, m: TarMember) -> tuple[int, int]:
        atime = m.atime_ns if m.atime_ns is not None and m.atime_ns > m.mtime_ns else m.mtime_ns
        return atime, m.mtime_ns

    def _xattrs(self, m: TarMember):
        for name, value in m.xattrs:
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                # overlayfs metadata could forge opaque dirs, redirects or whiteouts
                raise _Refused(f"xattr {name} is overlayfs metadata a layer must not carry")
            if name.startswith(("security.", "trusted.")) and name != "security.capability":
                self.skip(m.name, f"xattr {name} dropped")
                continue
            yield name, value

    def _set_xattr(self, m: TarMember, target: int | str, name: str, value: bytes) -> None:
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                self.skip(m.name, f"xattr {name} not set: {e.strerror}")
                return
            raise _oserror(f"setxattr {name}", e) from None

    def metadata_fd(self, m: TarMember, fd: int, times: bool = True) -> None:
        """Owner, xattrs, mode, times in that order: chown clears setuid/setgid bits and
        security.capability, so both come after it."""
        try:
            if self.same_owner:
                os.fchown(fd, m.uid, m.gid)
            for name, value in self._xattrs(m):
                self._set_xattr(m, fd, name, value)
            os.fchmod(fd, m.mode & 0o7777)
            if times:
                os.utime(fd, ns=self._times(m))
        except OSError as e:
            raise _oserror("set metadata", e) from None

    def metadata_at(self, m: TarMember, pfd: int, base: str, chmod: bool) -> None:
        """The same for a symlink or a device node, through its directory fd without
        following the last component (no fd can be opened on these without side effects)."""
        try:
            if self.same_owner:
                os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            xattrs = list(self._xattrs(m))
            if xattrs:
                # /proc/self/fd/<dir fd>/<name>: the dir is our own fd, the name not followed
                path = f"/proc/self/fd/{pfd}/{base}"
                for name, value in xattrs:
                    self._set_xattr(m, path, name, value)
            if chmod:
                # base was just created by mknod here: not a symlink, so fchmodat cannot
                # follow anything
                os.chmod(base, m.mode & 0o7777, dir_fd=pfd)
            os.utime(base, ns=self._times(m), dir_fd=pfd, follow_symlinks=False)
        except OSError as e:
            raise _oserror("set metadata", e) from None

    def finish(self) -> None:
        """Directories' times last: creating their children changed them."""
        for rel, atime, mtime in self._dir_times:
            parent, base = posixpath.split(rel)
            try:
                pfd = self.open_dir(parent, False)
            except (_sys.SysError, _Refused):
                continue  # replaced by a later member
            try:
                st = os.lstat(base, dir_fd=pfd)
                if stat.S_ISDIR(st.st_mode):
                    os.utime(base, ns=(atime, mtime), dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _oserror("utime", e) from None
            finally:
                os.close(pfd)
