"""What the span recorder (minirun/monitor/trace.py) costs when tracing is off, and on.

Off, each instrumented step of the start path is one call that reads the module flag:
`with span(...)` (a shared no-op context manager) or begin() returning None and end(None).
The module is imported by minirun.runtime (create, run, exec) and by the engine; the light
OCI verbs (state, kill, delete, list) do not import it. Standard library only; no root.

  python3 bench/trace_cost.py [-n 1000000] [--imports 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, CHECKOUT)


def per_call_ns(stmt: str, env: dict, n: int, setup: str = "pass") -> float:
    """Best of 7 runs of n, in ns per statement, less an empty loop's."""
    def best(s: str) -> float:
        return min(timeit.repeat(s, setup, globals=env, number=n, repeat=7)) / n * 1e9
    return best(stmt) - best("pass")


def import_self_us(module: str, runs: int) -> dict[str, int]:
    """-X importtime's self time (us) of the module and its package, min over runs, with
    bytecode written (as an installed minirun has it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = CHECKOUT
    best: dict[str, int] = {}
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                             env=env, capture_output=True, text=True, check=True).stderr
        for line in err.splitlines():
            self_us, _, name = (p.strip() for p in line.split(":", 1)[1].split("|"))
            if name in (module, module.rsplit(".", 1)[0]):
                best[name] = min(best.get(name, 10**9), int(self_us))
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1_000_000)
    p.add_argument("--imports", type=int, default=30)
    args = p.parse_args()
    os.environ.pop("MINIRUN_TRACE", None)
    from minirun.monitor import trace as spans

    env = {"spans": spans}
    with_off = per_call_ns('with spans.span("mounts"):\n    pass', env, args.n)
    pair_off = per_call_ns('s = spans.begin("mounts"); spans.end(s)', env, args.n)
    # each span is kept: emptied before each run, and under the cap
    with_on = per_call_ns('with spans.span("mounts"):\n    pass', env,
                          min(args.n, spans.MAX_SPANS), "spans.disable(); spans.enable()")
    spans.disable()
    imports = import_self_us("minirun.monitor.trace", args.imports)
    print(f"off: with span(): {with_off:.0f} ns; begin()+end(): {pair_off:.0f} ns")
    print(f"on:  with span(): {with_on:.0f} ns (recording one span)")
    listed = ", ".join(f"{k} {v} us" for k, v in sorted(imports.items()))
    print(f"import (self, min of {args.imports}): {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
