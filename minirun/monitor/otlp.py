"""The recorded spans (minirun.monitor.trace) sent over OTLP/HTTP with the OpenTelemetry
SDK: the optional extra `trace` (pip install 'minirun[trace]'), imported only here, only
when tracing is on and OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set.

The SDK's own variables apply (endpoint, headers, timeout, compression, certificates);
OTEL_EXPORTER_OTLP_PROTOCOL (or ..._TRACES_PROTOCOL) must be http/protobuf, the default:
grpc and http/json are refused by name. Each span keeps its recorded start and end (on
the wall clock: the monotonic times placed with trace.ANCHOR) and its parent; the
resource has service.name=minirun, and the spans carry the container's id and image.
A failure is one line on stderr, never the verb's failure.
"""

from __future__ import annotations

import os
import sys

PROTOCOL = "http/protobuf"


def _warn(message: str) -> None:
    sys.stderr.write(f"minirun: trace: {message}\n")


def export(spans: list[list], anchor: tuple[int, int], service: str = "minirun") -> bool:
    """Send the spans to the configured endpoint; True if the collector took them."""
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or PROTOCOL).strip()
    if protocol != PROTOCOL:
        _warn(f"OTLP protocol {protocol!r} is not supported, only {PROTOCOL}: spans not sent")
        return False
    try:
        import logging

        from opentelemetry import trace as otel_trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError as e:
        _warn(f"OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is missing "
              f"({e.name}): pip install 'minirun[trace]'")
        return False
    from .. import __version__
    from .trace import ordered

    # the exporter logs each failed attempt; our one line says it
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    resource = Resource.create({"service.name": service, "service.version": __version__,
                                "host.name": os.uname().nodename,
                                "process.pid": os.getpid(),
                                "process.executable.name": os.path.basename(sys.argv[0])})
    collected = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer("minirun.monitor.trace", __version__)
    wall, mono = anchor
    made: dict = {}
    for _, (name, start, end, sid, parent, attrs) in ordered(spans):
        context = otel_trace.set_span_in_context(made[parent]) if parent in made else None
        span = tracer.start_span(name, context=context, start_time=wall + start - mono,
                                 attributes={k: v for k, v in attrs.items()
                                             if isinstance(v, (str, int, float, bool))})
        made[sid] = span
    for _, s in ordered(spans):
        made[s[3]].end(end_time=wall + s[2] - mono)
    exporter = OTLPSpanExporter()
    try:
        result = exporter.export(collected.get_finished_spans())
    finally:
        exporter.shutdown()
        provider.shutdown()
    if result is not SpanExportResult.SUCCESS:
        endpoint = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        _warn(f"sending {len(spans)} spans to {endpoint} failed")
        return False
    return True
