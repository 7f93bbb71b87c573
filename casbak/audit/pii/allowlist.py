"""The PII allow-list: rules that suppress known false positives without storing values.

One rule per line; blank lines and lines starting with `#` are ignored:

    DETECTOR:PATH-GLOB          suppress DETECTOR in files whose snapshot path matches
    DETECTOR:sha256:HEX         suppress DETECTOR where the matched value has this SHA-256

DETECTOR is a detector name or `*` for all. PATH-GLOB uses fnmatch rules on the path as
stored in the snapshot (absolute, `/`-separated), where `*` also matches `/`. HEX is
the lowercase SHA-256 of the matched bytes, as `printf %s VALUE | sha256sum` prints it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from casbak.audit.pii.detectors import DETECTOR_NAMES
from casbak.errors import UsageError

_SHA256 = re.compile(r"^sha256:([0-9a-f]{64})$")


@dataclass
class Allowlist:
    """Parsed allow-list rules: path globs and value hashes per detector (`*` for all)."""

    globs: list[tuple[str, str]] = field(default_factory=list)
    hashes: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> "Allowlist":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--pii-allowlist {path}: cannot read: {exc.strerror or exc}") from exc
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, source: str = "allow-list") -> "Allowlist":
        allowlist = cls()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            detector, sep, rule = line.partition(":")
            detector = detector.strip()
            rule = rule.strip()
            if not sep or not rule:
                raise UsageError(f"{source} line {number}: expected DETECTOR:PATH-GLOB or DETECTOR:sha256:HEX")
            if detector != "*" and detector not in DETECTOR_NAMES:
                raise UsageError(f"{source} line {number}: unknown detector {detector!r}; use * or one of {', '.join(DETECTOR_NAMES)}")
            hashed = _SHA256.match(rule.lower()) if rule.lower().startswith("sha256:") else None
            if rule.lower().startswith("sha256:") and hashed is None:
                raise UsageError(f"{source} line {number}: sha256: must be followed by 64 hex digits")
            if hashed:
                allowlist.hashes.setdefault(detector, set()).add(hashed.group(1))
            else:
                allowlist.globs.append((detector, rule))
        return allowlist

    def __bool__(self) -> bool:
        return bool(self.globs or self.hashes)

    def path_allowed(self, detector: str, path: str) -> bool:
        """Return whether a path rule suppresses `detector` everywhere in `path`."""
        return any(d in ("*", detector) and fnmatch.fnmatchcase(path, glob) for d, glob in self.globs)

    def value_allowed(self, detector: str, value: bytes) -> bool:
        if not self.hashes:
            return False
        digest = hashlib.sha256(value).hexdigest()
        return digest in self.hashes.get(detector, ()) or digest in self.hashes.get("*", ())
