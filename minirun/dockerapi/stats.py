"""GET /containers/{id}/stats: the HTTP glue over minirun/monitor/stats.py's
stats_stream(), which builds dockerd's documents (stream, stream=false, one-shot): one
JSON document a line, ending when the client goes away."""

from __future__ import annotations

from .server import Stream


def stats_stream(req, rec: dict, stream: bool, one_shot: bool) -> Stream:
    import json

    from ..monitor import stats as mstats

    def chunks():
        for doc in mstats.stats_stream(req.engine, rec, stream=stream, one_shot=one_shot):
            yield json.dumps(doc).encode() + b"\n"
            if req.client_gone():
                return

    return Stream(chunks())
