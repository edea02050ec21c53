"""PII redaction: e-mail addresses and public IP addresses are replaced by harmless stand-ins.

As datatrove's PIIFormatter (used for FineWeb's release): an address is replaced by the next
stand-in from a short list, in turn. Unlike datatrove, whose turn counter runs on across all the
documents a worker processes, the turn restarts with every document, so a document's output does
not depend on how the corpus was split into tasks. Never drops a document.

    apply("Write to jane.doe@gmail.com", Params())  ->  ("Write to email@example.com", None)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from llmpipe.filters.words import Doc

# E-mail addresses (the common RFC 5322 pattern): a dot-separated local part of "atext" characters,
# "@", then dot-separated host labels or a bracketed IPv4 literal.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"  # longest alternatives first, ASCII digits only
EMAIL = re.compile(
    rf"\b{_ATEXT}(?:\.{_ATEXT})*@(?:(?:{_LABEL}\.)+{_LABEL}|\[(?:{_OCTET}\.){{3}}(?:{_OCTET}|[A-Za-z0-9-]*[A-Za-z0-9]:)\])"
)
IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_IP_HINT = re.compile(r"[0-9]\.[0-9]")  # every IPv4 match contains this: a cheap test before the full scan
# Addresses reserved for documentation or that did not answer pings: safe stand-ins (datatrove's lists).
EMAIL_STAND_INS = ("email@example.com", "firstname.lastname@example.org")
IP_STAND_INS = ("22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206", "220.127.116.11", "18.104.22.168")


@dataclass(frozen=True)
class Params:
    remove_emails: bool = field(default=True, metadata={"help": "Replace e-mail addresses with stand-ins."})
    remove_ips: bool = field(default=True, metadata={"help": "Replace IPv4 addresses with stand-ins."})
    public_ips_only: bool = field(default=True, metadata={"help": "Replace only globally routable IPs (private, loopback and reserved ones are not personal data)."})
    email_replacements: tuple[str, ...] = field(default=EMAIL_STAND_INS, metadata={"help": "Stand-ins for e-mail addresses, used in turn within a document."})
    ip_replacements: tuple[str, ...] = field(default=IP_STAND_INS, metadata={"help": "Stand-ins for IP addresses, used in turn within a document."})


def _is_ip_to_replace(candidate: str, public_only: bool) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:  # e.g. leading zeros ("01.2.3.4") are not an address
        return False
    return address.is_global or not public_only


def _replace(pattern: re.Pattern, text: str, stand_ins: tuple[str, ...], keep=None) -> str:
    turn = 0

    def substitute(match: re.Match) -> str:
        nonlocal turn
        if keep is not None and keep(match.group()):
            return match.group()
        turn += 1
        return stand_ins[(turn - 1) % len(stand_ins)]

    return pattern.sub(substitute, text)


def apply(text: str, p: Params, doc: Doc | None = None) -> tuple[str, str | None]:
    if p.remove_emails and "@" in text:
        text = _replace(EMAIL, text, p.email_replacements)
    if p.remove_ips and _IP_HINT.search(text):
        text = _replace(IPV4, text, p.ip_replacements, keep=lambda ip: not _is_ip_to_replace(ip, p.public_ips_only))
    return text, None
