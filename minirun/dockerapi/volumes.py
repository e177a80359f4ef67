"""Volumes: list, create, inspect, remove and prune, as Docker Engine API 1.41 answers
them, over minirun's named volumes (<root>/volumes/NAME/_data, minirun/cli_volume.py).

The document is moby's volume.Volume; prune in API 1.41 removes every volume no
container uses (anonymous-only pruning came with 1.42)."""

from __future__ import annotations

import os

from ..cli_volume import (
    _remove,
    create_volume,
    volume_info,
    volume_users,
    volumes_dir,
)
from ..errors import NotFound
from ._objects import bool_filter, check_filters, match, match_labels
from .server import ApiError, Response

VOLUME_FILTERS = ("dangling", "driver", "label", "name")
PRUNE_FILTERS = ("label",)


def names(root: str) -> list[str]:
    top = volumes_dir(root)
    return sorted(n for n in (os.listdir(top) if os.path.isdir(top) else [])
                  if os.path.isdir(os.path.join(top, n, "_data")))


def volume_doc(root: str, name: str) -> dict:
    doc = volume_info(root, name)
    doc["Labels"] = doc["Labels"] or None
    doc["Options"] = doc["Options"] or None
    return doc


def _get(root: str, name: str) -> dict:
    try:
        return volume_doc(root, name)
    except NotFound:
        raise ApiError(404, f"get {name}: no such volume") from None


def list_volumes(req):
    filters = check_filters(req.filters(), VOLUME_FILTERS)
    root = req.engine.root
    users = volume_users(req.engine) if "dangling" in filters else {}
    out = []
    for name in names(root):
        doc = volume_doc(root, name)
        if "name" in filters and not match(filters["name"], name):
            continue
        if "driver" in filters and "local" not in filters["driver"]:
            continue
        if "label" in filters and not match_labels(filters["label"], doc["Labels"]):
            continue
        if "dangling" in filters and \
                bool_filter(filters["dangling"], "dangling") == bool(users.get(name)):
            continue
        out.append(doc)
    return {"Volumes": out, "Warnings": None}


def create(req):
    body = req.json()
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise ApiError(501, f"volume driver {driver!r} is not supported by minirun: only "
                            "local")
    if body.get("DriverOpts"):
        raise ApiError(501, f"volume option {next(iter(body['DriverOpts']))!r} is not "
                            "supported by minirun's local driver")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ApiError(400, "Labels: want a map of strings to strings")
    name = create_volume(req.engine, body.get("Name") or None, labels)
    return Response(201, volume_doc(req.engine.root, name))


def inspect(req):
    return _get(req.engine.root, req.params["name"])


def remove(req) -> None:
    """DELETE /volumes/{name}: 204; with force, a missing volume too."""
    engine, name = req.engine, req.params["name"]
    try:
        volume_info(engine.root, name)
    except NotFound:
        if req.qbool("force"):
            return
        raise ApiError(404, f"get {name}: no such volume") from None
    users = volume_users(engine).get(name)
    if users:
        raise ApiError(409, f"remove {name}: volume is in use - [{', '.join(users)}]")
    _remove(engine, name)


def prune(req):
    from ..dockerview import tree_size

    filters = check_filters(req.filters(), PRUNE_FILTERS)
    engine = req.engine
    users = volume_users(engine)
    deleted, reclaimed = [], 0
    for name in names(engine.root):
        if users.get(name):
            continue
        if "label" in filters and not match_labels(filters["label"],
                                                   volume_doc(engine.root, name)["Labels"]):
            continue
        size = tree_size(os.path.join(volumes_dir(engine.root), name, "_data"))
        _remove(engine, name)
        deleted.append(name)
        reclaimed += size
    return {"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed}


def usage(engine) -> list[dict]:
    """/system/df's volumes: each with UsageData (bytes, how many containers use it)."""
    from ..dockerview import tree_size

    users = volume_users(engine)
    out = []
    for name in names(engine.root):
        doc = volume_doc(engine.root, name)
        doc["UsageData"] = {"Size": tree_size(os.path.join(volumes_dir(engine.root), name,
                                                           "_data")),
                            "RefCount": len(users.get(name, []))}
        out.append(doc)
    return out


ROUTES = [
    ("GET", "/volumes", list_volumes),
    ("POST", "/volumes/create", create),
    ("POST", "/volumes/prune", prune),
    ("GET", "/volumes/{name}", inspect),
    ("DELETE", "/volumes/{name}", remove),
]
