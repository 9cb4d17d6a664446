"""Lexical pieces of the PostgreSQL scanner shared by ``fingerprint`` and ``sql_mask``.

Standard library only. Every piece either matches or fails after scanning at most to the end
of the input once: unterminated strings, comments, quoted identifiers and dollar quotes run to
the end of the text. That keeps both users linear in the length of the statement whatever the
input (no catastrophic backtracking).

On Python >= 3.11 the repetitions are possessive (``*+``), a pure speed-up: the pieces are
written so that they never need to give characters back, and they match the same text on
3.10 (plain ``*``).
"""

from __future__ import annotations

import re
import sys
from typing import Final

_P: Final = "+" if sys.version_info >= (3, 11) else ""  # possessive quantifier suffix

LINE_COMMENT: Final = r"--[^\n]*" + _P
# PostgreSQL nests block comments; nesting is not tracked (the first */ ends the comment).
BLOCK_COMMENT: Final = r"/\*[\s\S]*?(?:\*/|\Z)"
# E'...': backslash escapes and doubled quotes. Unterminated: runs to the end.
E_STRING: Final = rf"[eE]'[^'\\]*{_P}(?:(?:\\[\s\S]|'')[^'\\]*{_P})*{_P}'?"
# Standard-conforming string, doubled quotes inside. Unterminated: runs to the end.
STRING: Final = rf"'[^']*{_P}(?:''[^']*{_P})*{_P}'?"
# B'0101', X'1F', N'national', U&'unicode' string constants.
PREFIXED_STRING: Final = r"(?:[bBxXnN]|[uU]&)" + STRING
# "quoted identifier" with doubled quotes inside; only the terminated form is an identifier
# (the (?!") keeps `"a""` from ending at the first quote of an escaped pair).
QIDENT: Final = rf'(?:[uU]&)?"[^"]*{_P}(?:""[^"]*{_P})*{_P}"(?!")'
# An unterminated quoted identifier runs to the end of the text and counts as a literal: the
# statement is invalid anyway, and whatever follows must not be exported.
QIDENT_OPEN: Final = r'(?:[uU]&)?"[\s\S]*'
# $$...$$ and $tag$...$tag$ (a tag may not start with a digit, so $1 is a placeholder).
DOLLAR_STRING: Final = r"\$(?P<tag>(?:[^\W\d]\w*)?)\$[\s\S]*?(?:\$(?P=tag)\$|\Z)"
PYFORMAT: Final = r"%\([^()\s]{0,64}\)s|%s"
NUMBERED_PARAM: Final = r"\$[0-9]+"
NAMED_PARAM: Final = r":[^\W\d]\w*"
QMARK_PARAM: Final = r"\?(?![|&])"
NUMBER: Final = (
    r"0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:[0-9][0-9_]*(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
)
OPERATOR: Final = (
    r"->>|->|#>>|#>|#-|<=|>=|<>|!=|\|\||::|:=|=>|@>|<@|&&|<<|>>"
    r"|!~~\*|!~~|~~\*|~~|!~\*|!~|~\*|@@|@\?|\?\||\?&"
)

_WORD_START: Final = r"[A-Za-z_\x80-\U0010ffff]"
# The trailing guard stops the word from giving characters back on Python 3.10, where the
# repetition cannot be possessive (`t2.c3` must not scan as `t` + `2.`).
_WORD: Final = _WORD_START + r"[\w$]*" + _P + r"(?![\w$])"
# A word that is not the prefix of E'..', B'..', X'..', N'..', U&'..' or U&"..".
_LEADING_WORD: Final = r"(?![eEbBxXnN]'|[uU]&['\"])" + _WORD
_QIDENT_PLAIN: Final = rf'"[^"]*{_P}(?:""[^"]*{_P})*{_P}"(?!")'
_NAME_PART: Final = rf"(?:{_QIDENT_PLAIN}|[uU]&{_QIDENT_PLAIN}|{_WORD})"
# A single unquoted word (keyword or identifier), not followed by ".part".
WORD: Final = _LEADING_WORD + r'(?!\.[A-Za-z_\x80-\U0010ffff"])'
# A quoted and/or qualified name: "quoted", schema.table, "t"."col" -- one token. (The U&
# forms come after the plain ones: an optional prefix in front of every quoted identifier
# would cost time.)
QUALIFIED_NAME: Final = (
    rf"(?:{_QIDENT_PLAIN}|[uU]&{_QIDENT_PLAIN})(?:\.{_NAME_PART})*{_P}"
    rf"|{_LEADING_WORD}(?:\.{_NAME_PART})+{_P}"
)
LITERAL: Final = "|".join(
    (
        E_STRING,
        PREFIXED_STRING,
        STRING,
        QIDENT_OPEN,
        DOLLAR_STRING,
        PYFORMAT,
        NUMBERED_PARAM,
        NAMED_PARAM,
        QMARK_PARAM,
        NUMBER,
    )
)

# One pattern, tried at each token start. ``findall`` returns one tuple per token:
# (whitespace before it, word, quoted/qualified name, punctuation, literal, dollar tag, other);
# for a comment all but the whitespace are empty. Names come first: they are the most common
# tokens in ORM SQL.
TOKEN_RE: Final = re.compile(
    rf"(\s*{_P})(?:({WORD})|({QUALIFIED_NAME})|([(),=])|{LINE_COMMENT}|{BLOCK_COMMENT}"
    rf"|({LITERAL})|({OPERATOR}|\S))"
)

Token = tuple[str, str, str, str, str, str, str]


def tokenize(sql: str) -> list[Token]:
    """Split ``sql`` into (whitespace, word, name, punctuation, literal, dollar tag, other).

    At most one of word / name / punctuation / literal / other is non-empty: all are empty for
    a comment. Trailing whitespace is dropped.
    """
    return TOKEN_RE.findall(sql)
