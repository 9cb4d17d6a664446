"""A tokenizer that follows PostgreSQL's lexical rules (``src/backend/parser/scan.l``).

Standard library only. `lex` splits a statement into tokens ``(whitespace before, kind, text)``
exactly where PostgreSQL's scanner does, for the parts that decide where a literal, a comment or a
statement ends:

* ``--`` comments end at any line break (``\\n`` or ``\\r``); block comments nest
  (``/* /* */ */``); ``--`` and ``/*`` start a comment even inside a run of operator characters;
* standard strings ``'...'`` (``''`` inside), ``E'...'`` (backslash escapes and ``''``),
  ``N'...'``, ``U&'...'``, ``B'...'`` / ``X'...'``; dollar quotes ``$$...$$`` / ``$tag$...$tag$``
  (a tag never starts with a digit, so ``$1`` is a parameter); quoted identifiers ``"..."`` and
  ``U&"..."`` (``""`` inside);
* identifiers: ASCII letters, ``_``, digits, ``$`` and every non-ASCII character (PostgreSQL treats
  every byte >= 0x80 as a letter: a no-break space is part of an identifier, not whitespace), so
  ``SELECT$$x$$`` is one identifier and ``E'x'`` after a letter is not an E string;
* numbers as PostgreSQL 16 reads them (``1e5``, ``.5``, ``1_000``, ``0x1F``, ``0o17``, ``0b101``);
  a number directly followed by a letter (``1abc``: an error since PostgreSQL 15, ``1`` and the
  alias ``abc`` before) is one `JUNK` token;
* whitespace is ``[ \\t\\n\\r\\f\\v]`` and nothing else.

With ``placeholders=True`` (the default: statements as the application hands them to psycopg)
``%s`` and ``%(name)s`` are `PARAM` tokens and ``%%`` is one operator character; with ``False``
the text is read as the server reads it (the statement after client-side interpolation).

*Uncertain.* Where the server could read the text in more than one way, or where it is not a
complete statement, the lexer stops: the rest of the text, from the start of the token in doubt,
is one `UNCERTAIN` token and `Lexed.certain` is False. That happens for an unterminated string,
quoted identifier, dollar quote or block comment, and for a standard string holding a backslash
(its end depends on the session's ``standard_conforming_strings``). Callers fail closed: the
masker replaces the uncertain part, EXPLAIN refuses the statement.

Linear in the length of the input: every pattern matches without backtracking, nested comments and
dollar quotes are closed with a forward search.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = [
    "COMMENT",
    "END",
    "JUNK",
    "NUMBER",
    "OP",
    "OTHER",
    "PARAM",
    "PUNCT",
    "QIDENT",
    "STRING",
    "UNCERTAIN",
    "WORD",
    "Lexed",
    "Token",
    "lex",
    "quoted_identifier_value",
]

# Token kinds.
WORD: Final = 1  # identifier or keyword, unquoted (may contain $ and non-ASCII characters)
QIDENT: Final = 2  # "quoted identifier" or U&"..."
STRING: Final = 3  # any string constant: '..', E'..', N'..', U&'..', B'..', X'..', $$..$$
NUMBER: Final = 4
JUNK: Final = 5  # a number or $n directly followed by identifier characters (1abc, $1x)
PARAM: Final = 6  # $1; with placeholders=True also %s, %(name)s
OP: Final = 7  # a run of operator characters, as the server cuts it
PUNCT: Final = 8  # , ( ) [ ] ; : . :: := ..
COMMENT: Final = 9  # -- ... or /* ... */ (nested)
OTHER: Final = 10  # a character the server does not accept outside quotes ({, }, \, a lone $)
UNCERTAIN: Final = 11  # the rest of the text, from a token the server could read otherwise
END: Final = 12  # always the last token: "" with the trailing whitespace


Token = tuple[str, int, str]
"""(whitespace right before the token as written, kind, text)."""


class Lexed(NamedTuple):
    tokens: list[Token]
    """Every token in order; joining whitespace + text of all gives the input back."""
    certain: bool
    """False when the last token before `END` is `UNCERTAIN`."""


_SPACE: Final = r"[ \t\n\r\f\v]*"
_START: Final = r"A-Za-z_\x80-\U0010ffff"
_CONT: Final = r"A-Za-z_0-9$\x80-\U0010ffff"
_JUNK: Final = rf"(?:[{_START}][{_CONT}]*)?"
_DEC: Final = r"[0-9](?:_?[0-9])*"
_NUMBER: Final = (
    r"0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
    rf"|(?:{_DEC}(?:\.(?!\.)(?:{_DEC})?)?|\.{_DEC})(?:[eE][+-]?{_DEC})?"
)
_OP_PG: Final = r"(?:[~!@#^&|`?+*<>=%]|-(?!-)|/(?!\*))+"
# psycopg's layer comes first: %% is an escaped percent, %s / %( a placeholder.
_OP_PY: Final = r"(?:[~!@#^&|`?+*<>=]|%%|%(?![s(])|-(?!-)|/(?!\*))+"

# Every alternative either cannot fail after its first character or ends in an optional group
# (``'?``) whose emptiness says "unterminated": no backtracking, and no shorter wrong match.
# The group numbers below are the kinds; `m.lastindex` is the outermost group that matched.
_ALTERNATIVES: Final = (
    # a word that is not the prefix of E'..', B'..', X'..', N'..', U&'..' or U&".."
    ("word", rf"(?![eEbBxXnN]'|[uU]&['\"])[{_START}][{_CONT}]*"),
    # (?!"): after giving back a doubled quote, "a"" must not end at its first quote
    ("qid", r'(?:[uU]&)?"[^"]*(?:""[^"]*)*"(?!")'),
    ("qid_open", r'(?:[uU]&)?"'),
    ("punct", r"::|:=|\.\.|[,()\[\];:]|\.(?![0-9])"),
    ("num", rf"(?:{_NUMBER})({_JUNK})"),
    ("param", rf"\$[0-9]+({_JUNK})"),
    ("pyformat", r"%\([^()\s]{0,64}\)s|%s"),
    ("line", r"--[^\n\r]*"),
    # a block comment without a nested /* (nested ones are closed by _block_comment_end)
    ("block", r"/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/"),
    ("nested", r"/\*"),
    ("str", r"([nN]|[uU]&)?'[^']*(?:''[^']*)*('?)"),
    ("estr", r"[eE]'[^'\\]*(?:(?:\\[\s\S]|'')[^'\\]*)*('?)"),
    ("bstr", r"[bBxX]'[^']*('?)"),
    ("dollar", rf"\$(?:[{_START}][A-Za-z_0-9\x80-\U0010ffff]*)?\$"),
    ("op", ""),
    ("other", r"[^\x00]"),
    ("nul", r"\x00"),
)


def _token_re(placeholders: bool) -> re.Pattern[str]:
    parts = []
    for name, body in _ALTERNATIVES:
        if name == "op":
            body = _OP_PY if placeholders else _OP_PG
        elif name == "pyformat" and not placeholders:
            continue
        parts.append(f"(?P<{name}>{body})")
    return re.compile(rf"({_SPACE})(?:{'|'.join(parts)}|\Z)")


_TOKEN_PY: Final = _token_re(True)
_TOKEN_PG: Final = _token_re(False)
_COMMENT_DELIM: Final = re.compile(r"/\*|\*/")
# An operator may end in + or - only if it holds one of these (scan.l's rule for "1*-2").
_OP_KEEPS_SIGN: Final = frozenset("~!@#^&|`?%")
# Kinds whose token needs no closer look (the others: 0, handled by group name).
_KIND_OF: Final = {
    "word": WORD,
    "qid": QIDENT,
    "punct": PUNCT,
    "pyformat": PARAM,
    "line": COMMENT,
    "block": COMMENT,
    "other": OTHER,
}


def _group_kinds(pattern: re.Pattern[str]) -> tuple[int, ...]:
    """Group number -> kind (0: needs a closer look)."""
    kinds = [0] * (pattern.groups + 1)
    for name, index in pattern.groupindex.items():
        kinds[index] = _KIND_OF.get(name, 0)
    return tuple(kinds)


_KINDS_PY: Final = _group_kinds(_TOKEN_PY)
_KINDS_PG: Final = _group_kinds(_TOKEN_PG)


def _trim_operator(text: str) -> str:
    """scan.l: a multi-character operator cannot end in + or - unless it contains one of
    ~ ! @ # % ^ & | ` ? (so ``=-1`` is ``=`` then ``-1``)."""
    if len(text) > 1 and text[-1] in "+-" and not _OP_KEEPS_SIGN.intersection(text):
        text = text.rstrip("+-") or text[0]
    return text


def lex(sql: str, *, placeholders: bool = True) -> Lexed:
    """Tokens of ``sql`` (see the module doc). Never raises for str input."""
    pattern, kinds = (_TOKEN_PY, _KINDS_PY) if placeholders else (_TOKEN_PG, _KINDS_PG)
    tokens: list[Token] = []
    append = tokens.append
    pos = 0
    while True:
        restart = -1
        for m in pattern.finditer(sql, pos):
            group: int = m.lastindex or 1  # group 1 (the whitespace) always takes part
            space, text = m.group(1, group)
            kind = kinds[group]
            if kind:  # the common tokens: words, quoted identifiers, punctuation
                append((space, kind, text))
                continue
            if group == 1:  # only the whitespace at the end of the text
                append((space, END, ""))
                return Lexed(tokens, True)
            start = m.start(group)
            name = m.lastgroup
            if name == "num" or name == "param":
                append((space, JUNK if m.group(group + 1) else (NUMBER if name == "num" else PARAM), text))
            elif name == "op":
                if text[-1] in "+-":
                    trimmed = _trim_operator(text)
                    if trimmed != text:
                        append((space, OP, trimmed))
                        restart = start + len(trimmed)
                        break
                append((space, OP, text))
            elif name == "str":
                if not m.group(group + 2):
                    return _uncertain(tokens, space, sql, start)
                # A backslash ends a standard string early when standard_conforming_strings is off.
                if "\\" in text and m.group(group + 1) not in ("u&", "U&"):
                    return _uncertain(tokens, space, sql, start)
                append((space, STRING, text))
            elif name == "estr" or name == "bstr":
                if not m.group(group + 1):
                    return _uncertain(tokens, space, sql, start)
                append((space, STRING, text))
            elif name == "nested":
                end = _block_comment_end(sql, start + 2)
                if end < 0:
                    return _uncertain(tokens, space, sql, start)
                append((space, COMMENT, sql[start:end]))
                restart = end
                break
            elif name == "dollar":
                close = sql.find(text, start + len(text))
                if close < 0:
                    return _uncertain(tokens, space, sql, start)
                restart = close + len(text)
                append((space, STRING, sql[start:restart]))
                break
            else:  # "qid_open": unterminated; "nul": the server never receives it (a C string ends there)
                return _uncertain(tokens, space, sql, start)
        pos = restart


def _uncertain(tokens: list[Token], space: str, sql: str, start: int) -> Lexed:
    tokens.append((space, UNCERTAIN, sql[start:]))
    tokens.append(("", END, ""))
    return Lexed(tokens, False)


def _block_comment_end(sql: str, pos: int) -> int:
    """End of the block comment whose ``/*`` ends at ``pos`` (comments nest); -1 if unterminated."""
    depth = 1
    search = _COMMENT_DELIM.search
    while True:
        m = search(sql, pos)
        if m is None:
            return -1
        pos = m.end()
        if m.group() == "/*":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos


def quoted_identifier_value(text: str) -> str | None:
    """The name a `QIDENT` token stands for (``"we""ird"`` -> ``we"ird``); None for ``U&"..."``,
    whose escapes are not decoded here."""
    if text[0] != '"':
        return None
    return text[1:-1].replace('""', '"')
