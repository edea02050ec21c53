"""PII redaction: e-mail and public IP addresses replaced in turn, private IPs and look-alikes kept."""

from __future__ import annotations

from llmpipe.filters.pii import Params, apply


def redact(text: str, p: Params = Params()) -> str:
    out, reason = apply(text, p)
    assert reason is None  # PII never drops a document
    return out


def test_emails_are_replaced_in_turn():
    text = "Mail jane.doe@gmail.com or bob+news@mail.example.co.uk, or admin@[192.168.0.1] or ops@host.io."
    assert redact(text) == (
        "Mail email@example.com or firstname.lastname@example.org, or email@example.com or firstname.lastname@example.org."
    )


def test_not_emails():
    for text in ("@handle on twitter", "a@b", "user@ domain.com", "two@@signs.com", "name@example..com", "x.@y.com", "é@ü.de"):
        assert redact(text) == text


def test_public_ips_only_by_default():
    text = "Server 8.8.8.8 and 1.1.1.1, router 192.168.1.1, loopback 127.0.0.1, version 1.2.3.4.5"
    assert redact(text) == (
        "Server 22.214.171.124 and 126.96.36.199, router 192.168.1.1, loopback 127.0.0.1, version 188.8.131.52.5"
    )
    assert "192.168.1.1" not in redact(text, Params(public_ips_only=False))


def test_ip_edge_cases():
    assert redact("octet 256: 8.8.8.256") == "octet 256: 22.214.171.1246"  # "8.8.8.25" matches, "6" stays
    assert redact("zero-padded 08.8.8.8") == "zero-padded 08.8.8.8"  # leading zeros: not an address


def test_switches_and_custom_stand_ins():
    text = "jane@gmail.com 8.8.8.8"
    assert redact(text, Params(remove_emails=False, remove_ips=False)) == text
    assert redact(text, Params(email_replacements=("x@y.z",), ip_replacements=("0.0.0.0",))) == "x@y.z 0.0.0.0"


def test_turn_restarts_per_document():
    assert redact("a@gmail.com") == redact("b@gmail.com") == "email@example.com"
