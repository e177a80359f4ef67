"""JSON for the container start path without importing the json package.

`json` imports `re`, which imports `enum`, `functools` and `collections`: about 9 ms of
a ~60 ms container start. The C accelerator `_json` that json itself uses needs none of
them. Malformed input falls back to the json package, so errors read exactly as json's
(line and column); output is what json.dumps gives with its default separators.
"""

from __future__ import annotations

try:
    import _json
except ImportError:  # an interpreter without the accelerator: plain json
    _json = None


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str):
        raise ValueError(name)  # NaN and Infinity are not JSON; let json say so


_WS = " \t\n\r"
_scan = _json.make_scanner(_ScanContext()) if _json else None


def loads(text: str | bytes, parse_constant=None):
    """json.loads. NaN/Infinity never take the fast path; `parse_constant` decides
    what json does with them (json's default accepts them)."""
    if isinstance(text, bytes):
        text = text.decode()
    if _scan is not None:
        try:
            start = len(text) - len(text.lstrip(_WS))
            obj, end = _scan(text, start)
            if not text[end:].strip(_WS):
                return obj
        except Exception:  # noqa: BLE001 - any failure: json reports it properly below
            pass
    import json

    if parse_constant is None:
        return json.loads(text)
    return json.loads(text, parse_constant=parse_constant)


def _unencodable(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = (_json.make_encoder(None, _unencodable, _json.encode_basestring_ascii, None, ": ",
                              ", ", False, False, True) if _json else None)


def dumps(obj) -> str:
    if _encode is None:
        import json

        return json.dumps(obj)
    return "".join(_encode(obj, 0))


def fold_keys(obj: dict, names) -> None:
    """Rename, in place, the keys of ``obj`` that match one of ``names`` except for case.

    Go's encoding/json, so runc, matches an object key to a struct field exactly or else
    case-insensitively: ``"CPU"`` fills ``cpu``. An exact key keeps its name; when two
    keys land on one field the later wins. Maps (annotations, sysctl) keep their keys:
    call this for objects whose keys are field names only.
    """
    if all(key in names for key in obj):
        return
    # str.lower plus Go's one extra fold that reaches ASCII (U+017F, the long s).
    lower = {name.lower(): name for name in names}
    folded = {}
    for key, value in obj.items():
        name = key if key in names else lower.get(key.lower().replace("\u017f", "s"), key)
        folded.pop(name, None)
        folded[name] = value
    obj.clear()
    obj.update(folded)
