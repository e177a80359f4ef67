"""The image store: content-addressed blobs, image records, unpacked layers and the overlay
snapshots that containers run on.

Layout under the root (default /var/lib/minirun, or MINIRUN_ROOT):

    blobs/sha256/<hex>              manifests, configs and layer tarballs, verified on write
    layers/<chainid-hex>/diff/      a layer unpacked once, shared by every image and container
    layers/<chainid-hex>/meta.json  its diff_id and size; written before the directory is
                                    renamed into place, so a layer that exists is complete
    containers/<id>/{upper,work,merged}   one container's overlay snapshot
    containers/<id>/lower/<n>       with an IdMap: layer n (0 the top) mounted idmapped
    images.db                       image records, names and which containers use which image

Records live in SQLite (WAL, busy_timeout, BEGIN IMMEDIATE for writes), so two `minirun`
commands at once see each other's work whole or not at all. Files are written to a temporary
name in the same directory and renamed.

Garbage collection and writers are kept apart by a flock on gc.lock: whatever unpacks layers
or adds records holds it shared (`lease()`), and blobs or layers are only deleted under an
exclusive lock taken without waiting (when it is busy, deletion is left to a later prune).
A caller that puts blobs and adds the record later (a pull) should hold `lease()` around
both; without it, an orphan blob is still kept for BLOB_GRACE_SECONDS after its last write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Self

from ..errors import (
    AlreadyExists,
    ContainerStateError,
    InvalidArgument,
    KernelFeatureMissing,
    MiniRunError,
    NotFound,
)
from . import InvalidImage
from .documents import parse_json
from .reference import Reference, parse_reference

DEFAULT_ROOT = "/var/lib/minirun"
ROOT_ENV = "MINIRUN_ROOT"

MAX_CONFIG_SIZE = 4 << 20
# overlayfs stacks at most 500 lower layers; docker refuses images above 125 (127 with the
# container's layers).
MAX_LAYERS = 125
BLOB_GRACE_SECONDS = 600
# mount(2) copies one page of options; above this, lower dirs are passed as /proc/self/fd/N.
MOUNT_DATA_MAX = 4000

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_HEX_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")
_CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS images (
        id TEXT PRIMARY KEY,
        manifest_digest TEXT,
        layers TEXT NOT NULL,
        diff_ids TEXT NOT NULL,
        size INTEGER NOT NULL,
        created TEXT,
        added REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS names (
        name TEXT PRIMARY KEY,
        image_id TEXT NOT NULL REFERENCES images(id))""",
    """CREATE TABLE IF NOT EXISTS users (
        container_id TEXT PRIMARY KEY,
        image_id TEXT NOT NULL REFERENCES images(id))""",
    "CREATE INDEX IF NOT EXISTS names_by_image ON names(image_id)",
    "CREATE INDEX IF NOT EXISTS users_by_image ON users(image_id)",
)


def default_root() -> str:
    return os.environ.get(ROOT_ENV) or DEFAULT_ROOT


def check_digest(digest: Any, what: str = "digest") -> str:
    """The hex part of a sha256 digest; anything else is refused (it becomes a path)."""
    m = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise InvalidImage(f"invalid {what} {digest!r}: want sha256:<64 hex digits>")
    return m.group(1)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if chains:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
        else:
            chains.append(diff_id)
    return chains


@dataclass
class ImageRecord:
    id: str
    names: list[str]
    manifest_digest: str | None
    config: dict
    layers: list[dict]
    diff_ids: list[str]
    size: int
    created: str | None
    added: float = 0.0
    containers: list[str] = field(default_factory=list)

    @property
    def config_digest(self) -> str:
        return self.id

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[1][:12]

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    def references(self) -> list[Reference]:
        return [parse_reference(name) for name in self.names]


@dataclass(frozen=True)
class IdMap:
    """The user namespace a container runs in, so that its snapshot shows the image's files
    with their image owners inside it: OCI id mappings (a namespace to be created) or the
    path of an existing namespace."""

    uid_mappings: tuple[dict, ...] = ()
    gid_mappings: tuple[dict, ...] = ()
    userns_path: str | None = None

    def open_userns(self) -> int:
        """An fd of a user namespace holding the mapping, for MOUNT_ATTR_IDMAP."""
        if self.userns_path is not None:
            return open_user_namespace(self.userns_path)
        return _new_userns(list(self.uid_mappings), list(self.gid_mappings))


@dataclass
class RemoveResult:
    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


@dataclass
class PruneResult:
    images: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    reclaimed: int = 0
    # blob and layer deletion waits for a load, pull or container start in progress
    deferred: bool = False


class ImageStore:
    """Blobs, image records, layers and snapshots under one root directory."""

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_root())
        # The paths go into overlay's comma- and colon-separated mount options.
        bad = [c for c in ",:\\" if c in self.root]
        if bad:
            raise InvalidArgument(f"image store root {self.root}: {bad[0]!r} is not allowed "
                                  "in its path (overlay mount options)")
        self.blobs_dir = os.path.join(self.root, "blobs", "sha256")
        self.layers_dir = os.path.join(self.root, "layers")
        self.containers_dir = os.path.join(self.root, "containers")
        self.tmp_dir = os.path.join(self.root, "tmp")
        # Search-only on the way to containers/: a container's init in a user namespace
        # must reach its rootfs; blobs and layers are for root only.
        os.makedirs(os.path.dirname(os.path.abspath(self.root)), mode=0o755, exist_ok=True)
        for path, mode in ((self.root, 0o711), (os.path.join(self.root, "blobs"), 0o700),
                           (self.blobs_dir, 0o700), (self.layers_dir, 0o700),
                           (self.containers_dir, 0o711), (self.tmp_dir, 0o700)):
            try:
                os.mkdir(path, mode)
            except FileExistsError:
                pass
        self._configs: dict[str, dict] = {}
        self._db = self._connect()

    # --- records -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(os.path.join(self.root, "images.db"), timeout=30,
                             isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # safe in WAL against crashes of minirun
        db.execute("PRAGMA foreign_keys = ON")
        with self._write(db):
            for statement in _SCHEMA:
                db.execute(statement)
        return db

    @contextlib.contextmanager
    def _write(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction: IMMEDIATE takes the write lock at once, so a read then write
        in it cannot interleave with another process's."""
        db = db or self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def record_event(self, action: str, image_id: str, name: str | None = None) -> None:
        """An image event of `minirun events` (EVENTS-CONTRACT.md: pull, tag, untag,
        delete, load, save, import) in the events table of the engine on this root;
        `name`: the reference it concerns (docker's attribute name), else the id."""
        from ..engine import Engine

        engine = Engine(self.root)
        try:
            engine.record_object_event("image", action, image_id, name=name or image_id)
        finally:
            engine.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- locks -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Hold off blob and layer deletion (prune, rmi) while this is held."""
        fd = os.open(os.path.join(self.root, "gc.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _gc_lock(self) -> Iterator[bool]:
        """Exclusive, without waiting: yields False while anything holds a lease."""
        fd = os.open(os.path.join(self.root, "gc.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # --- blobs ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, check_digest(digest))

    def has_blob(self, digest: str) -> bool:
        return os.path.isfile(self.blob_path(digest))

    def open_blob(self, digest: str) -> IO[bytes]:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def blob_size(self, digest: str) -> int:
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def put_blob(self, data: IO[bytes] | bytes, expected_digest: str | None = None,
                 max_size: int | None = None) -> str:
        """Store a blob, hashing as it streams; returns its digest. A digest other than
        `expected_digest`, or more than `max_size` bytes, raises InvalidImage and keeps
        nothing."""
        return self.put_blob_ex(data, expected_digest, max_size)[0]

    def put_blob_ex(self, data: IO[bytes] | bytes, expected_digest: str | None = None,
                    max_size: int | None = None) -> tuple[str, bool]:
        """put_blob, also saying whether the blob is new (False: it was already there)."""
        if expected_digest is not None:
            check_digest(expected_digest, "expected digest")
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        import tempfile  # not on the path of `minirun run`

        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.blobs_dir)
        try:
            hasher, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        what = f"blob {expected_digest}" if expected_digest else "blob"
                        raise InvalidImage(f"{what} is larger than {max_size} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + hasher.hexdigest()
            if expected_digest is not None and digest != expected_digest:
                raise InvalidImage(f"digest mismatch: expected {expected_digest}, got {digest}")
            final = self.blob_path(digest)
            if os.path.exists(final):
                # A fresh mtime marks the blob as in use by whoever is adding it now, so that
                # an rmi of another image that had it does not delete it underneath.
                os.utime(final)
                os.unlink(tmp)
                return digest, False
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            _fsync_dir(self.blobs_dir)
            return digest, True
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_json_blob(self, digest: str, what: str, max_size: int = MAX_CONFIG_SIZE) -> Any:
        """A JSON document from the store (a manifest, config or index), size-bounded."""
        with self.open_blob(digest) as f:
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise InvalidImage(f"{what} {digest} is larger than {max_size} bytes")
        return parse_json(data, f"{what} {digest}")

    def _config(self, digest: str) -> dict:
        config = self._configs.get(digest)
        if config is None:
            config = self.read_json_blob(digest, "config")
            validate_config(config, digest)
            self._configs[digest] = config
        return config

    # --- images ----------------------------------------------------------------------------

    def add_image(self, manifest_digest: str | None, config_digest: str, layers: list[dict],
                  names: list[str], unpacked: list[str] | None = None) -> ImageRecord:
        """Record an image whose blobs are in the store, unpacking any layer not unpacked
        yet (each checked against the config's diff_id; the chain ids of those it unpacks
        are appended to `unpacked`). A name that belonged to another image moves to this
        one. Adding an image that is already there adds the names; with a manifest digest
        it also replaces the manifest and layer descriptors."""
        refs = [normalize_name(n) for n in names]
        check_digest(config_digest, "config digest")
        if manifest_digest is not None:
            check_digest(manifest_digest, "manifest digest")
        descs = [check_layer_descriptor(d) for d in layers]
        if len(descs) > MAX_LAYERS:
            raise InvalidImage(f"image has {len(descs)} layers, more than {MAX_LAYERS}")
        blobs = [config_digest] + [d["digest"] for d in descs]
        if manifest_digest:
            blobs.append(manifest_digest)
        for digest in blobs:
            if not self.has_blob(digest):
                raise InvalidImage(f"blob {digest} is not in the store")
        for desc in descs:
            desc["size"] = self.blob_size(desc["digest"])
        config = self._config(config_digest)
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(descs):
            raise InvalidImage(f"config {config_digest} lists {len(diff_ids)} diff_ids for "
                               f"{len(descs)} layers")
        created = config.get("created") if isinstance(config.get("created"), str) else None
        with self.lease():
            sizes = self._ensure_layers(descs, diff_ids, unpacked)
            with self._write() as db:
                for digest in blobs:
                    if not self.has_blob(digest):
                        raise InvalidImage(f"blob {digest} was removed while the image was "
                                           "being added")
                row = db.execute("SELECT manifest_digest FROM images WHERE id = ?",
                                 (config_digest,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO images (id, manifest_digest, layers, diff_ids, size, "
                               "created, added) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (config_digest, manifest_digest, json.dumps(descs),
                                json.dumps(diff_ids), sum(sizes), created, time.time()))
                elif manifest_digest is not None:
                    db.execute("UPDATE images SET manifest_digest = ?, layers = ? WHERE id = ?",
                               (manifest_digest, json.dumps(descs), config_digest))
                for ref in refs:
                    db.execute("INSERT INTO names (name, image_id) VALUES (?, ?) "
                               "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                               (str(ref), config_digest))
                return self._record(db, config_digest)

    def get(self, ref_or_id: str | ImageRecord) -> ImageRecord:
        """An image by name (`busybox`, `busybox:1.36`, `name@sha256:...`), by id
        (`sha256:<hex>`) or by an unambiguous id prefix of at least 4 hex digits."""
        with self._read() as db:
            image_id, _ = self._resolve(db, ref_or_id)
            return self._record(db, image_id)

    def images(self) -> list[ImageRecord]:
        """Every image, the most recently added first."""
        with self._read() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM images ORDER BY added DESC, id")]
            return [self._record(db, i) for i in ids]

    def tag(self, image: str | ImageRecord, name: str) -> str:
        """Give `image` the name `name` (moved from another image if it had it); returns the
        normalized name."""
        ref = normalize_name(name)
        if ref.digest is not None:
            raise InvalidArgument(f"cannot tag with {name}: a tag target has no digest")
        with self._write() as db:
            image_id, _ = self._resolve(db, image)
            db.execute("INSERT INTO names (name, image_id) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                       (str(ref), image_id))
        self.record_event("tag", image_id, ref.familiar())
        return str(ref)

    def untag(self, name: str) -> None:
        ref = normalize_name(name)
        with self._write() as db:
            row = db.execute("SELECT image_id FROM names WHERE name = ?",
                             (str(ref),)).fetchone()
            if row is None:
                raise NotFound(f"no such image: {ref.familiar()}")
            db.execute("DELETE FROM names WHERE name = ?", (str(ref),))
        self.record_event("untag", row[0])

    def remove(self, image: str | ImageRecord, force: bool = False) -> RemoveResult:
        """_remove, and its untag and delete events."""
        result, image_id = self._remove(image, force)
        for _ in result.untagged:
            self.record_event("untag", image_id)
        for deleted in result.deleted:
            self.record_event("delete", deleted)
        return result

    def _remove(self, image: str | ImageRecord, force: bool) -> tuple[RemoveResult, str]:
        """rmi: a name of an image that has others is only untagged; otherwise the image goes,
        with the blobs and layers no other image needs. Refused while a container uses it;
        with force, its names go and the record stays until the containers release it (their
        snapshots need its layers). An id that several names share needs force."""
        result = RemoveResult()
        with self._write() as db:
            image_id, by_name = self._resolve(db, image)
            record = self._record(db, image_id)
            if by_name is not None and len(record.names) > 1:
                db.execute("DELETE FROM names WHERE name = ?", (by_name,))
                result.untagged.append(by_name)
                return result, image_id
            label = parse_reference(by_name).familiar() if by_name else record.short_id
            if record.containers:
                if not force:
                    users = ", ".join(c[:12] if re.fullmatch(r"[0-9a-f]{64}", c) else c
                                      for c in record.containers)
                    raise ContainerStateError(f"image {label} is in use by container {users}")
                db.execute("DELETE FROM names WHERE image_id = ?", (image_id,))
                result.untagged.extend(record.names)
                return result, image_id
            if by_name is None and len(record.names) > 1 and not force:
                shown = ", ".join(parse_reference(n).familiar() for n in record.names)
                raise InvalidArgument(f"image {label} has several names ({shown}): remove "
                                      "them by name, or force")
            db.execute("DELETE FROM names WHERE image_id = ?", (image_id,))
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            result.untagged.extend(record.names)
            result.deleted.append(image_id)
        self._collect([record], PruneResult(), grace_seconds=None)
        return result, image_id

    def prune(self, all_images: bool = False,
              grace_seconds: float = BLOB_GRACE_SECONDS) -> PruneResult:
        """Remove images without a name (with all_images: every image) that no container
        uses, then every blob and layer no image references. Unreferenced blobs written in
        the last `grace_seconds` stay: a pull may be about to record them."""
        result = PruneResult()
        with self._write() as db:
            where = "" if all_images else \
                "AND NOT EXISTS (SELECT 1 FROM names n WHERE n.image_id = i.id)"
            ids = [r[0] for r in db.execute(
                "SELECT id FROM images i WHERE NOT EXISTS "
                f"(SELECT 1 FROM users u WHERE u.image_id = i.id) {where}")]
            records = [self._record(db, i) for i in ids]
            for image_id in ids:
                db.execute("DELETE FROM names WHERE image_id = ?", (image_id,))
                db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        result.images = ids
        for record in records:
            for _ in record.names:
                self.record_event("untag", record.id)
            self.record_event("delete", record.id)
        self._collect(records, result, grace_seconds)
        return result

    def _collect(self, removed: list[ImageRecord], result: PruneResult,
                 grace_seconds: float | None) -> None:
        """Delete blobs and layers of `removed` that no image references now (those a
        writer touched since the image was added stay), and with `grace_seconds` every
        other unreferenced blob older than that, every unreferenced layer and leftovers of
        interrupted writes."""
        with self._gc_lock() as exclusive:
            if not exclusive:
                result.deferred = True
                return
            with self._read() as db:
                blob_refs, chain_refs = self._references(db)
            now = time.time()
            freed: dict[str, float] = {}
            for record in removed:
                for digest in _record_blobs(record):
                    freed[digest] = max(freed.get(digest, 0), record.added)
            if grace_seconds is None:
                blobs = list(freed)
                chains = {c.split(":", 1)[1] for r in removed for c in r.chain_ids}
            else:
                blobs = []
                for name in _listdir(self.blobs_dir):
                    if _DIGEST_RE.fullmatch("sha256:" + name):
                        blobs.append("sha256:" + name)
                    elif name.startswith(".tmp-"):
                        # an interrupted put_blob; one in progress keeps writing to it
                        _remove_if_older(os.path.join(self.blobs_dir, name), now - grace_seconds)
                chains = set(_listdir(self.layers_dir))
            for digest in blobs:
                if digest in blob_refs:
                    continue
                path = self.blob_path(digest)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if digest in freed:
                    if st.st_mtime > freed[digest] + 1:
                        continue
                elif grace_seconds is None or st.st_mtime > now - grace_seconds:
                    continue
                os.unlink(path)
                result.blobs.append(digest)
                result.reclaimed += st.st_size
            for name in sorted(chains):
                if "sha256:" + name in chain_refs:
                    continue
                path = os.path.join(self.layers_dir, name)
                if not os.path.lexists(path):
                    continue
                result.reclaimed += _layer_size(path)
                remove_tree(path)
                if _DIGEST_RE.fullmatch("sha256:" + name):
                    result.layers.append("sha256:" + name)

    def _references(self, db: sqlite3.Connection) -> tuple[set[str], set[str]]:
        blobs: set[str] = set()
        chains: set[str] = set()
        for image_id, manifest, layers, diff_ids in db.execute(
                "SELECT id, manifest_digest, layers, diff_ids FROM images"):
            blobs.add(image_id)
            if manifest:
                blobs.add(manifest)
            blobs.update(d["digest"] for d in json.loads(layers))
            chains.update(chain_ids(json.loads(diff_ids)))
        return blobs, chains

    def _resolve(self, db: sqlite3.Connection,
                 ref_or_id: str | ImageRecord) -> tuple[str, str | None]:
        """(image id, the name it was found by or None)."""
        if isinstance(ref_or_id, ImageRecord):
            ref_or_id = ref_or_id.id
        text = ref_or_id.strip() if isinstance(ref_or_id, str) else ""
        if not text:
            raise InvalidArgument("empty image name")
        if _DIGEST_RE.fullmatch(text):
            if db.execute("SELECT 1 FROM images WHERE id = ?", (text,)).fetchone():
                return text, None
            raise NotFound(f"no such image: {text}")
        parse_error = None
        try:
            ref = parse_reference(text)
        except InvalidArgument as e:
            ref, parse_error = None, e
        if ref is not None:
            row = db.execute("SELECT image_id FROM names WHERE name = ?", (str(ref),)).fetchone()
            if row:
                return row[0], str(ref)
            if ref.digest is not None:
                row = db.execute("SELECT id FROM images WHERE manifest_digest = ?",
                                 (ref.digest,)).fetchone()
                if row:
                    return row[0], None
        m = _HEX_PREFIX_RE.fullmatch(text)
        if m:
            rows = db.execute("SELECT id FROM images WHERE id >= ? AND id < ? LIMIT 2",
                              ("sha256:" + m.group(1), "sha256:" + m.group(1) + "g")).fetchall()
            if len(rows) > 1:
                raise InvalidArgument(f"image id prefix {text} is ambiguous")
            if rows:
                return rows[0][0], None
        if parse_error is not None and not m:
            raise parse_error
        raise NotFound(f"no such image: {ref.familiar() if ref else text}")

    def _record(self, db: sqlite3.Connection, image_id: str) -> ImageRecord:
        row = db.execute("SELECT manifest_digest, layers, diff_ids, size, created, added "
                         "FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise NotFound(f"no such image: {image_id}")
        manifest, layers, diff_ids, size, created, added = row
        names = [r[0] for r in db.execute(
            "SELECT name FROM names WHERE image_id = ? ORDER BY name", (image_id,))]
        users = [r[0] for r in db.execute(
            "SELECT container_id FROM users WHERE image_id = ? ORDER BY container_id",
            (image_id,))]
        return ImageRecord(id=image_id, names=names, manifest_digest=manifest,
                           config=self._config(image_id), layers=json.loads(layers),
                           diff_ids=json.loads(diff_ids), size=size, created=created,
                           added=added, containers=users)

    # --- layers ------------------------------------------------------------------------------

    def layer_dirs(self, image: str | ImageRecord) -> list[str]:
        """The image's unpacked layers, bottom first, unpacking any that are missing."""
        record = image if isinstance(image, ImageRecord) else self.get(image)
        with self.lease():
            self._ensure_layers(record.layers, record.diff_ids)
        return [self._layer_dir(c) for c in record.chain_ids]

    def layer_paths(self, image: ImageRecord) -> list[str]:
        """Where the image's layers are (or will be) unpacked, bottom first; unpacks nothing."""
        return [self._layer_dir(c) for c in image.chain_ids]

    def _layer_dir(self, chain_id: str) -> str:
        return os.path.join(self.layers_dir, check_digest(chain_id, "chain id"), "diff")

    def unpack_layers(self, config_digest: str, layers: list[dict],
                      unpacked: list[str]) -> None:
        """Check an image's config against its layers and unpack those not unpacked yet,
        before any record exists (a load validates every image of an archive first).
        Appends to `unpacked` each chain id it unpacks as it goes, so that when layer 2 is
        refused the caller still knows layer 1 is its own to discard. Hold `lease()`
        until the image is added."""
        descs = [check_layer_descriptor(d) for d in layers]
        if len(descs) > MAX_LAYERS:
            raise InvalidImage(f"image has {len(descs)} layers, more than {MAX_LAYERS}")
        diff_ids = self._config(config_digest)["rootfs"]["diff_ids"]
        if len(diff_ids) != len(descs):
            raise InvalidImage(f"config {config_digest} lists {len(diff_ids)} diff_ids for "
                               f"{len(descs)} layers")
        self._ensure_layers(descs, diff_ids, unpacked)

    def discard(self, blobs: list[str], chains: list[str]) -> bool:
        """Delete these blobs and unpacked layers unless an image references them: what a
        failed load or import wrote. False when a lease held elsewhere defers it to prune."""
        with self._gc_lock() as exclusive:
            if not exclusive:
                return False
            with self._read() as db:
                blob_refs, chain_refs = self._references(db)
            for digest in blobs:
                if digest not in blob_refs:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.blob_path(digest))
            for chain in chains:
                if chain not in chain_refs:
                    remove_tree(os.path.join(self.layers_dir, check_digest(chain, "chain id")))
        return True

    def _ensure_layers(self, layers: list[dict], diff_ids: list[str],
                       created: list[str] | None = None) -> list[int]:
        """Unpack the layers not unpacked yet; returns each layer's size. Two processes may
        unpack one layer at once: the first rename wins, the other's copy is dropped."""
        sizes = []
        for desc, diff_id, chain_id in zip(layers, diff_ids, chain_ids(diff_ids)):
            final = os.path.join(self.layers_dir, check_digest(chain_id, "chain id"))
            meta = _read_layer_meta(final)
            if meta is None:
                meta = self._unpack(desc, diff_id, chain_id, final)
                if created is not None:
                    created.append(chain_id)
            sizes.append(meta["size"])
        return sizes

    def _unpack(self, desc: dict, diff_id: str, chain_id: str, final: str) -> dict:
        from .unpack import unpack_layer

        import tempfile

        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.layers_dir)
        try:
            os.chmod(tmp, 0o700)
            diff = os.path.join(tmp, "diff")
            os.mkdir(diff, 0o755)
            with self.open_blob(desc["digest"]) as f:
                result = unpack_layer(f, diff, compression=_compression(desc["media_type"]),
                                      label=desc["digest"])
            if result.diff_id != diff_id:
                raise InvalidImage(f"layer {desc['digest']}: content digest {result.diff_id} "
                                   f"does not match the config's diff_id {diff_id}")
            meta = {"diff_id": diff_id, "chain_id": chain_id, "size": int(result.size),
                    "blob": desc["digest"]}
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f)
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                remove_tree(tmp)
                return _read_layer_meta(final) or meta
            return meta
        except BaseException:
            if os.path.lexists(tmp):
                remove_tree(tmp)
            raise

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self, image: str | ImageRecord, container_id: str,
                 idmap: IdMap | None = None) -> str:
        """Mount an overlay of the image's layers (shared, read-only below) with the
        container's own upper dir on <root>/containers/<id>/merged and record that the
        container uses the image; returns the merged path. With `idmap`, the layers are
        idmapped mounts, so that in that user namespace the files have their owners from
        the image (a file of uid 0 is the container's root's) and the layers stay shared."""
        check_container_id(container_id)
        cdir = os.path.join(self.containers_dir, container_id)
        with self.lease():
            with self._write() as db:
                image_id, _ = self._resolve(db, image)
                if db.execute("SELECT 1 FROM users WHERE container_id = ?",
                              (container_id,)).fetchone():
                    raise AlreadyExists(f"container {container_id} already has a snapshot")
                try:
                    os.mkdir(cdir, 0o711)
                except FileExistsError:
                    raise AlreadyExists(f"{cdir} exists: release container {container_id} "
                                        "first") from None
                db.execute("INSERT INTO users (container_id, image_id) VALUES (?, ?)",
                           (container_id, image_id))
                record = self._record(db, image_id)
            merged = os.path.join(cdir, "merged")
            try:
                self._ensure_layers(record.layers, record.diff_ids)
                lowers = [self._layer_dir(c) for c in reversed(record.chain_ids)]
                self._mount_overlay(cdir, lowers, idmap)
            except BaseException:
                self._undo_snapshot(container_id, cdir)
                raise
        return merged

    def _mount_overlay(self, cdir: str, lowers: list[str], idmap: IdMap | None = None) -> None:
        from .. import sys as msys

        upper, work, merged = (os.path.join(cdir, n) for n in ("upper", "work", "merged"))
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
        os.mkdir(merged, 0o755)
        if not lowers:
            empty = os.path.join(cdir, "empty")
            os.mkdir(empty, 0o755)
            lowers = [empty]
        if idmap is not None:
            lowers = _idmap_layers(cdir, lowers, idmap)
        # The merged root takes the upper dir's owner and mode: the image's, not ours (seen
        # through an idmapped layer, the owner is the container's root as the host sees it,
        # so that root may write to / and what it writes is recorded as its own).
        st = os.stat(lowers[0])
        os.chown(upper, st.st_uid, st.st_gid)
        os.chmod(upper, stat.S_IMODE(st.st_mode))
        if idmap is not None:
            os.chown(work, st.st_uid, st.st_gid)
        fds: list[int] = []
        try:
            data = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
            if len(data) > MOUNT_DATA_MAX:
                for path in lowers:
                    fds.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
                short = ":".join(f"/proc/self/fd/{fd}" for fd in fds)
                data = f"lowerdir={short},upperdir={upper},workdir={work}"
                if len(data) > MOUNT_DATA_MAX:
                    raise InvalidImage(f"image has too many layers ({len(lowers)}) for one "
                                       "overlay mount")
            try:
                msys.mount("overlay", merged, "overlay", 0, data)
            except msys.SysError as e:
                if idmap is not None and e.errno == errno.EINVAL:
                    raise KernelFeatureMissing(f"overlayfs refuses idmapped lower layers "
                                               f"(linux >= 5.19 needed): {e}") from None
                raise
        finally:
            for fd in fds:
                os.close(fd)

    def _undo_snapshot(self, container_id: str, cdir: str) -> None:
        with contextlib.suppress(MiniRunError, OSError):
            _unmount_snapshot(cdir)
        if os.path.lexists(cdir) and not mounts_under(cdir):
            remove_tree(cdir)
        with self._write() as db:
            db.execute("DELETE FROM users WHERE container_id = ?", (container_id,))

    def release(self, container_id: str) -> None:
        """Unmount a container's snapshot (lazily when busy), delete its upper dir without
        ever crossing into a mount, and forget that it used the image."""
        check_container_id(container_id)
        cdir = os.path.join(self.containers_dir, container_id)
        _unmount_snapshot(cdir)
        left = mounts_under(cdir)
        if left:
            raise ContainerStateError(f"refusing to remove {cdir}: {left[0]} is mounted "
                                      "inside it")
        remove_tree(cdir)
        with self._write() as db:
            db.execute("DELETE FROM users WHERE container_id = ?", (container_id,))

    def snapshot_path(self, container_id: str) -> str:
        check_container_id(container_id)
        return os.path.join(self.containers_dir, container_id, "merged")


# --- validation ------------------------------------------------------------------------------

def normalize_name(name: str) -> Reference:
    """A name as stored: the full reference (docker.io/library/busybox:latest)."""
    return parse_reference(name)


def check_container_id(container_id: str) -> None:
    if not isinstance(container_id, str) or not _CONTAINER_ID_RE.fullmatch(container_id):
        raise InvalidArgument(f"invalid container id {container_id!r}: want letters, digits, "
                              "'_', '.', '-', at most 128, not starting with a punctuation")


def check_layer_descriptor(desc: Any) -> dict:
    if not isinstance(desc, dict):
        raise InvalidImage(f"layer descriptor {desc!r} is not an object")
    digest = desc.get("digest")
    check_digest(digest, "layer digest")
    media_type = desc.get("media_type", desc.get("mediaType", ""))
    size = desc.get("size")
    if size is None:  # add_image takes the size from the blob itself
        size = 0
    if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
        raise InvalidImage(f"layer {digest}: bad media type or size")
    return {"digest": digest, "media_type": media_type, "size": size}


def validate_config(config: Any, digest: str) -> None:
    """The parts of an image config the store relies on."""
    if not isinstance(config, dict):
        raise InvalidImage(f"config {digest} is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidImage(f"config {digest}: rootfs.type is not 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidImage(f"config {digest}: rootfs.diff_ids is not a list")
    for d in diff_ids:
        check_digest(d, f"diff_id in config {digest}")
    inner = config.get("config")
    if inner is not None and not isinstance(inner, dict):
        raise InvalidImage(f"config {digest}: 'config' is not an object")


def _compression(media_type: str) -> str:
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    # docker-save archives name every layer a plain tar, compressed or not
    return "auto"


def _record_blobs(record: ImageRecord) -> list[str]:
    blobs = [record.id] + [d["digest"] for d in record.layers]
    if record.manifest_digest:
        blobs.append(record.manifest_digest)
    return blobs


def _read_layer_meta(layer_dir: str) -> dict | None:
    try:
        with open(os.path.join(layer_dir, "meta.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _layer_size(layer_dir: str) -> int:
    try:
        meta = _read_layer_meta(layer_dir)
    except (OSError, ValueError):
        return 0
    return int(meta.get("size", 0)) if isinstance(meta, dict) else 0


def _remove_if_older(path: str, limit: float) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_mtime < limit:
            os.unlink(path)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- mounts and removal ----------------------------------------------------------------------

def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    from .. import mountinfo

    path = os.path.realpath(path)
    found = [m.mountpoint for m in mountinfo.read()
             if m.mountpoint == path or m.mountpoint.startswith(path + "/")]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _unmount_snapshot(cdir: str) -> None:
    """The overlay first (it holds its lower layers), then the idmapped layers the store
    mounted under lower/; nothing else under the container's dir."""
    _unmount_all(os.path.join(cdir, "merged"))
    lower = os.path.join(cdir, "lower")
    for name in _listdir(lower):
        _unmount_all(os.path.join(lower, name))


def _unmount_all(target: str) -> None:
    """Unmount everything stacked on `target`; detach lazily what is busy."""
    from .. import sys as msys

    target = os.path.realpath(target)
    for _ in range(16):
        if target not in mounts_under(target):
            return
        try:
            try:
                msys.umount2(target)
            except msys.SysError as e:
                if e.errno != errno.EBUSY:
                    raise
                msys.umount2(target, msys.MNT_DETACH)
        except msys.SysError as e:
            # EINVAL: not a mount point (any more): another removal of the same container
            # (the daemon's --rm and an rm -f) unmounted it first; the loop looks again
            if e.errno != errno.EINVAL:
                raise
    raise ContainerStateError(f"{target} is still mounted after 16 unmounts")


def remove_tree(path: str) -> None:
    """`rm -rf --one-file-system`, refusing outright if anything is mounted inside: a bind
    mount of a host directory under `path` must never be deleted through."""
    left = mounts_under(path)
    if left:
        raise ContainerStateError(f"refusing to remove {path}: {left[0]} is mounted inside it")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_entry(parent, os.path.basename(path), st.st_dev, path)
    finally:
        os.close(parent)


def _remove_entry(parent_fd: int, name: str, dev: int, shown: str) -> None:
    # An entry that vanishes meanwhile is removed already: two removals of one container
    # may run at once (`rm -f` of a `run -d --rm` container: the CLI's, and the daemon's
    # when the kill makes it exit), and each must succeed.
    try:
        st = os.lstat(name, dir_fd=parent_fd)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return
        if st.st_dev != dev:
            raise ContainerStateError(f"refusing to remove {shown}: another file system")
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent_fd)
    except FileNotFoundError:
        return
    try:
        if os.fstat(fd).st_dev != dev:
            raise ContainerStateError(f"refusing to remove {shown}: another file system")
        for entry in os.listdir(fd):
            _remove_entry(fd, entry, dev, os.path.join(shown, entry))
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass


# --- idmapped layers -------------------------------------------------------------------------

_IDMAP_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _idmap_layers(cdir: str, layers: list[str], idmap: IdMap) -> list[str]:
    """Each layer dir cloned as a detached bind mount, idmapped as the container's user
    namespace maps ids, and attached at <cdir>/lower/<n>; returns those mount points. The
    caller unmounts them (`_unmount_snapshot`) when a later step fails."""
    from .. import sys as msys

    top = os.path.join(cdir, "lower")
    os.mkdir(top, 0o700)
    userns_fd = idmap.open_userns()
    points = []
    try:
        for n, layer in enumerate(layers):
            point = os.path.join(top, str(n))
            os.mkdir(point, 0o755)
            try:
                fd = msys.open_tree(layer, msys.OPEN_TREE_CLONE)
                try:
                    msys.mount_setattr(fd, msys.MOUNT_ATTR_IDMAP, 0, label=layer,
                                       userns_fd=userns_fd, recursive=False)
                    msys.move_mount(fd, point)
                finally:
                    os.close(fd)
            except msys.SysError as e:
                if e.errno in _IDMAP_UNSUPPORTED:
                    raise KernelFeatureMissing(f"idmapped mounts are not available here "
                                               f"(linux >= 5.19 and a file system that "
                                               f"supports them needed): {e}") from None
                raise
            points.append(point)
    finally:
        os.close(userns_fd)
    return points


def open_user_namespace(path: str) -> int:
    """An fd of the user namespace file at `path` (/proc/<pid>/ns/user or a bind mount of
    one); anything else, and the host's own namespace, is refused."""
    from .. import sys as msys

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"user namespace {path}: {e.strerror}") from None
    try:
        try:
            kind = msys.ns_get_nstype(fd, path)
        except msys.SysError:
            kind = 0
        if kind != msys.CLONE_NEWUSER:
            raise InvalidArgument(f"{path} is not a user namespace")
        own = os.stat("/proc/self/ns/user")
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            raise InvalidArgument(f"{path} is the host's user namespace")
        if not _userns_has_maps(fd, path):
            # mount_setattr would only say EINVAL
            raise InvalidArgument(f"user namespace {path} has no id mapping yet (its uid_map "
                                  "or gid_map is empty)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _userns_has_maps(fd: int, path: str) -> bool:
    """Whether the user namespace at fd has both its uid and its gid map written: a child
    joins it and reads its own maps."""
    from .. import sys as msys

    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                msys.setns(fd, msys.CLONE_NEWUSER)
            except msys.SysError as e:
                os.write(w, b"e%d" % e.errno)
                raise
            with open("/proc/self/uid_map", "rb") as u, open("/proc/self/gid_map", "rb") as g:
                os.write(w, b"1" if u.read().strip() and g.read().strip() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        answer = os.read(r, 16)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if answer.startswith(b"e") and answer[1:].isdigit():
        raise InvalidArgument(f"cannot join user namespace {path}: "
                              f"{os.strerror(int(answer[1:]))}")
    return answer == b"1"


def _new_userns(uid_mappings: list[dict], gid_mappings: list[dict]) -> int:
    """An fd of a new user namespace with these mappings, for idmapping only: a child
    unshares it, we write its maps and open it, and the child exits (the fd, then the
    idmapped mounts, keep the namespace alive)."""
    from .. import sys as msys
    from ..namespaces import write_id_maps

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            try:
                msys.unshare(msys.CLONE_NEWUSER)
                os.write(ready_w, b"ok")
            except msys.SysError as e:
                os.write(ready_w, str(e.errno).encode())
            os.read(done_r, 1)  # until the parent has opened the namespace
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        answer = os.read(ready_r, 16)
        if answer != b"ok":
            err = int(answer) if answer.isdigit() else errno.EIO
            raise KernelFeatureMissing(f"cannot create a user namespace: {os.strerror(err)}")
        write_id_maps(pid, uid_mappings, gid_mappings)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)
