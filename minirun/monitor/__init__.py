"""Observability: what minirun shows about its containers and the host (ARCHITECTURE.md,
"Observability"): cgroup and netns samples, stats, events, health checks, metrics, traces
and the host audit. Nothing here is imported on the container start path but trace.py
(standard library only: its spans are recorded there when tracing is on).
"""
