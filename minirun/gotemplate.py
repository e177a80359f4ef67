"""Go's text/template, the subset docker's `--format` and `inspect -f` users write.

Why our own: the one PyPI package (cognihub-pygotemplate 0.0.2, 2026) wraps Go's library
through CGo: a compiled Go runtime in the process for a dozen lines of formatting, and not
a maintained project yet. Jinja2 is not Go's syntax (`{{.Names}}`, pipelines, `range`).

Supported, as Go and docker's CLI (docker/cli templates/templates.go) define them:
- text and actions `{{ ... }}`, with `{{-` / `-}}` trimming the spaces around them
- operands: `.`, fields `.A.B` (dict keys, then attributes; a callable field is called with
  the command's arguments: `{{.Label "k"}}`), `$` and `$name` variables (also `$x.A`),
  "strings", `raw strings`, numbers, true, false, nil, `(pipelines)` and `(p).Field`
- pipelines `{{.X | json}}`, declarations `{{$x := .Y}}`, `{{range $k, $v := .M}}`
- `{{if}}`, `{{else if}}`, `{{else}}`, `{{range}}` (lists, maps by sorted key; with
  `{{else}}`), `{{with}}`, `{{end}}`, `{{/* comments */}}`
- functions: Go's and, or, not, eq, ne, lt, le, gt, ge, len, index, slice, print, printf,
  println; docker's json, join, split, upper, lower, title, pad, truncate
Not supported (an error naming it): define, template, block, break, continue.

Values print as Go's %v does: maps as `map[k:v]`, lists as `[a b]`, nil as `<no value>`.
One difference: numbers from JSON documents stay integers (docker's inspect -f prints
float64s, `3.3554432e+07` for a 32 MiB limit; podman prints 33554432, as we do).

Errors are TemplateError with docker's wording (`template parsing error: template: :1:
unclosed action`, `template: :1:2: executing "" at <.X>: ...`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument


class TemplateError(InvalidArgument):
    """A template that does not parse, or fails on the data it is given."""

    exit_code = 125


class Missing:
    """What a missing map key evaluates to (Go's zero value): prints `<no value>`."""

    def __repr__(self) -> str:
        return "<no value>"

    def __bool__(self) -> bool:
        return False


MISSING = Missing()

# --- lexing ---------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)+')
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)


@dataclass
class Token:
    kind: str
    text: str
    spaced: bool  # whitespace before it: `(x).F` is a field of (x), `(x) .F` an argument


def _tokens(source: str, line: int) -> list[Token]:
    out: list[Token] = []
    pos, spaced = 0, True
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise _parse_error(line, f"unexpected {source[pos]!r} in command")
        pos = m.end()
        if m.lastgroup == "space":
            spaced = True
            continue
        out.append(Token(m.lastgroup, m.group(), spaced))
        spaced = False
    return out


def _parse_error(line: int, message: str) -> TemplateError:
    return TemplateError(f"template parsing error: template: :{line}: {message}")


# --- parsing --------------------------------------------------------------------------------

@dataclass
class Operand:
    kind: str  # field, var, string, number, bool, nil, ident, pipeline
    value: Any
    fields: tuple[str, ...] = ()  # a field chain after a variable or a parenthesis


@dataclass
class Command:
    operands: list[Operand]


@dataclass
class Pipeline:
    commands: list[Command]
    declare: list[str] = field(default_factory=list)  # $x := ... ($k, $v in range)
    assign: bool = False  # $x = ...
    text: str = ""  # for error messages: `<.X>`


@dataclass
class Action:
    pipeline: Pipeline
    line: int
    col: int


@dataclass
class Branch:  # if, with, range
    kind: str
    pipeline: Pipeline
    body: list
    otherwise: list
    line: int
    col: int


class _Parser:
    def __init__(self, source: str) -> None:
        self.items = list(self._split(source))
        self.pos = 0

    @staticmethod
    def _split(source: str):
        """("text", str) and ("action", str, line, col) in order, trimmed as `{{-`/`-}}` ask."""
        pos = 0
        pending_trim = False
        while True:
            start = source.find("{{", pos)
            if start < 0:
                text = source[pos:]
                yield ("text", text.lstrip() if pending_trim else text)
                return
            m = _ACTION.match(source, start)
            line = source.count("\n", 0, start) + 1
            if m is None:
                raise _parse_error(line, "unclosed action")
            text = source[pos:start]
            if pending_trim:
                text = text.lstrip()
            if m.group(1):
                text = text.rstrip()
            yield ("text", text)
            col = start - (source.rfind("\n", 0, start) + 1) + 2
            body = m.group(2)
            if body.strip().startswith("/*"):
                if not body.strip().endswith("*/"):
                    raise _parse_error(line, "unclosed comment")
            else:
                yield ("action", body, line, col)
            pending_trim = bool(m.group(3))
            pos = m.end()

    def parse(self) -> list:
        nodes, end = self._list()
        if end is not None:
            raise _parse_error(end[1], f"unexpected {{{{{end[0]}}}}}")
        return nodes

    def _list(self) -> tuple[list, tuple | None]:
        """Nodes up to an {{end}} or {{else ...}}: (nodes, (keyword, line, rest) or None)."""
        nodes: list = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if item[0] == "text":
                if item[1]:
                    nodes.append(item[1])
                continue
            _, body, line, col = item
            toks = _tokens(body, line)
            if not toks:
                raise _parse_error(line, "missing value for command")
            head = toks[0]
            if head.kind == "ident" and head.text in ("end", "else"):
                return nodes, (head.text, line, toks[1:], col)
            if head.kind == "ident" and head.text in ("if", "range", "with"):
                nodes.append(self._branch(head.text, toks[1:], body, line, col))
            elif head.kind == "ident" and head.text in ("define", "template", "block",
                                                        "break", "continue"):
                raise _parse_error(line, f"{{{{{head.text}}}}} is not supported by minirun")
            else:
                nodes.append(Action(self._pipeline(toks, body, line), line, col))
        return nodes, None

    def _branch(self, kind: str, toks: list[Token], body: str, line: int, col: int) -> Branch:
        pipe = self._pipeline(toks, body.strip()[len(kind):].strip(), line,
                              allow_two=(kind == "range"))
        inner, end = self._list()
        if end is None:
            raise _parse_error(line, f"unexpected EOF: {{{{{kind}}}}} without {{{{end}}}}")
        otherwise: list = []
        if end[0] == "else":
            rest = end[2]
            if rest and rest[0].kind == "ident" and rest[0].text in ("if", "with") \
                    and kind in ("if", "with"):
                # {{else if X}} ... {{end}}: a nested branch that shares the {{end}}
                self.pos -= 1
                self.items[self.pos] = ("action", " ".join(t.text for t in rest), end[1],
                                        end[3])
                nested, _ = self._list_one()
                otherwise = [nested]
            elif rest:
                raise _parse_error(end[1], "unexpected tokens after {{else}}")
            else:
                otherwise, end2 = self._list()
                if end2 is None or end2[0] != "end":
                    raise _parse_error(line, f"{{{{{kind}}}}} without {{{{end}}}}")
        elif end[2]:
            raise _parse_error(end[1], "unexpected tokens after {{end}}")
        return Branch(kind, pipe, inner, otherwise, line, col)

    def _list_one(self) -> tuple[Branch, None]:
        _, body, line, col = self.items[self.pos]
        self.pos += 1
        toks = _tokens(body, line)
        return self._branch(toks[0].text, toks[1:], body, line, col), None

    def _pipeline(self, toks: list[Token], text: str, line: int,
                  allow_two: bool = False) -> Pipeline:
        pipe = Pipeline([], text=text.strip())
        # declarations: $x := ..., $k, $v := ... (range), $x = ...
        for n in (3, 1):
            if len(toks) > n and all(t.kind == "var" for t in toks[0:n:2]) and \
                    toks[n].kind in ("declare", "assign") and \
                    (n == 1 or (allow_two and toks[1].kind == "comma")):
                pipe.declare = [t.text for t in toks[0:n:2]]
                pipe.assign = toks[n].kind == "assign"
                toks = toks[n + 1:]
                break
        cmd: list[Operand] = []
        i = 0
        while i < len(toks):
            t = toks[i]
            if t.kind == "pipe":
                if not cmd:
                    raise _parse_error(line, "missing command before |")
                pipe.commands.append(Command(cmd))
                cmd = []
                i += 1
                continue
            operand, i = self._operand(toks, i, line)
            cmd.append(operand)
        if not cmd:
            raise _parse_error(line, "missing value for command")
        pipe.commands.append(Command(cmd))
        return pipe

    def _operand(self, toks: list[Token], i: int, line: int) -> tuple[Operand, int]:
        t = toks[i]
        if t.kind == "field":
            op = Operand("field", tuple(n for n in t.text.split(".") if n))
        elif t.kind == "var":
            name, *rest = t.text.split(".")
            op = Operand("var", name, tuple(rest))
        elif t.kind == "string":
            op = Operand("string", _unquote(t.text, line))
        elif t.kind == "raw":
            op = Operand("string", t.text[1:-1])
        elif t.kind == "char":
            op = Operand("number", ord(_unquote('"' + t.text[1:-1] + '"', line)))
        elif t.kind == "number":
            op = Operand("number", _number(t.text, line))
        elif t.kind == "ident":
            if t.text in ("true", "false"):
                op = Operand("bool", t.text == "true")
            elif t.text == "nil":
                op = Operand("nil", None)
            elif t.text in FUNCTIONS:
                op = Operand("ident", t.text)
            else:
                raise _parse_error(line, f'function "{t.text}" not defined')
        elif t.kind == "lparen":
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"lparen": 1, "rparen": -1}.get(toks[j].kind, 0)
                j += 1
            if depth:
                raise _parse_error(line, "unclosed left paren")
            inner = toks[i + 1:j - 1]
            op = Operand("pipeline", self._pipeline(inner, " ".join(x.text for x in inner),
                                                    line))
            i = j - 1
        else:
            raise _parse_error(line, f'unexpected "{t.text}" in operand')
        i += 1
        if i < len(toks) and toks[i].kind == "field" and not toks[i].spaced and \
                t.kind in ("rparen", "lparen", "var") and toks[i].text != ".":
            op.fields = op.fields + tuple(n for n in toks[i].text.split(".") if n)
            i += 1
        return op, i


def _unquote(text: str, line: int) -> str:
    try:
        return json.loads(text)
    except ValueError:
        try:
            return text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            raise _parse_error(line, f"invalid syntax: {text}") from None


def _number(text: str, line: int) -> int | float:
    t = text.replace("_", "")
    try:
        return int(t, 0)
    except ValueError:
        try:
            return float(t)
        except ValueError:
            raise _parse_error(line, f"bad number syntax: {text!r}") from None


# --- values as Go prints them ---------------------------------------------------------------

def go_str(value: Any) -> str:
    """Go's %v."""
    if value is None or value is MISSING:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)[:-2] if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_inner_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_inner_str(value[k])}"
                                 for k in sorted(value, key=str)) + "]"
    return str(value)


def _inner_str(value: Any) -> str:
    return "<nil>" if value is None or value is MISSING else go_str(value)


def go_json(value: Any) -> str:
    """Go's json.Marshal: compact, <, > and & escaped."""
    text = json.dumps(None if value is MISSING else value, separators=(",", ":"),
                      ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None or value is MISSING:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")


def go_sprintf(fmt: str, *args: Any) -> str:
    """Go's fmt.Sprintf for the verbs templates use: %v %s %d %q %t %x %X %o %f %e %g %c %%."""
    args_left = list(args)
    out = []

    def take() -> Any:
        return args_left.pop(0) if args_left else MISSING

    pos = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if width == "*":
            width = str(take())
        arg = take()
        if arg is MISSING:
            out.append(f"%!{verb}(MISSING)")
            continue
        spec = flags.replace("#", "") + (width or "") + (f".{prec}" if prec else "")
        try:
            if verb in "vs":
                text = go_str(arg)
                out.append(format(text, ("<" if "-" in flags else ">") + (width or "")
                                  if width else ""))
                if prec and verb == "s":
                    out[-1] = out[-1][:int(prec)]
            elif verb == "q":
                out.append(format(go_json(str(arg)), (width or "")))
            elif verb == "t":
                out.append(go_str(bool(arg)))
            elif verb == "c":
                out.append(chr(int(arg)))
            elif verb in "dxXob":
                out.append(format(int(arg), spec.replace("-", "<") + verb.replace("d", "d")))
            elif verb in "feEgG":
                out.append(format(float(arg), spec.replace("-", "<") + verb))
            else:
                out.append(f"%!{verb}({go_str(arg)})")
        except (TypeError, ValueError):
            out.append(f"%!{verb}({type(arg).__name__}={go_str(arg)})")
    out.append(fmt[pos:])
    if args_left:
        out.append("%!(EXTRA " + ", ".join(go_str(a) for a in args_left) + ")")
    return "".join(out)


# --- functions ------------------------------------------------------------------------------

def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, dict):
            item = item.get(key, MISSING)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or not 0 <= key < len(item):
                raise ValueError(f"error calling index: index out of range: {key}")
            item = item[key]
        elif item is None or item is MISSING:
            raise ValueError("error calling index: index of untyped nil")
        else:
            raise ValueError(f"error calling index: can't index item of type "
                             f"{type(item).__name__}")
    return item


def _slice(item: Any, *bounds: int) -> Any:
    if not isinstance(item, (list, tuple, str)):
        raise ValueError(  # noqa: TRY004 - the executor reports ValueErrors as template errors
            f"error calling slice: can't slice item of type {type(item).__name__}")
    return item[slice(*bounds)] if len(bounds) > 1 else item[bounds[0]:] if bounds else item


def _len(item: Any) -> int:
    if isinstance(item, (list, tuple, str, dict)):
        return len(item)
    raise ValueError(f"error calling len: len of type {type(item).__name__}")


def _compare(op: Callable[[Any, Any], bool], name: str) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise ValueError(f"error calling {name}: incompatible types for comparison") \
                from None
    return compare


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise ValueError("error calling eq: missing argument for comparison")
    return any(a == b for b in others)


def _join(items: Any, sep: str) -> str:
    if isinstance(items, dict):
        items = [items[k] for k in sorted(items)]
    return sep.join(go_str(i) for i in (items or []))


def _pad(text: Any, left: int, right: int) -> str:
    return " " * left + go_str(text) + " " * right


def _truncate(text: Any, length: int) -> str:
    return go_str(text)[:length]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: next((x for x in a if not truth(x)), a[-1]),
    "or": lambda *a: next((x for x in a if truth(x)), a[-1]),
    "not": lambda a: not truth(a),
    "eq": _eq,
    "ne": _compare(lambda a, b: a != b, "ne"),
    "lt": _compare(lambda a, b: a < b, "lt"),
    "le": _compare(lambda a, b: a <= b, "le"),
    "gt": _compare(lambda a, b: a > b, "gt"),
    "ge": _compare(lambda a, b: a >= b, "ge"),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": lambda *a: "".join(go_str(x) if i == 0 or isinstance(x, str) or
                                isinstance(a[i - 1], str) else " " + go_str(x)
                                for i, x in enumerate(a)),
    "printf": go_sprintf,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "json": go_json,
    "join": _join,
    "split": lambda s, sep: go_str(s).split(sep),
    "upper": lambda s: go_str(s).upper(),
    "lower": lambda s: go_str(s).lower(),
    "title": lambda s: go_str(s).title(),
    "pad": _pad,
    "truncate": _truncate,
}


# --- execution ------------------------------------------------------------------------------

class _Exec:
    def __init__(self, root: Any, strict: bool) -> None:
        self.strict = strict
        self.vars: list[dict[str, Any]] = [{"$": root}]

    def error(self, node: Action | Branch, text: str, message: str) -> TemplateError:
        return TemplateError(f'template: :{node.line}:{node.col}: executing "" at '
                             f"<{text}>: {message}")

    def run(self, nodes: list, dot: Any, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, Action):
                value = self.pipeline(node.pipeline, dot, node)
                if not node.pipeline.declare:
                    out.append(go_str(value))
            else:
                self.branch(node, dot, out)

    def branch(self, node: Branch, dot: Any, out: list[str]) -> None:
        self.vars.append({})
        try:
            if node.kind == "range":
                self.range(node, dot, out)
                return
            value = self.pipeline(node.pipeline, dot, node)
            if truth(value):
                self.run(node.body, value if node.kind == "with" else dot, out)
            else:
                self.run(node.otherwise, dot, out)
        finally:
            self.vars.pop()

    def range(self, node: Branch, dot: Any, out: list[str]) -> None:
        names = node.pipeline.declare
        node.pipeline.declare = []
        try:
            value = self.pipeline(node.pipeline, dot, node)
        finally:
            node.pipeline.declare = names
        if isinstance(value, dict):
            pairs = [(k, value[k]) for k in sorted(value, key=str)]
        elif isinstance(value, (list, tuple)):
            pairs = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            pairs = [(i, i) for i in range(value)]
        elif value is None or value is MISSING:
            pairs = []
        else:
            raise self.error(node, node.pipeline.text,
                             f"range can't iterate over {go_str(value)}")
        if not pairs:
            self.run(node.otherwise, dot, out)
            return
        for key, item in pairs:
            if len(names) == 2:
                self.vars[-1][names[0]], self.vars[-1][names[1]] = key, item
            elif names:
                self.vars[-1][names[0]] = item
            self.run(node.body, item, out)

    def pipeline(self, pipe: Pipeline, dot: Any, node: Action | Branch) -> Any:
        value: Any = MISSING
        piped = False
        for cmd in pipe.commands:
            value = self.command(cmd, dot, node, pipe.text, value if piped else MISSING, piped)
            piped = True
        for name in pipe.declare:
            if pipe.assign:
                scope = next((s for s in reversed(self.vars) if name in s), None)
                if scope is None:
                    raise self.error(node, pipe.text, f"undefined variable: {name}")
                scope[name] = value
            else:
                self.vars[-1][name] = value
        return value

    def command(self, cmd: Command, dot: Any, node, text: str, piped_value: Any,
                piped: bool) -> Any:
        first, rest = cmd.operands[0], cmd.operands[1:]
        if first.kind == "ident":
            args = [self.operand(o, dot, node, text) for o in rest]
            if piped:
                args.append(piped_value)
            try:
                return FUNCTIONS[first.value](*args)
            except TypeError as e:
                raise self.error(node, text, f"error calling {first.value}: wrong number "
                                 f"of args ({e})") from None
            except (ValueError, IndexError, KeyError, AttributeError) as e:
                raise self.error(node, text, str(e)) from None
        if first.kind == "field" or first.fields:
            args = [self.operand(o, dot, node, text) for o in rest]
            if piped:
                args.append(piped_value)
            return self.operand(first, dot, node, text, args)
        if rest or piped:
            raise self.error(node, text, f"can't give argument to non-function {text}")
        return self.operand(first, dot, node, text)

    def operand(self, op: Operand, dot: Any, node, text: str,
                args: list | None = None) -> Any:
        if op.kind == "field":
            return self.fields(dot, op.value, node, text, args)
        if op.kind == "var":
            scope = next((s for s in reversed(self.vars) if op.value in s), None)
            if scope is None:
                raise _parse_error(node.line, f'undefined variable "{op.value}"')
            return self.fields(scope[op.value], op.fields, node, text, args)
        if op.kind == "pipeline":
            value = self.pipeline(op.value, dot, node)
            return self.fields(value, op.fields, node, text, args)
        if op.kind == "ident":  # a function as an argument: called without arguments
            return FUNCTIONS[op.value]()
        return op.value

    def fields(self, value: Any, names: tuple[str, ...], node, text: str,
               args: list | None) -> Any:
        for n, name in enumerate(names):
            last = n == len(names) - 1
            if isinstance(value, dict):
                if name in value:
                    value = value[name]
                elif type(value) not in (dict, GoMap) and not name.startswith("_") and \
                        hasattr(value, name):
                    value = getattr(value, name)  # a method of a context: .Label "k"
                elif self.strict and not isinstance(value, GoMap):
                    raise self.error(node, text, f"can't evaluate field {name} in type "
                                     f"{_type_name(value)}")
                else:
                    value = MISSING
            elif value is None or value is MISSING:
                if self.strict:
                    raise self.error(node, text, f"nil pointer evaluating interface {{}}."
                                     f"{name}")
                value = MISSING
            elif not name.startswith("_") and hasattr(value, name):
                value = getattr(value, name)
            else:
                raise self.error(node, text, f"can't evaluate field {name} in type "
                                 f"{_type_name(value)}")
            if callable(value):
                try:
                    value = value(*(args or [])) if last else value()
                except TypeError as e:
                    raise self.error(node, text, f"wrong number of args for {name}: {e}") \
                        from None
                args = None if last else args
        if args:
            raise self.error(node, text, f"{names[-1] if names else text} has arguments but "
                             "cannot be invoked as function")
        return value


def _type_name(value: Any) -> str:
    return getattr(value, "go_type", None) or {
        dict: "map[string]interface {}", list: "[]interface {}", str: "string",
        int: "int", float: "float64", bool: "bool"}.get(type(value), type(value).__name__)


class GoMap(dict):
    """A dict that stands for a Go map in a strict context (its missing keys are
    `<no value>`, not an error): labels, options."""


@dataclass
class Template:
    """A parsed template: `render(data)` gives its text."""

    source: str
    nodes: list
    strict: bool = False

    def render(self, data: Any) -> str:
        out: list[str] = []
        _Exec(data, self.strict).run(self.nodes, data, out)
        return "".join(out)


def parse(source: str, strict: bool = False) -> Template:
    """The template in `source`; `strict`: a missing field is an error (docker's ps and
    images contexts are Go structs), else `<no value>` (inspect's JSON maps)."""
    return Template(source, _Parser(source).parse(), strict)


# --- docker's --format ----------------------------------------------------------------------

def tabwrite(lines: list[str], min_width: int = 10, padding: int = 3) -> list[str]:
    """Go's tabwriter as docker sets it (minwidth 10, padding 3, spaces): cells ended by a
    tab are padded to their column's width; the last cell of a line is not."""
    rows = [line.split("\t") for line in lines]
    ncols = max((len(r) - 1 for r in rows), default=0)
    widths = [max([len(r[i]) + padding for r in rows if len(r) - 1 > i] + [min_width])
              for i in range(ncols)]
    return ["".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r))
            for r in rows]


class HeaderContext(dict):
    """Data for a table's header line: every field is its column title."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__()
        self.headers = headers

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return _Title(self.headers.get(key) or _split_camel(key).upper())


class _Title(str):
    """A column title; called (a method field such as `.Label "k"`) it stays itself."""

    def __call__(self, *args: Any) -> str:
        return str(self)


def _split_camel(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)


def expand_escapes(text: str) -> str:
    """docker reads `\\t` and `\\n` typed in a --format string as a tab and a newline."""
    return text.replace("\\t", "\t").replace("\\n", "\n")


def format_items(fmt: str, items: list[Any], headers: dict[str, str],
                 default_table: str, strict: bool = True,
                 json_of: Callable[[Any], Any] | None = None) -> list[str]:
    """The lines docker prints for `--format FMT` over `items` (one context per item):
    `table [TEMPLATE]` (TEMPLATE, else `default_table`, with a header line, through the
    tabwriter), `json` (one JSON object per line: `json_of(item)`, else the item), or a
    template printed once per item."""
    text = fmt.strip()
    if text == "json":
        return [go_json(json_of(i) if json_of else i) for i in items]
    table = text == "table" or text.startswith("table ")
    if table:
        text = text[len("table"):].strip() or default_table
    template = parse(expand_escapes(text), strict=strict)
    rendered = [template.render(i) for i in items]
    if not table:
        return rendered
    header = template.render(HeaderContext(headers))
    return tabwrite((header + "\n" + "\n".join(rendered)).split("\n") if rendered
                    else header.split("\n"))
