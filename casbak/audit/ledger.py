"""The snapshot ledger: signature checks over the hash chain, and its JSON-lines export.

Chain order is the order of (time_ns, id), the order in which `previous` links are
written. Signing "began" at the first signed manifest in that order: every later
manifest must be signed too, by a known signer, with a signature that verifies.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Iterable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from casbak.audit.signing import SIGNATURE_ALGORITHM, raw_public_key, signature_is_valid
from casbak.manifest import Manifest

log = logging.getLogger(__name__)

LEDGER_SCHEMA = "casbak.ledger/1"

# Problem kinds; verify reports them as findings of the same names.
SIGNATURE_INVALID = "signature_invalid"
SIGNER_UNKNOWN = "signer_unknown"
MANIFEST_UNSIGNED = "manifest_unsigned"


@dataclass(frozen=True)
class LedgerProblem:
    """One manifest whose signature does not hold, in chain order."""

    kind: str
    snapshot: str
    time_iso: str
    message: str


def check_signatures(
    manifests: Iterable[Manifest],
    keys: dict[str, Ed25519PublicKey],
    pinned: Optional[set[str]] = None,
) -> list[LedgerProblem]:
    """Check every manifest's signature in chain order and return the problems found.

    `keys` are the public keys the repository stores. With `pinned`, only those
    fingerprints are trusted, whatever else the repository lists, so a key planted by
    someone with the repository password is reported as unknown.
    """
    problems = []
    signing_began: Optional[Manifest] = None
    for manifest in sorted(manifests, key=lambda m: (m.time_ns, m.id)):
        what = f"snapshot {manifest.id[:12]} ({manifest.time_iso})"
        if manifest.signer is None and manifest.signature is None:
            if signing_began is not None:
                message = (
                    f"{what}: is unsigned, but snapshots are signed since snapshot {signing_began.id[:12]} "
                    f"({signing_began.time_iso}); it was written without the signing key or forged"
                )
                problems.append(LedgerProblem(MANIFEST_UNSIGNED, manifest.id, manifest.time_iso, message))
            continue
        if signing_began is None:
            signing_began = manifest
        problem = _check_one(manifest, what, keys, pinned)
        if problem is not None:
            problems.append(problem)
    return problems


def _check_one(
    manifest: Manifest, what: str, keys: dict[str, Ed25519PublicKey], pinned: Optional[set[str]]
) -> Optional[LedgerProblem]:
    signer = manifest.signer
    if not isinstance(signer, str) or (pinned is not None and signer not in pinned) or signer not in keys:
        reason = "is not one of the pinned signers" if pinned is not None and signer not in pinned else (
            "has no public key stored under signers/"
        )
        message = f"{what}: signed by unknown signer {str(signer)[:16]}, which {reason}"
        return LedgerProblem(SIGNER_UNKNOWN, manifest.id, manifest.time_iso, message)
    if not signature_is_valid(manifest, keys[signer]):
        message = (
            f"{what}: the signature of signer {signer[:16]} does not verify "
            "(the manifest was edited after signing, or the signature was replaced)"
        )
        return LedgerProblem(SIGNATURE_INVALID, manifest.id, manifest.time_iso, message)
    return None


def ledger_entry(manifest: Manifest, keys: dict[str, Ed25519PublicKey]) -> dict:
    """Return one ledger line for a manifest.

    `signed_bytes` (base64) is exactly what the signature covers, so an auditor can
    check the signature with the public key alone and read `previous` and `tree` out
    of the signed bytes instead of trusting this line's copies.
    """
    public_key = keys.get(manifest.signer) if isinstance(manifest.signer, str) else None
    signed = isinstance(manifest.signature, bytes)
    return {
        "schema": LEDGER_SCHEMA,
        "id": manifest.id,
        "time": manifest.time_iso,
        "time_ns": manifest.time_ns,
        "tree": manifest.tree.hex(),
        "previous": manifest.previous,
        "signer": manifest.signer,
        "algorithm": SIGNATURE_ALGORITHM if signed else None,
        "public_key": raw_public_key(public_key).hex() if public_key is not None else None,
        "signature": manifest.signature.hex() if signed else None,
        "signed_bytes": base64.b64encode(manifest.signed_bytes()).decode("ascii") if signed else None,
    }


def ledger_entries(manifests: Iterable[Manifest], keys: dict[str, Ed25519PublicKey]) -> list[dict]:
    """Return the ledger lines of `manifests`, oldest first."""
    ordered = sorted(manifests, key=lambda m: (m.time_ns, m.id))
    return [ledger_entry(manifest, keys) for manifest in ordered]
