"""Real documents for the filter agreement test and benchmark, read from ../shared/data by path.

Sources (every document is a (source, name, text) triple):
  aeb-truth       the scrapinghub article-extraction-benchmark ground-truth article bodies
  aeb, traf       main text that trafilatura extracts from the benchmark's and trafilatura's eval pages
  dolma           main text that trafilatura extracts from the HTTP responses of dolma's sample WARCs
  wet             the Common Crawl WET record (plain text extracted by Common Crawl)
  *-page          whole-page text of the same HTML pages, one line per block element, the way WET
                  files look (menus, footers and cookie banners included): the hard cases for the rules

Extraction takes ~25 s for all pages, so the texts are cached in pytest's cache (or a JSON file for the
benchmark), keyed by the data files' sizes and the trafilatura version.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
from pathlib import Path

BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table td th tr ul option title".split()
)
SKIP_TAGS = frozenset("script style noscript template svg head".split())


def _page_text(html: bytes) -> str:
    """Whole-page text with a newline after each block element (WET-like)."""
    from trafilatura.utils import load_html  # decodes with the page's charset, as the extractor does

    root = load_html(html)
    if root is None:
        return ""
    parts: list[str] = []

    def walk(el) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag in SKIP_TAGS:
            return
        if tag in BLOCK_TAGS:
            parts.append("\n")
        if isinstance(el.tag, str) and el.text:
            parts.append(el.text)
        for child in el:
            walk(child)
            if child.tail:
                parts.append(child.tail)
        if tag in BLOCK_TAGS:
            parts.append("\n")

    walk(root)
    lines = (" ".join(line.split()) for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _html_pages(data: Path) -> list[tuple[str, str, bytes]]:
    pages = []
    for path in sorted(glob.glob(str(data / "web" / "aeb" / "html" / "*.html.gz"))):
        pages.append(("aeb", os.path.basename(path), gzip.open(path).read()))
    for path in sorted(glob.glob(str(data / "web" / "trafilatura" / "html" / "*.html.gz"))):
        pages.append(("traf", os.path.basename(path), gzip.open(path).read()))
    from warcio.archiveiterator import ArchiveIterator

    for path in sorted(glob.glob(str(data / "warc" / "dolma" / "*.warc.gz"))):
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "response":
                    uri = record.rec_headers.get_header("WARC-Target-URI")
                    pages.append(("dolma", f"{os.path.basename(path)}:{uri}", record.content_stream().read()))
    return pages


def _wet_texts(data: Path) -> list[tuple[str, str, str]]:
    from warcio.archiveiterator import ArchiveIterator

    out = []
    for path in sorted(glob.glob(str(data / "warc" / "commoncrawl" / "*.warc.wet.gz"))):
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "conversion":
                    uri = record.rec_headers.get_header("WARC-Target-URI")
                    out.append(("wet", uri, record.content_stream().read().decode("utf-8", "replace")))
    return out


def _cache_key(data: Path) -> str:
    import trafilatura

    h = hashlib.sha1(trafilatura.__version__.encode())
    for sub in ("web", "warc/dolma", "warc/commoncrawl"):
        for path in sorted(glob.glob(str(data / sub / "**" / "*"), recursive=True)):
            h.update(f"{path}:{os.path.getsize(path)}".encode())
    return h.hexdigest()[:16]


def build_corpus(data: Path, stride: int = 1) -> list[tuple[str, str, str]]:
    """Extract the documents (slow: ~25 s for all); stride k keeps every k-th page/article only."""
    import trafilatura

    docs: list[tuple[str, str, str]] = []
    truth = json.loads((data / "web" / "aeb" / "ground-truth.json").read_text())
    for key in sorted(truth)[::stride]:
        docs.append(("aeb-truth", key, truth[key]["articleBody"]))
    for source, name, html in _html_pages(data)[::stride]:
        main = trafilatura.extract(html, fast=True) or ""
        docs.append((source, name, main))
        docs.append((f"{source}-page", name, _page_text(html)))
    docs.extend(_wet_texts(data))
    return [d for d in docs if d[2].strip()]


def load_corpus(data: Path, cache=None, stride: int = 1) -> list[tuple[str, str, str]]:
    """The corpus, from `cache` (a pytest cache, or a directory path for scripts) when it is fresh."""
    key = f"llmpipe-filters/corpus-{_cache_key(data)}-stride{stride}"
    if cache is None or isinstance(cache, (str, Path)):
        cache_dir = Path(cache or os.environ.get("TMPDIR", "/tmp"))
        path = cache_dir / (key.replace("/", "-") + ".json")
        if path.is_file():
            return [tuple(d) for d in json.loads(path.read_text())]
        docs = build_corpus(data, stride)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(docs))
        os.replace(tmp, path)
        return docs
    cached = cache.get(key, None)
    if cached is not None:
        return [tuple(d) for d in cached]
    docs = build_corpus(data, stride)
    cache.set(key, docs)
    return docs
