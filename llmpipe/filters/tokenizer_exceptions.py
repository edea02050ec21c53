"""Special cases of the English word tokenizer: whole strings that split in a fixed way.

These follow the published English tokenizer exceptions of spaCy (MIT licence), which datatrove's
filters use for word splitting: contractions ("don't" -> "do" "n't", also without the apostrophe:
"dont" -> "do" "nt"), abbreviations that keep their period ("Mr.", "e.g."), clock times ("5pm" ->
"5" "pm") and emoticons kept whole (":)"). Each entry maps a string to its tokens; the tokens always
join back to the string. tests/filters/test_tokenizer.py checks the table against spaCy's own when
spaCy is installed.
"""

from __future__ import annotations

# Words that look like a contraction without its apostrophe but are ordinary words: never split.
NOT_CONTRACTIONS = frozenset("Ill ill Its its Hell hell Shell shell Shed shed were Were Well well Whore whore".split())

PRONOUN_SUFFIXES = (  # pronoun group -> contraction suffixes it takes (each also written without apostrophe)
    (("i",), ("'m", "'ma")),
    (("i", "you", "he", "she", "it", "we", "they"), ("'ll", "'ll've", "'d", "'d've")),
    (("i", "you", "we", "they"), ("'ve",)),
    (("you", "we", "they"), ("'re",)),
    (("he", "she", "it"), ("'s",)),
)
W_WORDS_SINGULAR = ("who", "what", "when", "where", "why", "how", "there", "that", "this")
W_WORDS_PLURAL = ("these", "those")
NOT_VERBS = ("ca", "could", "do", "does", "did", "had", "may", "might", "must", "need", "ought", "sha", "should", "wo", "would")
NOT_VERBS_SHORT = ("ai", "are", "is", "was", "were", "have", "has", "dare")  # take n't but not n't've
HAVE_VERBS = ("could", "might", "must", "should", "would")
TRAILING_APOSTROPHE = ("doin", "goin", "havin", "lovin", "nothin", "nuthin", "ol", "somethin")
LEADING_APOSTROPHE = ("em", "ll", "nuff")
KEPT_WHOLE = (
    "'d a.m. Adm. Bros. co. Co. Corp. D.C. Dr. e.g. E.g. E.G. Gen. Gov. i.e. I.e. I.E. Inc. Jr. Ltd. Md. Messrs. "
    "Mo. Mont. Mr. Mrs. Ms. p.m. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. 'S 's ‘S ‘s and/or o'clock O'clock "
    "N.C. N.D. N.H. N.J. N.M. N.Y. S.C. ' \\\") <space> '' C++ ä. ö. ü. w/o 're 'Cause 'cause 'Cos 'cos 'Coz 'coz "
    "'Cuz 'cuz 'bout ma'am Ma'am Mt. Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. Ak. Ala. Ariz. "
    "Ark. Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. Mass. Mich. Minn. Miss. Neb. "
    "Nebr. Nev. Okla. Ore. Pa. Tenn. Va. Wash. Wis."
).split() + [f"{c}." for c in "abcdefghijklmnopqrstuvwxyz"]
WHITESPACE_WHOLE = (" ", "\t", "\\t", "\n", "\\n", "\u2014", "\u00a0")
EMOTICONS = r"""
:) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) 8-) (-8 ;) ;-) (; (-; :( :-(
:(( :-(( :((( :-((( ): )-: =( >:( :') :'-) :'( :'-( :/ :-/ =/ =| :| :-| ]= =[ :1 :P :-P :p :-p :O :-O :o
:-o :0 :-0 :() >:o :* :-* :3 :-3 =3 :> :-> :X :-X :x :-x :D :-D ;D ;-D =D xD XD xDD XDD 8D 8-D ^_^ ^__^
^___^ >.< >.> <.< ._. ;_; -_- -__- v.v V.V v_v V_V o_o o_O O_o O_O 0_o o_0 0_0 o.O O.o O.O o.o 0.0 o.0
0.o @_@ <3 <33 <333 </3 (^_^) (-_-) (._.) (>_<) (*_*) (¬_¬) ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) ¯\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*>
""".split()


def _suffix_parts(suffix: str) -> list[str]:
    """"'ll've" -> ["'ll", "'ve"]: each apostrophe starts a new token."""
    return ["'" + p for p in suffix.split("'") if p]


def _add_contraction(table: dict, word: str, suffix_parts: list[str]) -> None:
    for head in (word, word.title()):
        table[head + "".join(suffix_parts)] = (head, *suffix_parts)
        bare = [p.replace("'", "") for p in suffix_parts]
        table[head + "".join(bare)] = (head, *bare)


def build_special_cases() -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for orth in WHITESPACE_WHOLE + tuple(KEPT_WHOLE) + tuple(EMOTICONS):
        table[orth] = (orth,)
    for unit in "cfkCFK":  # "°C." is three tokens
        table[f"°{unit}."] = ("°", unit, ".")
    for pronouns, suffixes in PRONOUN_SUFFIXES:
        for pron in pronouns:
            for suffix in suffixes:
                if suffix == "'ma":  # "I'ma" -> I 'm a
                    for head in (pron, pron.title()):
                        table[head + "'ma"] = (head, "'m", "a")
                        table[head + "ma"] = (head, "m", "a")
                else:
                    _add_contraction(table, pron, _suffix_parts(suffix))
    for word in W_WORDS_SINGULAR + W_WORDS_PLURAL:
        suffixes = ["'ll", "'ll've", "'d", "'d've"]
        if word not in ("that", "this"):
            suffixes += ["'re", "'ve"]
        if word not in W_WORDS_PLURAL:
            suffixes += ["'s"]
        for suffix in suffixes:
            _add_contraction(table, word, _suffix_parts(suffix))
    for verb in NOT_VERBS:
        _add_contraction(table, verb, ["n't"])
        _add_contraction(table, verb, ["n't", "'ve"])
    for verb in HAVE_VERBS:
        _add_contraction(table, verb, ["'ve"])
    for verb in NOT_VERBS_SHORT:
        _add_contraction(table, verb, ["n't"])
    for word in TRAILING_APOSTROPHE:
        for head in (word, word.title()):
            table[head] = (head,)
            table[head + "'"] = (head + "'",)
    for word in LEADING_APOSTROPHE:
        table[word] = (word,)
        table["'" + word] = ("'" + word,)
    for hour in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            table[f"{hour}{period}"] = (str(hour), period)
    table.update({
        "y'all": ("y'", "all"), "yall": ("y", "all"), "how'd'y": ("how", "'d", "'y"), "How'd'y": ("How", "'d", "'y"),
        "not've": ("not", "'ve"), "notve": ("not", "ve"), "Not've": ("Not", "'ve"), "Notve": ("Not", "ve"),
        "cannot": ("can", "not"), "Cannot": ("Can", "not"), "gonna": ("gon", "na"), "Gonna": ("Gon", "na"),
        "gotta": ("got", "ta"), "Gotta": ("Got", "ta"), "let's": ("let", "'s"), "Let's": ("Let", "'s"),
        "c'mon": ("c'm", "on"), "C'mon": ("C'm", "on"),
    })
    for word in NOT_CONTRACTIONS:
        table.pop(word, None)
    # Every entry written with a straight apostrophe also exists with a typographic one.
    for orth, tokens in list(table.items()):
        if "'" in orth:
            table.setdefault(orth.replace("'", "’"), tuple(t.replace("'", "’") for t in tokens))
    return table


SPECIAL_CASES = build_special_cases()
