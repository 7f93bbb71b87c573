"""Whole-document formats: JSON, YAML and TOML.

A document whose root is a mapping (a config file) is compared key by key. A document
whose root is a list, or a YAML stream of several documents, is compared as records.
These formats are parsed whole, so documents above MAX_DOCUMENT_BYTES are compared
by chunks instead.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import yaml

from casbak.records.matching import match_records
from casbak.records.model import ContentDiff, RecordLimits
from casbak.records.structure import diff_values
from casbak.records.streams import Opener

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# NOTE: a guessed limit; parsing a document takes several times its size in memory.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024

DOCUMENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, yaml.YAMLError)


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but reading `5e-7` as a float as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot, so learning rates written
    as `1e-6` would otherwise compare as strings.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_document(open_stream: Opener, format_name: str) -> Any:
    """Parse one version of a JSON, YAML or TOML file."""
    with open_stream() as stream:
        if format_name == "json":
            return json.load(stream)
        if format_name == "toml":
            return tomllib.load(stream)
        documents = list(yaml.load_all(stream, Loader=_YamlLoader))
    if len(documents) == 1:
        return documents[0]
    return documents


def diff_documents(
    open_old: Opener, open_new: Opener, format_name: str, key: str | None, limits: RecordLimits
) -> ContentDiff:
    old = load_document(open_old, format_name)
    new = load_document(open_new, format_name)
    if isinstance(old, list) and isinstance(new, list):
        records = match_records(lambda: iter(old), lambda: iter(new), key, limits)
        return ContentDiff(format=format_name, records=records)
    return ContentDiff(format=format_name, keys=diff_values(old, new))
