"""The Go template renderer the chart tests use: each behaviour of text/template and Helm's functions that the chart
relies on, as helm renders it (the expected strings are what helm 3 prints for the same template)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from ..support.gotemplate import Template, TemplateError, go_yaml, helm_values, show


def render(source: str, values: Any = None, **root: Any) -> str:
    return Template().render(source, {"Values": helm_values(values or {}), **root})


def test_fields_print_values_and_a_missing_key_prints_nothing() -> None:
    assert render("{{ .Values.a.b }}/{{ .Values.missing }}", {"a": {"b": "x"}}) == "x/"


def test_a_field_of_a_missing_key_is_an_error_as_in_go() -> None:
    with pytest.raises(TemplateError, match="nil pointer evaluating"):
        render("{{ .Values.missing.b }}")


def test_numbers_from_values_print_as_helm_prints_float64() -> None:
    out = render("{{ .Values.port }} {{ .Values.big }} {{ .Values.half }}", {"port": 8080, "big": 1000000, "half": 0.5})
    assert out == "8080 1e+06 0.5"
    assert show(1e-5) == "1e-05"
    assert show(123456.0) == "123456"


def test_trim_markers_remove_whitespace_on_their_side_only() -> None:
    assert render("a  {{- 1 }}  b") == "a1  b"
    assert render("a  {{ 1 -}}  \n b") == "a  1b"
    assert render("x\n{{- /* a comment */ -}}\ny") == "xy"


def test_if_else_if_else_picks_the_first_true_branch() -> None:
    source = "{{ if .Values.a }}A{{ else if .Values.b }}B{{ else }}C{{ end }}"
    assert render(source, {"a": 1, "b": 1}) == "A"
    assert render(source, {"a": 0, "b": "x"}) == "B"
    assert render(source, {"a": "", "b": []}) == "C"


def test_with_sets_dot_and_falls_to_else_when_empty() -> None:
    source = "{{ with .Values.m }}{{ .k }}{{ else }}none{{ end }}"
    assert render(source, {"m": {"k": "v"}}) == "v"
    assert render(source, {"m": {}}) == "none"


def test_range_walks_lists_in_order_and_maps_by_sorted_key() -> None:
    assert render("{{ range .Values.l }}[{{ . }}]{{ end }}", {"l": ["a", "b"]}) == "[a][b]"
    assert render("{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}", {"m": {"b": 2, "a": 1}}) == "a=1;b=2;"
    assert render("{{ range .Values.l }}x{{ else }}empty{{ end }}", {"l": []}) == "empty"


def test_variables_are_scoped_and_assignment_reaches_the_outer_one() -> None:
    source = "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ end }}{{ $x }}"
    assert render(source) == "2"
    with pytest.raises(TemplateError, match=r"undefined variable \$y"):
        render("{{ if true }}{{ $y := 3 }}{{ end }}{{ $y }}")
    assert render("{{ with .Values.a }}{{ $.Values.b }}{{ end }}", {"a": 1, "b": "root"}) == "root"


def test_include_renders_a_define_with_the_given_data_and_nindent_indents_it() -> None:
    engine = Template()
    engine.parse('{{- define "labels" -}}\na: {{ .x }}\nb: 2\n{{- end -}}', "_helpers.tpl")
    out = engine.render('m:\n  labels:\n    {{- include "labels" .Values | nindent 4 }}', {"Values": {"x": "1"}})
    assert out == "m:\n  labels:\n    a: 1\n    b: 2"
    with pytest.raises(TemplateError, match="no template"):
        engine.render('{{ include "nope" . }}', {})


def test_to_yaml_sorts_keys_writes_whole_numbers_as_ints_and_quotes_like_go() -> None:
    value = helm_values({"b": [1, 2.5], "a": {"port": 8080, "s": "45", "dash": "-", "on": True}})
    assert go_yaml(value) == 'a:\n  dash: \'-\'\n  "on": true\n  port: 8080\n  s: "45"\nb:\n- 1\n- 2.5'
    assert go_yaml({}) == "{}"


def test_default_replaces_every_empty_value_false_and_zero_included() -> None:
    source = '{{ .Values.v | default "d" }}'
    for empty in ("", 0, False, [], {}, None):
        assert render(source, {"v": empty}) == "d"
    assert render(source, {"v": "x"}) == "x"


def test_quote_sha256sum_int_and_add() -> None:
    assert render("{{ .Values.s | quote }} {{ .Values.n | quote }}", {"s": 'a"b', "n": 1}) == '"a\\"b" "1"'
    assert render('{{ "abc" | sha256sum }}') == hashlib.sha256(b"abc").hexdigest()
    assert render('{{ int .Values.a }} {{ int "30" }} {{ int "30s" }}', {"a": 30.9}) == "30 30 0"
    assert render("{{ add 5 .Values.g 10 }}", {"g": 30}) == "45"


def test_required_and_fail_stop_the_rendering_with_their_message() -> None:
    with pytest.raises(TemplateError, match="set the token"):
        render('{{ required "set the token" .Values.token }}', {"token": ""})
    assert render('{{ required "set the token" .Values.token }}', {"token": "t"}) == "t"
    with pytest.raises(TemplateError, match=r"^no way$"):
        render('{{ fail "no way" }}')


def test_and_or_short_circuit_and_comparisons_refuse_mixed_number_types() -> None:
    assert render('{{ if and false (fail "evaluated") }}x{{ else }}y{{ end }}') == "y"
    assert render('{{ or "" "second" }}') == "second"
    assert render("{{ gt (int .Values.n) 1 }}", {"n": 2}) == "true"
    with pytest.raises(TemplateError, match="incompatible types"):
        render("{{ gt .Values.n 1 }}", {"n": 2})  # a float64 value against an int constant, as helm fails


def test_printf_trunc_trimsuffix_and_haskey() -> None:
    assert render('{{ printf "%s-%s" "a" "b" | trunc 3 | trimSuffix "-" }}') == "a-b"
    assert render('{{ printf "%s-x" "ab" | trunc 3 | trimSuffix "-" }}') == "ab"
    assert render('{{ hasKey .Values "a" }} {{ hasKey .Values "b" }}', {"a": None}) == "true false"


def test_what_is_outside_the_subset_is_an_error_never_a_silent_difference() -> None:
    with pytest.raises(TemplateError, match="not defined"):
        render("{{ .Values.x | b64enc }}", {"x": "a"})
    with pytest.raises(TemplateError, match="not supported"):
        render('{{ template "x" . }}')
    with pytest.raises(TemplateError, match="without end"):
        render("{{ if true }}x")


def test_sub_and_mul_work_on_integers_as_sprig_casts_them() -> None:
    assert render("{{ sub .Values.r 1 }} {{ mul .Values.p .Values.r }}", {"r": 3, "p": 50}) == "2 150"
    assert render('{{ mul 2 3 4 }} {{ sub "7" 10 }} {{ mul 2.9 2 }}') == "24 -3 4"  # 2.9 truncates to 2, as int64


def test_has_suffix_takes_the_suffix_first_and_refuses_a_number_as_go_does() -> None:
    assert render('{{ hasSuffix "%" .Values.a }} {{ hasSuffix "%" .Values.b }}', {"a": "50%", "b": "50"}) == (
        "true false"
    )
    assert render('{{ hasSuffix "%" (printf "%v" .Values.n) }}', {"n": 1}) == "false"
    with pytest.raises(TemplateError, match="expected string"):
        render('{{ hasSuffix "%" .Values.n }}', {"n": 1})


def test_dict_set_and_get_build_a_map_that_every_variable_holding_it_sees() -> None:
    source = (
        '{{ $m := dict "a" 1 }}{{ if true }}{{ $_ := set $m "b" (list "x") }}{{ end }}'
        '{{ range $k, $v := $m }}{{ $k }}={{ $v }};{{ end }}[{{ get $m "missing" }}]'
    )
    assert render(source) == "a=1;b=[x];[]"
    assert render('{{ dict "k" }}') == "map[k:]"  # a key without a value gets the empty string
    with pytest.raises(TemplateError, match="expected map"):
        render('{{ set "not a map" "k" 1 }}')


def test_append_returns_a_new_list_and_uniq_and_sort_alpha_order_it() -> None:
    assert render('{{ $l := list }}{{ $m := append $l "b" }}{{ $l }} {{ $m }}') == "[] [b]"
    assert render('{{ list "b" "a" "b" "c" "a" | uniq }}') == "[b a c]"
    assert render("{{ list 1 .Values.one | uniq }}", {"one": 1}) == "[1 1]"  # an int and a float64 differ, as in Go
    assert render('{{ list "b" "a" 10 | sortAlpha }} {{ sortAlpha "solo" }}') == "[10 a b] [solo]"
    with pytest.raises(TemplateError, match="Cannot push on type"):
        render('{{ append "not a list" 1 }}')
