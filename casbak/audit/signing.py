"""Ed25519 signing keys for snapshot manifests, and the public keys a repository publishes.

The private key never enters the repository: it is a password-protected PKCS#8 PEM file
on the machine that takes snapshots. The repository stores only public keys, as sealed
objects `signers/<fingerprint>`, where the fingerprint is the hex SHA-256 of the 32 raw
public key bytes. Storing a public key proves nothing by itself: anyone with the
repository password can add one. Auditors therefore pin the fingerprint they were given
out of band (`casbak verify --ledger --signer FINGERPRINT`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from casbak.errors import CorruptObject, IntegrityError, ObjectNotFound, PasswordMissing, UsageError
from casbak.manifest import Manifest

log = logging.getLogger(__name__)

SIGNERS_PREFIX = "signers"
SIGNER_RECORD_VERSION = 1
SIGNATURE_ALGORITHM = "ed25519"
SIGNATURE_SIZE = 64
SIGNING_KEY_ENV = "CASBAK_SIGNING_KEY"
SIGNING_PASSWORD_ENV = "CASBAK_SIGNING_KEY_PASSWORD"


@dataclass(frozen=True)
class SigningKey:
    """An unlocked Ed25519 private key and the fingerprint of its public half."""

    private_key: Ed25519PrivateKey
    fingerprint: str

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint_of(public_key: Ed25519PublicKey) -> str:
    """Return the hex SHA-256 of the 32 raw public key bytes."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()


def default_key_path(repository_id: str) -> Path:
    """Return $XDG_CONFIG_HOME/casbak/signing/<repository id>.pem (~/.config when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "casbak" / "signing" / f"{repository_id}.pem"


def create_key_file(path: Path, password: bytes) -> SigningKey:
    """Generate an Ed25519 key and write it encrypted to `path` (mode 0600, never overwritten)."""
    if not password:
        raise UsageError("the signing key password is empty: a signing key file must be encrypted")
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # O_EXCL: replacing a key that already signs snapshots would switch later
        # snapshots to a key whose fingerprint the auditors have not pinned.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"signing key {path}: already exists; remove it first or pass another --signing-key") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    key = SigningKey(private_key, fingerprint_of(private_key.public_key()))
    log.info("wrote signing key %s to %s", key.fingerprint[:16], path)
    return key


def load_key_file(path: Path, password: bytes) -> SigningKey:
    """Read and decrypt a signing key file written by create_key_file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"signing key {path}: cannot be read ({exc.strerror})") from exc
    try:
        private_key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"signing key {path}: cannot be decrypted or parsed ({exc}); check {SIGNING_PASSWORD_ENV}"
        ) from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise UsageError(f"signing key {path}: is not an Ed25519 key; create one with `casbak key signing-init`")
    return SigningKey(private_key, fingerprint_of(private_key.public_key()))


def signing_password(prompt: bool) -> bytes:
    """Return the key file password from CASBAK_SIGNING_KEY_PASSWORD, else a terminal prompt."""
    secret = os.environ.get(SIGNING_PASSWORD_ENV)
    if secret is not None:
        return secret.encode()
    if prompt and sys.stdin.isatty():
        return getpass.getpass("signing key password: ").encode()
    raise PasswordMissing(
        f"no signing key password: set {SIGNING_PASSWORD_ENV} (standard input is not a terminal, so casbak cannot prompt)"
    )


def resolve_key_path(option: Optional[str], repository_id: str) -> tuple[Path, bool]:
    """Return the signing key path and whether the user named it (option or environment)."""
    named = option or os.environ.get(SIGNING_KEY_ENV)
    if named:
        return Path(os.path.expanduser(named)), True
    return default_key_path(repository_id), False


def signing_key_for(repository, option: Optional[str]) -> Optional[SigningKey]:
    """Return the signing key configured for `repository`, or None when none is configured.

    A key is configured when `option` (--signing-key) or CASBAK_SIGNING_KEY names a file,
    or when the default path for the repository id exists. A named file that is missing,
    or a key whose public half the repository does not list, is an error: a cron job
    must not fall back to unsigned snapshots without saying so.
    """
    path, named = resolve_key_path(option, repository.config.repository_id)
    try:
        present = path.exists()
    except PermissionError as exc:
        if named:
            raise UsageError(f"signing key {path}: cannot be read ({exc.strerror}); check its permissions") from exc
        # The default location belongs to another user (a job run under a service
        # account, say): no key is configured for this user.
        log.warning("signing key default %s: not readable (%s); snapshots are not signed", path, exc.strerror)
        return None
    if not present:
        if named:
            raise UsageError(f"signing key {path}: not found; create it with `casbak key signing-init --signing-key {path}`")
        return None
    key = load_key_file(path, signing_password(prompt=True))
    if key.fingerprint not in list_signer_fingerprints(repository):
        raise UsageError(
            f"signing key {path} (fingerprint {key.fingerprint}): its public key is not stored in repository "
            f"{repository.backend.url}; run `casbak key signing-init --signing-key {path}` to publish it"
        )
    return key


def sign_manifest(manifest: Manifest, key: SigningKey) -> None:
    """Set `signer` and `signature` of a manifest that is not yet written."""
    manifest.signer = key.fingerprint
    manifest.signature = None
    manifest.signature = key.sign(manifest.signed_bytes())


def signature_is_valid(manifest: Manifest, public_key: Ed25519PublicKey) -> bool:
    if not isinstance(manifest.signature, bytes) or len(manifest.signature) != SIGNATURE_SIZE:
        return False
    try:
        public_key.verify(manifest.signature, manifest.signed_bytes())
    except InvalidSignature:
        return False
    return True


# Public keys stored in the repository


def signer_path(fingerprint: str) -> str:
    return f"{SIGNERS_PREFIX}/{fingerprint}"


def publish_public_key(repository, public_key: Ed25519PublicKey) -> str:
    """Store a public key as `signers/<fingerprint>` (sealed) and return the fingerprint."""
    fingerprint = fingerprint_of(public_key)
    record = {
        "version": SIGNER_RECORD_VERSION,
        "algorithm": SIGNATURE_ALGORITHM,
        "public_key": raw_public_key(public_key),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "user": getpass.getuser(),
    }
    repository.backend.write(signer_path(fingerprint), repository.sealer.seal(msgpack.packb(record)))
    log.info("published signer %s in %s", fingerprint[:16], repository.backend.url)
    return fingerprint


def list_signer_fingerprints(repository) -> list[str]:
    return sorted(name.split("/", 1)[1] for name in repository.backend.list(SIGNERS_PREFIX))


def load_public_key(repository, fingerprint: str) -> Ed25519PublicKey:
    """Read `signers/<fingerprint>` and check that the key inside matches its name."""
    what = f"signer {fingerprint[:16]}"
    try:
        stored = repository.backend.read(signer_path(fingerprint))
    except ObjectNotFound as exc:
        raise ObjectNotFound(f"{what}: not stored in the repository (no {signer_path(fingerprint)})") from exc
    body = msgpack.unpackb(repository.sealer.open(stored, what=what))
    if not isinstance(body, dict) or body.get("version") != SIGNER_RECORD_VERSION:
        raise CorruptObject(f"{what}: not a version {SIGNER_RECORD_VERSION} signer record")
    if body.get("algorithm") != SIGNATURE_ALGORITHM or not isinstance(body.get("public_key"), bytes):
        raise CorruptObject(f"{what}: not an {SIGNATURE_ALGORITHM} public key")
    public_key = Ed25519PublicKey.from_public_bytes(body["public_key"])
    if fingerprint_of(public_key) != fingerprint:
        raise CorruptObject(f"{what}: the stored public key does not match the fingerprint in its name")
    return public_key


def load_public_keys(repository) -> tuple[dict[str, Ed25519PublicKey], dict[str, str]]:
    """Return (usable keys by fingerprint, error message by fingerprint of damaged records)."""
    keys: dict[str, Ed25519PublicKey] = {}
    damaged: dict[str, str] = {}
    for fingerprint in list_signer_fingerprints(repository):
        try:
            keys[fingerprint] = load_public_key(repository, fingerprint)
        except (IntegrityError, ValueError, msgpack.UnpackException) as exc:
            log.error("signer %s: skipped: %s", fingerprint[:16], exc)
            damaged[fingerprint] = str(exc)
    return keys, damaged
