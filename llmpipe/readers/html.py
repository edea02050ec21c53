"""HTML bytes -> decoded text -> main text, with the main-text extractor chosen by name.

Decoding follows what browsers do: a byte-order mark, then the HTTP header's charset, then the
page's <meta charset>, each only when the bytes really decode with it, then strict UTF-8, then
the fallback of llmpipe/readers/charset.py (detection for non-Latin scripts, else cp1252): a page
that says utf-8 but holds cp1252 bytes reads as cp1252, not as the detector's cp1250 guess.
latin-1/iso-8859-1 labels are read as cp1252, which is what pages labelled so really contain.
"""

from __future__ import annotations

import re

from llmpipe.readers.charset import codec_name, decode, strip_bom

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([a-zA-Z0-9_\-:.]+)", re.IGNORECASE)
EXTRACTORS = ("trafilatura", "resiliparse")


def _codec(label: str | bytes | None) -> str | None:
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "ignore")
    try:
        name = codec_name(label)
    except LookupError:
        return None
    if name.startswith("utf-16"):
        return "utf-8"  # a label readable as ASCII cannot be UTF-16 (browsers do the same)
    return name


def decode_html(data: bytes, content_type: str | None = None) -> tuple[str, str]:
    """(text, encoding used)."""
    data, bom = strip_bom(data)
    if bom:
        return data.decode(bom, "replace"), bom
    header = _HEADER_CHARSET.search(content_type or "")
    meta = _META_CHARSET.search(data[:4096])
    for enc in (_codec(header.group(1) if header else None), _codec(meta.group(1) if meta else None)):
        if enc:
            try:
                return data.decode(enc), enc
            except (UnicodeDecodeError, LookupError):
                continue
    return decode(data)


def looks_binary(data: bytes) -> bool:
    """NUL bytes in the first kilobytes mean an image, a PDF or another non-text payload."""
    return b"\x00" in data[:8192]


def extract_main_text(html: str, extractor: str = "trafilatura", url: str | None = None) -> str:
    """Main text of a page (boilerplate, menus and footers removed); '' when nothing is found."""
    if extractor == "trafilatura":
        import trafilatura

        return trafilatura.extract(html, url=url, include_comments=False) or ""
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(html, main_content=True, comments=False) or ""
    raise ValueError(f'unknown extractor "{extractor}"; choose one of {", ".join(EXTRACTORS)}')
