"""`casbak key list|add|remove|passwd`: manage the passwords of an encrypted repository."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Optional

import typer

from casbak.cli.audit_cmd import init_signing_key
from casbak.cli.context import CliState
from casbak.errors import PasswordMissing, UsageError

if TYPE_CHECKING:
    from casbak.crypto import KdfParams
    from casbak.store.repository import Repository

NEW_PASSWORD_ENV = "CASBAK_NEW_PASSWORD"

key_app = typer.Typer(
    name="key",
    help="List, add, remove or change the passwords (key files) of an encrypted repository.",
    no_args_is_help=True,
)

_NEW_PASSWORD_FILE = typer.Option(
    None,
    "--new-password-file",
    help=f"Read the new password from this file (else {NEW_PASSWORD_ENV}, else a prompt on a terminal).",
)
# None means KdfParams().n, so that registering the option does not import casbak.crypto.
_KDF_N = typer.Option(None, "--kdf-n", hidden=True, help="scrypt cost N of the new key (a power of two).")


def _kdf_params(kdf_n: Optional[int]) -> KdfParams:
    from casbak.crypto import KdfParams

    return KdfParams() if kdf_n is None else KdfParams(n=kdf_n)


def _open_encrypted(state: CliState) -> Repository:
    repository = state.open_repository()
    if not repository.encrypted:
        raise UsageError(
            f"repository {repository.backend.url}: is not encrypted, so it has no keys; "
            "key commands apply only to encrypted repositories"
        )
    return repository


def read_new_password(path: Optional[str]) -> bytes:
    """Return the new password from --new-password-file, CASBAK_NEW_PASSWORD or a prompt."""
    if path is not None:
        try:
            with open(os.path.expanduser(path), "rb") as handle:
                secret = handle.read().rstrip(b"\r\n")
        except OSError as exc:
            raise PasswordMissing(f"new password file {path}: cannot be read ({exc.strerror})") from exc
    elif os.environ.get(NEW_PASSWORD_ENV) is not None:
        secret = os.environ[NEW_PASSWORD_ENV].encode()
    elif sys.stdin.isatty():
        secret = _prompt_twice()
    else:
        raise PasswordMissing(
            f"no new password given: pass --new-password-file or set {NEW_PASSWORD_ENV} "
            "(standard input is not a terminal, so casbak cannot prompt)"
        )
    if not secret:
        raise UsageError("new password is empty: an encrypted repository needs a non-empty password")
    return secret


def _prompt_twice() -> bytes:
    import getpass

    first = getpass.getpass("new password: ")
    second = getpass.getpass("new password again: ")
    if first != second:
        raise UsageError("the two new passwords differ; nothing was changed")
    return first.encode()


@key_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """List the key files; the one that opened the repository is marked with *."""
    from casbak.store.keys import list_keys

    state: CliState = ctx.obj
    repository = _open_encrypted(state)
    infos = list_keys(repository.backend)
    if state.json:
        state.emit_json(
            [
                {"id": i.key_id, "current": i.key_id == repository.key_id, "created": i.created, "host": i.host, "user": i.user}
                for i in infos
            ]
        )
        return
    typer.echo(f"  {'ID':<32}  {'CREATED (UTC)':<19}  {'HOST':<20}  USER")
    for info in infos:
        marker = "*" if info.key_id == repository.key_id else " "
        created = info.created[:19].replace("T", " ")
        typer.echo(f"{marker} {info.key_id:<32}  {created:<19}  {info.host[:20]:<20}  {info.user}")


@key_app.command("add")
def add_command(
    ctx: typer.Context,
    new_password_file: Optional[str] = _NEW_PASSWORD_FILE,
    kdf_n: Optional[int] = _KDF_N,
) -> None:
    """Add a key file for a new password; the existing passwords keep working."""
    from casbak.store.keys import add_key

    state: CliState = ctx.obj
    repository = _open_encrypted(state)
    password = read_new_password(new_password_file)
    key_id = add_key(repository.backend, repository.master_keys, password, _kdf_params(kdf_n))
    if state.json:
        state.emit_json({"added": key_id})
    elif not state.quiet:
        typer.echo(f"added key {key_id}")


@key_app.command("remove")
def remove_command(ctx: typer.Context, key: str = typer.Argument(..., help="Key id or a unique prefix of it.")) -> None:
    """Remove a key file; the key in use and the last key cannot be removed."""
    from casbak.store.keys import remove_key, resolve_key_id

    state: CliState = ctx.obj
    repository = _open_encrypted(state)
    key_id = resolve_key_id(repository.backend, key)
    remove_key(repository.backend, key_id, repository.key_id)
    if state.json:
        state.emit_json({"removed": key_id})
    elif not state.quiet:
        typer.echo(f"removed key {key_id}")


@key_app.command("passwd")
def passwd_command(
    ctx: typer.Context,
    new_password_file: Optional[str] = _NEW_PASSWORD_FILE,
    kdf_n: Optional[int] = _KDF_N,
) -> None:
    """Change the password in use: add a key for the new password, then remove the old key."""
    from casbak.store.keys import change_password

    state: CliState = ctx.obj
    repository = _open_encrypted(state)
    password = read_new_password(new_password_file)
    old_key_id = repository.key_id
    new_key_id = change_password(repository.backend, repository.master_keys, old_key_id, password, _kdf_params(kdf_n))
    if state.json:
        state.emit_json({"added": new_key_id, "removed": old_key_id})
    elif not state.quiet:
        typer.echo(f"changed password: added key {new_key_id}, removed key {old_key_id}")


@key_app.command("signing-init")
def signing_init_command(ctx: typer.Context) -> None:
    """Create an Ed25519 snapshot signing key outside the repository and store its public key inside."""
    state: CliState = ctx.obj
    repository = state.open_repository()
    init_signing_key(state, repository)


def register(app: typer.Typer) -> None:
    app.add_typer(key_app, name="key")
