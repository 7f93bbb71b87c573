"""Config diffs: changed keys of YAML, JSON and TOML files as dotted paths with old and new values."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CORPUS

DPO_CONFIG = CORPUS / "configs" / "train_configs" / "dpo" / "default.yaml"
DEEPSPEED_CONFIG = CORPUS / "configs" / "ds_configs" / "stage3_offloading.conf"


def _triples(content) -> list[tuple]:
    return [(change.path, change.old, change.new) for change in content.keys]


@pytest.mark.skipif(not DPO_CONFIG.is_file(), reason="corpus configs not available")
def test_yaml_corpus_config_edits(file_diff):
    old = DPO_CONFIG.read_text()
    new = old.replace("learning_rate: 5.0e-7", "learning_rate: 1.0e-6").replace("num_epochs: 3", "num_epochs: 1")
    new += "optimizer:\n  betas: [0.9, 0.95]\n"

    content = file_diff("dpo.yaml", old.encode(), new.encode())

    assert content.format == "yaml"
    assert _triples(content) == [
        ("learning_rate", 5e-07, 1e-06),
        ("num_epochs", 3, 1),
        ("optimizer", None, {"betas": [0.9, 0.95]}),
    ]
    assert [change.status for change in content.keys] == ["changed", "changed", "added"]


def test_yaml_nested_keys_and_list_indexes(file_diff):
    old = b"optimizer:\n  lr: 5e-7\n  eps: 1e-8\ndata:\n  files: [a.jsonl, b.jsonl, c.jsonl]\n"
    new = b"optimizer:\n  lr: 1e-6\ndata:\n  files: [a.jsonl, b.jsonl, d.jsonl, e.jsonl]\n"

    content = file_diff("train.yml", old, new)

    assert _triples(content) == [
        ("data.files[2]", "c.jsonl", "d.jsonl"),
        ("data.files[3]", None, "e.jsonl"),
        ("optimizer.eps", 1e-08, None),
        ("optimizer.lr", 5e-07, 1e-06),
    ]
    assert [change.status for change in content.keys] == ["changed", "added", "removed", "changed"]


@pytest.mark.skipif(not DEEPSPEED_CONFIG.is_file(), reason="corpus configs not available")
def test_json_corpus_config_edits(file_diff):
    document = json.loads(DEEPSPEED_CONFIG.read_text())
    edited = json.loads(DEEPSPEED_CONFIG.read_text())
    edited["optimizer"]["params"]["lr"] = 1e-06
    edited["bf16"]["enabled"] = True
    del edited["scheduler"]["type"]

    content = file_diff("ds.json", json.dumps(document, indent=4).encode(), json.dumps(edited).encode())

    assert content.format == "json"
    assert _triples(content) == [
        ("bf16.enabled", "auto", True),
        ("optimizer.params.lr", "auto", 1e-06),
        ("scheduler.type", "WarmupDecayLR", None),
    ]


def test_json_reformatting_changes_no_key(file_diff):
    document = {"a": {"b": [1, 2]}, "c": "d"}

    content = file_diff("same.json", json.dumps(document).encode(), json.dumps(document, indent=2).encode())

    assert content.keys == []


def test_toml_keys(file_diff):
    old = b'[model]\nname = "tulu"\nlayers = 32\n\n[train]\nlr = 5e-7\nseeds = [1, 2]\n'
    new = b'[model]\nname = "tulu-2"\nlayers = 32\n\n[train]\nlr = 1e-6\nseeds = [1, 2, 3]\n"odd.key" = true\n'

    content = file_diff("run.toml", old, new)

    assert content.format == "toml"
    assert _triples(content) == [
        ("model.name", "tulu", "tulu-2"),
        ("train.lr", 5e-07, 1e-06),
        ('train["odd.key"]', None, True),
        ("train.seeds[2]", None, 3),
    ]


def test_integer_to_float_is_a_change(file_diff):
    content = file_diff("types.yaml", b"warmup: 1\nflag: 1\n", b"warmup: 1.0\nflag: true\n")

    assert _triples(content) == [("flag", 1, True), ("warmup", 1, 1.0)]
