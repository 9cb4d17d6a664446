"""SQL fingerprints: one normalized, literal-free text and a stable digest per statement shape.

Standard library only. ``fingerprint_sql`` reads the statement with `sql_lexer` (PostgreSQL's
lexical rules) and makes one pass over the tokens that rewrites
literals, collapses value lists and records where the main clauses are; a short look at the
recorded positions then yields the operation, the main table and the filter columns.

Normalization rules:

* literals -> ``?``: strings (``'..'`` with doubled quotes, ``E'..'``, ``B''``/``X''``/``N''``/
  ``U&''``, ``$$..$$``, ``$tag$..$tag$``), numbers (incl. sign where it cannot be binary, ``1e5``,
  ``0x1F``), ``TRUE``/``FALSE``; ``NULL`` stays ``NULL`` (``IS NULL`` differs from ``= ?``);
* placeholders ``%s``, ``%(name)s``, ``$1``, ``?``, ``:name`` -> ``?``;
* ``IN (..)``, ``ANY(..)``/``ALL(..)``/``SOME(..)`` whose content is only values (also rows,
  ``ARRAY[..]``, casts) -> ``IN (...)`` / ``ANY(...)``; ``VALUES (..), (..)`` -> ``VALUES (...)``;
* the savepoint name of ``SAVEPOINT``, ``RELEASE [SAVEPOINT]``, ``ROLLBACK TO [SAVEPOINT]`` -> ``?``;
* comments removed (a removed comment still separates tokens), trailing ``;`` removed;
* keywords upper-cased, unquoted identifiers lower-cased, quoted identifiers kept as written when
  they are lower-case words or Django aliases, else ``"?"`` (an alias can hold a name), an unquoted
  identifier holding ``$`` -> ``?`` (``SELECT$$John$$`` is one identifier);
* whitespace: any run of whitespace (or comments) between two tokens becomes one space, and
  none is added where the statement had none (``a=1`` -> ``a=?``, ``a = 1`` -> ``a = ?``), so
  the text reads like the SQL the application sent. The same code path always sends the same
  spacing; two hand-written variants of one query that differ only in spacing around
  punctuation get different digests.

Garbage in gives a fingerprint of what could be read; whatever follows the point where the lexer
is uncertain (an unterminated string, dollar quote, quoted identifier or comment, a standard string
holding a backslash) counts as one literal, so it cannot leak.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from hms_otel_agent.signals import sql_lexer as lx
from hms_otel_agent.signals.sql_mask import safe_quoted_identifier

__all__ = [
    "CACHE_MAX_CHARS",
    "LONG_CACHE_MAX_CHARS",
    "MAX_SQL_CHARS",
    "TRUNCATION_MARK",
    "SqlFingerprint",
    "fingerprint_sql",
]

MAX_SQL_CHARS: Final = 64 * 1024
"""Statements longer than this are cut before normalizing; the normalized text then ends in
``TRUNCATION_MARK``."""
TRUNCATION_MARK: Final = " …"
CACHE_MAX_CHARS: Final = 8 * 1024
"""Statements up to this length are memoised in the main cache (4096 entries)."""
_CACHE_SIZE: Final = 4096
LONG_CACHE_MAX_CHARS: Final = 16 * 1024
"""Longer ones up to this length (the instrumentation fingerprints at most the first 16 KiB of a
statement) in a second, smaller cache: a wide SELECT with a few joins passes 8 KiB, and
fingerprinting costs about 0.1 µs per character (1 ms for 10 KiB) on every execution otherwise.
Both caches together hold at most 4096 * 8 KiB + 256 * 16 KiB of statements."""
_LONG_CACHE_SIZE: Final = 256


# (whitespace before, word, quoted/qualified name, punctuation, literal, unused, other); all but
# the whitespace empty for a comment.
_Token = tuple[str, str, str, str, str, str, str]
_NAME_KINDS: Final = (lx.WORD, lx.QIDENT)
_LITERAL_KINDS: Final = frozenset({lx.STRING, lx.NUMBER, lx.JUNK, lx.PARAM, lx.UNCERTAIN})
_QMARK_CMP: Final = frozenset({"=", "<", ">", "<=", ">=", "<>", "!="})


def _name_part(kind: int, text: str) -> str:
    if kind == lx.QIDENT and not safe_quoted_identifier(text):
        return '"?"'
    return text


def tokenize(sql: str) -> list[_Token]:
    """The lexer's tokens in the shape the scan reads: qualified names (``"t"."c"``,
    ``schema.table``) joined into one name, placeholders and literals as literals."""
    tokens = lx.lex(sql).tokens
    out: list[_Token] = []
    append = out.append
    n = len(tokens)
    i = 0
    while i < n:
        space, kind, text = tokens[i]
        i += 1
        if kind == lx.WORD or kind == lx.QIDENT:
            if kind == lx.WORD and "$" in text:
                append((space, "", "", "", "?", "", ""))
                continue
            parts = [_name_part(kind, text)]
            # schema.table, "t"."c": parts joined by a dot with no space around it
            while (
                i + 1 < n
                and tokens[i][2] == "."
                and not tokens[i][0]
                and tokens[i + 1][1] in _NAME_KINDS
                and not tokens[i + 1][0]
                and "$" not in tokens[i + 1][2]
            ):
                parts.append(_name_part(tokens[i + 1][1], tokens[i + 1][2]))
                i += 2
            if len(parts) == 1 and kind == lx.WORD:
                append((space, text, "", "", "", "", ""))
            else:
                append((space, "", ".".join(parts), "", "", "", ""))
        elif kind in _LITERAL_KINDS:
            append((space, "", "", "", text, "", ""))
        elif kind == lx.PUNCT:
            if text in "(),":
                append((space, "", "", text, "", "", ""))
            elif text == ":" and i < n and tokens[i][1] == lx.WORD and not tokens[i][0]:
                append((space, "", "", "", ":" + tokens[i][2], "", ""))  # a :name placeholder
                i += 1
            else:
                append((space, "", "", "", "", "", text))
        elif kind == lx.OP:
            if text == "=":
                append((space, "", "", "=", "", "", ""))
            elif text == "?":
                append((space, "", "", "", "?", "", ""))  # a qmark placeholder
            elif text[-1] == "?" and text[:-1] in _QMARK_CMP:  # a=? (one operator to the server)
                head = text[:-1]
                append((space, "", "", "=", "", "", "") if head == "=" else (space, "", "", "", "", "", head))
                append(("", "", "", "", "?", "", ""))
            else:
                append((space, "", "", "", "", "", text))
        elif kind == lx.COMMENT:
            append((space, "", "", "", "", "", ""))
        elif kind == lx.OTHER:
            append((space, "", "", "", "", "", text))
    return out


@dataclass(frozen=True, slots=True)
class SqlFingerprint:
    normalized: str
    """The statement with every literal replaced by ``?``, value lists collapsed, and whitespace,
    case and comments normalized. Holds no literal values: safe to export."""
    digest: str
    """16 lowercase hex characters: BLAKE2b (8 bytes) of ``normalized``, stable everywhere."""
    operation: str
    """First keyword upper-cased (SELECT, INSERT, ...); for WITH the main verb; '' if unknown."""
    table: str
    """Main table of a simple statement, unquoted (``schema.table`` if qualified); '' if unknown."""
    filter_columns: tuple[str, ...]
    """Columns compared to a placeholder or literal in the top-level WHERE clause, in order of
    first appearance, unquoted and without table qualifier. Best effort."""


# ---------------------------------------------------------------------------------------------
# Token kinds, derived from the normalized token text when the analysis needs them.
_VALUE: Final = 0  # "?" (a literal or placeholder) or a collapsed "(...)"
_KW: Final = 1  # keyword, upper-case
_NAME: Final = 2  # identifier: unquoted (lower-cased) and/or quoted, possibly qualified
_OP: Final = 3  # operator / other punctuation
_OPEN: Final = 4  # (
_CLOSE: Final = 5  # )
_COMMA: Final = 6  # ,


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Upper-cased on output. Deliberately leaves out words that are common column names
# (key, name, type, value, date, time, level, last, ...): those stay identifiers.
_KEYWORDS: Final = _words(
    """
    ABORT ALL ALTER ANALYZE AND ANY ARRAY AS ASC ASYMMETRIC AUTHORIZATION BEGIN BETWEEN BOTH
    BY CALL CASCADE CASE CAST CHECK CLOSE CLUSTER COLLATE COLUMN COMMENT COMMIT COMMITTED
    CONCURRENTLY CONFLICT CONSTRAINT COPY CREATE CROSS CURRENT_DATE CURRENT_TIME
    CURRENT_TIMESTAMP CURRENT_USER DEALLOCATE DECLARE DEFAULT DEFERRABLE DELETE DESC DISCARD
    DISTINCT DO DROP ELSE END ESCAPE EXCEPT EXCLUDED EXECUTE EXISTS EXPLAIN EXTRACT FALSE FETCH
    FILTER FOLLOWING FOR FOREIGN FROM FULL GRANT GREATEST GROUP HAVING ILIKE IN INDEX INNER
    INSERT INTERSECT INTERVAL INTO IS ISNULL ISOLATION JOIN LATERAL LEAST LEFT LIKE LIMIT
    LISTEN LOCALTIME LOCALTIMESTAMP LOCK LOCKED MATERIALIZED MERGE MOVE NATURAL NOT NOTHING
    NOTIFY NOTNULL NOWAIT NULL NULLIF NULLS OF OFFSET ON ONLY OR ORDER OUTER OVER OVERLAPS
    PARTITION PRECEDING PREPARE PRIMARY RECURSIVE REFERENCES REFRESH REINDEX RELEASE RESET
    RESTRICT RETURNING REVOKE RIGHT ROLLBACK SAVEPOINT SELECT SERIALIZABLE SESSION_USER SET
    SHARE SHOW SIMILAR SKIP SOME START SYMMETRIC TABLE THEN TO TRANSACTION TRUE TRUNCATE
    UNBOUNDED UNCOMMITTED UNION UNIQUE UNLISTEN UPDATE USING VACUUM VALUES VIEW WHEN WHERE
    WINDOW WITH WITHIN WORK
    FIRST NEXT ROW ROWS
    AVG COALESCE COUNT MAX MIN SUM LOWER UPPER
    """
)
# Keyword classes for the scanner (one dict lookup per word).
_KC_PLAIN: Final = 0
_KC_BOOL: Final = 1  # TRUE / FALSE: literals
_KC_SIMPLE: Final = 2  # allowed inside a collapsible value list
_KC_MARK: Final = 3  # depth-0 position recorded for the analysis
_KC_END: Final = 4  # ends a WHERE clause at depth 0
_BOOLEANS: Final = frozenset({"TRUE", "FALSE"})
# Keywords allowed inside a "simple" parenthesised value list.
_SIMPLE_KW: Final = frozenset({"NULL", "DEFAULT", "ARRAY"})
# A parenthesised simple list right after these collapses to "(...)".
_COLLAPSE_AFTER: Final = frozenset({"IN", "ANY", "ALL", "SOME"})
# Keywords after which a following "-" or "+" is binary, not a sign.
_VALUE_KW: Final = frozenset(
    {
        "NULL",
        "END",
        "CURRENT_DATE",
        "CURRENT_TIME",
        "CURRENT_TIMESTAMP",
        "LOCALTIME",
        "LOCALTIMESTAMP",
        "CURRENT_USER",
        "SESSION_USER",
        "EXCLUDED",
    }
)
# Statement verbs reported as ``operation``.
_VERBS: Final = _words(
    """
    SELECT INSERT UPDATE DELETE MERGE SAVEPOINT RELEASE ROLLBACK BEGIN START COMMIT ABORT END SET
    RESET SHOW WITH VALUES TABLE EXPLAIN ANALYZE VACUUM CREATE ALTER DROP TRUNCATE COPY LOCK
    DECLARE FETCH MOVE CLOSE PREPARE EXECUTE DEALLOCATE LISTEN NOTIFY UNLISTEN GRANT REVOKE
    COMMENT CALL DO REFRESH CLUSTER REINDEX DISCARD
    """
)
_MAIN_VERBS: Final = ("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE")
# Depth-0 keywords whose first position is recorded.
_MARK_KW: Final = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FROM", "INTO", "WHERE"})
# Depth-0 keywords that end a WHERE clause.
_WHERE_END_KW: Final = frozenset(
    {
        "GROUP",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "RETURNING",
        "HAVING",
        "FOR",
        "WINDOW",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "FETCH",
        "ON",
    }
)

_KEYWORD_CLASS: Final[dict[str, int]] = dict.fromkeys(_KEYWORDS, _KC_PLAIN)
_KEYWORD_CLASS.update(dict.fromkeys(_SIMPLE_KW, _KC_SIMPLE))
_KEYWORD_CLASS.update(dict.fromkeys(_MARK_KW, _KC_MARK))
_KEYWORD_CLASS.update(dict.fromkeys(_WHERE_END_KW, _KC_END))
_KEYWORD_CLASS.update(dict.fromkeys(_BOOLEANS, _KC_BOOL))
# Comparisons whose right-hand side makes the left-hand column a "filter column".
_CMP: Final = frozenset(
    {
        "=",
        "<>",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "LIKE",
        "ILIKE",
        "IN",
        "BETWEEN",
        "SIMILAR",
        "@>",
        "<@",
        "&&",
        "~",
        "~*",
        "!~",
        "!~*",
        "?|",
        "?&",
        "~~",
        "~~*",
        "!~~",
        "!~~*",
    }
)
_RHS_SKIP: Final = frozenset({"ANY", "ALL", "SOME", "ARRAY", "[", "NOT", "TO"})
_SIMPLE_OPS: Final = frozenset({"[", "]", "-", "+"})
_SIGN_CONTEXT: Final = frozenset({_OP, _OPEN, _COMMA, _KW})
_COLLAPSED: Final = "(...)"
_SUBQUERY_START: Final = frozenset({"SELECT", "WITH", "VALUES"})
_FIXED_KIND: Final[dict[str, int]] = {"?": _VALUE, _COLLAPSED: _VALUE, "(": _OPEN, ")": _CLOSE, ",": _COMMA}
_SAVEPOINT_VERBS: Final = frozenset({"SAVEPOINT", "RELEASE", "ROLLBACK"})


def _kind(tok: str) -> int:
    kind = _FIXED_KIND.get(tok)
    if kind is not None:
        return kind
    if tok in _KEYWORDS:  # unquoted identifiers are lower-cased, so never collide
        return _KW
    if tok[0] == '"' or tok[-1] == '"' or tok[0].isalpha() or tok[0] == "_":
        return _NAME
    return _OP


_NAME_PART_RE: Final = re.compile(r'(?:[uU]&)?"((?:[^"]|"")*)"|([^."]+)')


def _name_parts(name: str) -> list[str]:
    """``'"public"."Hms_X"'`` -> ``['public', 'Hms_X']`` (quotes removed, doubled quotes undone)."""
    if '"' not in name:
        return name.split(".")
    if name[0] == '"' and name.find('"', 1) == len(name) - 1:
        return [name[1:-1]]  # one quoted identifier: the usual case
    return [
        quoted.replace('""', '"') if quoted or not plain else plain
        for quoted, plain in _NAME_PART_RE.findall(name)
    ]


def _last_name_part(name: str) -> str:
    if name[-1] == '"' and '""' not in name:
        return name[name.rfind('"', 0, -1) + 1 : -1]
    if '"' not in name:
        return name[name.rfind(".") + 1 :]
    return _name_parts(name)[-1]


def _lower_unquoted(name: str) -> str:
    """Lower-case the parts of a qualified name that are not inside double quotes."""
    pieces = name.split('"')
    for i in range(0, len(pieces), 2):
        pieces[i] = pieces[i].lower()
    return '"'.join(pieces)


def _scan(sql: str) -> tuple[list[str], list[str], dict[str, int], list[int]]:
    """Normalize the token stream of ``sql`` in one pass.

    Returns the output tokens, the separator before each (" " where the input had whitespace
    or a comment, else ""), the first position of each depth-0 keyword in ``_MARK_KW`` and the
    positions of the depth-0 keywords (and ";") that end a WHERE clause.
    """
    out: list[str] = []
    seps: list[str] = []
    starts: list[int] = []  # positions of the open "(" in ``out``
    simple: list[bool] = []  # whether each open group still holds only values
    marks: dict[str, int] = {}
    enders: list[int] = []
    gaps: list[int] = []  # positions right after a dropped comment
    cast = False  # the previous token was "::" or a type name after it
    values_at = -1  # position of the "(...)" that a VALUES list collapsed to
    append = out.append
    sappend = seps.append
    keyword_class = _KEYWORD_CLASS.get

    for ws, word, name, punct, lit, _tag, other in tokenize(sql):
        if word:
            cls = keyword_class(word)
            if cls is None:
                up = word.upper()
                cls = keyword_class(up)
                if cls is None:  # an unquoted identifier
                    if starts and not cast:
                        simple[-1] = False
                    append(word.lower())
                    sappend(ws and " ")
                    continue
            else:
                up = word
            if cls != _KC_BOOL:
                if starts:
                    if not cast and cls != _KC_SIMPLE:
                        simple[-1] = False
                elif cls == _KC_MARK:
                    if up not in marks:
                        marks[up] = len(out)
                elif cls == _KC_END:
                    enders.append(len(out))
                append(up)
                sappend(ws and " ")
                continue
            lit = up  # TRUE / FALSE: a literal, handled below
        elif name:  # quoted and/or qualified
            if starts and not cast:
                simple[-1] = False
            append(name if name.islower() else _lower_unquoted(name))
            sappend(ws and " ")
            continue
        if lit:
            cast = False
            # Fold a sign into the literal where it cannot be a binary operator.
            if (out and (out[-1] == "-" or out[-1] == "+")) and (
                len(out) == 1 or (_kind(out[-2]) in _SIGN_CONTEXT and out[-2] not in _VALUE_KW)
            ):
                out.pop()
                if seps.pop():
                    ws = " "
            append("?")
        elif punct:
            cast = False
            if punct == "(":
                starts.append(len(out))
                simple.append(True)
                append("(")
            elif punct == ",":
                append(",")
            elif punct == "=":
                if starts:
                    simple[-1] = False
                append("=")
            else:  # ")"
                if starts:
                    s = starts.pop()
                    is_simple = simple.pop()
                    if is_simple and len(out) > s + 1 and s > 0:
                        prev = out[s - 1]
                        if prev in _COLLAPSE_AFTER or prev == "VALUES":
                            del out[s + 1 :]
                            del seps[s + 1 :]
                            out[s] = _COLLAPSED
                            if prev == "VALUES":
                                values_at = s
                            continue
                        if prev == "," and s - 2 == values_at:
                            # another row of a collapsed VALUES list: drop it with its comma
                            del out[s - 1 :]
                            del seps[s - 1 :]
                            continue
                    if not is_simple and starts:
                        simple[-1] = False
                append(")")
        elif other:
            if other == "::":
                cast = True
            else:
                cast = False
                if starts:
                    if other not in _SIMPLE_OPS:
                        simple[-1] = False
                elif other == ";":
                    enders.append(len(out))
            append(other)
        else:  # a comment: dropped, but it still separates its neighbours
            gaps.append(len(out))
            continue
        sappend(ws and " ")

    n = len(out)
    for at in gaps:
        if at < n:
            seps[at] = " "
    if n and out[0] in _SAVEPOINT_VERBS:
        _mask_savepoint_name(out)
    return out, seps, marks, enders


def _mask_savepoint_name(out: list[str]) -> None:
    """SAVEPOINT x / RELEASE [SAVEPOINT] x / ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x: x -> ?"""
    for i in range(1, len(out)):
        if _kind(out[i]) == _NAME:
            prev = out[i - 1]
            if prev in ("SAVEPOINT", "TO") or (prev == "RELEASE" and i == 1):
                out[i] = "?"
            return


def _name_at(out: list[str], i: int) -> str:
    if i < len(out) and out[i] == "ONLY":
        i += 1
    if i < len(out) and _kind(out[i]) == _NAME:
        parts = _name_parts(out[i])
        return "" if "?" in parts else ".".join(parts)  # a masked quoted identifier
    return ""


def _rhs_is_value(out: list[str], j: int, end: int) -> bool:
    """Whether the operand starting at ``j`` is a literal / placeholder (possibly wrapped)."""
    for _ in range(8):
        if j >= end:
            return False
        k = _kind(out[j])
        if k == _VALUE:
            return True
        if k == _OPEN or out[j] in _RHS_SKIP or (k in (_NAME, _KW) and j + 1 < end and out[j + 1] == "("):
            j += 1
            continue
        return False
    return False


def _lhs_column(out: list[str], i: int, lo: int, table: str = "") -> str:
    """The column on the left of the comparison at ``i`` (skipping casts, functions, NOT); ""
    when it is qualified by another table than `table` (a joined table's column is not one of
    the main table's: no index or lookup on it)."""
    j = i - 1
    for _ in range(10):
        if j <= lo:
            return ""
        tok = out[j]
        k = _kind(tok)
        if k in (_NAME, _KW):
            if out[j - 1] == "::":  # a type name after a cast
                j -= 2
                continue
            if k == _KW:
                if tok == "NOT":
                    j -= 1
                    continue
                return ""
            column = _last_name_part(tok)
            if table and "." in tok:
                parts = _name_parts(tok)
                if len(parts) > 1 and parts[-2] != _last_name_part(table):
                    return ""
            return "" if column == "?" else column
        if k in (_OPEN, _CLOSE) or tok == "]":
            j -= 1
            continue
        return ""
    return ""


def _analyze(out: list[str], marks: dict[str, int], enders: list[int]) -> tuple[str, str, tuple[str, ...]]:
    """Operation, main table and filter columns of a normalized token list."""
    n = len(out)
    first = 0
    while first < n and out[first] == "(":
        first += 1
    if first >= n or out[first] not in _VERBS:
        return "", "", ()
    operation = out[first]
    verb_at = first
    if operation == "WITH":
        best = n
        for verb in _MAIN_VERBS:
            at = marks.get(verb, n)
            if first < at < best:
                best = at
        if best == n:
            return "WITH", "", ()
        operation = out[best]
        verb_at = best

    table = ""
    if operation == "SELECT" or operation == "DELETE":
        at = marks.get("FROM", -1)
        if at > verb_at:
            table = _name_at(out, at + 1)
    elif operation == "INSERT" or operation == "MERGE":
        at = marks.get("INTO", -1)
        if at > verb_at:
            table = _name_at(out, at + 1)
    elif operation == "UPDATE":
        table = _name_at(out, verb_at + 1)

    where = marks.get("WHERE", -1)
    if where < verb_at:
        return operation, table, ()
    end = n
    for at in enders:
        if at > where:
            end = at
            break
    columns: list[str] = []
    cmp = _CMP
    i = where + 1
    while i < end:
        tok = out[i]
        if tok in cmp:
            if _rhs_is_value(out, i + 1, end):
                column = _lhs_column(out, i, where, table)
                if column and column not in columns:
                    columns.append(column)
        elif tok == "(" and i + 1 < end and out[i + 1] in _SUBQUERY_START:
            i = _skip_group(out, i, end)  # a subquery's filters are not this statement's
        i += 1
    return operation, table, tuple(columns)


def _skip_group(out: list[str], i: int, end: int) -> int:
    """Position of the ")" closing the "(" at ``i`` (or ``end``)."""
    depth = 0
    while i < end:
        tok = out[i]
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return end


def _join(out: list[str], seps: list[str]) -> str:
    if not out:
        return ""
    seps[0] = ""
    parts: list[str] = [""] * (2 * len(out))
    parts[::2] = seps
    parts[1::2] = out
    return "".join(parts)


def _digest(normalized: str) -> str:
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


_FALLBACK: Final = SqlFingerprint("?", _digest("?"), "", "", ())


def _fingerprint_uncached(sql: str) -> SqlFingerprint:
    try:
        truncated = len(sql) > MAX_SQL_CHARS
        if truncated:
            sql = sql[:MAX_SQL_CHARS]
        out, seps, marks, enders = _scan(sql)
        while out and out[-1] == ";":
            out.pop()
            seps.pop()
        operation, table, columns = _analyze(out, marks, enders)
        normalized = _join(out, seps).strip()
        if truncated:
            normalized += TRUNCATION_MARK
        return SqlFingerprint(normalized, _digest(normalized), operation, table, columns)
    except Exception:  # pragma: no cover - defensive: a bug here must never break the host app
        return _FALLBACK


_fingerprint_cached = lru_cache(maxsize=_CACHE_SIZE)(_fingerprint_uncached)
_fingerprint_long_cached = lru_cache(maxsize=_LONG_CACHE_SIZE)(_fingerprint_uncached)


def _coerce(sql: object) -> str:
    try:
        if isinstance(sql, (bytes, bytearray, memoryview)):
            return bytes(sql).decode("utf-8", errors="replace")
        return str(sql)
    except Exception:
        return ""


def fingerprint_sql(sql: str | bytes) -> SqlFingerprint:
    """Fingerprint one SQL statement. Memoised (bounded: 4096 entries of statements up to
    ``CACHE_MAX_CHARS``, 256 up to ``LONG_CACHE_MAX_CHARS``); never raises. ``bytes`` are
    decoded as UTF-8 with replacement."""
    if sql.__class__ is not str:
        sql = _coerce(sql)
    size = len(sql)
    if size <= CACHE_MAX_CHARS:
        return _fingerprint_cached(sql)
    if size <= LONG_CACHE_MAX_CHARS:
        return _fingerprint_long_cached(sql)
    return _fingerprint_uncached(sql)
