"""A container's files from the host: `diff` (the overlay upper dir as A/C/D), `export`
(the merged root as a tar), `cp` both ways and `commit`'s layer (the upper dir as an OCI
layer tar: whiteouts as .wh. files).

Paths inside the container resolve inside its root (openat2 RESOLVE_IN_ROOT, as
mounts.open_in_root): a symlink in the container never leads to the host's files. A
bind mount of the container (its /etc/hosts, a volume) is read and written at its
source, as docker's cp does. A running container is frozen while `cp` works in it, so
that it cannot swap a directory for a symlink between two steps (as docker pauses).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO

from .errors import ContainerStateError, InvalidArgument, NotFound

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# what the engine mounts on its own: placeholders in the upper dir, not the user's changes
ENGINE_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def container_dir(engine, rec: dict) -> str:
    return os.path.join(engine.root, "containers", rec["id"])


def _bind_mounts(engine, rec: dict) -> list[tuple[str, str]]:
    """(destination, source) of the container's bind mounts, the deepest first."""
    try:
        with open(os.path.join(container_dir(engine, rec), "config.json")) as f:
            mounts = json.load(f).get("mounts") or []
    except (OSError, ValueError):
        return []
    out = [(posixpath.normpath(m["destination"]), m["source"]) for m in mounts
           if m.get("type") == "bind" and m.get("source") and m.get("destination")]
    return sorted(out, key=lambda dm: -len(dm[0]))


class IdMap:
    """A container's uid/gid mappings (config.json's; none: the host's ids): the files
    of a container in a user namespace are owned by shifted host ids on disk, and
    archives carry the container's ids, as docker's do."""

    def __init__(self, uids: list[dict], gids: list[dict]) -> None:
        self.uids, self.gids = uids, gids

    @classmethod
    def of(cls, engine, rec: dict) -> IdMap:
        try:
            with open(os.path.join(container_dir(engine, rec), "config.json")) as f:
                linux = json.load(f).get("linux") or {}
        except (OSError, ValueError):
            linux = {}
        return cls(linux.get("uidMappings") or [], linux.get("gidMappings") or [])

    @staticmethod
    def _map(value: int, maps: list[dict], src: str, dst: str) -> int:
        if not maps:
            return value
        for m in maps:
            if m[src] <= value < m[src] + m["size"]:
                return value - m[src] + m[dst]
        return 65534  # the overflow id: not mapped

    def to_container(self, info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = self._map(info.uid, self.uids, "hostID", "containerID")
        info.gid = self._map(info.gid, self.gids, "hostID", "containerID")
        info.uname = info.gname = ""
        return info

    def to_host(self, uid: int, gid: int) -> tuple[int, int]:
        return (self._map(uid, self.uids, "containerID", "hostID"),
                self._map(gid, self.gids, "containerID", "hostID"))


def _mount_destinations(engine, rec: dict) -> set[str]:
    try:
        with open(os.path.join(container_dir(engine, rec), "config.json")) as f:
            mounts = json.load(f).get("mounts") or []
    except (OSError, ValueError):
        return set(ENGINE_FILES)
    return {posixpath.normpath(m["destination"]) for m in mounts} | set(ENGINE_FILES)


def _root_for(engine, rec: dict, path: str) -> tuple[str, str]:
    """(the host directory to resolve in, the path below it) for a container path: its
    bind mount's source when the path is on one, else the merged root."""
    if not path.startswith("/"):
        path = "/" + path
    norm = posixpath.normpath(path)
    for dest, source in _bind_mounts(engine, rec):
        if norm == dest or norm.startswith(dest.rstrip("/") + "/"):
            if os.path.isdir(source):
                return source, norm[len(dest):] or "/"
            if norm == dest:  # a file mount (/etc/hosts): its directory, its name
                return os.path.dirname(source), "/" + os.path.basename(source)
    merged = os.path.join(container_dir(engine, rec), "merged")
    if not os.path.ismount(merged):
        raise ContainerStateError(f"container {rec['name']} has no mounted root")
    return merged, norm


@contextlib.contextmanager
def frozen(engine, rec: dict) -> Iterator[None]:
    """The container's processes frozen for the block, if it runs (and thawed after)."""
    from . import container as ctr

    if rec["status"] != "running":
        yield
        return
    try:
        status = ctr.Container.load(engine.oci_root, rec["id"]).status()
    except NotFound:
        status = "stopped"
    if status != "running":
        yield
        return
    ctr.pause(engine.oci_root, rec["id"])
    try:
        yield
    finally:
        ctr.resume(engine.oci_root, rec["id"])


def _open_parent(root: str, path: str) -> tuple[int, str]:
    """An O_PATH fd of `path`'s directory resolved inside `root`, and its last name.
    CVE-2018-15664 (docker cp through a symlink the container planted): every component
    resolves inside the root, and the last one is never followed."""
    from . import sys as _sys
    from .mounts import open_in_root

    parent, name = posixpath.split(posixpath.normpath("/" + path.lstrip("/")))
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_in_root(rootfd, parent, os.O_PATH | os.O_DIRECTORY), name
    except _sys.SysError as e:
        raise NotFound(f"{parent}: {os.strerror(e.errno)} in the container") from None
    finally:
        os.close(rootfd)


def _lstat_at(pfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name or ".", dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# --- cp ---------------------------------------------------------------------------------

def stat_in_container(engine, rec: dict, path: str) -> tuple[os.stat_result | None, str]:
    """lstat of a container path, resolved inside its root (None when it is not there),
    and a symlink's target ("" otherwise): docker's archive stat header."""
    root, inner = _root_for(engine, rec, path)
    try:
        pfd, name = _open_parent(root, inner)
    except NotFound:
        return None, ""
    try:
        st = _lstat_at(pfd, name)
        link = os.readlink(name, dir_fd=pfd) if st is not None and stat.S_ISLNK(st.st_mode) \
            else ""
        return st, link
    finally:
        os.close(pfd)


def archive_from_container(engine, rec: dict, src: str, out: IO[bytes]) -> None:
    """SRC of the container as a tar on `out`, its top entry named after SRC's last
    part (docker cp CONTAINER:SRC -); SRC ending in /. gives its contents."""
    root, path = _root_for(engine, rec, src)
    ids = IdMap.of(engine, rec)
    contents = src.rstrip("/").endswith("/.") or src in (".", "/")
    with frozen(engine, rec):
        pfd, name = _open_parent(root, path)
        try:
            st = _lstat_at(pfd, name)
            if st is None:
                raise NotFound(f"Could not find the file {src} in container {rec['name']}")
            top = f"/proc/self/fd/{pfd}/{name}" if name else f"/proc/self/fd/{pfd}"
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                if contents and stat.S_ISDIR(st.st_mode):
                    for child in sorted(os.listdir(top)):
                        tar.add(os.path.join(top, child), arcname=child,
                                filter=ids.to_container)
                else:
                    tar.add(top, arcname=name or "/", filter=ids.to_container)
        finally:
            os.close(pfd)


def extract_into_container(engine, rec: dict, dst: str, archive: IO[bytes],
                           keep_owner: bool = False) -> None:
    """A tar (a stream) extracted into the container's directory DST, each entry created
    below a directory resolved inside the root, never through a symlink (docker cp -
    CONTAINER:DST). Owners are root's unless keep_owner (cp -a)."""
    root, path = _root_for(engine, rec, dst)
    ids = IdMap.of(engine, rec)
    with frozen(engine, rec):
        pfd, name = _open_parent(root, path)
        try:
            st = _lstat_at(pfd, name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{dst}: not a directory in container {rec['name']}")
        finally:
            os.close(pfd)
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            for member in tar:
                owner = ids.to_host(member.uid, member.gid) if keep_owner else \
                    ids.to_host(0, 0)
                if member.islnk():  # a hard link: to the entry extracted before, in here
                    _link_member(root, posixpath.join(path, member.linkname),
                                 posixpath.join(path, member.name))
                    continue
                _extract_member(root, posixpath.join(path, member.name), tar, member,
                                owner)


def _link_member(root: str, target: str, path: str) -> None:
    """A hard link at `path` to `target`, both resolved inside the root (linkat between
    the two parent directories, never following the target if it is a symlink)."""
    for name in (target, path):
        if ".." in name.split("/"):
            raise InvalidArgument(f"archive entry {name!r} leaves its directory")
    tfd, tname = _open_parent(root, target)
    try:
        pfd, name = _open_parent(root, path)
        try:
            if _lstat_at(pfd, name) is not None:
                os.unlink(name, dir_fd=pfd)
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)
    finally:
        os.close(tfd)


def _extract_member(root: str, path: str, tar: tarfile.TarFile, m: tarfile.TarInfo,
                    owner: tuple[int, int]) -> None:
    norm = posixpath.normpath("/" + path.lstrip("/"))
    if ".." in m.name.split("/"):
        raise InvalidArgument(f"archive entry {m.name!r} leaves its directory")
    pfd, name = _open_parent(root, norm)
    try:
        if not name:
            return
        old = _lstat_at(pfd, name)
        if old is not None and not (m.isdir() and stat.S_ISDIR(old.st_mode)):
            if stat.S_ISDIR(old.st_mode):
                raise InvalidArgument(f"cannot overwrite the directory {norm} with a "
                                      "non-directory")
            os.unlink(name, dir_fd=pfd)
        if m.isdir():
            if old is None:
                os.mkdir(name, 0o700, dir_fd=pfd)
        elif m.issym():
            os.symlink(m.linkname, name, dir_fd=pfd)
        elif m.isfile():
            src = tar.extractfile(m)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o600, dir_fd=pfd)
            with os.fdopen(fd, "wb") as f:
                while src is not None and (chunk := src.read(1 << 20)):
                    f.write(chunk)
        elif m.ischr() or m.isblk() or m.isfifo():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
        else:
            return
        os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
        if not m.issym():
            os.chmod(name, m.mode & 0o7777, dir_fd=pfd)
        with contextlib.suppress(OSError):
            os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(pfd)


def host_archive(src: str, name: str, out: IO[bytes]) -> None:
    """A host path as a tar whose top entry is `name` (a directory's contents at the top
    when `name` is "")."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if name:
            tar.add(src, arcname=name)
        else:
            for child in sorted(os.listdir(src)):
                tar.add(os.path.join(src, child), arcname=child)


def copy_to_container(engine, rec: dict, src: str, dst: str, keep_owner: bool) -> None:
    """docker cp SRC CONTAINER:DST: a file onto DST (or into it, a directory), a
    directory as DST when DST does not exist, else into it; SRC/. its contents."""
    if not os.path.lexists(src):
        raise NotFound(f"could not find the file {src} on the host")
    root, path = _root_for(engine, rec, dst)
    pfd, name = _open_parent(root, path)
    try:
        st = _lstat_at(pfd, name) if name else os.stat(pfd)
    finally:
        os.close(pfd)
    contents = src.rstrip("/").endswith("/.")
    if st is not None and stat.S_ISDIR(st.st_mode):
        target_dir, top = dst, "" if contents else os.path.basename(src.rstrip("/"))
    elif dst.endswith("/"):
        raise NotFound(f"no such directory {dst} in container {rec['name']}")
    elif os.path.isdir(src) and st is not None:
        raise InvalidArgument(f"cannot copy a directory onto the file {dst}")
    else:
        target_dir, top = posixpath.dirname(dst) or "/", posixpath.basename(dst)
        if os.path.isdir(src) and st is None:
            # the directory becomes DST: made first, then filled with SRC's contents
            target_dir, top = dst, ""
            with tempfile.TemporaryFile() as tmp:
                with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    info = tar.gettarinfo(src, arcname=posixpath.basename(dst))
                    tar.addfile(info)
                tmp.seek(0)
                extract_into_container(engine, rec, posixpath.dirname(dst) or "/", tmp,
                                       keep_owner)
    with tempfile.TemporaryFile() as tmp:
        if top:
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(src, arcname=top)
        else:
            host_archive(src, "", tmp)
        tmp.seek(0)
        extract_into_container(engine, rec, target_dir, tmp, keep_owner)


def copy_from_container(engine, rec: dict, src: str, dst: str,
                        keep_owner: bool = False) -> None:
    """docker cp CONTAINER:SRC DST on the host, the same rules the other way; the files
    are the caller's unless keep_owner (cp -a: the container's ids)."""
    with tempfile.TemporaryFile() as tmp:
        archive_from_container(engine, rec, src, tmp)
        tmp.seek(0)
        contents = src.rstrip("/").endswith("/.")
        with tarfile.open(fileobj=tmp, mode="r") as tar:
            members = tar.getmembers()
            if not members:
                return
            top = members[0].name.split("/")[0]
            if os.path.isdir(dst):
                into, rename = dst, None
            elif dst.endswith("/"):
                raise NotFound(f"no such directory {dst} on the host")
            elif contents:
                if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
                    raise NotFound(f"no such directory {os.path.dirname(dst)} on the host")
                os.mkdir(dst)
                into, rename = dst, None
            else:
                if members[0].isdir() and os.path.lexists(dst):
                    raise InvalidArgument(f"cannot copy a directory onto the file {dst}")
                into, rename = os.path.dirname(os.path.abspath(dst)), os.path.basename(dst)
                if not os.path.isdir(into):
                    raise NotFound(f"no such directory {into} on the host")
            for m in members:
                if rename is not None and m.name.split("/")[0] == top:
                    m.name = "/".join([rename] + m.name.split("/")[1:])
                if rename is not None and m.islnk() and m.linkname.split("/")[0] == top:
                    m.linkname = "/".join([rename] + m.linkname.split("/")[1:])
                if not keep_owner:
                    m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
            _extract(tar, into, members)


# --- diff, export, commit ----------------------------------------------------------------

def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def changes(engine, rec: dict) -> list[tuple[str, str]]:
    """(kind, path) sorted by path: A added, C changed, D deleted (a whiteout), from the
    overlay's upper dir against the image's layers; the engine's own mount points left
    out, and a directory shown as C when something below it changed."""
    from .image.store import ImageStore

    upper = os.path.join(container_dir(engine, rec), "upper")
    if not os.path.isdir(upper):
        raise ContainerStateError(f"container {rec['name']} has no filesystem layer")
    lowers = list(reversed(ImageStore(engine.root).layer_dirs(rec["image_id"])))
    skip = _mount_destinations(engine, rec)

    def in_lower(path: str) -> bool:
        return any(os.path.lexists(os.path.join(low, path.lstrip("/"))) for low in lowers)

    with frozen(engine, rec):  # as export: nothing swapped under the walk
        out, parents = _walk_changes(upper, skip, in_lower)
    for parent in parents:
        out.setdefault(parent, "C" if in_lower(parent) else "A")
    return sorted(((kind, path) for path, kind in out.items()), key=lambda kp: kp[1])


def _walk_changes(upper: str, skip: set[str], in_lower) -> tuple[dict[str, str], set[str]]:
    out: dict[str, str] = {}
    parents: set[str] = set()
    for top, dirs, files in os.walk(upper):
        rel_top = "/" + os.path.relpath(top, upper) if top != upper else ""
        for name in sorted(dirs + files):
            path = f"{rel_top}/{name}"
            full = os.path.join(top, name)
            st = os.lstat(full)
            if path in skip and (stat.S_ISDIR(st.st_mode) and not os.listdir(full) or
                                 stat.S_ISREG(st.st_mode) and st.st_size == 0):
                continue
            if _is_whiteout(st):
                out[path] = "D"
            elif stat.S_ISDIR(st.st_mode) and in_lower(path) and not _is_opaque(full):
                continue  # shown as C only when something below it is
            else:
                out[path] = "C" if in_lower(path) else "A"
            parent = posixpath.dirname(path)
            while parent not in ("/", ""):
                parents.add(parent)
                parent = posixpath.dirname(parent)
        dirs[:] = [d for d in dirs if not _is_whiteout(os.lstat(os.path.join(top, d)))]
    return out, parents


def export(engine, rec: dict, out: IO[bytes]) -> None:
    """The merged root as a tar (docker export): symlinks as links, never followed."""
    merged = os.path.join(container_dir(engine, rec), "merged")
    if not os.path.ismount(merged):
        raise ContainerStateError(f"container {rec['name']} has no mounted root")
    ids = IdMap.of(engine, rec)
    # frozen: a directory swapped for a symlink to / mid-walk would be walked on the host
    with frozen(engine, rec), \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(os.listdir(merged)):
            tar.add(os.path.join(merged, child), arcname=child, filter=ids.to_container)


def layer_tar(engine, rec: dict, out: IO[bytes]) -> None:
    """The upper dir as an OCI layer: whiteouts as .wh.NAME, opaque directories with
    .wh..wh..opq, the engine's mount point placeholders left out."""
    upper = os.path.join(container_dir(engine, rec), "upper")
    skip = _mount_destinations(engine, rec)
    ids = IdMap.of(engine, rec)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(upper):
            rel_top = os.path.relpath(top, upper)
            rel_top = "" if rel_top == "." else rel_top
            if rel_top and _is_opaque(top):
                info = tarfile.TarInfo(posixpath.join(rel_top, OPAQUE_MARKER))
                tar.addfile(info)
            for name in sorted(dirs + files):
                full = os.path.join(top, name)
                arc = posixpath.join(rel_top, name)
                st = os.lstat(full)
                if "/" + arc in skip and (
                        stat.S_ISDIR(st.st_mode) and not os.listdir(full) or
                        stat.S_ISREG(st.st_mode) and st.st_size == 0):
                    continue
                if _is_whiteout(st):
                    info = tarfile.TarInfo(posixpath.join(rel_top, WHITEOUT_PREFIX + name))
                    tar.addfile(info)
                else:
                    tar.add(full, arcname=arc, recursive=False, filter=ids.to_container)
            dirs[:] = [d for d in dirs if not _is_whiteout(os.lstat(os.path.join(top, d)))]


def _extract(tar, into: str, members: list) -> None:
    """extractall with the "tar" filter where this Python has it (3.11.4 and later, and
    distributions' backports); else the same refusals here: no absolute name, no "..",
    nothing below a symlink the archive itself makes, no hard link out of it."""
    if hasattr(tarfile, "tar_filter"):
        tar.extractall(into, members=members, filter="tar")
        return
    links: set[str] = set()
    names: set[str] = set()
    for m in members:
        name = m.name.lstrip("/")
        parts = name.split("/")
        if ".." in parts or any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            raise InvalidArgument(f"refused to copy {m.name!r}: it leads out of {into}")
        if m.islnk() and (m.linkname.startswith("/") or ".." in m.linkname.split("/")
                          or m.linkname.lstrip("/") not in names):
            raise InvalidArgument(f"refused to copy the hard link {m.name!r} -> {m.linkname!r}")
        m.name = name
        m.mode &= 0o7777 & ~0o6000  # no set-id bits, as the filter drops them
        if m.issym():
            links.add(name)
        names.add(name)
    tar.extractall(into, members=members)
