"""Run the casbak command of this checkout in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]


def run_casbak(
    repo: Path, *args: str, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None
) -> subprocess.CompletedProcess:
    """Run `casbak -r REPO ARGS...` with the test password; extra `env` entries override.

    PYTHONPATH points at this checkout, so the code under test runs even when another
    checkout is the installed one.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CASBAK_")}
    environment["PYTHONPATH"] = str(ROOT)
    environment["CASBAK_PASSWORD"] = PASSWORD.decode()
    environment.update(env or {})
    command = [sys.executable, "-c", "from casbak.cli.main import main; main()", "-r", str(repo), *args]
    return subprocess.run(
        command, capture_output=True, env=environment, cwd=cwd, timeout=120, stdin=subprocess.DEVNULL
    )
