"""/proc/<pid>/mountinfo, parsed once for everyone (cgroups, mounts, info).

Format (proc(5)): id parent major:minor root mountpoint options [optional...] - fstype
source superoptions. Paths escape space, tab, newline and backslash as \\ooo octal.
"""

from __future__ import annotations


class Mount:
    __slots__ = ("root", "mountpoint", "options", "optional", "fstype", "source", "super_options")

    def __init__(self, fields: list[str], sep: int) -> None:
        self.root = unescape(fields[3])
        self.mountpoint = unescape(fields[4])
        self.options = fields[5]
        self.optional = fields[6:sep]  # shared:N, master:N, ...
        self.fstype = fields[sep + 1]
        self.source = unescape(fields[sep + 2]) if len(fields) > sep + 2 else ""
        self.super_options = fields[sep + 3] if len(fields) > sep + 3 else ""


def unescape(field: str) -> str:
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        octal = field[i + 1:i + 4]
        if field[i] == "\\" and len(octal) == 3 and all(c in "01234567" for c in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 2:
            continue
        mounts.append(Mount(fields, sep))
    return mounts


def read_text(path: str = "/proc/self/mountinfo") -> str:
    with open(path) as f:
        return f.read()


def read(path: str = "/proc/self/mountinfo") -> list[Mount]:
    return parse(read_text(path))


def fstype_at(path: str, mounts: list[Mount] | None = None) -> str | None:
    """The filesystem type mounted at `path` (the last mount there covers the others)."""
    found = None
    try:
        for m in mounts if mounts is not None else read():
            if m.mountpoint == path:
                found = m.fstype
    except OSError:
        return None
    return found
