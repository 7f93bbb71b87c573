"""`verify --ledger`: manifest signatures next to the hash chain, and the first broken link.

The hash chain itself is checked by structure.check_chain on every verify run. This
module adds the signature checks of casbak.audit.ledger and picks, among the chain and
signature errors, the one that comes first in chain order.
"""

from __future__ import annotations

import logging
from typing import Optional

from casbak.audit.ledger import MANIFEST_UNSIGNED, SIGNATURE_INVALID, SIGNER_UNKNOWN, check_signatures
from casbak.audit.signing import load_public_keys
from casbak.operations.verify.findings import CHAIN_BROKEN, MANIFEST_ID_MISMATCH, Finding, VerifyResult
from casbak.operations.verify.structure import RepositoryState
from casbak.store.repository import Repository

log = logging.getLogger(__name__)

SIGNER_DAMAGED = "signer_damaged"
SIGNER_NOT_STORED = "signer_not_stored"


def check_ledger(
    repository: Repository, state: RepositoryState, result: VerifyResult, pinned: Optional[set[str]]
) -> Optional[Finding]:
    """Add signature findings for every valid manifest; return the first broken link, if any."""
    keys, damaged = load_public_keys(repository)
    for fingerprint, message in damaged.items():
        result.errors.append(Finding(SIGNER_DAMAGED, f"{message}; snapshots it signed are reported as unknown signer", object=fingerprint))
    for fingerprint in sorted(pinned or ()):
        if fingerprint not in keys and fingerprint not in damaged:
            result.errors.append(
                Finding(
                    SIGNER_NOT_STORED,
                    f"pinned signer {fingerprint[:16]}: no public key with this fingerprint is stored under signers/",
                    object=fingerprint,
                )
            )
    for problem in check_signatures(state.manifests, keys, pinned):
        result.errors.append(Finding(problem.kind, problem.message, snapshot=problem.snapshot))
    return first_broken_link(state, result)


def first_broken_link(state: RepositoryState, result: VerifyResult) -> Optional[Finding]:
    """Return the chain or signature error of the earliest manifest in chain order.

    A manifest whose content no longer matches its id cannot be dated, so it is named
    through the chain_broken finding of its successor (field `previous`).
    """
    order = {manifest.id: position for position, manifest in enumerate(state.manifests)}
    ledger_kinds = {CHAIN_BROKEN, SIGNATURE_INVALID, SIGNER_UNKNOWN, MANIFEST_UNSIGNED}
    candidates = [f for f in result.errors if f.kind in ledger_kinds and f.snapshot in order]
    if candidates:
        return min(candidates, key=lambda finding: order[finding.snapshot])
    # Without a dated link error, an edited or damaged manifest is the break.
    undated = [f for f in result.errors if f.kind == MANIFEST_ID_MISMATCH]
    return undated[0] if undated else None
