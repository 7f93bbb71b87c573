"""Detectors of personal data and secrets in text, as byte regexes plus validators.

Every detector works on raw bytes (ASCII patterns), so the scanner needs no decoder and
a UTF-8 sequence split across two chunks cannot hide a match. Each detector has a cheap
`hint` test on the whole block: a block without the hint skips that detector's regex.
Validators run on each regex match and reject look-alikes that a regex alone cannot tell
apart (Luhn sums, address ranges, version strings, entropy).

Python's regex engine is fast only when a pattern starts with a literal. Detectors whose
pattern starts with a character class or a lookbehind therefore name `anchors`: fast
patterns that every match contains within `reach` bytes of its start, such as "@" for
e-mail addresses. The full pattern then runs only in a window around each anchor hit.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

# Longest match any detector reports, in bytes. The scanner keeps this much text around
# chunk cuts; a token longer than this can be reported in two pieces or missed.
MAX_MATCH = 4096


@dataclass(frozen=True)
class Detector:
    """One kind of finding: a regex, a quick pre-check, and a validator of each match."""

    name: str
    pattern: re.Pattern[bytes]
    hint: Callable[[bytes], bool]
    validate: Callable[[re.Match[bytes]], bool]
    description: str
    anchors: tuple[re.Pattern[bytes], ...] = ()
    anchor_lowercase: bool = False  # run the anchors on the lowercased block
    reach: int = 0  # max distance in bytes from a match's start to its anchor hit


def _always(_block: bytes) -> bool:
    return True


def _accept(_match: re.Match[bytes]) -> bool:
    return True


def _contains(*needles: bytes) -> Callable[[bytes], bool]:
    def check(block: bytes) -> bool:
        return any(needle in block for needle in needles)

    return check


# E-mail addresses

_EMAIL = re.compile(
    rb"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
# Reserved for documentation and testing (RFC 2606, RFC 6761): never a real person.
_RESERVED_DOMAINS = (b"example.com", b"example.org", b"example.net")
_RESERVED_SUFFIXES = (b".example", b".test", b".invalid", b".localhost", b".local")
# Retina image names such as logo@2x.png look like addresses; these "TLDs" are file types.
_FILE_SUFFIXES = {b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"ico", b"bmp", b"tif", b"tiff"}


def _valid_email(match: re.Match[bytes]) -> bool:
    # git@github.com:org/repo is an scp-style SSH location, not a mailbox.
    following = match.string[match.end() : match.end() + 2]
    if following[:1] == b":" and following[1:2] not in (b"", b" ", b"\t", b"\n", b"\r"):
        return False
    local, _, domain = match.group().rpartition(b"@")
    domain = domain.lower()
    if local.endswith(b".") or b".." in local:
        return False
    if domain.rsplit(b".", 1)[-1] in _FILE_SUFFIXES:
        return False
    if any(domain == d or domain.endswith(b"." + d) for d in _RESERVED_DOMAINS):
        return False
    return not domain.endswith(_RESERVED_SUFFIXES)


# Phone numbers. International numbers need the leading "+"; national ones need the
# trunk prefix 0 or the North American (NXX) NXX-XXXX shape with separators. A bare run
# of digits is never a phone number here: it is far more often an id or a timestamp.

_PHONE = re.compile(
    rb"(?<![\w.+/:-])(?:"
    rb"\+[1-9]\d{0,3}(?:[ .-]?\(\d{1,4}\)|[ .-]?\d{1,4})(?:[ .-]?\d{2,5}){1,4}"
    rb"|\(\d{3}\)[ ]?\d{3}[ .-]\d{4}"
    rb"|[2-9]\d{2}([ .-])\d{3}\1\d{4}"
    rb"|0\d{1,4}[ -]\d{3,8}(?:[ -]\d{2,5}){0,2}"
    rb")(?![\w+/:])(?![.-]\d)"
)


def _valid_phone(match: re.Match[bytes]) -> bool:
    text = match.group()
    digits = sum(ch in b"0123456789" for ch in text)
    if text.startswith(b"+"):
        return 8 <= digits <= 15
    if text.startswith(b"0"):
        # Trunk-prefixed numbers must have 10 or 11 digits, as UK numbers do.
        # NOTE: the French grouping 01 23 45 67 89 does not match the pattern at all.
        return 10 <= digits <= 11
    return digits == 10


# Payment card numbers: 13 to 19 digits, optionally in groups of 4 (or Amex 4-6-5),
# with a valid Luhn check digit and an issuer prefix that card networks use.

# The lookbehind comes after the first digit so that the engine can skip to digits fast.
_CARD = re.compile(rb"\d(?<![\d.-]\d)(?:[ -]?\d){12,18}(?![\d])(?!\.\d)")
_CARD_GROUPINGS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1), (4, 4, 4, 2), (4, 4, 4, 3)}
# (first digits, lengths) of Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro.
_CARD_PREFIXES: tuple[tuple[range, int, set[int]], ...] = (
    (range(4, 5), 1, {13, 16, 19}),
    (range(51, 56), 2, {16}),
    (range(2221, 2721), 4, {16}),
    (range(34, 35), 2, {15}),
    (range(37, 38), 2, {15}),
    (range(6011, 6012), 4, {16, 17, 18, 19}),
    (range(644, 650), 3, {16, 17, 18, 19}),
    (range(65, 66), 2, {16, 17, 18, 19}),
    (range(3528, 3590), 4, {16, 17, 18, 19}),
    (range(300, 306), 3, {14, 15, 16, 17, 18, 19}),
    (range(36, 37), 2, {14, 15, 16, 17, 18, 19}),
    (range(38, 40), 2, {16, 17, 18, 19}),
    (range(62, 63), 2, {16, 17, 18, 19}),
    (range(50, 51), 2, {12, 13, 14, 15, 16, 17, 18, 19}),
    (range(56, 59), 2, {12, 13, 14, 15, 16, 17, 18, 19}),
    (range(67, 68), 2, {12, 13, 14, 15, 16, 17, 18, 19}),
)


def luhn_valid(digits: bytes) -> bool:
    """Return whether a string of ASCII digits passes the Luhn (mod 10) check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = char - 48
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _known_issuer(digits: bytes) -> bool:
    for prefixes, width, lengths in _CARD_PREFIXES:
        if len(digits) in lengths and int(digits[:width]) in prefixes:
            return True
    return False


def _valid_card(match: re.Match[bytes]) -> bool:
    text = match.group()
    separators = set(re.findall(rb"[ -]", text))
    if len(separators) > 1:
        return False
    if separators:
        groups = tuple(len(g) for g in re.split(rb"[ -]", text))
        if groups not in _CARD_GROUPINGS:
            return False
    digits = re.sub(rb"[ -]", b"", text)
    if len(set(digits)) == 1:
        return False
    return 13 <= len(digits) <= 19 and _known_issuer(digits) and luhn_valid(digits)


# IP addresses. Loopback, unspecified, multicast, reserved and documentation ranges are
# not reported: they identify no host or person. A dotted quad written as a version
# (after "version", "v", "==" and similar) is not an address either.

_OCTET = rb"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rb"(?<![\w.])" + _OCTET + rb"(?:\." + _OCTET + rb"){3}(?![\w])(?!\.\d)")
_VERSION_CONTEXT = re.compile(
    rb"(?i)(?:\bv|\bversion|\bver|\brelease|\btag|==|>=|<=|~=|!=|@)\s*[\"']?\s*[:=]?\s*[\"']?\s*$"
)
_IPV6 = re.compile(
    rb"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,7}"
    rb"(?:[0-9A-Fa-f]{1,4}|(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:.])"
)
_DOCUMENTATION_NETWORKS = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)


def _reportable_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_loopback or address.is_unspecified or address.is_multicast or address.is_reserved:
        return False
    return not any(address in network for network in _DOCUMENTATION_NETWORKS if network.version == address.version)


def _valid_ipv4(match: re.Match[bytes]) -> bool:
    line_start = match.string.rfind(b"\n", 0, match.start()) + 1
    before = match.string[max(line_start, match.start() - 40) : match.start()]
    if _VERSION_CONTEXT.search(before):
        return False
    return _reportable_address(ipaddress.IPv4Address(match.group().decode("ascii")))


def _valid_ipv6(match: re.Match[bytes]) -> bool:
    text = match.group().decode("ascii")
    # Without "::" an address has 8 groups; clock times such as 12:30:45 have 3.
    if "::" not in text and text.count(":") != 7 and not (text.count(":") == 6 and "." in text):
        return False
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return _reportable_address(address)


# Secrets with a fixed, documented shape.

_AWS_KEY = re.compile(rb"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_GCP_API_KEY = re.compile(rb"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])")
_GITHUB_TOKEN = re.compile(rb"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?![A-Za-z0-9_])")
_SLACK_TOKEN = re.compile(rb"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,200}(?![A-Za-z0-9-])")
_HF_TOKEN = re.compile(rb"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{34}(?![A-Za-z0-9_])")
_STRIPE_KEY = re.compile(rb"(?<![A-Za-z0-9_])(?:sk|rk)_live_[0-9A-Za-z]{24,99}(?![A-Za-z0-9_])")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ ){0,2}PRIVATE KEY(?: BLOCK)?-----")


def _mixed_token(match: re.Match[bytes], group: int = 1) -> bool:
    token = match.group(group)
    has_digit = any(48 <= c <= 57 for c in token)
    has_letter = any(65 <= c <= 90 or 97 <= c <= 122 for c in token)
    return has_digit and has_letter


_BEARER = re.compile(rb"(?i)\bbearer[ \t]+([A-Za-z0-9._~+/-]{20,2048}=*)(?![A-Za-z0-9._~+/=-])")


def _valid_bearer(match: re.Match[bytes]) -> bool:
    return _mixed_token(match)


# Generic secrets: only behind a key name, because a high-entropy string alone is as
# likely a hash, an id or base64 data as a credential.

_SECRET_ASSIGNMENT = re.compile(
    rb"(?i)(?<![A-Za-z0-9])"
    rb"(?:api[_-]?key|api[_-]?token|apikey|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret"
    rb"|secret|password|passwd|private[_-]?key)[A-Za-z0-9_.-]{0,24}"
    rb"[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9_+/=.~-]{16,512})(?![A-Za-z0-9_+/=.~-])"
)


def shannon_entropy(data: bytes) -> float:
    """Return the Shannon entropy of `data` in bits per byte."""
    if not data:
        return 0.0
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in Counter(data).values())


def _valid_secret(match: re.Match[bytes]) -> bool:
    value = match.group(1)
    # Placeholders such as xxxxxxxxxxxxxxxx or your_api_key_here have low entropy or one
    # character class; real keys have both letters and digits.
    return _mixed_token(match) and shannon_entropy(value) >= 3.0


DETECTORS: tuple[Detector, ...] = (
    Detector("email", _EMAIL, _contains(b"@"), _valid_email, "e-mail address", (re.compile(rb"@"),), reach=64),
    Detector(
        "phone", _PHONE, _always, _valid_phone, "phone number, international (+) or national format",
        (re.compile(rb"\+[1-9]"), re.compile(rb"\d\d[ .)-]{1,2}\d\d\d")), reach=8,
    ),
    Detector("payment_card", _CARD, _always, _valid_card, "payment card number (Luhn-checked, known issuer prefix)"),
    Detector("ipv4", _IPV4, _contains(b"."), _valid_ipv4, "IPv4 address", (re.compile(rb"\.\d{1,3}\."),), reach=3),
    Detector(
        "ipv6", _IPV6, _contains(b":"), _valid_ipv6, "IPv6 address",
        (re.compile(rb"::"), re.compile(rb":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:")), reach=40,
    ),
    Detector("aws_access_key_id", _AWS_KEY, _contains(b"AKIA", b"ASIA"), _accept, "AWS access key id"),
    Detector("gcp_api_key", _GCP_API_KEY, _contains(b"AIza"), _accept, "Google Cloud API key"),
    Detector("github_token", _GITHUB_TOKEN, _contains(b"gh", b"github_pat_"), _accept, "GitHub token"),
    Detector("slack_token", _SLACK_TOKEN, _contains(b"xox"), _accept, "Slack token"),
    Detector("huggingface_token", _HF_TOKEN, _contains(b"hf_"), _accept, "Hugging Face access token"),
    Detector("stripe_key", _STRIPE_KEY, _contains(b"_live_"), _accept, "Stripe live secret key"),
    Detector("private_key", _PRIVATE_KEY, _contains(b"PRIVATE KEY"), _accept, "PEM or OpenSSH private key block"),
    Detector("bearer_token", _BEARER, _contains(b"earer", b"EARER"), _valid_bearer, "bearer token"),
    Detector(
        "secret_assignment", _SECRET_ASSIGNMENT, _always, _valid_secret,
        "high-entropy value behind a key name such as api_key= or secret:",
        # "token" alone is not a key name here, and it is common in ML data, so the anchors
        # for access_token, auth_token and api_token include the character before it.
        tuple(re.compile(word) for word in (rb"key", rb"secret", rb"passw", rb"_token", rb"-token", rb"apitoken")),
        anchor_lowercase=True,
        reach=8,
    ),
)
_VALUE_GROUP_DETECTORS = ("bearer_token", "secret_assignment")
DETECTOR_NAMES: tuple[str, ...] = tuple(d.name for d in DETECTORS)


def find_matches(block: bytes, detectors: tuple[Detector, ...] = DETECTORS) -> Iterator[tuple[str, int, int]]:
    """Yield (detector name, start, end) of the value of every validated match in `block`.

    The value is the whole match, except for detectors whose regex has a group (bearer
    tokens and key-name assignments): there it is the token or secret alone, which is
    what allow-list hashes are computed over.
    """
    lowercase: Optional[bytes] = None
    for detector in detectors:
        if not detector.hint(block):
            continue
        value_group = 1 if detector.name in _VALUE_GROUP_DETECTORS else 0
        if detector.anchors:
            if detector.anchor_lowercase and lowercase is None:
                lowercase = block.lower()
            matches = _anchored_matches(detector, block, lowercase if detector.anchor_lowercase else block)
        else:
            matches = detector.pattern.finditer(block)
        for match in matches:
            if detector.validate(match):
                yield detector.name, match.start(value_group), match.end(value_group)


def _anchored_matches(detector: Detector, block: bytes, anchor_text: bytes) -> Iterator[re.Match[bytes]]:
    """Yield non-overlapping matches of the detector's pattern that contain an anchor hit."""
    hits = sorted({hit.start() for anchor in detector.anchors for hit in anchor.finditer(anchor_text)})
    examined_up_to = 0
    for position in hits:
        if position < examined_up_to:
            continue
        window_start = max(examined_up_to, position - detector.reach)
        window_end = min(len(block), position + MAX_MATCH)
        # match() at each possible start, leftmost first as finditer would. A search()
        # over the window would try every start up to window_end, which is far slower.
        for start in range(window_start, position + 1):
            match = detector.pattern.match(block, start, window_end)
            if match is not None:
                # Each match is examined once, whether or not its validator accepts it.
                examined_up_to = match.end()
                yield match
                break


def detector_by_name(name: str) -> Optional[Detector]:
    return next((d for d in DETECTORS if d.name == name), None)
