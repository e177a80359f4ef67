"""The CRI ImageService: kubelet's image calls, answered from minirun's image store
(minirun/image/store.py) and its registry client (minirun/image/registry.py).

  ListImages(filter.image)   every image, or the one the filter's spec names
  ImageStatus(image)         by tag (`busybox` = docker.io/library/busybox:latest), by id
                             (`sha256:<hex>`, or an unambiguous hex prefix of >= 4 digits), by
                             `repo@sha256:<manifest digest>`: the same Image each way; an
                             image not there is a response without image, not an error
  PullImage(image, auth)     auth from the request, mirrors and insecure registries from the
                             registries config (MINIRUN_REGISTRIES_CONF, else
                             /etc/minirun/registries.json, read at each pull); the client's
                             deadline stops the pull (DEADLINE_EXCEEDED) and what it wrote
                             is deleted. Answers the image id (the config digest), as
                             containerd 1.6 does.
  RemoveImage(image)         every name of the image goes (kubelet removes by id); an image
                             not there is a success (idempotent)
  ImageFsInfo()              bytes and inodes of the store's blobs and unpacked layers

Image fields as containerd fills them: id the config digest; repo_tags the full names
(docker.io/library/busybox:latest); repo_digests `<repository>@<manifest digest>` for each
repository the image is known under (the digest the reference resolved to: an index's for a
multi-platform image); uid or username from the config's User (before any ':', a number is
a uid); spec.image the id.

An image a container uses: RemoveImage removes its names at once, as containerd removes its
references; the record stays, untagged, while the container's snapshot sits on its layers
(ListImages shows it without repo_tags, so kubelet's image GC removes it by id once no
container uses it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time

import grpc

from ..errors import InvalidArgument, NotFound
from ..image import registry
from ..image.reference import parse_reference
from ..image.store import ImageRecord, ImageStore
from ..monitor.cgstats import tree_usage
from .api import api_pb2 as pb

USAGE_MAX_AGE = 60.0  # seconds an unchanged store's ImageFsInfo walk is reused


class ImageService:
    def __init__(self, engine, config=None) -> None:
        self.engine = engine
        self.config = config
        self._local = threading.local()  # one store (one sqlite connection) per thread
        self._usage: tuple[tuple, tuple[int, int]] | None = None  # ImageFsInfo's last walk

    @property
    def store(self) -> ImageStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = ImageStore(self.engine.root)
        return store

    # --- lookups ---------------------------------------------------------------------------

    def find(self, spec_image: str) -> ImageRecord | None:
        """The image a spec names (tag, id, id prefix, repo@digest), or None."""
        text = spec_image.strip()
        if not text:
            raise InvalidArgument("image spec has no image")
        try:
            record = self.store.get(text)
        except NotFound:
            return None
        if "@" in text:
            # the store finds a manifest digest under any name: the repository must match
            ref = parse_reference(text)
            if ref.name not in {parse_reference(n).name for n in record.names}:
                return None
        return record

    # --- rpcs ------------------------------------------------------------------------------

    def ListImages(self, request, context):
        spec = request.filter.image.image if request.HasField("filter") else ""
        if spec:
            record = self.find(spec)
            records = [record] if record is not None else []
        else:
            records = self._all_images()
        return pb.ListImagesResponse(images=[to_cri_image(self.store, r) for r in records])

    def _all_images(self) -> list[ImageRecord]:
        for _ in range(3):
            try:
                return self.store.images()
            except NotFound:
                # an image removed between reading its record and its config: list again
                continue
        return self.store.images()

    def ImageStatus(self, request, context):
        record = self.find(request.image.image)
        if record is None:
            return pb.ImageStatusResponse()
        info = {}
        if request.verbose:
            info["info"] = json.dumps({
                "id": record.id, "names": record.names, "manifestDigest": record.manifest_digest,
                "chainID": record.chain_ids[-1] if record.chain_ids else "",
                "layers": record.layers, "size": record.size, "imageSpec": record.config,
            })
        return pb.ImageStatusResponse(image=to_cri_image(self.store, record), info=info)

    def PullImage(self, request, context):
        text = request.image.image.strip()
        if not text:
            raise InvalidArgument("image spec has no image")
        ref = parse_reference(text)
        credentials = request_credentials(request.auth, ref.registry) \
            if request.HasField("auth") else None
        remaining = context.time_remaining()
        deadline = None
        if remaining is not None:
            if remaining <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"pull {ref}: deadline exceeded before it started")
            deadline = time.monotonic() + remaining
        try:
            record = registry.pull(self.store, ref, config=registry.load_config(),
                                   credentials=credentials, deadline=deadline)
        except registry.DeadlineExceeded as e:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        return pb.PullImageResponse(image_ref=record.id)

    def RemoveImage(self, request, context):
        record = self.find(request.image.image)
        if record is not None:
            try:
                self.store.remove(record.id, force=True)
            except NotFound:
                pass  # removed meanwhile by another call: the outcome asked for
        return pb.RemoveImageResponse()

    def ImageFsInfo(self, request, context):
        store = self.store
        dirs = [store.blobs_dir, store.layers_dir]
        # kubelet asks every few seconds; a walk of a big store takes seconds. Blobs and
        # layers are only ever added or deleted whole, which changes their dir's mtime (a
        # change within the clock tick of the last walk shows within USAGE_MAX_AGE).
        key = (*(os.stat(d).st_mtime_ns for d in dirs), int(time.monotonic() // USAGE_MAX_AGE))
        cached = self._usage
        if cached is not None and cached[0] == key:
            used, inodes = cached[1]
        else:
            used, inodes = tree_usage(dirs)
            self._usage = (key, (used, inodes))
        return pb.ImageFsInfoResponse(image_filesystems=[pb.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=pb.FilesystemIdentifier(mountpoint=store.root),
            used_bytes=pb.UInt64Value(value=used),
            inodes_used=pb.UInt64Value(value=inodes))])


# --- conversions -------------------------------------------------------------------------------

def to_cri_image(store: ImageStore, record: ImageRecord) -> pb.Image:
    tags, digests = [], []
    for name in record.names:
        ref = parse_reference(name)
        if ref.digest is not None:
            digests.append(f"{ref.name}@{ref.digest}")
        else:
            tags.append(str(ref))
        if record.manifest_digest:
            digests.append(f"{ref.name}@{record.manifest_digest}")
    uid, username = user_of(record.config)
    image = pb.Image(id=record.id, repo_tags=tags, repo_digests=sorted(set(digests)),
                     size=record.size or store.blob_size(record.id), username=username,
                     spec=pb.ImageSpec(image=record.id))
    if uid is not None:
        image.uid.value = uid
    return image


def user_of(config: dict) -> tuple[int | None, str]:
    """(uid, username) from the image config's User, as containerd reads it: the part
    before ':' is a uid when numeric, else a user name; no User gives neither."""
    user = str((config.get("config") or {}).get("User") or "")
    if not user:
        return None, ""
    user = user.split(":", 1)[0]
    try:
        return int(user), ""
    except ValueError:
        return None, user


def request_credentials(auth, default_registry: str) -> dict[str, registry.Credentials] | None:
    """The PullImage request's AuthConfig as {registry: Credentials}, for the registry its
    server_address names (the reference's when empty); None when it carries nothing."""
    username, password = auth.username, auth.password
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidArgument("auth config: 'auth' is not base64 of user:password") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidArgument("auth config: 'auth' has no ':' between user and password")
    if not (username or password or auth.identity_token or auth.registry_token):
        return None
    target = registry._normalize_registry(auth.server_address) if auth.server_address \
        else registry._normalize_registry(default_registry)
    return {target: registry.Credentials(username, password, "the PullImage request's auth",
                                         registry_token=auth.registry_token,
                                         identity_token=auth.identity_token)}
