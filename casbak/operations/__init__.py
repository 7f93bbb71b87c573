"""Operations over a repository: each module has a Python API that the CLI calls."""
