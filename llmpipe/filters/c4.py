"""C4 rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2).

Line-level cleaning and page-level drops, as datatrove's C4QualityFilter applies them: each line is
stripped; lines with a word over 1000 characters, without terminal punctuation, with fewer than 3
words, mentioning "javascript" or a cookie/terms-of-use phrase are removed; Wikipedia citation
marks ("[1]", "[edit]") are deleted; a page containing "lorem ipsum" or "{" is dropped, and so is
a page left with fewer than 5 sentences. The kept lines are the new text.

    apply("Read this.\\nNo punctuation here\\n...", Params())  ->  (kept lines, None) or (text, reason)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmpipe.filters.tokenizer import count_sentences
from llmpipe.filters.words import WORD_TOKENIZER_HELP, Doc, WordTokenizer, chunk_splitter

CITATION = re.compile(r"\[(?:\d*|edit|citation needed)\]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@dataclass(frozen=True)
class Params:
    remove_citations: bool = field(default=True, metadata={"help": 'Delete Wikipedia citation marks such as "[1]", "[edit]" and "[citation needed]" from lines.'})
    filter_no_terminal_punct: bool = field(default=True, metadata={"help": 'Remove lines that do not end in . ? ! " or \' (or end in "..."), as C4 does; FineWeb turns this off.'})
    min_num_sentences: int | None = field(default=5, metadata={"help": "Drop pages left with fewer sentences after line removal (C4: 5). None or -1 switches the rule off."})
    min_words_per_line: int | None = field(default=3, metadata={"help": "Remove lines with fewer whitespace-separated words (C4: 3). None or -1 switches the rule off."})
    max_word_length: int | None = field(default=1000, metadata={"help": "Remove lines containing a word longer than this many characters (C4 code: 1000). None or -1 switches the rule off."})
    filter_lorem_ipsum: bool = field(default=True, metadata={"help": 'Drop pages containing "lorem ipsum" in a kept line (C4).'})
    filter_javascript: bool = field(default=True, metadata={"help": 'Remove lines mentioning "javascript" (C4).'})
    filter_curly_bracket: bool = field(default=True, metadata={"help": 'Drop pages with "{" in a kept line (C4: code is not natural language).'})
    filter_policy: bool = field(default=True, metadata={"help": "Remove lines with a cookie or terms-of-use phrase (C4 code)."})
    policy_phrases: tuple[str, ...] = field(default=POLICY_PHRASES, metadata={"help": "Lowercase phrases that mark a policy line for filter_policy (C4 code's list)."})
    word_tokenizer: WordTokenizer = field(default="builtin", metadata={"help": WORD_TOKENIZER_HELP})


def _on(limit: int | None) -> bool:
    return limit is not None and limit != -1


def apply(text: str, p: Params, doc: Doc | None = None) -> tuple[str, str | None]:
    lines = Doc.of(text, doc, p.word_tokenizer).splitlines
    split = chunk_splitter(p.word_tokenizer)
    count_on = _on(p.min_num_sentences)
    sentences = 0
    kept: list[str] = []
    for line in lines:
        line = line.strip()
        words = line.split()
        if _on(p.max_word_length) and any(len(w) > p.max_word_length for w in words):
            continue
        if p.remove_citations and "[" in line:
            line = CITATION.sub("", line)
        if p.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
            continue
        if _on(p.min_words_per_line) and len(words) < p.min_words_per_line:
            continue
        lower = line.lower()
        if p.filter_lorem_ipsum and "lorem ipsum" in lower:
            return text, "lorem_ipsum"
        if p.filter_javascript and "javascript" in lower:
            continue
        if p.filter_curly_bracket and "{" in line:
            return text, "curly_bracket"
        if p.filter_policy and any(phrase in lower for phrase in p.policy_phrases):
            continue
        if count_on:
            sentences += count_sentences(line, split)
        kept.append(line)
    if count_on and sentences < p.min_num_sentences:
        return text, "too_few_sentences"
    return "\n".join(kept).strip(), None
