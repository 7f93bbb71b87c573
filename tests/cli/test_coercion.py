"""casbak.cli.coercion against typer's own pydantic converters, on casbak's real parameters.

The plain converter must return what typer's converter returns for every value it
handles, and must leave every other value, errors included, to typer.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer._coercion
import typer.core
import typer.main
from hypothesis import given, settings
from hypothesis import strategies as st
from typer._click.exceptions import BadParameter
from typer.testing import CliRunner

from casbak.cli import coercion
from casbak.cli.main import app
from tests.conftest import PASSWORD


def casbak_parameters() -> dict[str, Any]:
    """Return the click parameters of the casbak command tree by dotted name, such as verify.workers."""
    parameters: dict[str, Any] = {}

    def collect(command: Any, prefix: str) -> None:
        for parameter in command.params:
            parameters[prefix + parameter.name] = parameter
        for name, subcommand in getattr(command, "commands", {}).items():
            collect(subcommand, f"{prefix}{name}.")

    collect(typer.main.get_command(app), "")
    return parameters


PARAMETERS = casbak_parameters()


def outcome(parameter: Any, converter: Any, value: Any) -> tuple:
    """Return ("ok", value, type) or ("error", message) for one conversion."""
    try:
        result = converter.coerce(value, param=parameter, ctx=None)
    except BadParameter as exc:
        return ("error", exc.format_message())
    return ("ok", result, type(result))


def assert_same_conversion(name: str, value: Any) -> None:
    parameter = PARAMETERS[name]
    descriptor = parameter.type_descriptor
    plain = typer.core.build_runtime_param(descriptor)
    typer_converter = typer._coercion.build_runtime_param(descriptor)
    assert outcome(parameter, plain, value) == outcome(parameter, typer_converter, value)


def test_install_replaces_typer_builder():
    assert coercion.install() is True
    assert getattr(typer.core.build_runtime_param, "casbak_plain", False) is True


@pytest.mark.parametrize(
    "name, kind",
    [
        ("repo", coercion.KIND_STR),
        ("json_output", coercion.KIND_BOOL),
        ("verbose", coercion.KIND_INT),
        ("option", coercion.KIND_STR_LIST),
        ("snapshot.paths", coercion.KIND_STR_LIST),
        ("verify.workers", coercion.KIND_INT),
        ("diff.details", coercion.KIND_INT),
    ],
)
def test_casbak_parameters_use_plain_kinds(name, kind):
    descriptor = PARAMETERS[name].type_descriptor
    assert coercion.plain_kind(descriptor.annotation, descriptor.parameter_info, descriptor.file_annotation) == kind


def test_other_annotations_stay_with_typer():
    descriptor = PARAMETERS["verbose"].type_descriptor
    info = descriptor.parameter_info
    assert coercion.plain_kind(float, info, None) is None
    assert coercion.plain_kind(list[int], info, None) is None
    assert coercion.plain_kind(str, info, object()) is None


INT_TEXT = st.text(alphabet=st.sampled_from("0123456789+-_. x\u0661"), max_size=24)
INT_VALUES = st.one_of(st.integers(), INT_TEXT, st.booleans(), st.floats(allow_nan=False), st.none())


@settings(max_examples=300)
@given(value=INT_VALUES, name=st.sampled_from(["verbose", "init.chunk_avg", "verify.workers", "diff.details"]))
def test_int_conversion_matches_typer(value, name):
    assert_same_conversion(name, value)


@pytest.mark.parametrize("value", ["0", "1", "64", "65", "-1", "007", "+5", " 5 ", "1_000", "5.0", "\u0661\u0662",
                                   "9" * 18, "9" * 19, "-" + "9" * 18, "", "abc", True, 5.0, 10**30])
def test_int_edge_values_match_typer(value):
    assert_same_conversion("verify.workers", value)
    assert_same_conversion("init.chunk_avg", value)


@settings(max_examples=200)
@given(value=st.one_of(st.text(), st.binary(max_size=8), st.integers(), st.none()))
def test_str_conversion_matches_typer(value):
    assert_same_conversion("repo", value)
    assert_same_conversion("restore.snapshot", value)


@settings(max_examples=200)
@given(items=st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=4), as_tuple=st.booleans())
def test_str_list_conversion_matches_typer(items, as_tuple):
    value = tuple(items) if as_tuple else items
    assert_same_conversion("option", value)
    assert_same_conversion("snapshot.paths", value)


@pytest.mark.parametrize("value", [True, False, None, "true", "1", "", "no"])
def test_bool_conversion_matches_typer(value):
    assert_same_conversion("json_output", value)


def test_str_subclass_goes_to_typer():
    class Location(str):
        pass

    converted = typer.core.build_runtime_param(PARAMETERS["repo"].type_descriptor).coerce(
        Location("/srv/repo"), param=PARAMETERS["repo"], ctx=None
    )
    assert type(converted) is str
    assert converted == "/srv/repo"


@pytest.mark.parametrize(
    "workers, message",
    [("0", "greater than or equal to 1"), ("65", "less than or equal to 64"), ("many", "unable to parse string as an integer")],
)
def test_invalid_option_value_error_from_typer(repository, repo_path, monkeypatch, workers, message):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    result = CliRunner().invoke(app, ["-r", str(repo_path), "verify", "--workers", workers])
    assert result.exit_code == 2
    # typer prints the error in a box of `│` lines that can wrap it anywhere.
    text = " ".join(result.output.replace("│", " ").split())
    assert "Invalid value for '--workers': Input should be" in text
    assert message in text


def test_valid_option_values_reach_command(repository, repo_path, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    result = CliRunner().invoke(app, ["-r", str(repo_path), "-vv", "--json", "verify", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert '"ok": true' in result.output
