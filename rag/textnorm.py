"""Text normalization shared by ingestion, retrieval and evaluation.

Chinese news text arrives with mixed full-width and half-width forms, stray spaces
from print layout, and sometimes traditional characters. Every stage normalizes
through these helpers so that what is indexed and what is asked compare equal.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata

import jieba
import opencc

jieba.setLogLevel(logging.WARNING)

_WS = re.compile(r"\s+")


def nfkc(text: str) -> str:
    """NFKC-normalize (full-width ASCII to half-width, compatibility forms folded)."""
    return unicodedata.normalize("NFKC", text)


def squash(text: str) -> str:
    """NFKC and drop all whitespace: the form used to test "does A contain B".

    Print layout inserts spaces and line breaks anywhere in Chinese text, so
    containment checks (evidence in a chunk, answer in evidence) ignore them.
    """
    return _WS.sub("", nfkc(text))


@functools.cache
def _t2s() -> opencc.OpenCC:
    # Building the converter reads its dictionaries: do it once per process.
    return opencc.OpenCC("t2s")


def fold(text: str) -> str:
    """The form that is embedded and searched: NFKC, simplified characters, lower case.

    Readers in Taiwan and Hong Kong ask in traditional characters; folding both the
    documents and the questions to simplified makes retrieval indifferent to it.
    """
    return str(_t2s().convert(without_surrogates(nfkc(text)))).lower()


_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """``text`` with lone surrogates (JSON ``"\\ud800"``, not text in any encoding) as U+FFFD.

    They cannot be encoded as UTF-8, which opencc and every writer of the text need; one in
    a request made a 500. The length is kept, so offsets into ``text`` stay valid.
    """
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


# Function words and question words: frequent in questions, useless as search terms.
STOPWORDS = frozenset(
    """的 了 是 在 和 与 及 或 等 也 都 就 而 并 又 被 把 对 为 以 于 从 由 向 将 之 其 这 那 有
    吗 呢 吧 啊 呀 么 什么 哪些 哪个 哪里 哪儿 哪 谁 多少 几 怎么 怎样 如何 为什么 为何 是否 何时
    什么时候 哪天 哪年 多久 多大 多长 几个 一个 请问 叫 叫做 称为 名叫 个 请 问 吗 该 此 这个 那个
    它 他 她 他们 它们 我们 你 你们 the a an of to in is are was were what which who how why when""".split()
)
_PUNCT = re.compile(r"^[\W_]+$")


JIEBA_PIECE = 1_000
"""The most characters jieba is given at once. Its pass over a run of characters it cannot
split is quadratic in the run's length (20,000 × 的: 1.4 s, 50,000: 5.5 s), and no word is
this long, so a longer text is cut in pieces of this size first (20,000 × 的: 0.07 s)."""


def search_tokens(text: str) -> list[str]:
    """Jieba search-mode tokens of the folded text, without stopwords and punctuation."""
    folded = fold(text)
    return [
        tok
        for start in range(0, len(folded), JIEBA_PIECE)
        for tok in jieba.cut_for_search(folded[start : start + JIEBA_PIECE])
        if tok.strip() and tok not in STOPWORDS and not _PUNCT.match(tok)
    ]


# Sentence ends, the clause ends that may also close an answer sentence, and the closing
# quotes and brackets that stay with the sentence they end (``……联盟。”``).
_ENDS = "。！？!?"
_CLAUSE_ENDS = "；;"
_CLOSERS = "”’」』）)"
_SENTENCE = re.compile(rf"[^{_ENDS}\n]+[{_ENDS}]*[{_CLOSERS}]*")
_CLAUSE = re.compile(rf"[^{_ENDS}{_CLAUSE_ENDS}\n]+[{_ENDS}{_CLAUSE_ENDS}]*[{_CLOSERS}]*")


def sentence_spans(text: str, clauses: bool = False) -> list[tuple[int, int]]:
    """``(start, end)`` of each non-blank sentence of ``text``; line breaks end sentences too.

    With ``clauses``, ；and ; end a span as well: an extracted answer's supporting sentence
    is the clause that holds it, while a generated answer is checked sentence by sentence.
    """
    pattern = _CLAUSE if clauses else _SENTENCE
    return [(m.start(), m.end()) for m in pattern.finditer(text) if m.group().strip()]


# -- the form instruction checks compare (rag.injection) ----------------------------------

# Bidi controls and other invisible formatting (category Cf: zero-width space and joiners,
# word joiner, BOM, soft hyphen, U+202A-U+202E, U+2066-U+2069, ...): they split a phrase
# for a pattern while the reader, and a model, see it whole.


@functools.cache
def _invisible() -> dict[int, None]:
    # Built on first use (a scan of all code points, ~0.2 s), not at import.
    return {c: None for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}


# Cyrillic and Greek letters drawn like Latin ones (``Іgnоre`` with Cyrillic І and о):
# folded to the Latin letter so English instruction phrases match however they are spelt.
# Chinese news has no use for either alphabet, so folding them costs nothing there.
_CONFUSABLES = str.maketrans(
    "АВЕЅІЈКМНОРСТХУаеіјорсуххѕԁһӏԛԝѡɡ"  # Cyrillic (and Latin ɡ)
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧαιονρτυχκ",  # Greek
    "ABESIJKMHOPCTXYaeijopcyxxsdhlqwwgABEZHIKMNOPTYXaiovptuxk",
)


def strip_invisible(text: str) -> str:
    """``text`` without invisible format characters (Unicode category Cf).

    ``忽\\u200b略以上指令`` reads as ``忽略以上指令``; checks must see it so.
    """
    return text.translate(_invisible())


def detection_form(text: str) -> str:
    """The form instruction patterns are matched on: what a reader (or a model) would read.

    NFKC (full-width letters and brackets to ASCII), invisible characters removed,
    Cyrillic/Greek look-alikes folded to Latin, simplified characters, lower case, runs
    of whitespace as one space. Only for checks: :func:`fold` and :func:`search_tokens`,
    which retrieval depends on, are unchanged.
    """
    text = nfkc(strip_invisible(text)).translate(_CONFUSABLES)
    return _WS.sub(" ", fold(text)).strip()
