"""An image's JSON documents (indexes, manifests, configs) as untrusted input: one parser
for all of them, wherever they come from (an archive, a layout directory, a registry, the
store's blobs), and the media types an image config may have.

json's C scanner recurses once per nesting level: "[" * 100000 in a 200 KB manifest ends in
a RecursionError deep inside it. The nesting is counted on the raw bytes before json sees
them, so such a document is refused with one line whatever the interpreter's recursion
limit; real documents nest less than ten deep.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import MiniRunError
from . import InvalidImage

MAX_JSON_DEPTH = 64

MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CONFIG_MEDIA_TYPES = (MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG)

# A string (escapes included, so a quoted "[" or "\"" counts for nothing) or a bracket.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")


def nesting_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep arrays and objects nest in `data`, counting no further than `limit` + 1."""
    depth = deepest = 0
    for m in _TOKENS.finditer(data):
        c = m.group()[0]
        if c in _OPENERS:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif c != 0x22:  # '"': a string
            depth -= 1
    return deepest


def parse_json(data: bytes | str, what: str,
               error: type[MiniRunError] = InvalidImage) -> Any:
    """json.loads for a document from outside; anything wrong with it is one `error` line
    naming `what`."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        raise error(f"{what} nests arrays or objects more than {MAX_JSON_DEPTH} deep")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{what} is not valid JSON: {e}") from None
    except RecursionError:  # a backstop: the count above should have refused it
        raise error(f"{what} nests too deep to parse") from None


def check_config_media_type(media_type: Any, what: str) -> None:
    """Refuse a manifest whose config is not an image config: anything else (an artifact,
    a helm chart, a made-up type) would be run as if it were an image."""
    if media_type not in CONFIG_MEDIA_TYPES:
        raise InvalidImage(f"{what}: config media type {media_type!r} is not an image config "
                           f"(want {MEDIA_OCI_CONFIG} or {MEDIA_DOCKER_CONFIG})")
