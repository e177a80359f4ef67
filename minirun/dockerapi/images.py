"""Images: list, inspect, history, pull and import (/images/create), tag, remove, load,
save and prune, as Docker Engine API 1.41 answers them, over minirun's image store.

The documents are moby's api/types (ImageSummary, ImageInspect, HistoryResponseItem,
ImageDeleteResponseItem, ImagesPruneReport). A pull answers with docker's progress
stream; an error before the first line of it (an unknown name, a registry that is down)
is an HTTP error as docker's, one after it a {"errorDetail"} line in the stream.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import threading
import time
from typing import Any

from ..dockerview import rfc3339
from ..errors import MiniRunError, NotFound
from ._objects import bool_filter, check_filters, match_labels, written_chunks
from .server import ApiError, Response, Stream, json_lines

IMAGE_FILTERS = ("dangling", "label", "before", "since", "reference")
PRUNE_FILTERS = ("dangling", "label", "until")
# docker's container.Config with its zero values: an image's config shows every field
CONFIG_ZERO = {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
               "AttachStdout": False, "AttachStderr": False, "Tty": False,
               "OpenStdin": False, "StdinOnce": False, "Env": None, "Cmd": None,
               "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None,
               "OnBuild": None, "Labels": None}


def _store(req):
    from ..image.store import ImageStore

    return ImageStore(req.engine.root)


def _created_float(created: str | None) -> float | None:
    """An image config's `created` (RFC 3339) as Unix time, None when it has none."""
    from ..cli_image import _created_epoch

    return _created_epoch(created)


def _epoch(created: str | None) -> int:
    return int(_created_float(created) or 0)


def _familiar(name: str) -> str:
    from ..image.reference import parse_reference

    return parse_reference(name).familiar()


def repo_tags(record) -> list[str]:
    """The image's tagged names as docker shows them (busybox:latest)."""
    return sorted(r.familiar() for r in record.references() if r.tag and not r.digest)


def repo_digests(record) -> list[str]:
    """repository@manifest-digest for each repository the image has a name in."""
    out = set()
    for ref in record.references():
        if ref.digest:
            out.add(f"{ref.familiar_name()}@{ref.digest}")
        elif record.manifest_digest:
            out.add(f"{ref.familiar_name()}@{record.manifest_digest}")
    return sorted(out)


def _labels(record) -> dict:
    return (record.config.get("config") or {}).get("Labels") or {}


def image_summary(record, containers: int = -1, shared: int = -1) -> dict:
    """GET /images/json's entry (docker 20.10's: a dangling image's names are
    <none>:<none> and <none>@<none>)."""
    tags, digests = repo_tags(record), repo_digests(record)
    if not tags and not digests:
        tags, digests = ["<none>:<none>"], ["<none>@<none>"]
    return {"Containers": containers, "Created": _epoch(record.created), "Id": record.id,
            "Labels": _labels(record) or None, "ParentId": "", "RepoDigests": digests,
            "RepoTags": tags, "SharedSize": shared, "Size": record.size,
            "VirtualSize": record.size}


def image_inspect(store, record) -> dict:
    """GET /images/{name}/json: moby's ImageInspect."""
    config = record.config
    layers = store.layer_paths(record)  # bottom first
    graph = {"UpperDir": layers[-1]} if layers else {}
    if len(layers) > 1:
        graph["LowerDir"] = ":".join(reversed(layers[:-1]))
    doc = {
        "Id": record.id,
        "RepoTags": repo_tags(record),
        "RepoDigests": repo_digests(record),
        "Parent": "",
        "Comment": config.get("comment", ""),
        "Created": rfc3339(_created_float(record.created)),
        "Container": "",
        "ContainerConfig": dict(CONFIG_ZERO),
        "DockerVersion": config.get("docker_version", ""),
        "Author": config.get("author", ""),
        "Config": {**CONFIG_ZERO, **(config.get("config") or {})},
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Size": record.size,
        "VirtualSize": record.size,
        "GraphDriver": {"Name": "overlay2", "Data": graph},
        "RootFS": {"Type": "layers", "Layers": list(record.diff_ids)},
        "Metadata": {"LastTagTime": rfc3339(record.added) if record.added else
                     "0001-01-01T00:00:00Z"},
    }
    if config.get("variant"):
        doc["Variant"] = config["variant"]
    return doc


def _history(config: dict) -> list[dict]:
    history = config.get("history")
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def image_history(store, record) -> list[dict]:
    """GET /images/{name}/history: one entry per history step, newest first; a step that
    made a layer has that layer's unpacked size; the top one carries the image's id and
    tags, the others <missing> (as docker shows images it pulled)."""
    from ..image.store import _layer_size

    sizes = [_layer_size(os.path.dirname(p)) for p in store.layer_paths(record)]
    steps = _history(record.config)
    if not steps:  # an image without history: a step per layer
        steps = [{"created": record.created or ""} for _ in sizes]
    out, layer = [], 0
    for step in steps:
        size = 0
        if not step.get("empty_layer") and layer < len(sizes):
            size = sizes[layer]
            layer += 1
        out.append({"Id": "<missing>", "Created": _epoch(step.get("created")),
                    "CreatedBy": step.get("created_by", ""), "Tags": None, "Size": size,
                    "Comment": step.get("comment", "")})
    out.reverse()
    if out:
        out[0]["Id"] = record.id
        out[0]["Tags"] = repo_tags(record) or None
    return out


# --- list and inspect ------------------------------------------------------------------------

def path_match(pattern: str, name: str) -> bool:
    """Go's path.Match: shell patterns whose * and ? do not cross a /."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                return False
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(out), name) is not None


def familiar_match(pattern: str, name: str) -> bool:
    """docker's reference.FamiliarMatch: the pattern against the familiar name with its
    tag, else without it."""
    if path_match(pattern, name):
        return True
    bare = name.split("@")[0]
    if ":" in bare.rsplit("/", 1)[-1]:
        bare = bare.rsplit(":", 1)[0]
    return path_match(pattern, bare)


def _summary_if_passes(record, filters: dict, marks: dict) -> dict | None:
    """The image's summary if it passes docker's image filters (moby's Images())."""
    if "label" in filters and not match_labels(filters["label"], _labels(record)):
        return None
    created = _created_float(record.created) or 0
    if "before" in filters and not all(created < m for m in marks["before"]):
        return None
    if "since" in filters and not all(created > m for m in marks["since"]):
        return None
    tags, digests = repo_tags(record), repo_digests(record)
    if "reference" in filters:
        patterns = filters["reference"]
        tags = [t for t in tags if any(familiar_match(p, t) for p in patterns)]
        digests = [d for d in digests if any(familiar_match(p, d) for p in patterns)]
    dangling_only = "dangling" in filters and bool_filter(filters["dangling"], "dangling")
    if not tags and not digests:
        if "reference" in filters or ("dangling" in filters and not dangling_only):
            return None
    elif dangling_only and tags:
        return None
    doc = image_summary(record)
    if tags or digests:
        doc["RepoTags"], doc["RepoDigests"] = tags, digests
    return doc


def list_images(req):
    filters = check_filters(req.filters(), IMAGE_FILTERS)
    with _store(req) as store:
        marks = {}
        for key in ("before", "since"):
            for value in filters.get(key, []):
                marks.setdefault(key, []).append(
                    _created_float(_get(store, value).created) or 0)
        docs = [_summary_if_passes(r, filters, marks) for r in store.images()]
    return [d for d in docs if d is not None]


def _get(store, name: str):
    """An image, or docker's 404 (`No such image: NAME`)."""
    try:
        return store.get(name)
    except NotFound:
        raise ApiError(404, f"No such image: {name}") from None


def _not_found(e: NotFound) -> ApiError:
    """The store's `no such image: X` as docker words it."""
    text = str(e)
    return ApiError(404, text[:1].upper() + text[1:])


def inspect_image(req):
    with _store(req) as store:
        return image_inspect(store, _get(store, req.params["name"]))


def history(req):
    with _store(req) as store:
        return image_history(store, _get(store, req.params["name"]))


# --- pull and import ----------------------------------------------------------------------

def _credentials(req, registry: str) -> dict | None:
    """X-Registry-Auth (base64url JSON of docker's AuthConfig) for the pull's registry."""
    header = req.headers.get("X-Registry-Auth")
    if not header:
        return None
    from ..image.registry import Credentials

    try:
        doc = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, TypeError):
        raise ApiError(400, "invalid X-Registry-Auth header") from None
    if not isinstance(doc, dict) or not (doc.get("username") or doc.get("identitytoken") or
                                         doc.get("registrytoken")):
        return None
    return {registry: Credentials(doc.get("username") or "", doc.get("password") or "",
                                  "X-Registry-Auth", doc.get("registrytoken") or "",
                                  doc.get("identitytoken") or "")}


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _bar(current: int, total: int | None) -> str:
    """docker's progress text: `[=====>     ]  1.2MB/4.5MB`."""
    from ..cli_image import human_size

    if not total:
        return f"{human_size(current)}"
    width = 50
    filled = min(width, int(width * current / total))
    arrow = "=" * max(0, filled - 1) + (">" if filled < width else "=")
    return f"[{arrow.ljust(width)}] {human_size(current):>8}/{human_size(total)}"


class StreamProgress:
    """registry.Progress as docker's pull messages, put on a queue. The first blob is the
    image's config (docker shows no line for it)."""

    def __init__(self, out: queue.Queue) -> None:
        self.out = out
        self.blobs = 0
        self.layer = ""
        self.total: int | None = None
        self.current = 0
        self.shown = 0.0
        self.layers: list[tuple[str, bool]] = []  # (id, fetched)
        self.announced = False
        self.image_present = False

    def put(self, doc: dict) -> None:
        self.out.put(("line", doc))

    def start(self, digest: str, size: int | None) -> None:
        self.blobs += 1
        self.layer, self.total, self.current = _short(digest), size, 0
        self.announced = False

    def _announce(self) -> None:
        """"Pulling fs layer", once the layer turns out to be fetched (one the store has
        is only "Already exists")."""
        if not self.announced and self.blobs > 1:
            self.announced = True
            self.put({"status": "Pulling fs layer", "progressDetail": {}, "id": self.layer})

    def advance(self, nbytes: int) -> None:
        self._announce()
        self.current += nbytes
        now = time.monotonic()
        if self.blobs > 1 and now - self.shown >= 0.1:
            self.shown = now
            detail = {"current": self.current}
            if self.total:
                detail["total"] = self.total
            self.put({"status": "Downloading", "progressDetail": detail,
                      "progress": _bar(self.current, self.total), "id": self.layer})

    def finish(self, status: str) -> None:
        if self.blobs <= 1:
            # the config: when the store has it, it has the image, and docker shows no
            # line for its layers
            self.image_present = status == "already present"
            return
        if status == "already present":
            self.layers.append((self.layer, False))
            if not self.image_present:
                self.put({"status": "Already exists", "progressDetail": {}, "id": self.layer})
        elif status == "done":
            self._announce()
            self.layers.append((self.layer, True))
            self.put({"status": "Download complete", "progressDetail": {}, "id": self.layer})


def _pull_reference(image: str, tag: str | None) -> str:
    if not image:
        raise ApiError(400, "fromImage or fromSrc is required")
    if tag:
        if tag.startswith("sha256:"):
            return f"{image}@{tag}"
        last = image.rsplit("/", 1)[-1]
        if "@" in image or ":" in last:
            return image  # docker: a tag in fromImage wins over the tag parameter
        return f"{image}:{tag}"
    return image


def pull(req, image: str, tag: str | None) -> Any:
    """docker pull: the progress stream, or an HTTP error when nothing was written yet."""
    from ..image import registry
    from ..image.reference import parse_reference

    text = _pull_reference(image, tag)
    ref = parse_reference(text)
    events: queue.Queue = queue.Queue()
    progress = StreamProgress(events)
    credentials = _credentials(req, ref.registry)
    platform = req.q("platform") or None
    root = req.engine.root
    with _store(req) as store:  # docker's "up to date": the name already had that image
        try:
            before = store.get(str(ref)).id
        except NotFound:
            before = None

    def run() -> None:
        from ..image.store import ImageStore

        try:
            with ImageStore(root) as store:
                record = registry.pull(store, ref, platform=platform, progress=progress,
                                       config=registry.load_config(None),
                                       credentials=credentials)
            events.put(("done", (record, record.id != before)))
        except BaseException as e:  # noqa: BLE001 - handed to the response
            events.put(("error", e))

    thread = threading.Thread(target=run, name="minirun-api-pull", daemon=True)
    thread.start()
    kind, value = events.get()
    if kind == "error":
        thread.join()
        raise value
    shown = ref.familiar()
    header = {"status": f"Pulling from {ref.repository}",
              "id": ref.tag or ref.digest or "latest"}

    def lines():
        try:
            yield header
            k, v = kind, value
            while True:
                if k == "line":
                    yield v
                elif k == "error":
                    message = str(v) if isinstance(v, MiniRunError) else \
                        f"{type(v).__name__}: {v}"
                    yield {"errorDetail": {"message": message}, "error": message}
                    return
                else:
                    record, newer = v
                    for layer, new in progress.layers:
                        if new:
                            yield {"status": "Pull complete", "progressDetail": {},
                                   "id": layer}
                    yield {"status": f"Digest: {record.manifest_digest}"}
                    news = "Downloaded newer image for" if newer else \
                        "Image is up to date for"
                    yield {"status": f"Status: {news} {shown}"}
                    return
                k, v = events.get()
        finally:
            thread.join()

    return json_lines(lines())


def import_image(req, source: str, repo: str | None, tag: str | None):
    """docker import: fromSrc=- with the tarball as the body; the new image's id as
    docker's one status line."""
    from ..image import archive

    if source != "-":
        raise ApiError(501, "minirun imports only a tarball sent in the request "
                            "(fromSrc=-), not one fetched from a URL")
    name = None
    if repo:
        name = _pull_reference(repo, tag or "latest")
    cmd = None
    for change in req.query.get("changes", []):
        verb, _, arg = change.strip().partition(" ")
        if verb.upper() != "CMD":
            raise ApiError(501, f"import --change {verb.upper()}: minirun's import takes "
                                "only CMD")
        cmd = archive.parse_cmd(arg.strip())
    with _store(req) as store:
        record = archive.import_rootfs(store, req.body_file(), name, cmd=cmd)
    return json_lines([{"status": record.id}])


def create_image(req):
    """POST /images/create: fromImage (+tag) pulls, fromSrc imports."""
    if req.q("fromSrc"):
        return import_image(req, req.q("fromSrc"), req.q("repo"), req.q("tag"))
    image, tag = req.q("fromImage") or "", req.q("tag") or ""
    if image and not tag and "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
        raise ApiError(501, "pulling every tag of a repository (docker pull -a) is not "
                            "supported by minirun: name a tag")
    return pull(req, image, tag)


# --- tag, remove, prune ---------------------------------------------------------------------

def tag_image(req):
    repo = req.q("repo")
    if not repo:
        raise ApiError(400, "repository name (repo) is required")
    target = _pull_reference(repo, req.q("tag") or "latest")
    with _store(req) as store:
        store.tag(_get(store, req.params["name"]), target)
    return Response(201, b"")


def delete_image(req):
    """DELETE /images/{name}: [{"Untagged": name}, ..., {"Deleted": id}]. As moby's: when
    the last tag of a repository goes, the image's digest names in that repository go
    with it, and an image left without names is deleted (unless a container uses it)."""
    from ..image.reference import parse_reference

    name, force = req.params["name"], req.qbool("force")
    with _store(req) as store:
        record = _get(store, name)
        image_id = record.id
        if not force and len(record.names) > 1 and not _named_by(record, name):
            # by id: docker removes every tag of one repository, and refuses (409) an
            # image several repositories name
            if len({r.name for r in record.references()}) > 1:
                raise ApiError(409, f"conflict: unable to delete {record.short_id} (must be "
                                    "forced) - image is referenced in multiple "
                                    "repositories")
            if not record.containers:
                force = True
        result = store.remove(name, force=force)
        if result.untagged and not result.deleted:
            removed = parse_reference(result.untagged[-1])
            left = store.get(image_id)
            refs = left.references()
            if removed.digest is None and not any(
                    r.name == removed.name and r.digest is None for r in refs):
                for ref in refs:
                    if ref.name == removed.name and ref.digest is not None:
                        store.untag(str(ref))
                        result.untagged.append(str(ref))
                left = store.get(image_id)
            if not left.names and not left.containers:
                result.deleted += store.remove(image_id).deleted
    out = [{"Untagged": _familiar(n)} for n in result.untagged]
    out += [{"Deleted": i} for i in result.deleted]
    return out


def _named_by(record, text: str) -> bool:
    """`text` is one of the image's names (not its id or an id prefix)."""
    from ..image.reference import parse_reference

    try:
        return str(parse_reference(text)) in record.names
    except MiniRunError:
        return False


def prune_images(req):
    """POST /images/prune: dangling images (dangling=false: every image no container
    uses); until= and label= as docker's. Each image's names come first in the report
    (`untagged: busybox:latest`, then `deleted: sha256:...`)."""
    filters = check_filters(req.filters(), PRUNE_FILTERS)
    all_images = "dangling" in filters and not bool_filter(filters["dangling"], "dangling")
    until = parse_until(filters["until"][0]) if filters.get("until") else None
    with _store(req) as store:
        records = {r.id: r for r in store.images()}
        keep = set()
        for record in records.values():
            created = _created_float(record.created) or 0
            if (until is not None and created >= until) or \
                    ("label" in filters and not match_labels(filters["label"],
                                                             _labels(record))):
                keep.add(record.id)
        if keep:  # image by image, sparing those the filters keep
            deleted, reclaimed = [], 0
            for record in records.values():
                if record.id in keep or record.containers or \
                        (record.names and not all_images):
                    continue
                deleted += store.remove(record.id, force=True).deleted
                reclaimed += record.size
        else:
            result = store.prune(all_images=all_images)
            deleted, reclaimed = result.images, result.reclaimed
    report = []
    for image_id in deleted:
        names = records[image_id].names if image_id in records else []
        report += [{"Untagged": _familiar(n)} for n in names]
        report.append({"Deleted": image_id})
    return {"ImagesDeleted": report or None, "SpaceReclaimed": reclaimed}


def parse_until(text: str) -> float:
    """docker's `until`: a Unix time (seconds, fractions allowed), an RFC 3339 time, or a
    duration before now (10m, 1h30m)."""
    from ..cli_image import _created_epoch

    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    epoch = _created_epoch(text)
    if epoch is not None:
        return epoch
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", text)
    if parts and "".join(n + u for n, u in parts) == text:
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u]
                      for n, u in parts)
        return time.time() - seconds
    raise ApiError(400, f"invalid filter 'until={text}'")


# --- load and save -------------------------------------------------------------------------

def load_images(req):
    """POST /images/load: the archive is the body; docker's `Loaded image:` lines, an
    error as the stream's errorDetail (docker answers 200 and reports in the stream)."""
    from ..image import archive

    try:
        with _store(req) as store:
            loaded = archive.load_with_names(store, req.body_file())
    except MiniRunError as e:
        return json_lines([{"errorDetail": {"message": str(e)}, "error": str(e)}])
    lines = []
    for record, names in loaded:
        for name in names:
            lines.append({"stream": f"Loaded image: {_familiar(name)}\n"})
        if not names:
            lines.append({"stream": f"Loaded image ID: {record.id}\n"})
    return json_lines(lines)


def _save(req, names: list[str]):
    from ..image import archive

    if not names:
        raise ApiError(400, "no image names given")
    root = req.engine.root
    with _store(req) as store:
        try:
            archive.select_for_save(store, names)  # a 404 before any byte
        except NotFound as e:
            raise _not_found(e) from None

    def write(out) -> None:
        from ..image.store import ImageStore

        with ImageStore(root) as store:
            archive.save(store, names, out)

    return Stream(written_chunks(write), content_type="application/x-tar")


def save_image(req):
    return _save(req, [req.params["name"]])


def save_images(req):
    return _save(req, req.query.get("names", []))


ROUTES = [
    ("GET", "/images/json", list_images),
    ("POST", "/images/create", create_image),
    ("POST", "/images/load", load_images),
    ("POST", "/images/prune", prune_images),
    ("GET", "/images/get", save_images),
    ("GET", "/images/{name:path}/json", inspect_image),
    ("GET", "/images/{name:path}/history", history),
    ("GET", "/images/{name:path}/get", save_image),
    ("POST", "/images/{name:path}/tag", tag_image),
    ("DELETE", "/images/{name:path}", delete_image),
]
