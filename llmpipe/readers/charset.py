"""Bytes -> text the way browsers read undeclared pages, and text that Parquet (UTF-8) can hold.

`decode` reads a byte-order mark, then strict UTF-8, then falls back: text that is mostly valid
UTF-8 with a few broken bytes stays UTF-8 (with U+FFFD); other bytes are read as cp1252, as
browsers do for Western pages, unless the detector (charset_normalizer) reads a non-Latin script
(Cyrillic, CJK, Greek...) or a Latin code page in which the words hold fewer stray symbols than
in cp1252 (Polish cp1250). The detector alone misreads Western single-byte text: it takes French
latin-1 for cp775 or mac_latin2 and English cp1252 for cp1250 ("trčs", "naďve").
latin-1/iso-8859-1 are read as cp1252, their superset, which is what such files really hold.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DETECT_BYTES = 65536


# Python codecs no file is written in: "undefined" raises on any byte, the escape codecs read backslashes as escapes,
# idna and punycode are for host names (a page's <meta charset> may name any of them)
NOT_FILE_ENCODINGS = ("undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode")


def codec_name(label: str) -> str:
    """The canonical codec for a label ("latin-1" -> "cp1252"); LookupError when Python has none that text files use."""
    info = codecs.lookup(label.strip())
    if info.name in NOT_FILE_ENCODINGS or not getattr(info, "_is_text_encoding", True):  # base64, rot13, zlib...
        raise LookupError(f"{label.strip()} is not a text encoding")
    return "cp1252" if info.name in ("latin-1", "iso8859-1", "ascii") else info.name


def strip_bom(data: bytes) -> tuple[bytes, str | None]:
    """(data without its byte-order mark, the codec the mark names or None)."""
    for bom, enc in BOMS:
        if data.startswith(bom):
            return data[len(bom):], enc
    return data, None


def decode(data: bytes, encoding: str = "auto") -> tuple[str, str]:
    """(text, codec used). A named encoding is forced (undecodable bytes become U+FFFD); "auto"
    takes a byte-order mark, then strict UTF-8, then `fallback_codec`."""
    if encoding != "auto":
        enc = codec_name(encoding)
        return data.decode(enc, "replace"), enc
    data, bom = strip_bom(data)
    if bom:
        return data.decode(bom, "replace"), bom
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        enc = fallback_codec(data)
        return data.decode(enc, "replace"), enc


def fallback_codec(data: bytes) -> str:
    """The codec for bytes that are not strict UTF-8 (see the module docstring)."""
    return "utf-8" if mostly_utf8(data) else legacy_codec(data)


def mostly_utf8(data: bytes) -> bool:
    """UTF-8 with a few stray bytes (a cut or a pasted byte), not a legacy file: more valid multi-byte
    sequences than undecodable bytes."""
    broken = data.decode("utf-8", "replace").count("\ufffd") - data.count("\ufffd".encode())
    return _UTF8_SEQUENCE.subn(b"", data)[1] > broken  # subn counts in C, without a list of matches


def legacy_codec(data: bytes) -> str:
    """The detector's codec when it reads a non-Latin script, or Latin words that cp1252 garbles; else cp1252."""
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:_DETECT_BYTES]).best()
    except ImportError:  # a dependency of trafilatura; plain-text-only installs fall back to cp1252
        best = None
    if best is None:
        return "cp1252"
    reading = str(best)
    if _mostly_non_latin(reading) or _symbols_in_words(data[:_DETECT_BYTES].decode("cp1252", "replace")) > _symbols_in_words(reading):
        return best.encoding  # Cyrillic, CJK, Greek; or Central European text that cp1252 garbles ("Za¿ó³æ")
    return "cp1252"


def _mostly_non_latin(text: str) -> bool:
    """More than a tenth of the letters are outside the Latin script (so cp1252 would be wrong)."""
    letters = [ch for ch in text if ch.isalpha()]
    other = sum(1 for ch in letters if ord(ch) > 0x24F and not unicodedata.name(ch, "").startswith("LATIN"))
    return other * 10 > len(letters)


def _symbols_in_words(text: str) -> int:
    """Non-ASCII non-letters between two letters ("Za¿ó³æ"): what the wrong single-byte code page reads."""
    return sum(1 for a, ch, b in zip(text, text[1:], text[2:])
               if ord(ch) > 127 and not ch.isalpha() and ch not in "\u2018\u2019" and a.isalpha() and b.isalpha())


def repair_surrogates(text: str) -> tuple[str, int]:
    """(text with lone surrogates replaced by U+FFFD, how many there were).

    JSON may escape them ("\\udce9", valid JSON written by surrogateescape decoders); UTF-8, and so
    Parquet, cannot hold them.
    """
    if text.isascii():
        return text, 0
    return _SURROGATE.subn("\ufffd", text)
