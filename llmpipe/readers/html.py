"""HTML bytes -> decoded text -> main text, with the main-text extractor chosen by name.

Decoding follows what browsers do: a byte-order mark, then the HTTP header's charset, then the
page's <meta charset>, then strict UTF-8, then detection (charset_normalizer), then cp1252.
latin-1/iso-8859-1 labels are read as cp1252, which is what pages labelled so really contain.
"""

from __future__ import annotations

import codecs
import re

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([a-zA-Z0-9_\-:.]+)", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
EXTRACTORS = ("trafilatura", "resiliparse")


def _codec(label: str | bytes | None) -> str | None:
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "ignore")
    try:
        name = codecs.lookup(label.strip()).name
    except LookupError:
        return None
    if name.startswith("utf-16"):
        return "utf-8"  # a label readable as ASCII cannot be UTF-16 (browsers do the same)
    return "cp1252" if name in ("latin-1", "iso8859-1", "ascii") else name


def decode_html(data: bytes, content_type: str | None = None) -> tuple[str, str] | None:
    """(text, encoding used), or None when the bytes do not decode as any text."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(enc, "replace"), enc
    header = _HEADER_CHARSET.search(content_type or "")
    meta = _META_CHARSET.search(data[:4096])
    for enc in (_codec(header.group(1) if header else None), _codec(meta.group(1) if meta else None), "utf-8"):
        if enc:
            try:
                return data.decode(enc), enc
            except (UnicodeDecodeError, LookupError):
                continue
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:65536]).best()
        if best is not None:
            return data.decode(best.encoding, "replace"), best.encoding
    except ImportError:
        pass
    return data.decode("cp1252", "replace"), "cp1252"


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
