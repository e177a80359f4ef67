"""A container's health check configuration, as docker reads, merges and checks it.

The configuration is docker's HealthConfig (the image config's `Healthcheck`, inspect's
Config.Healthcheck): Test (["CMD", arg...], ["CMD-SHELL", "command"] or ["NONE"]),
Interval, Timeout, StartPeriod, StartInterval in nanoseconds and Retries, zero (left
out) meaning docker's default. The flags of `run`/`create` make one (the docker CLI's
rules: --no-healthcheck conflicts with the others, no negative values), it is checked
as dockerd checks it (a set duration is at least 1ms), and at create it is merged with
the image's: what the flags leave unset comes from the image (dockerd's merge). The
daemon runs the checks (daemon/health.py); the results are in monitor/health.py.

Small and import-free: `run` imports it.
"""

from __future__ import annotations

import re

from .errors import InvalidArgument

NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
      "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
MINIMUM_DURATION = 1_000_000  # dockerd's containertypes.MinimumDuration: 1ms
# dockerd's defaults for a zero value
DEFAULT_INTERVAL = DEFAULT_TIMEOUT = 30_000_000_000
DEFAULT_START_PERIOD = 0
DEFAULT_START_INTERVAL = 5_000_000_000
DEFAULT_RETRIES = 3
DURATION_KEYS = ("Interval", "Timeout", "StartPeriod", "StartInterval")
_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]+)")


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration ("1m30s", "1.5s", "300ms", "-2h") in nanoseconds;
    ValueError with Go's message."""
    s = text
    negative = s[:1] == "-"
    if s[:1] in "+-" and s:
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            if re.match(r"[0-9.]*$", s[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        whole, frac, unit = m.group(1), m.group(2) or "", m.group(3)
        if not whole and not frac:
            raise ValueError(f'time: invalid duration "{text}"')
        if unit not in NS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        scale = NS[unit]
        total += int(whole or 0) * scale + (int(frac) * scale // 10 ** len(frac) if frac else 0)
        pos = m.end()
    return -total if negative else total


def go_duration(ns: int) -> str:
    """Go's Duration.String(): 0s, 500ms, 1.5s, 1m30s, 1h0m0s."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)

    def frac(value: int, digits: int) -> str:
        whole, rest = divmod(value, 10 ** digits)
        return f"{whole}.{rest:0{digits}d}".rstrip("0") if rest else str(whole)

    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{frac(u, 3)}\u00b5s"
    if u < 1_000_000_000:
        return f"{sign}{frac(u, 6)}ms"
    hours, rest = divmod(u, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{frac(rest, 9)}s"


def _flag_duration(value: str | None, flag: str) -> int:
    if value is None or value == "":
        return 0
    try:
        return parse_go_duration(value)
    except ValueError as e:
        raise InvalidArgument(f'invalid argument "{value}" for "{flag}" flag: {e}') from None


def _flag_int(value, flag: str) -> int:
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f'invalid argument "{value}" for "{flag}" flag: '
                              f'strconv.ParseInt: parsing "{value}": invalid syntax') from None


def from_flags(cmd: str | None, interval: str | None, timeout: str | None,
               retries, start_period: str | None, start_interval: str | None,
               no_healthcheck: bool) -> dict | None:
    """The docker CLI's HealthConfig from run's flags: None when none is given."""
    durations = {"Interval": _flag_duration(interval, "--health-interval"),
                 "Timeout": _flag_duration(timeout, "--health-timeout"),
                 "StartPeriod": _flag_duration(start_period, "--health-start-period"),
                 "StartInterval": _flag_duration(start_interval, "--health-start-interval")}
    count = _flag_int(retries, "--health-retries")
    have = bool(cmd) or count != 0 or any(durations.values())
    if no_healthcheck:
        if have:
            raise InvalidArgument("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not have:
        return None
    for key, flag in (("Interval", "--health-interval"), ("Timeout", "--health-timeout"),
                      ("Retries", "--health-retries"),
                      ("StartPeriod", "--health-start-period"),
                      ("StartInterval", "--health-start-interval")):
        if (count if key == "Retries" else durations[key]) < 0:
            raise InvalidArgument(f"{flag} cannot be negative")
    config: dict = {"Test": ["CMD-SHELL", cmd]} if cmd else {}
    config.update({k: v for k, v in durations.items() if v})
    if count:
        config["Retries"] = count
    return config


def check(config: dict | None) -> None:
    """dockerd's validateHealthCheck, and the shape of what the CRI or an API client
    could hand over."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise InvalidArgument("healthcheck: want a HealthConfig object")
    test = config.get("Test")
    if test is not None and (not isinstance(test, list) or
                             not all(isinstance(t, str) for t in test)):
        raise InvalidArgument("Healthcheck Test: want a list of strings")
    if test and test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise InvalidArgument(f"Healthcheck Test: unknown type {test[0]!r} (CMD, CMD-SHELL "
                              "or NONE)")
    if test and test[0] != "NONE" and len(test) < 2:
        raise InvalidArgument(f"Healthcheck Test {test!r}: no command")
    for key in DURATION_KEYS + ("Retries",):
        value = config.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"Healthcheck {key}: want an integer")
    for key in DURATION_KEYS:
        value = config.get(key, 0)
        if value != 0 and value < MINIMUM_DURATION:
            raise InvalidArgument(f"{key} in Healthcheck cannot be less than "
                                  f"{go_duration(MINIMUM_DURATION)}")
    if config.get("Retries", 0) < 0:
        raise InvalidArgument("Retries in Healthcheck cannot be negative")


def merge(user: dict | None, image: dict | None) -> dict | None:
    """dockerd's merge at create: the user's config, its unset parts from the image's."""
    if not image:
        return dict(user) if user else None
    if not user:
        return {k: v for k, v in image.items() if v}
    out = dict(user)
    for key in ("Test",) + DURATION_KEYS + ("Retries",):
        if not out.get(key) and image.get(key):
            out[key] = image[key]
    return out


def probe_command(config: dict | None) -> list[str] | None:
    """The command a check runs, None when there is no check (no config, NONE, an empty
    Test): CMD's arguments as they are, CMD-SHELL's through /bin/sh -c (docker's shell
    for a Linux image)."""
    test = (config or {}).get("Test") or []
    if len(test) >= 2 and test[0] == "CMD":
        return list(test[1:])
    if len(test) >= 2 and test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return None


def setting(config: dict, key: str) -> int:
    """A duration or Retries with dockerd's default for zero."""
    default = {"Interval": DEFAULT_INTERVAL, "Timeout": DEFAULT_TIMEOUT,
               "StartPeriod": DEFAULT_START_PERIOD, "StartInterval": DEFAULT_START_INTERVAL,
               "Retries": DEFAULT_RETRIES}[key]
    value = config.get(key) or 0
    return value if value > 0 else default


def parse_instruction(value: str) -> dict:
    """A Dockerfile HEALTHCHECK's arguments (commit --change): NONE, or [--interval=D]
    [--timeout=D] [--start-period=D] [--start-interval=D] [--retries=N] CMD command
    (a JSON array: the exec form, else the shell form)."""
    import json

    words = value.strip().split(None, 1)
    if words and words[0].upper() == "NONE":
        if len(words) > 1:
            raise InvalidArgument("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    config: dict = {}
    rest = value.strip()
    keys = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
            "start-interval": "StartInterval"}
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.strip()
        name, eq, val = flag[2:].partition("=")
        if not eq:
            raise InvalidArgument(f"HEALTHCHECK {flag}: want {flag}=VALUE")
        if name == "retries":
            try:
                config["Retries"] = int(val)
            except ValueError:
                raise InvalidArgument(f"HEALTHCHECK --retries={val}: not a number") from None
            if config["Retries"] < 1:
                raise InvalidArgument("--retries must be at least 1")
        elif name in keys:
            try:
                ns = parse_go_duration(val)
            except ValueError as e:
                raise InvalidArgument(f"HEALTHCHECK --{name}: {e}") from None
            if ns != 0 and ns < MINIMUM_DURATION:
                raise InvalidArgument(f"Interval \"{name}\" cannot be less than "
                                      f"{go_duration(MINIMUM_DURATION)}")
            if ns:
                config[keys[name]] = ns
        else:
            raise InvalidArgument(f"HEALTHCHECK: unknown flag --{name}")
    kind, _, command = rest.partition(" ")
    if kind.upper() != "CMD" or not command.strip():
        raise InvalidArgument("HEALTHCHECK: want NONE or [OPTIONS] CMD command")
    command = command.strip()
    parsed = None
    if command.startswith("["):
        try:
            parsed = json.loads(command)
        except ValueError:
            parsed = None
    if isinstance(parsed, list) and parsed and all(isinstance(p, str) for p in parsed):
        config["Test"] = ["CMD", *parsed]
    else:
        config["Test"] = ["CMD-SHELL", command]
    return config
