"""GET /system/df: what images, containers and volumes take on disk, as moby's
types.DiskUsage (the docker CLI's `system df` computes its table from it)."""

from __future__ import annotations

import os

from .images import image_summary
from .volumes import usage as volume_usage


def layer_sizes(store) -> dict[str, int]:
    """Each unpacked layer's size by chain id."""
    from ..image.store import _layer_size

    out = {}
    for name in sorted(os.listdir(store.layers_dir)):
        if not name.startswith("."):
            out["sha256:" + name] = _layer_size(os.path.join(store.layers_dir, name))
    return out


def disk_usage(req):
    from ..image.store import ImageStore
    from .containers import summary

    engine = req.engine
    with ImageStore(engine.root) as store:
        records = store.images()
        sizes = layer_sizes(store)
    users: dict[str, int] = {}
    for record in records:
        for chain in set(record.chain_ids):
            users[chain] = users.get(chain, 0) + 1
    images = []
    for record in records:
        shared = sum(sizes.get(c, 0) for c in set(record.chain_ids) if users[c] > 1)
        images.append(image_summary(record, containers=len(record.containers), shared=shared))
    containers = [summary(engine, rec, size=True) for rec in engine.records()]
    return {"LayersSize": sum(sizes.values()), "Images": images, "Containers": containers,
            "Volumes": volume_usage(engine), "BuildCache": []}


ROUTES = [
    ("GET", "/system/df", disk_usage),
]
