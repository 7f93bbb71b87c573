"""The pg_dump recipe end to end, against a throwaway PostgreSQL cluster on 127.0.0.1.

The test starts its own cluster with initdb and pg_ctl (Debian's postgresql package) in a
temporary directory and loads the real preference pairs into a table. It backs the table
up with `casbak snapshot --stdin-from-command 'pg_dump -Fc ...'`, pipes `casbak dump` into
pg_restore, and compares the restored rows with a checksum query.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.test_snapshot_cli import CLI, run_casbak, run_json
from tests.conftest import CORPUS, PASSWORD

PREFERENCES = CORPUS / "preferences" / "hh-rlhf-harmless-base-test.jsonl.gz"
PG_PROGRAMS = ("initdb", "pg_ctl", "pg_dump", "pg_restore", "psql")
CHECKSUM_QUERY = (
    "SELECT count(*) || ':' || md5(string_agg(md5(row(id, prompt, chosen, rejected)::text), '' ORDER BY id)) "
    "FROM preferences"
)


def find_pg_bin() -> Path | None:
    """Return the directory holding every PostgreSQL program the test needs, newest version first."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.insert(0, str(Path(os.path.realpath(initdb)).parent))
    for directory in candidates:
        if all(os.access(os.path.join(directory, program), os.X_OK) for program in PG_PROGRAMS):
            return Path(directory)
    return None


PG_BIN = find_pg_bin()
pytestmark = pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server binaries (initdb, pg_ctl) are not installed; apt-get install postgresql")


@dataclass
class Cluster:
    bin: Path
    port: int

    def client(self, program: str, *args: str) -> list[str]:
        return [str(self.bin / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args]

    def sql(self, database: str, query: str, stdin: bytes = b"") -> str:
        result = subprocess.run(self.client("psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", query),
                                input=stdin, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode().strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_user() -> pwd.struct_passwd | None:
    """Return the account that runs the server: None for the current user, `postgres` for root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no `postgres` user exists to run the server")


def as_server_user(command: list[str]) -> list[str]:
    # initdb and postgres reject running as root, so root runs them as the postgres user.
    user = server_user()
    return command if user is None else ["runuser", "-u", user.pw_name, "--", *command]


@pytest.fixture(scope="module")
def cluster():
    # Not pytest's tmp_path: its parent directories are private to root, and the server
    # runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="casbak-pg-"))
    data, log_file = base / "data", base / "server.log"
    user = server_user()
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    port = free_port()
    initdb = as_server_user([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
    subprocess.run(initdb, check=True, capture_output=True, timeout=300)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off"
    start = as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-o", options, "-w", "-t", "120", "start"])
    started = subprocess.run(start, capture_output=True, timeout=180)
    if started.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {started.stderr.decode()}")
    try:
        yield Cluster(PG_BIN, port)
    finally:
        subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def preference_rows() -> bytes:
    """Return the corpus preference pairs as CSV rows (id, prompt, chosen, rejected)."""
    output = io.StringIO()
    writer = csv.writer(output)
    with gzip.open(PREFERENCES, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            record = json.loads(line)
            # The prompt is the dialogue up to the final assistant turn, shared by both answers.
            cut = record["chosen"].rfind("\n\nAssistant:")
            prompt = record["chosen"][:cut] if cut >= 0 else ""
            writer.writerow([number, prompt, record["chosen"], record["rejected"]])
    return output.getvalue().encode()


@pytest.fixture(scope="module")
def preferences_db(cluster) -> str:
    if not PREFERENCES.exists():
        pytest.skip(f"corpus file {PREFERENCES} is missing")
    cluster.sql("postgres", "CREATE DATABASE prefs")
    cluster.sql("prefs", "CREATE TABLE preferences (id integer PRIMARY KEY, prompt text NOT NULL, chosen text NOT NULL, rejected text NOT NULL)")
    cluster.sql("prefs", "COPY preferences FROM STDIN WITH (FORMAT csv)", stdin=preference_rows())
    return "prefs"


def test_pg_dump_round_trip(repository, repo_path, cluster, preferences_db):
    dump_command = " ".join(cluster.client("pg_dump", "-Fc", preferences_db))
    original = cluster.sql(preferences_db, CHECKSUM_QUERY)

    report = run_json("snapshot", "--stdin-from-command", dump_command, "--stdin-filename", "prefs.dump", repo=repo_path)
    cluster.sql("postgres", "CREATE DATABASE restored")
    environment = {**os.environ, "CASBAK_PASSWORD": PASSWORD.decode()}
    dump = subprocess.Popen(CLI + ["--repo", str(repo_path), "dump", report["snapshot"], "/prefs.dump"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    restore = subprocess.run(cluster.client("pg_restore", "--no-owner", "-d", "restored"), stdin=dump.stdout,
                             capture_output=True, timeout=300)
    dump.stdout.close()
    dump_errors = dump.stderr.read()
    dump.wait(timeout=60)

    assert int(original.split(":")[0]) == 2312
    assert report["stats"]["files_new"] == 1
    assert dump.returncode == 0, dump_errors.decode()
    assert restore.returncode == 0, restore.stderr.decode()
    assert cluster.sql("restored", CHECKSUM_QUERY) == original


def test_failing_pg_dump_writes_nothing(repository, repo_path, cluster):
    dump_command = " ".join(cluster.client("pg_dump", "-Fc", "no_such_database"))
    before = repository.list_snapshot_ids()

    result = run_casbak("--json", "snapshot", "--stdin-from-command", dump_command, "--stdin-filename", "prefs.dump", repo=repo_path)
    report = json.loads(result.stdout)

    assert result.returncode == 1
    assert report["status"] == "failed"
    assert "no_such_database" in report["message"]
    assert repository.list_snapshot_ids() == before
