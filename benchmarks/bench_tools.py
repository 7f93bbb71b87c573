"""Command lines of casbak, restic and BorgBackup, and measurement of one command.

All three tools run with encryption on and zstd-class compression:
casbak with its default zstd level 3 and AES-256-GCM, restic with repository format 2 and
`--compression auto` (zstd), borg with `repokey-blake2` and `--compression zstd,3`.
Each tool keeps its cache under the benchmark's work directory, so runs do not share
state with the user's own caches.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

PASSWORD = "benchmark-password-not-secret"
GNU_TIME = "/usr/bin/time"

# Directory with a casbak source tree to run instead of the installed package (set by use_casbak_source()).
_casbak_source: Optional[Path] = None


@dataclass
class Measurement:
    """Wall time, CPU time and peak resident set size (rss_kib) of one command."""

    wall_seconds: float
    user_seconds: float
    system_seconds: float
    rss_kib: int
    returncode: int
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@functools.lru_cache(maxsize=1)
def has_gnu_time() -> bool:
    """Return True when /usr/bin/time accepts -v (GNU time), which reports peak RSS per command."""
    if not os.access(GNU_TIME, os.X_OK):
        return False
    probe = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True)
    return "Maximum resident set size" in probe.stderr


def warm_page_cache(root: Path) -> None:
    """Read every file under `root` so that the next command finds it in the page cache.

    borg drops the pages of the files it reads and writes (posix_fadvise DONTNEED), so
    whichever tool ran after borg used to read its input from disk: 13.1 s against 5.7 s
    for casbak on 100,000 small files. Every tool now starts with a warm cache.
    """
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            try:
                with open(os.path.join(directory, name), "rb", buffering=0) as handle:
                    while handle.read(1 << 20):
                        pass
            except OSError:
                continue  # a lock or socket file that vanished or cannot be read


def measure(command: list[str], env: dict[str, str], cwd: Optional[Path] = None) -> Measurement:
    """Run `command` to completion and return its wall time, CPU time and peak RSS.

    With GNU time the RSS is that of the command's largest process. Without it, the
    value comes from getrusage(RUSAGE_CHILDREN), which is the maximum over all children
    this process has waited for so far, so it can only grow from one call to the next.
    """
    report = None
    if has_gnu_time():
        handle, report = tempfile.mkstemp(prefix="bench-time-")
        os.close(handle)
        command = [GNU_TIME, "-v", "-o", report] + command
    # Write back what earlier steps left dirty (generated data, the previous tool's
    # repository, deleted trees), so that no tool pays for another's disk writes.
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stderr_tail = result.stderr.decode(errors="replace")[-2000:]
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    rss = after.ru_maxrss
    if report is not None:
        text = Path(report).read_text()
        os.unlink(report)
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        rss = int(match.group(1)) if match else rss
    if result.returncode != 0:
        log.error("command failed with status %d: %s\n%s", result.returncode, " ".join(command), stderr_tail)
    return Measurement(wall, user, system, rss, result.returncode, stderr_tail)


def directory_bytes(path: Path) -> int:
    """Return the sum of the apparent sizes of the regular files under `path`."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total


@dataclass
class Tool:
    """One backup tool with its repository and cache under `workdir`."""

    name: str
    workdir: Path
    chunk_avg_kib: Optional[int] = None
    snapshots: int = field(default=0)

    @property
    def repository(self) -> Path:
        return self.workdir / "repository"

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "CASBAK_PASSWORD": PASSWORD,
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_REPOSITORY": str(self.repository),
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_REPO": str(self.repository),
            "BORG_BASE_DIR": str(self.cache),
            "XDG_CACHE_HOME": str(self.cache),
        })
        return env

    def init_command(self) -> list[str]:
        if self.name == "casbak":
            command = casbak_command() + ["-q", "-r", str(self.repository), "init"]
            if self.chunk_avg_kib is not None:
                command += ["--chunk-avg", str(self.chunk_avg_kib)]
            return command
        if self.name == "restic":
            return ["restic", "-q", "init", "--repository-version", "2"]
        if self.name == "borg":
            return ["borg", "init", "--encryption", "repokey-blake2"]
        raise ValueError(f"unknown tool {self.name!r}: expected casbak, restic or borg")

    def snapshot_command(self, source: Path) -> list[str]:
        self.snapshots += 1
        if self.name == "casbak":
            return casbak_command() + ["-q", "-r", str(self.repository), "snapshot", str(source)]
        if self.name == "restic":
            return ["restic", "-q", "backup", "--compression", "auto", "--host", "bench", str(source)]
        return ["borg", "create", "--compression", "zstd,3", f"::snapshot-{self.snapshots:03d}", str(source)]

    def restore_command(self, source: Path, target: Path) -> tuple[list[str], Path]:
        """Return the restore command and the directory in the target that mirrors `source`."""
        if self.name == "casbak":
            command = casbak_command() + ["-q", "-r", str(self.repository), "restore", "latest",
                       "--target", str(target), "--path", str(source)]
            return command, target
        mirrored = target / str(source).lstrip("/")
        if self.name == "restic":
            return ["restic", "-q", "restore", "latest", "--target", str(target)], mirrored
        # borg extracts into the working directory, with the leading slash removed.
        return ["borg", "extract", f"::snapshot-{self.snapshots:03d}"], mirrored

    def setup(self) -> Measurement:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.cache.mkdir(parents=True)
        return measure(self.init_command(), self.environment())

    def snapshot(self, source: Path) -> Measurement:
        warm_page_cache(source)
        return measure(self.snapshot_command(source), self.environment())

    def restore(self, source: Path, target: Path) -> tuple[Measurement, Path]:
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        warm_page_cache(self.workdir)
        command, mirrored = self.restore_command(source, target)
        return measure(command, self.environment(), cwd=target), mirrored

    def repository_bytes(self) -> int:
        return directory_bytes(self.repository)

    def index_bytes(self) -> int:
        return directory_bytes(self.repository / "index")


def use_casbak_source(source: Optional[Path]) -> None:
    """Run casbak from the source tree `source` (a `git archive` export) instead of the installed one."""
    global _casbak_source
    _casbak_source = source


def casbak_command() -> list[str]:
    """Return the argument prefix that starts casbak."""
    if _casbak_source is not None:
        # `python -c` puts the working directory first on sys.path, and that may be a checkout
        # with other code, so the exported tree goes in front of it explicitly.
        bootstrap = f"import sys; sys.path.insert(0, {str(_casbak_source)!r}); from casbak.cli import main; main()"
        return [sys.executable, "-c", bootstrap]
    beside = Path(sys.executable).with_name("casbak")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("casbak")
    if found is None:
        raise SystemExit("casbak is not installed: run `pip install -e .` in the repository first")
    return [found]


def tool_version(name: str) -> str:
    """Return the first line of `NAME version` output, or why it is unavailable."""
    commands = {"restic": ["restic", "version"], "borg": ["borg", "--version"], "zstd": ["zstd", "--version"],
                "b3sum": ["b3sum", "--version"]}
    if name == "casbak":
        return "casbak from " + (str(_casbak_source) if _casbak_source else "the installed package")
    try:
        result = subprocess.run(commands[name], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "not installed"
    return (result.stdout or result.stderr).strip().splitlines()[0]
