"""Where the engine keeps things under its data root, for code that must not import the
engine (the keeper's worker, which forks for every detached start)."""

from __future__ import annotations

import os


def seccomp_cache_dir(bundle: str) -> str:
    """Compiled seccomp profiles, kept by the engine (bundles are <root>/containers/<id>):
    the default profile costs ~30 ms to compile, a sixth of `minirun run`."""
    return os.path.join(os.path.dirname(os.path.dirname(bundle)), "cache", "seccomp")
