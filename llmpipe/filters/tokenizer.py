"""English word tokenizer that splits text the way spaCy's blank English pipeline does, fast.

datatrove's heuristic filters count words with spaCy's English tokenizer (punctuation tokens
included), and their thresholds were tuned on those counts, so a filter that splits words
differently keeps or drops different documents. This module follows the same published algorithm:
split on whitespace; from each chunk peel prefixes (opening punctuation, quotes, currency) and
suffixes (closing punctuation, "'s", units after a number, a final period after a lowercase letter
or digit) while checking the special cases (tokenizer_exceptions.py); keep URLs whole; split the
rest at infixes (hyphens between letters, "..." inside a word, "a.B", "a,b", "a/b").

A chunk's tokens never depend on its neighbours, so they are memoized per chunk: after the first
few documents almost every chunk is a dictionary hit, which is where the speed over spaCy comes
from. Letters are the Unicode letters of the scripts spaCy's English rules list (see CASED_SCRIPTS
below), symbols ("icons") are Unicode's So category: this equals spaCy's hand-written ranges on
every chunk of the test corpus; it differs on a few letters of other scripts (Kazakh "қ").

    split_words("Don't panic... it's 5pm!")  ->  ['Do', "n't", 'panic', '...', 'it', "'s", '5', 'pm', '!']
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from llmpipe.filters.tokenizer_exceptions import SPECIAL_CASES

PUNCT = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧"
CURRENCY = "$ £ € ¥ ฿ US$ C$ A$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ ₭ ₮ ₯ ₰ ₱ ₲ ₳ ₵ ₶ ₷ ₸ ₹ ₺ ₻ ₼ ₾ ₿".split()
UNITS = (
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz m/s km/h kmh mph hPa "
    "Pa mbar mb MB kb KB gb GB tb TB T G M K % км км² км³ м м² м³ дм дм² дм³ см см² см³ мм мм² мм³ нм кг г мг м/с "
    "км/ч кПа Па мбар Кб КБ кб Мб МБ мб Гб ГБ гб Тб ТБ тбكم كم² كم³ م م² م³ سم سم² سم³ مم مم² مم³ كم غرام جرام جم كغ "
    "ملغ كوب اكواب"
).split()  # "тбكم" is one unit: spaCy's list lacks a space there, and matching it means keeping that
HYPHENS = ("-", "–", "—", "--", "---", "——", "~")
# A sentence ends after one of these (spaCy's sentencizer defaults; multi-character tokens such as
# "..." never end a sentence).
SENTENCE_END_CHARS = frozenset(
    "!.?։؟۔܀܁܂߹।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？𐩖𐩗𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑"
    "𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑩂𑩃𑪛𑪜𑱁𑱂𖩮𖩯𖫵𖬷𖬸𖭄𛲟𝪈｡。"
)
MAX_CACHE = 1_000_000  # chunks; ~100 MB at most, then the memo starts over


def _ranges_to_class(codepoints: list[int]) -> str:
    """A regex character class body for a sorted list of code points."""
    parts, i = [], 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        a, b = chr(codepoints[i]), chr(codepoints[j])
        parts.append(re.escape(a) if i == j else f"{re.escape(a)}-{re.escape(b)}")
        i = j + 1
    return "".join(parts)


def _char_classes() -> tuple[str, str, str, str]:
    """(letters, lowercase-or-uncased, uppercase-or-uncased, So symbols) below U+30000, in one pass."""
    alpha, lower, upper, icon = [], [], [], []
    for cp in range(0x30000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if c.isalpha() or any(a <= cp <= b for a, b in WHOLE_BLOCKS):
            if 0x3400 <= cp <= 0x9FFF or 0xAC00 <= cp <= 0xD7AF or cp >= 0x20000:  # CJK, Hangul: uncased
                name, cased = "CJK", False
            else:
                name = unicodedata.name(c, "")
                cased = name.startswith(CASED_SCRIPTS)
            if cased or name.startswith(UNCASED_SCRIPTS) or any(a <= cp <= b for a, b in WHOLE_BLOCKS):
                alpha.append(cp)
                if not (cased and c.isupper()):
                    lower.append(cp)
                if not (cased and c.islower()):
                    upper.append(cp)
        elif unicodedata.category(c) == "So":
            icon.append(cp)
    return _ranges_to_class(alpha), _ranges_to_class(lower), _ranges_to_class(upper), _ranges_to_class(icon)


def _alts(items) -> str:
    return "|".join(re.escape(x) for x in items)


# Letters are those of the scripts spaCy's English rules know: cased Latin, Greek and Cyrillic, and
# the uncased scripts below (whose letters count as both lowercase and uppercase); the Hebrew,
# Indic, Ethiopic, Hangul and kana blocks count whole, vowel signs included. Other scripts (Thai,
# Georgian, ...) have no letters for these rules.
CASED_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "FULLWIDTH LATIN")
UNCASED_SCRIPTS = ("ARABIC", "HEBREW", "CJK", "HANGUL", "HIRAGANA", "KATAKANA", "ETHIOPIC", "DEVANAGARI", "BENGALI",
                   "TAMIL", "TELUGU", "KANNADA", "SINHALA")
WHOLE_BLOCKS = ((0x0591, 0x05F4), (0xFB1D, 0xFB4F), (0x0900, 0x097F), (0x0980, 0x09FF), (0x0B80, 0x0BFF),
                (0x0C00, 0x0C7F), (0x0C80, 0x0CFF), (0x0D80, 0x0DFF), (0x1200, 0x137F), (0x1100, 0x11FF),
                (0xAC00, 0xD7AF), (0x3040, 0x309F), (0x30A0, 0x30FF))


class _Rules:
    """The compiled prefix, suffix, infix and URL patterns (built once, on first use: ~0.5 s)."""

    def __init__(self) -> None:
        alpha, lower, upper, icon = _char_classes()
        punct, quotes = re.escape(PUNCT), re.escape(QUOTES)
        single_currency = "".join(re.escape(c) for c in CURRENCY if len(c) == 1)
        self.prefix = re.compile(
            rf"(?:[§%=—–{punct}{quotes}{single_currency}{icon}]|\+(?![0-9])|\.\.+|US\$|C\$|A\$)"
        ).match
        before_period = rf"0-9{lower}%²\-+{punct}|{quotes}(?:)"
        self.suffix = re.compile(
            rf"(?:[{punct}{quotes}{icon}—–]|……|\.\.+|'s|'S|’s|’S"
            rf"|(?<=[0-9])\+|(?<=°[FfCcKk])\.|(?<=[0-9])(?:{_alts(CURRENCY)})|(?<=[0-9])(?:{_alts(UNITS)})"
            rf"|(?<=[{before_period}])\.|(?<=[{upper}][{upper}])\.)$"
        ).search
        self.infix = re.compile(
            rf"\.\.+|…|[{icon}]|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[{lower}{quotes}])\.(?=[{upper}{quotes}])"
            rf"|(?<=[{alpha}]),(?=[{alpha}])|(?<=[{alpha}0-9])(?:{_alts(HYPHENS)})(?=[{alpha}])"
            rf"|(?<=[{alpha}0-9])[:<>=/](?=[{alpha}])"
        ).finditer
        host_char = "A-Za-z0-9\u00a1-\uffff"
        url = (
            r"(?:[\w+\-.]{2,}://)?{userinfo}(?:"
            # a public dotted IPv4 address (private, loopback and reserved ranges are not URLs) ...
            r"(?!(?:10|127)(?:\.\d{1,3}){3})(?!(?:169\.254|192\.168)(?:\.\d{1,3}){2})"
            r"(?!172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})"
            r"(?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])(?:\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])){2}"
            r"\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4])"
            # ... or dotted host labels ending in a lowercase top-level domain
            rf"|(?:(?:[{host_char}][{host_char}_-]{{0,62}})?[{host_char}]\.)+[{lower}]{{2,63}})"
            r"(?::\d{2,5})?(?:[/?#]\S*)?"
        )
        # The "user@" part can only match when there is an "@": leaving it out otherwise avoids
        # quadratic backtracking on long chunks without changing what matches.
        self.url_with_user = re.compile(url.replace("{userinfo}", r"(?:\S+(?::\S*)?@)?")).fullmatch
        self.url_plain = re.compile(url.replace("{userinfo}", "")).fullmatch
        # Phrase-level special cases: a special string that affix splitting cut into pieces is
        # reassembled (":)" inside "(:)"), keyed by the pieces it would otherwise be cut into. Only
        # specials that contain a prefix, suffix or infix take part (spaCy's "faster heuristics"):
        # "I'm" left over between two hyphens stays one token.
        self.special_by_pieces: dict[tuple[str, ...], str] = {}
        for orth in SPECIAL_CASES:
            if orth.strip() and (self.prefix(orth) or self.suffix(orth) or next(self.infix(orth), None)):
                self.special_by_pieces.setdefault(self.split_affixes(orth, with_specials=False), orth)
        self.max_special_pieces = max(len(p) for p in self.special_by_pieces)

    def split_affixes(self, chunk: str, with_specials: bool = True) -> tuple[str, ...]:
        """Tokens of one whitespace-free chunk, before phrase-level special cases."""
        specials = SPECIAL_CASES if with_specials else {}
        if chunk in specials:
            return specials[chunk]
        prefixes: list[str] = []
        suffixes: list[str] = []
        string, last_size = chunk, 0
        while string and len(string) != last_size:
            if string in specials:
                break
            last_size = len(string)
            m = self.prefix(string)
            pre_len = m.end() if m else 0
            if pre_len and string[pre_len:] in specials:
                prefixes.append(string[:pre_len])
                string = string[pre_len:]
                break
            m = self.suffix(string[pre_len:])
            suf_len = (len(string) - pre_len - m.start()) if m else 0
            if suf_len and string[:-suf_len] in specials:
                suffixes.append(string[-suf_len:])
                string = string[:-suf_len]
                break
            if pre_len and suf_len and pre_len + suf_len <= len(string):
                prefixes.append(string[:pre_len])
                suffixes.append(string[-suf_len:])
                string = string[pre_len:-suf_len]
            elif pre_len:
                prefixes.append(string[:pre_len])
                string = string[pre_len:]
            elif suf_len:
                suffixes.append(string[-suf_len:])
                string = string[:-suf_len]
        middle: list[str] = []
        if string:
            if string in specials:
                middle = list(specials[string])
            elif (self.url_with_user if "@" in string else self.url_plain)(string):
                middle = [string]
            else:
                start = 0
                for m in self.infix(string):
                    if m.start() == 0:  # an infix at the very start is not a split point
                        continue
                    if m.start() != start:
                        middle.append(string[start : m.start()])
                    if m.end() != m.start():
                        middle.append(m.group())
                    start = m.end()
                if string[start:]:
                    middle.append(string[start:])
        return (*prefixes, *middle, *reversed(suffixes))

    def split_chunk(self, chunk: str) -> tuple[str, ...]:
        tokens = self.split_affixes(chunk)
        if len(tokens) > 1:
            tokens = self._merge_specials(tokens)
        return tokens

    def _merge_specials(self, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """Re-split runs of tokens that spell a special case, longest runs first, then leftmost."""
        n, by_pieces = len(tokens), self.special_by_pieces
        taken = [False] * n
        found: list[tuple[int, int, str]] = []
        for length in range(min(n, self.max_special_pieces), 0, -1):
            for start in range(n - length + 1):
                orth = by_pieces.get(tokens[start : start + length])
                if orth and not taken[start] and not taken[start + length - 1]:
                    found.append((start, start + length, orth))
                for i in range(start, start + length):
                    taken[i] = taken[i] or bool(orth)
        if not found:
            return tokens
        out: list[str] = []
        pos = 0
        for start, end, orth in sorted(found):
            out.extend(tokens[pos:start])
            out.extend(SPECIAL_CASES[orth])
            pos = end
        out.extend(tokens[pos:])
        return tuple(out)


@lru_cache(maxsize=1)
def _rules() -> _Rules:
    return _Rules()


_MEMO: dict[str, tuple[str, ...]] = {}
# Shortcuts for the most common new chunks, with the same result as the full rules: a plain ASCII
# word or number, or a word followed by one punctuation mark.
_PLAIN = re.compile(r"[A-Za-z]+|[0-9]+")
_WORD_THEN_MARK = re.compile(r"([A-Za-z]+)([,;:!?.])")


def _split_new_chunk(chunk: str) -> tuple[str, ...]:
    if _PLAIN.fullmatch(chunk):
        return SPECIAL_CASES.get(chunk, (chunk,))
    m = _WORD_THEN_MARK.fullmatch(chunk)
    if m and chunk not in SPECIAL_CASES and m.group(1) not in SPECIAL_CASES:
        word, mark = m.groups()
        # A final period splits off after a lowercase letter or two capitals ("end." but not "I.").
        if mark != "." or word[-1].islower() or (len(word) > 1 and word[-2:].isupper()):
            return (word, mark)
        return (chunk,)
    return _rules().split_chunk(chunk)


def split_chunk(chunk: str) -> tuple[str, ...]:
    """Tokens of one whitespace-free chunk (memoized)."""
    tokens = _MEMO.get(chunk)
    if tokens is None:
        if len(_MEMO) >= MAX_CACHE:
            _MEMO.clear()
        tokens = _MEMO[chunk] = _split_new_chunk(chunk)
    return tokens


def split_words(text: str) -> list[str]:
    """The word tokens of text, punctuation tokens included and whitespace dropped."""
    words: list[str] = []
    memo = _MEMO
    for chunk in text.split():
        tokens = memo.get(chunk)
        if tokens is None:
            tokens = split_chunk(chunk)
        words += tokens
    return words


_WS_RUN = re.compile(r"(\s+)")
_PUNCT_TOKEN: dict[str, bool] = {}


def _is_punct(token: str) -> bool:
    flag = _PUNCT_TOKEN.get(token)
    if flag is None:
        flag = _PUNCT_TOKEN[token] = all(unicodedata.category(c).startswith("P") for c in token)
    return flag


def count_sentences(line: str, split=None) -> int:
    """Sentences in a stripped line, split as spaCy's rule-based sentencizer splits them.

    A new sentence starts at the first token after a sentence-ending character that is neither
    punctuation itself nor another ending character; whitespace beyond a single space between
    words is a token of its own and so can start a sentence.
    """
    count, seen_end = 1, False
    for i, piece in enumerate(_WS_RUN.split(line)):
        if i % 2:  # a whitespace run: a token unless it is exactly one space
            if piece != " ":
                if seen_end:
                    count, seen_end = count + 1, False
            continue
        for token in (split or split_chunk)(piece) if piece else ():
            is_end = token in SENTENCE_END_CHARS
            if seen_end and not is_end and not _is_punct(token):
                count, seen_end = count + 1, False
            elif is_end:
                seen_end = True
    return count
