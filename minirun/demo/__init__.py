"""`minirun demo`: the limits lab. Each scenario runs real containers from the default
image (busybox) and shows one thing containers do or do not isolate, on this host.

How a scenario speaks to the runner (minirun.demo.lab.Lab):
- `lab.say(text)` narrates; `lab.minirun(*args)` and `lab.host(*argv)` run a command,
  print it (`$ minirun ...`, `host$ ...`) and its output, and return it;
- `lab.observe(key, value)` records a number or a string the lesson rests on (the `--json`
  results and the tests read these, not the printed text);
- `lab.expect(ok, lesson)` records one lesson: it held, or it did not;
- `raise CannotRun(reason)` when this host lacks what the scenario needs.
The runner removes every container a scenario made (unless --keep), in a `finally`, so an
interrupt (Ctrl-C, SIGTERM) leaves nothing behind either.

Verdicts and exit statuses (of `minirun demo NAME` and, the worst one, of `demo all`):
  0 HELD        every lesson held on this host
  1 NOT HELD    a lesson did not hold (the runtime or the host differs from the lesson)
  3 CANNOT RUN  the scenario could not run here (no image, no cgroup v2, ...): the reason
"""

from __future__ import annotations

import importlib

EXIT_HELD, EXIT_NOT_HELD, EXIT_CANNOT_RUN = 0, 1, 3

# in course order: each module has NAME, TITLE (one line), EXPLAIN and run(lab)
SCENARIOS = ("kernel", "pidns", "caps", "seccomp", "zombies", "limits", "userns",
             "filesystem", "osfeatures", "network",
             "orchestration")


class CannotRun(Exception):
    """The scenario cannot run on this host; the message says why."""


def load(name: str):
    if name not in SCENARIOS:
        raise KeyError(name)
    return importlib.import_module(f"minirun.demo.{name}")
