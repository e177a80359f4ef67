"""docker's events from the engine's events table (EVENTS-CONTRACT.md): a row as docker's
JSON event (API 1.41's events.Message), docker's filters, --since/--until in docker's
forms, and the poll that follows the table. `minirun events` prints them; the Docker
Engine API serves the same messages on /events.

Container rows keep their historical types (created, started, stopped, deleted: the CRI
reads them) and show as docker's create, start, die, destroy; the others are recorded
with docker's action name. A row's Actor.Attributes are its attrs (strings), for a
container also its name, image and labels: from the row (created and deleted rows carry
them), else from the container's record, else from the last row of it that has them (a
removed container's deleted row).

Docker's semantics kept (moby daemon/events/filter.go, api/types/filters, docker/cli
timetypes): values of one filter key are ORed, keys ANDed, except label, whose values
must all match; container=, network=, volume= match the actor's id or name by prefix
and apply to every event type (container=foo keeps only events whose actor is foo);
image= matches an image event's id or name, or a container's image, with or without the
tag; event=health_status (exec_create, exec_start) matches its actions with the suffix.
Without --since only new events; --since and --until include their bounds; a Go
duration counts back from now to the whole second.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable, Iterator

from ..errors import InvalidArgument
from ..gotemplate import GoMap

# the historical container types, as docker names them
LEGACY_ACTIONS = {"created": "create", "started": "start", "stopped": "die",
                  "deleted": "destroy"}
# the actions whose attribute docker shows in the action itself
ACTION_SUFFIX = {"health_status": "status", "exec_create": "command",
                 "exec_start": "command"}
FILTER_KEYS = ("config", "container", "daemon", "event", "image", "label", "network",
               "node", "plugin", "scope", "secret", "service", "type", "volume")
# the keys matched against the actor's id or name by prefix (docker's fuzzyMatchName)
NAME_KEYS = ("config", "container", "daemon", "network", "node", "plugin", "secret",
             "service", "volume")
POLL_SECONDS = 0.2
BATCH = 1000


class BadEventsQuery(InvalidArgument):
    """A filter or a time docker would refuse: one line, exit status 125 as a usage
    error."""

    exit_code = 125


# --- rows -> docker's messages ---------------------------------------------------------------

class EventMessage(dict):
    """docker's events.Message: its JSON (the dict: status, id, from, Type, Action, Actor,
    scope, time, timeNano) for `--format json` and the API; its Go field names (Status,
    ID, From, Scope, Time, TimeNano) for templates, as docker's CLI renders the struct."""

    go_type = "events.Message"

    @property
    def Status(self) -> str:  # Go's field names
        return self.get("status", "")

    @property
    def ID(self) -> str:
        return self.get("id", "")

    @property
    def From(self) -> str:
        return self.get("from", "")

    @property
    def Scope(self) -> str:
        return self["scope"]

    @property
    def Time(self) -> int:
        return self["time"]

    @property
    def TimeNano(self) -> int:
        return self["timeNano"]


class ContainerNames:
    """A container's name, image and labels by id, for its events: its record, else the
    last event of it that kept them (a removed container's deleted row). Cached: one
    query per container."""

    def __init__(self, db) -> None:
        self.db = db
        self.cache: dict[str, dict] = {}

    def __call__(self, cid: str) -> dict:
        known = self.cache.get(cid)
        if known is not None:
            return known
        row = self.db.execute("SELECT name, image, options FROM containers WHERE id = ?",
                              (cid,)).fetchone()
        if row is not None:
            try:
                labels = json.loads(row[2]).get("labels") or {}
            except (TypeError, ValueError):
                labels = {}
            info = {"name": row[0], "image": row[1], "labels": labels}
        else:
            row = self.db.execute(
                "SELECT attrs FROM events WHERE container = ? AND type IN ('created',"
                " 'deleted') AND attrs IS NOT NULL ORDER BY seq DESC LIMIT 1",
                (cid,)).fetchone()
            info = json.loads(row[0]) if row else {}
        if len(self.cache) >= 4096:  # a stream followed for days: keep it small
            self.cache.clear()
        self.cache[cid] = info
        return info

    def renamed(self, cid: str, name: str) -> None:
        if cid in self.cache:
            self.cache[cid] = {**self.cache[cid], "name": name}


def to_message(row: dict, names: Callable[[str], dict]) -> EventMessage | None:
    """An events-table row (Engine.events_after's dict) as docker's message; None for a
    row docker has no event for (a CRI pod sandbox's)."""
    attrs = dict(row.get("attrs") or {})
    if attrs.pop("sandbox", None):
        return None
    type_ = attrs.pop("object", None) or "container"
    action = LEGACY_ACTIONS.get(row["type"], row["type"]) if type_ == "container" \
        else row["type"]
    suffix_key = ACTION_SUFFIX.get(action)
    if suffix_key and suffix_key in attrs:
        action = f"{action}: {attrs.pop(suffix_key)}"
    actor_id = row["container"]
    if type_ == "container":
        if action == "die":
            attrs.pop("reason", None)
            code = attrs.pop("exit_code", None)
            if code is not None:
                attrs.setdefault("exitCode", code)
        own = {k: attrs.pop(k) for k in ("name", "image", "labels") if k in attrs}
        info = {**names(actor_id), **own}
        if action == "rename" and "name" in own:
            getattr(names, "renamed", lambda *_: None)(actor_id, own["name"])
        attributes = GoMap((str(k), _text(v)) for k, v in (info.get("labels") or {}).items())
        for key in ("image", "name"):
            if info.get(key):
                attributes[key] = info[key]
    else:
        attributes = GoMap()
    attributes.update({k: _text(v) for k, v in attrs.items()})
    ns = row["time_ns"]
    msg = EventMessage()
    if type_ in ("container", "image"):  # docker's deprecated fields
        msg["status"] = action
        msg["id"] = actor_id
        if type_ == "container" and attributes.get("image"):
            msg["from"] = attributes["image"]
    msg.update({"Type": type_, "Action": action,
                "Actor": {"ID": actor_id, "Attributes": attributes},
                "scope": "local", "time": ns // 1_000_000_000, "timeNano": ns})
    return msg


def _text(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def text_line(msg: dict) -> str:
    """docker's default line: `TIME TYPE ACTION ID (k=v, ...)`, attributes by key."""
    attributes = msg["Actor"]["Attributes"]
    line = f"{rfc3339_nano(msg['timeNano'])} {msg['Type']} {msg['Action']} " \
        f"{msg['Actor']['ID']}"
    if attributes:
        line += " (" + ", ".join(f"{k}={attributes[k]}" for k in sorted(attributes)) + ")"
    return line


def rfc3339_nano(ns: int) -> str:
    """docker's RFC3339NanoFixed in local time: 2026-12-06T12:00:00.123456789Z."""
    sec, frac = divmod(ns, 1_000_000_000)
    local = datetime.datetime.fromtimestamp(sec).astimezone()
    offset = local.utcoffset() or datetime.timedelta(0)
    if offset:
        minutes = int(offset.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    else:
        zone = "Z"
    return f"{local:%Y-%m-%dT%H:%M:%S}.{frac:09d}{zone}"


# --- filters -----------------------------------------------------------------------------------

def parse_filters(values) -> dict[str, list[str]]:
    """`--filter key=value`, repeatable: {key: [values]}; BadEventsQuery naming a value
    without `=` or a key docker's events do not have."""
    out: dict[str, list[str]] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq:
            raise BadEventsQuery(f'invalid argument "{item}" for "-f, --filter" flag: '
                                 "bad format of filter (expected name=value)")
        key = key.strip().lower()
        if key not in FILTER_KEYS:
            raise BadEventsQuery(f"invalid filter '{key}'")
        out.setdefault(key, []).append(value)
    return out


def matches(msg: dict, filters: dict[str, list[str]]) -> bool:
    """docker's Filter.Include."""
    actor = msg["Actor"]
    attributes = actor["Attributes"]
    events = filters.get("event")
    if events:
        fuzzy = any(e in ("health_status", "exec_create", "exec_start") for e in events)
        if not (msg["Action"] in events or
                fuzzy and any(msg["Action"].startswith(e) for e in events)):
            return False
    if not _exact(filters, "type", msg["Type"]) or \
            not _exact(filters, "scope", msg.get("scope", "")):
        return False
    for key in NAME_KEYS:
        if filters.get(key) and not (_fuzzy(filters, key, actor["ID"]) or
                                     _fuzzy(filters, key, attributes.get("name", ""))):
            return False
    if filters.get("image"):
        name = attributes.get("name" if msg["Type"] == "image" else "image", "")
        if not any(_exact(filters, "image", v) for v in
                   (actor["ID"], name, _strip_tag(actor["ID"]), _strip_tag(name))):
            return False
    for want in filters.get("label", []):  # every label filter must match
        key, eq, value = want.partition("=")
        if key not in attributes or eq and attributes[key] != value:
            return False
    return True


def _exact(filters: dict, key: str, source: str) -> bool:
    values = filters.get(key)
    return not values or source in values


def _fuzzy(filters: dict, key: str, source: str) -> bool:
    values = filters.get(key)
    return not values or source in values or \
        any(source.startswith(v) for v in values if source)


def _strip_tag(image: str) -> str:
    """An image reference without its tag, as docker names it (busybox:1 -> busybox)."""
    from ..image.reference import parse_reference

    try:
        return parse_reference(image).familiar_name()
    except Exception:  # noqa: BLE001 - not a reference (an id): itself, as docker
        return image


# --- times -------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
          "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})"
                   r"(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?"
                   r"(Z|z|[+-]\d{2}:\d{2})?")


def parse_duration(text: str) -> int | None:
    """A Go duration (10m, 1h30m, 1.5s, -2h) in nanoseconds; None if it is not one."""
    sign = -1 if text.startswith("-") else 1
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(body):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        return None
    return sign * round(total)


def parse_time(value: str, now_ns: int | None = None) -> int:
    """--since/--until as docker's CLI reads them (timetypes.GetTimestamp), in
    nanoseconds since the epoch: a Go duration back from now (to the second), RFC3339
    with or without seconds, fraction or zone (without a zone: local time), a date, or
    unix seconds with a fraction."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    text = value.strip()
    ns = parse_duration(text)
    if text != "0" and ns is not None:
        return (now_ns - ns) // 1_000_000_000 * 1_000_000_000
    m = _DATE.fullmatch(text)
    if m is not None:
        try:
            return _date_ns(m, now_ns)
        except ValueError as e:
            raise BadEventsQuery(f"failed to parse value as time or duration: {value!r}: "
                                 f"{e}") from None
    sec, dot, frac = text.partition(".")
    if "-" not in text and sec.lstrip("+").isdigit() and \
            (not dot or frac.isdigit() and len(frac) <= 9):
        return int(sec) * 1_000_000_000 + (int(frac.ljust(9, "0")) if dot else 0)
    raise BadEventsQuery(f"failed to parse value as time or duration: {value!r}")


def _date_ns(m: re.Match, now_ns: int) -> int:
    year, month, day, hour, minute, second, frac, zone = m.groups()
    if zone is None:  # the caller's zone, as its offset is now (Go's FixedZone)
        tz = datetime.datetime.fromtimestamp(now_ns // 1_000_000_000).astimezone().tzinfo
    elif zone in ("Z", "z"):
        tz = datetime.UTC
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        delta = datetime.timedelta(hours=hours, minutes=minutes)
        tz = datetime.timezone(delta if zone[0] == "+" else -delta)
    when = datetime.datetime(int(year), int(month), int(day), int(hour or 0),
                             int(minute or 0), int(second or 0), tzinfo=tz)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    delta = when - epoch
    whole = (delta.days * 86_400 + delta.seconds) * 1_000_000_000
    return whole + (int(frac[:9].ljust(9, "0")) if frac else 0)


def check_window(since_ns: int | None, until_ns: int | None) -> None:
    if since_ns is not None and until_ns is not None and until_ns < since_ns:
        raise BadEventsQuery(f"`since` time ({rfc3339_nano(since_ns)}) cannot be after "
                             f"`until` time ({rfc3339_nano(until_ns)})")


# --- reading and following ---------------------------------------------------------------------

def last_seq(db) -> int:
    row = db.execute("SELECT MAX(seq) FROM events").fetchone()
    return row[0] or 0


def rows_after(db, seq: int, since_ns: int | None = None,
               limit: int = BATCH) -> list[dict]:
    """Rows after sequence number `seq` (and from `since_ns`), oldest first, as
    Engine.events_after gives them."""
    sql = "SELECT seq, time_ns, type, container, pod, attrs FROM events WHERE seq > ?"
    args: list = [seq]
    if since_ns is not None:
        sql += " AND time_ns >= ?"
        args.append(since_ns)
    rows = db.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
    return [{"seq": r[0], "time_ns": r[1], "type": r[2], "container": r[3], "pod": r[4],
             "attrs": json.loads(r[5]) if r[5] else {}} for r in rows]


def follow(db, since_ns: int | None = None, until_ns: int | None = None,
           filters: dict | None = None, poll: float = POLL_SECONDS,
           stopped: Callable[[], bool] = lambda: False) -> Iterator[EventMessage]:
    """docker's messages in the order they were recorded: from `since_ns` (None: only
    those recorded from now on), until `until_ns` (None: until `stopped()` says so;
    a time in the future is waited for). `db`: the engine's connection (Engine.db)."""
    filters = filters or {}
    check_window(since_ns, until_ns)
    seq = 0 if since_ns is not None or until_ns is not None else last_seq(db)
    names = ContainerNames(db)
    while not stopped():
        # past `until`: this read is the last (a row stamped before it may be committed
        # a moment after)
        done = until_ns is not None and time.time_ns() > until_ns
        rows = rows_after(db, seq, since_ns)
        for row in rows:
            seq = row["seq"]
            if until_ns is not None and row["time_ns"] > until_ns:
                continue  # recorded late, stamped early: later rows may still be in
            msg = to_message(row, names)
            if msg is not None and matches(msg, filters):
                yield msg
        if len(rows) == BATCH:
            continue
        if done:
            return
        wait = poll if until_ns is None else \
            min(poll, max(0.0, (until_ns - time.time_ns()) / 1e9) + 0.01)
        time.sleep(wait)
