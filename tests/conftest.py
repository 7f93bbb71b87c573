"""Shared fixtures: isolated environment, small repositories, tree helpers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from casbak.chunking import ChunkerParams
from casbak.crypto import KdfParams
from casbak.store.config import RepositoryConfig
from casbak.store.repository import Repository

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PASSWORD = b"correct horse battery staple"

# Small sizes make kilobyte inputs cross chunk and pack boundaries.
SMALL_CHUNKER = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)
SMALL_PACK = 64 * 1024
FAST_KDF = KdfParams(n=2**10)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path_factory):
    """Keep the developer's CASBAK_* settings and caches out of every test."""
    for name in list(os.environ):
        if name.startswith("CASBAK_"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))


def small_config(encrypted: bool = True, **changes) -> RepositoryConfig:
    seed = ChunkerParams.random_seed() if encrypted else 0
    chunker = ChunkerParams(SMALL_CHUNKER.min_size, SMALL_CHUNKER.avg_size, SMALL_CHUNKER.max_size, seed=seed)
    values = {"encryption": "aes-256-gcm" if encrypted else "none", "chunker": chunker, "pack_size": SMALL_PACK}
    values.update(changes)
    return RepositoryConfig(**values)


@pytest.fixture
def repo_path(tmp_path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def repository(repo_path) -> Repository:
    """An encrypted local repository with tiny chunks and packs."""
    Repository.init(str(repo_path), PASSWORD, config=small_config(), kdf=FAST_KDF)
    return Repository.open(str(repo_path), PASSWORD)


@pytest.fixture
def memory_repository() -> Repository:
    """An unencrypted repository in fsspec's memory filesystem, under a unique name."""
    url = f"memory://casbak-test-{uuid.uuid4().hex}"
    Repository.init(url, None, config=small_config(encrypted=False))
    return Repository.open(url)


def make_tree(root: Path, spec: dict) -> None:
    """Create files from a nested dict: bytes are file contents, dicts are directories,
    and ("symlink", target) tuples are symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in spec.items():
        path = root / name
        if isinstance(value, dict):
            make_tree(path, value)
        elif isinstance(value, tuple) and value[0] == "symlink":
            os.symlink(value[1], path)
        else:
            path.write_bytes(value)


def read_tree(root: Path) -> dict:
    """Return a directory as the nested dict form make_tree() takes."""
    result: dict = {}
    for name in sorted(os.listdir(root)):
        path = root / name
        if path.is_symlink():
            result[name] = ("symlink", os.readlink(path))
        elif path.is_dir():
            result[name] = read_tree(path)
        else:
            result[name] = path.read_bytes()
    return result
