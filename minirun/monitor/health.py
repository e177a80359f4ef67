"""Health check results: docker's state machine, kept in the engine's database.

The daemon runs the checks (daemon/health.py) and hands each result to record(); `ps`,
`inspect` and `ps --filter health=` read the table. A row (the `health` table: id,
status, failing_streak, log) exists once a container with a check has started; without
one a container's health is docker's "none".

Docker's rules (moby daemon/health.go):
- a start resets the status to "starting" and the failing streak to 0 (the log stays);
- exit code 0 makes it "healthy" and the streak 0;
- any other result (a timeout is exit code -1) adds one to the streak, except while the
  status is "starting" and the check began within the start period after the
  container's start; at `retries` failures in a row it is "unhealthy";
- the last 5 results are kept, each output capped at 4096 bytes ("..." marks a cut);
- each change of status is an event health_status (attrs status);
- when the container stops, its status is "unhealthy" (dockerd's "for compatibility
  reasons"), without an event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument

MAX_OUTPUT = 4096  # moby's maxOutputLen
MAX_LOG = 5  # moby's maxLogEntries
STATUSES = ("starting", "healthy", "unhealthy", "none")


@dataclass
class Result:
    start_ns: int
    end_ns: int
    exit_code: int
    output: str

    def as_log(self) -> dict:
        return {"start_ns": self.start_ns, "end_ns": self.end_ns,
                "exit_code": self.exit_code, "output": self.output}


def read(db, cid: str) -> dict | None:
    """The container's row: {status, failing_streak, log: [result dicts]}, or None."""
    row = db.execute("SELECT status, failing_streak, log FROM health WHERE id = ?",
                     (cid,)).fetchone()
    if row is None:
        return None
    return {"status": row[0], "failing_streak": row[1], "log": json.loads(row[2] or "[]")}


def reset(db, cid: str) -> None:
    """A start: starting, no failures; the log of earlier runs stays (as docker's)."""
    db.execute("INSERT INTO health (id, status, failing_streak) VALUES (?, 'starting', 0)"
               " ON CONFLICT (id) DO UPDATE SET status = 'starting', failing_streak = 0",
               (cid,))


def stopped(db, cid: str) -> None:
    db.execute("UPDATE health SET status = 'unhealthy' WHERE id = ?", (cid,))


def apply_result(state: dict, result: Result, retries: int, start_period_ns: int,
                 started_ns: int) -> dict:
    """The state after one result (docker's handleProbeResult)."""
    log = (list(state.get("log") or []) + [result.as_log()])[-MAX_LOG:]
    status, streak = state.get("status") or "starting", state.get("failing_streak") or 0
    if result.exit_code == 0:
        status, streak = "healthy", 0
    elif not (status == "starting" and result.start_ns - started_ns < start_period_ns):
        streak += 1
        if streak >= retries:
            status = "unhealthy"
    return {"status": status, "failing_streak": streak, "log": log}


def record(engine, cid: str, result: Result, retries: int, start_period_ns: int,
           started_ns: int) -> str | None:
    """Store a result; the new status when it changed (its event is recorded in the same
    transaction), else None. Nothing for a container no longer running (its result
    came in after its stop) or removed."""
    db = engine.db
    with db:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT status, options FROM containers WHERE id = ?",
                         (cid,)).fetchone()
        state = read(db, cid)
        if row is None or row[0] != "running" or state is None:
            return None
        new = apply_result(state, result, retries, start_period_ns, started_ns)
        db.execute("UPDATE health SET status = ?, failing_streak = ?, log = ? WHERE id = ?",
                   (new["status"], new["failing_streak"], json.dumps(new["log"]), cid))
        if new["status"] == state["status"]:
            return None
        engine.record_event("health_status", cid, json.loads(row[1]).get("pod") or None,
                            status=new["status"])
        return new["status"]


def cap_output(data: bytes, truncated: bool) -> str:
    """The stored output: at most MAX_OUTPUT bytes, "..." when some were dropped."""
    text = data[:MAX_OUTPUT].decode("utf-8", "replace")
    return text + "..." if truncated or len(data) > MAX_OUTPUT else text


# --- what ps and inspect show ---------------------------------------------------------------

def status_of(engine: Any, rec: dict) -> str:
    """docker's health of a container: starting, healthy, unhealthy, or none."""
    state = read(engine.db, rec["id"])
    return state["status"] if state else "none"


def ps_suffix(status: str) -> str:
    """What `Up 3 seconds` gets after it (docker's Health.String())."""
    if status == "none":
        return ""
    return " (health: starting)" if status == "starting" else f" ({status})"


def check_filter(values: list[str]) -> None:
    for value in values:
        if value not in STATUSES:
            raise InvalidArgument(f"Unrecognised filter value for health: {value}")


def inspect_health(engine: Any, rec: dict) -> dict | None:
    """inspect's State.Health, None (left out) without a row."""
    from ..dockerview import rfc3339

    state = read(engine.db, rec["id"])
    if state is None:
        return None
    return {"Status": state["status"], "FailingStreak": state["failing_streak"],
            "Log": [{"Start": rfc3339(r["start_ns"] / 1e9), "End": rfc3339(r["end_ns"] / 1e9),
                     "ExitCode": r["exit_code"], "Output": r["output"]}
                    for r in state["log"]]}
