"""Conversion of plain command-line values without importing pydantic.

Typer 0.29 converts every option and argument value through a pydantic TypeAdapter, so
the first value it converts imports pydantic. With typer 0.29.2 and pydantic 2.13 that
import took about 80 ms of CPU on the 2-core test machine (time.process_time() around
`import typer._adapters`), more than a third of `casbak snapshots` on an empty repository.

casbak's parameters are str, int, bool and list[str]. For those, pydantic's lax mode
returns a well-formed value unchanged (str, bool), as int() of its ASCII digits (int) or
as a list of the same strings. An unset option (None) is never converted, so it needs no
converter at all.

`install()` wraps typer's converter factory. The returned converter handles exactly those
well-formed values and passes every other value (a malformed or out-of-range number,
bytes, a bool given as text) to typer's own pydantic converter, so errors and messages
are typer's. Other parameter types go to typer unchanged.
NOTE: this relies on typer.core.build_runtime_param and typer._coercion.RuntimeParam,
which are private. When either is missing, install() changes nothing and typer converts
as usual. tests/cli/test_coercion.py compares both converters on the same values.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, Callable, Optional, get_args, get_origin

log = logging.getLogger(__name__)

KIND_STR = "str"
KIND_INT = "int"
KIND_BOOL = "bool"
KIND_STR_LIST = "list[str]"

# ASCII digits only: int() also accepts other Unicode digits, which pydantic rejects.
# At most 18 digits keep the value inside a signed 64-bit integer.
_DECIMAL = re.compile(r"-?[0-9]{1,18}")

# Marks a value that the plain conversion leaves to typer's converter.
UNHANDLED: Any = object()


def plain_kind(annotation: Any, parameter_info: Any, file_annotation: Any) -> Optional[str]:
    """Return the kind of plain conversion for a parameter, or None to leave it to typer."""
    if file_annotation is not None or parameter_info.parser is not None:
        return None
    if getattr(parameter_info, "click_type", None) is not None:
        return None
    if annotation is str:
        return KIND_STR
    if annotation is bool:
        return KIND_BOOL
    if annotation is int and not parameter_info.clamp:
        return KIND_INT
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return KIND_STR_LIST
    return None


def convert_plain(kind: str, parameter_info: Any, value: Any) -> Any:
    """Return `value` converted as pydantic's lax mode would, or UNHANDLED when unsure."""
    if kind == KIND_STR:
        return value if type(value) is str else UNHANDLED
    if kind == KIND_BOOL:
        return value if type(value) is bool else UNHANDLED
    if kind == KIND_STR_LIST:
        if type(value) in (list, tuple) and all(type(item) is str for item in value):
            return list(value)
        return UNHANDLED
    if type(value) is int:
        number = value
    elif type(value) is str and _DECIMAL.fullmatch(value):
        number = int(value)
    else:
        return UNHANDLED
    # Out-of-range values go to typer, which words the error from the min and max.
    if parameter_info.min is not None and number < parameter_info.min:
        return UNHANDLED
    if parameter_info.max is not None and number > parameter_info.max:
        return UNHANDLED
    return number


def install() -> bool:
    """Make typer convert plain values with convert_plain(); return whether it was installed."""
    try:
        import typer.core
        from typer._coercion import RuntimeParam
    except ImportError:
        log.debug("typer has no typer._coercion module, so values are converted by typer itself")
        return False
    build_original = getattr(typer.core, "build_runtime_param", None)
    if build_original is None:
        log.debug("typer.core has no build_runtime_param, so values are converted by typer itself")
        return False
    fields = set(getattr(RuntimeParam, "__dataclass_fields__", ()))
    if fields != {"parameter_info", "annotation"}:
        log.debug("typer's RuntimeParam has the fields %s, so values are converted by typer itself", sorted(fields))
        return False
    if getattr(build_original, "casbak_plain", False):
        return True
    typer.core.build_runtime_param = _plain_builder(build_original, RuntimeParam)
    return True


def _plain_builder(build_original: Callable[[Any], Any], runtime_param_class: type) -> Callable[[Any], Any]:
    """Return a replacement for typer's converter factory that tries the plain conversion first."""

    class PlainRuntimeParam(runtime_param_class):  # type: ignore[misc, valid-type]
        """Converts well-formed plain values itself and delegates the rest to typer's converter."""

        def __init__(self, descriptor: Any, kind: str) -> None:
            super().__init__(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation)
            # RuntimeParam is a frozen dataclass, so the extra fields are set around its __setattr__.
            object.__setattr__(self, "kind", kind)
            object.__setattr__(self, "typer_converter", functools.cache(lambda: build_original(descriptor)))

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            converted = convert_plain(self.kind, self.parameter_info, value)
            if converted is UNHANDLED:
                return self.typer_converter()._coerce_value(value, param=param, ctx=ctx)
            return converted

    def build(descriptor: Any) -> Any:
        try:
            kind = plain_kind(descriptor.annotation, descriptor.parameter_info, descriptor.file_annotation)
        except AttributeError:
            # A typer version whose descriptors lack these fields converts everything itself.
            kind = None
        if kind is None:
            return build_original(descriptor)
        return PlainRuntimeParam(descriptor, kind)

    build.casbak_plain = True  # type: ignore[attr-defined]
    return build
