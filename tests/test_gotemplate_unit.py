"""minirun.gotemplate: the Go text/template subset of docker's --format, checked against
what Go and docker print for the same template and data."""

import pytest

from minirun.gotemplate import (
    TemplateError,
    format_items,
    go_sprintf,
    go_str,
    parse,
    tabwrite,
)

DATA = {"Names": "web", "State": {"Status": "running", "Pid": 12, "Running": True},
        "Labels": {"b": "2", "a": "1"}, "Ports": [80, 443], "Empty": [], "Nil": None,
        "Html": "<a&b>"}


def render(text, data=DATA, strict=False):
    return parse(text, strict=strict).render(data)


@pytest.mark.parametrize("template, expected", [
    ("{{.Names}}", "web"),
    ("{{.State.Status}}/{{.State.Pid}}/{{.State.Running}}", "running/12/true"),
    ("{{.Labels}}", "map[a:1 b:2]"),
    ("{{.Ports}}", "[80 443]"),
    ("{{.Missing}}", "<no value>"),
    ("{{.Nil}}", "<no value>"),
    ("{{json .Labels}}", '{"b":"2","a":"1"}'),
    ("{{.Labels | json}}", '{"b":"2","a":"1"}'),
    ("{{json .Html}}", '"\\u003ca\\u0026b\\u003e"'),
    ("{{index .Labels \"a\"}} {{index .Ports 1}}", "1 443"),
    ("{{join .Ports \", \"}}", "80, 443"),
    ("{{upper .Names}} {{lower \"AB\"}} {{title \"hello world\"}}", "WEB ab Hello World"),
    ("{{printf \"%s:%d\" .Names .State.Pid}}", "web:12"),
    ("{{printf \"%-6s|%5d|%q\" .Names 7 .Names}}", 'web   |    7|"web"'),
    ("{{len .Ports}} {{len .Labels}}", "2 2"),
    ("{{slice .Ports 1}} {{slice .Names 0 2}}", "[443] we"),
    ("{{range .Ports}}<{{.}}>{{end}}", "<80><443>"),
    ("{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}", "a=1;b=2;"),
    ("{{range .Empty}}x{{else}}none{{end}}", "none"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if eq .Names \"db\"}}db{{else if eq .Names \"web\"}}web!{{else}}?{{end}}", "web!"),
    ("{{if ne .State.Status \"running\"}}x{{else}}y{{end}}", "y"),
    ("{{if and .Names (not .Empty)}}ok{{end}}", "ok"),
    ("{{with .State}}{{.Pid}}{{end}}", "12"),
    ("{{$n := .Names}}{{range .Ports}}{{$n}}:{{.}} {{end}}", "web:80 web:443 "),
    ("{{$.Names}}", "web"),
    ("a {{- \" b \" -}} c", "a b c"),
    ("x{{/* a comment */}}y", "xy"),
    ("{{.Names | upper | printf \"[%s]\"}}", "[WEB]"),
    ("{{(index .Labels \"a\")}}", "1"),
    ("{{split \"a,b\" \",\"}}", "[a b]"),
])
def test_renders_as_go(template, expected):
    assert render(template) == expected


@pytest.mark.parametrize("template, message", [
    ("{{.Names", "template parsing error: template: :1: unclosed action"),
    ("{{bogus .Names}}", 'template parsing error: template: :1: function "bogus" not defined'),
    ("{{if .Names}}x", "template parsing error: template: :1: unexpected EOF"),
    ("x{{end}}", "template parsing error: template: :1: unexpected {{end}}"),
    ("{{define \"x\"}}{{end}}", "template parsing error: template: :1: {{define}} is not"),
    ("\n{{.A | }}", "template parsing error: template: :2: missing value for command"),
])
def test_parse_errors_are_one_line_naming_the_problem(template, message):
    with pytest.raises(TemplateError) as info:
        parse(template)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 125


def test_strict_contexts_refuse_unknown_fields_as_docker_ps_does():
    with pytest.raises(TemplateError) as info:
        render("{{.Nope}}", {"Names": "x"}, strict=True)
    assert str(info.value) == ('template: :1:2: executing "" at <.Nope>: can\'t evaluate '
                               "field Nope in type map[string]interface {}")


def test_a_method_field_takes_arguments():
    class Row(dict):
        def Label(self, key):
            return {"tier": "front"}.get(key, "")

    assert render('{{.Label "tier"}}|{{.Label "x"}}', Row(Names="a"), strict=True) == "front|"


def test_values_print_as_gos_percent_v():
    assert go_str(True) == "true" and go_str(None) == "<no value>"
    assert go_str([1, None, "a"]) == "[1 <nil> a]"
    assert go_str({"z": [1], "a": {}}) == "map[a:map[] z:[1]]"
    assert go_sprintf("%v %s %d%%", 1, "x", 2) == "1 x 2%"
    assert go_sprintf("%s") == "%!s(MISSING)"


def test_table_has_dockers_header_and_columns():
    rows = [{"ID": "abc", "Names": "n"}, {"ID": "abcdef123456", "Names": "second"}]
    lines = format_items("table {{.ID}}\\t{{.Names}}", rows,
                         {"ID": "CONTAINER ID", "Names": "NAMES"}, "")
    assert lines == ["CONTAINER ID   NAMES", "abc            n", "abcdef123456   second"]
    # no rows: the header alone; a field without a title gets its name split and upper-cased
    assert format_items("table {{.RunningFor}}", [], {}, "") == ["RUNNING FOR"]


def test_plain_template_and_json_lines():
    rows = [{"ID": "a", "N": 1}, {"ID": "b", "N": 2}]
    assert format_items("{{.ID}}-{{.N}}", rows, {}, "") == ["a-1", "b-2"]
    assert format_items("json", rows, {}, "") == ['{"ID":"a","N":1}', '{"ID":"b","N":2}']
    assert format_items("table", rows, {"ID": "X"}, "{{.ID}}") == ["X", "a", "b"]


def test_tabwriter_minimum_width_and_padding():
    assert tabwrite(["a\tb", "ccccccccccccc\td"]) == ["a" + " " * 15 + "b",
                                                      "ccccccccccccc   d"]
    assert tabwrite(["a\tb"]) == ["a" + " " * 9 + "b"]
