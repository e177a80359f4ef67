"""Images: a content-addressed store, archives (docker-save, OCI layout, rootfs tarballs),
safe layer unpacking and overlay snapshots for containers' root filesystems.

Nothing here is on minirun-oci's start path; the submodules import what they need when they
are imported, so `import minirun.image` stays cheap.
"""

from __future__ import annotations

from ..errors import MiniRunError


class InvalidImage(MiniRunError):
    """An image, archive, manifest, config or layer is malformed, hostile or fails its
    digest check."""
