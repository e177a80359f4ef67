"""GET /events: docker's JSON events as a stream, with since, until and filters, read
from the engine's events table by minirun/monitor/events.py (the same messages `minirun
events` prints). Without until the stream follows new events until the client goes."""

from __future__ import annotations

from .server import ApiError, json_lines


def events(req):
    from ..monitor import events as ev

    filters = req.filters()
    for key in filters:
        if key not in ev.FILTER_KEYS:
            raise ApiError(400, f"invalid filter '{key}'")
    since = ev.parse_time(req.q("since")) if req.q("since") else None
    until = ev.parse_time(req.q("until")) if req.q("until") else None
    ev.check_window(since, until)
    return json_lines(ev.follow(req.engine.db, since, until, filters,
                                stopped=req.client_gone))


ROUTES = [
    ("GET", "/events", events),
]
