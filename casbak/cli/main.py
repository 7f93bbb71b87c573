"""The `casbak` command: global options, command registration, error reporting."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import List, Optional

import typer

# Command modules import their operation modules inside the command functions, so that a
# run loads only what its command uses. tests/cli/test_startup_imports.py checks this.
from casbak.cli import repo_cmd, restore_cmd, snapshot_cmd
from casbak.cli import diff_cmd
from casbak.cli import key_cmd
from casbak.cli import verify_cmd
from casbak.cli import dump_cmd, find_cmd, stats_cmd, tag_cmd
from casbak.cli import gc_cmd
from casbak.cli import copy_cmd
from casbak.cli import audit_cmd
from casbak.cli import coercion
from casbak.cli.context import CliState, parse_options
from casbak.cli.profiles import apply_profile, load_profile
from casbak.errors import CasbakError, IntegrityError

# Plain option values are converted without pydantic, which typer would import on every run.
coercion.install()

app = typer.Typer(
    name="casbak",
    help="Content-addressed, deduplicating, encrypted snapshots of ML alignment data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def global_options(
    ctx: typer.Context,
    repo: Optional[str] = typer.Option(
        None, "--repo", "-r", envvar="CASBAK_REPOSITORY",
        help="Repository location: a local path, memory://NAME, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX.",
    ),
    password_file: Optional[str] = typer.Option(
        None, "--password-file", envvar="CASBAK_PASSWORD_FILE",
        help="Read the repository password from this file (CASBAK_PASSWORD takes precedence).",
    ),
    password_command: Optional[str] = typer.Option(
        None, "--password-command", envvar="CASBAK_PASSWORD_COMMAND",
        help="Run this shell command and use its standard output as the password.",
    ),
    option: List[str] = typer.Option(
        [], "--option", "-o", help="Storage option KEY=VALUE, such as s3.endpoint_url=http://127.0.0.1:9000.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON on standard output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log more (-v info, -vv debug)."),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Neither read nor fill the local cache of a remote repository's index and trees.",
    ),
    profile: Optional[str] = typer.Option(
        None, "--profile", envvar="CASBAK_PROFILE",
        help="Use this named profile of the config file; options given here override its values.",
    ),
    config: Optional[str] = typer.Option(
        None, "--config", help="TOML config file with profiles (default: $XDG_CONFIG_HOME/casbak/config.toml).",
    ),
    signing_key: Optional[str] = typer.Option(
        None, "--signing-key", envvar="CASBAK_SIGNING_KEY",
        help="Ed25519 key file that signs new snapshots (default: $XDG_CONFIG_HOME/casbak/signing/<repository id>.pem "
        "when it exists); its password comes from CASBAK_SIGNING_KEY_PASSWORD.",
    ),
) -> None:
    ctx.obj = CliState(
        repo=repo,
        password_file=password_file,
        password_command=password_command,
        options=parse_options(option),
        json=json_output,
        quiet=quiet,
        verbose=verbose,
        no_cache=no_cache,
        signing_key=signing_key,
    )
    _configure_logging(quiet, verbose)
    if profile:
        apply_profile(ctx, ctx.obj, load_profile(profile, config))


def _configure_logging(quiet: bool, verbose: int) -> None:
    level = logging.ERROR if quiet else logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="casbak: %(levelname)s: %(message)s", stream=sys.stderr, force=True)


repo_cmd.register(app)
snapshot_cmd.register(app)
restore_cmd.register(app)
diff_cmd.register(app)
key_cmd.register(app)
verify_cmd.register(app)
gc_cmd.register(app)
dump_cmd.register(app)
stats_cmd.register(app)
find_cmd.register(app)
tag_cmd.register(app)
copy_cmd.register(app)
audit_cmd.register(app)


# Options of the top-level callback that users may also write after the command name,
# as restic accepts its global flags anywhere. main() moves them to the front.
_GLOBAL_FLAGS = {"--json", "--quiet", "-q", "--verbose", "-v", "-vv", "-vvv", "--no-cache"}
_GLOBAL_OPTIONS = {
    "--repo", "-r", "--password-file", "--password-command", "--option", "-o", "--profile", "--config", "--signing-key",
}


def hoist_global_options(args: list[str]) -> list[str]:
    """Move global options that appear after the command name in front of it."""
    front: list[str] = []
    rest: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--":
            rest.extend(args[position:])
            break
        name = arg.split("=", 1)[0]
        if arg in _GLOBAL_FLAGS:
            front.append(arg)
        elif name in _GLOBAL_OPTIONS and "=" in arg:
            front.append(arg)
        elif arg in _GLOBAL_OPTIONS and position + 1 < len(args):
            front.extend(args[position : position + 2])
            position += 1
        else:
            rest.append(arg)
        position += 1
    return front + rest


def main() -> None:
    """Console entry point: run the app and map casbak errors to documented exit codes."""
    try:
        app(args=hoist_global_options(sys.argv[1:]), prog_name="casbak")
    except CasbakError as exc:
        if isinstance(exc, IntegrityError) or os.environ.get("CASBAK_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        print(f"casbak: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("casbak: interrupted; nothing was committed after the last completed step", file=sys.stderr)
        sys.exit(130)
