"""What a SQL statement does, in a few words, built from the lexer's tokens (never from raw text).

`summary` gives the statement's operation and the tables it reads or writes, in the form of the
OpenTelemetry database conventions' ``db.query.summary`` (``SELECT hms_patient``,
``SELECT hms_visit hms_patient`` for a join, ``INSERT hms_archive SELECT hms_visit``); DB span
names are this summary. `read_only_select` says whether a statement is provably one read-only
SELECT, the condition for planning it with EXPLAIN. Standard library only.

Only structure can reach a summary: keywords the summary knows, and table names that are unquoted
identifiers without ``$`` or quoted lower-case words (the masker's rule); any other name is left
out, so a name typed as an identifier (``FROM "Zebediah Quillfeather"``) never shows.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from hms_otel_agent.signals import sql_lexer as lx
from hms_otel_agent.signals.sql_mask import safe_quoted_identifier

__all__ = ["CACHE_MAX_CHARS", "MAX_SUMMARY_CHARS", "known_operation", "read_only_select", "summary"]

MAX_SUMMARY_CHARS: Final = 255
"""The conventions' recommended maximum length."""
CACHE_MAX_CHARS: Final = 8 * 1024


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_VERBS: Final = _words(
    """
    SELECT INSERT UPDATE DELETE MERGE WITH VALUES TABLE SAVEPOINT RELEASE ROLLBACK BEGIN START
    COMMIT ABORT END SET RESET SHOW EXPLAIN ANALYZE VACUUM CREATE ALTER DROP TRUNCATE COPY LOCK
    DECLARE FETCH MOVE CLOSE PREPARE EXECUTE DEALLOCATE LISTEN NOTIFY UNLISTEN GRANT REVOKE
    COMMENT CALL DO REFRESH CLUSTER REINDEX DISCARD
    """
)
_MAIN_VERBS: Final = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"})
# A table name follows these (in a query, not inside a function call such as EXTRACT(x FROM y)).
_TABLE_BEFORE: Final = frozenset({"FROM", "JOIN", "INTO", "USING", "TRUNCATE", "TABLE", "LOCK"})
_SKIP_BEFORE_TABLE: Final = frozenset({"ONLY", "LATERAL", "TABLE"})
# Words that end a FROM list (after which a comma no longer introduces a table).
_END_OF_FROM: Final = _words(
    """
    WHERE GROUP ORDER HAVING LIMIT OFFSET UNION EXCEPT INTERSECT WINDOW FOR ON RETURNING SET
    VALUES SELECT FETCH JOIN USING
    """
)
# Words that cannot be a table name in a position where one is expected.
_NOT_A_NAME: Final = _words(
    """
    SELECT FROM WHERE JOIN ON USING AS AND OR NOT NULL TRUE FALSE WITH VALUES DEFAULT LATERAL
    ONLY TABLE INNER LEFT RIGHT FULL CROSS NATURAL OUTER GROUP ORDER LIMIT OFFSET UNION SET
    """
)
_QUERY_START: Final = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})


def known_operation(word: object) -> str:
    """``word`` upper-cased if it is a statement verb the summary knows, else "" (for the
    contrib's operation name, the raw text's first word)."""
    if isinstance(word, str) and word.isalpha() and word.upper() in _VERBS:
        return word.upper()
    return ""


def _significant(sql: str, placeholders: bool = True) -> tuple[list[tuple[int, str]], bool]:
    lexed = lx.lex(sql, placeholders=placeholders)
    tokens = [(kind, text) for _, kind, text in lexed.tokens if kind != lx.COMMENT and kind != lx.END]
    if not lexed.certain:
        tokens.pop()  # the uncertain rest: nothing in it is read
    return tokens, lexed.certain


def _name_at(tokens: list[tuple[int, str]], i: int) -> tuple[str | None, int]:
    """The table name starting at ``i`` (None if absent or not showable) and where it ends."""
    n = len(tokens)
    parts: list[str] = []
    showable = True
    while i < n:
        kind, text = tokens[i]
        if kind == lx.WORD:
            if not parts and text.upper() in _NOT_A_NAME:
                return None, i
            showable = showable and "$" not in text
            parts.append(text.lower())
        elif kind == lx.QIDENT:
            showable = showable and safe_quoted_identifier(text)
            parts.append(text[1:-1])
        else:
            break
        i += 1
        if i + 1 < n and tokens[i] == (lx.PUNCT, ".") and tokens[i + 1][0] in (lx.WORD, lx.QIDENT):
            i += 1
            continue
        break
    if not parts or not showable:
        return None, i
    return ".".join(parts), i


def summary(statement: str) -> str:
    """``SELECT hms_patient``: operation and tables, as ``db.query.summary``; "" when the statement
    does not start with a known verb. Memoised for statements up to ``CACHE_MAX_CHARS`` (4096
    entries). Never raises for str input."""
    if len(statement) <= CACHE_MAX_CHARS:
        return _summary_cached(statement)
    return _summary_guarded(statement)


def _summary_guarded(statement: str) -> str:
    try:
        return _summary(statement)
    except Exception:  # pragma: no cover - defensive: a span name must never break the app
        return ""


_summary_cached = lru_cache(maxsize=4096)(_summary_guarded)


def _summary(statement: str) -> str:
    tokens, _ = _significant(statement)
    n = len(tokens)
    first = 0
    while first < n and tokens[first] == (lx.PUNCT, "("):
        first += 1
    if first >= n or tokens[first][0] != lx.WORD:
        return ""
    operation = tokens[first][1].upper()
    if operation not in _VERBS:
        return ""
    parts: list[str] = []
    seen: set[str] = set()
    ctes: set[str] = set()
    stack: list[bool] = []  # per open "(": whether it holds a query
    main_verb = operation if operation != "WITH" else ""
    from_depth = -1  # depth of the FROM list being read, -1 outside one
    i = first + 1
    if main_verb:
        parts.append(main_verb)
    if operation in ("UPDATE", "TRUNCATE", "LOCK", "COPY"):
        i = _add_table(tokens, i, parts, seen, ctes)
    while i < n:
        kind, text = tokens[i]
        if kind == lx.PUNCT:
            if text == "(":
                nxt = tokens[i + 1] if i + 1 < n else (0, "")
                stack.append((nxt[0] == lx.WORD and nxt[1].upper() in _QUERY_START) or nxt == (lx.PUNCT, "("))
            elif text == ")":
                if stack:
                    stack.pop()
                if from_depth > len(stack):
                    from_depth = -1
            elif text == "," and from_depth == len(stack):
                i = _add_table(tokens, i + 1, parts, seen, ctes)
                continue
            elif text == ";":
                break
            i += 1
            continue
        if kind != lx.WORD or (stack and not stack[-1]):
            i += 1
            continue
        word = text.upper()
        depth = len(stack)
        if word in _END_OF_FROM and from_depth == depth:
            from_depth = -1
        if not main_verb and depth == 0:
            if word in _MAIN_VERBS:
                main_verb = word
                parts.insert(0, word)  # the CTEs' tables come after the main verb
                if word == "UPDATE":
                    i = _add_table(tokens, i + 1, parts, seen, ctes)
                    continue
            elif _is_cte_name(tokens, i):
                ctes.add(text.lower())  # WITH name [(columns)] AS (...)
        elif depth == 0 and word == "SELECT" and main_verb == "INSERT" and "SELECT" not in parts:
            parts.append("SELECT")  # INSERT t SELECT u
        if word in _TABLE_BEFORE:
            if word == "FROM":
                from_depth = depth
            i = _add_table(tokens, i + 1, parts, seen, ctes)
            continue
        i += 1
    if not main_verb:
        parts.insert(0, operation)
    return _bounded(parts)


def _is_cte_name(tokens: list[tuple[int, str]], i: int) -> bool:
    j = i + 1
    if j < len(tokens) and tokens[j] == (lx.PUNCT, "("):  # a column list
        while j < len(tokens) and tokens[j] != (lx.PUNCT, ")"):
            j += 1
        j += 1
    return j < len(tokens) and tokens[j][0] == lx.WORD and tokens[j][1].upper() == "AS"


def _add_table(
    tokens: list[tuple[int, str]], i: int, parts: list[str], seen: set[str], ctes: set[str]
) -> int:
    while i < len(tokens) and tokens[i][0] == lx.WORD and tokens[i][1].upper() in _SKIP_BEFORE_TABLE:
        i += 1
    name, end = _name_at(tokens, i)
    if (
        end < len(tokens)
        and tokens[end] == (lx.PUNCT, "(")
        and (i == 0 or tokens[i - 1][1].upper() != "INTO")
    ):
        return end  # a function in FROM (generate_series(...)), not INTO t (columns)
    if name is not None and name not in seen and name not in ctes:
        seen.add(name)
        parts.append(name)
    return max(end, i)


def _bounded(parts: list[str]) -> str:
    text = " ".join(parts)
    if len(text) <= MAX_SUMMARY_CHARS:
        return text
    return text[: text.rfind(" ", 0, MAX_SUMMARY_CHARS + 1)]


# --- EXPLAIN's precondition ---------------------------------------------------------------------

# Any of these as an unquoted word makes the statement something else than a plain read: a
# data-modifying CTE (INSERT / UPDATE / DELETE / MERGE), SELECT INTO, a locking clause (FOR UPDATE,
# FOR NO KEY UPDATE, FOR SHARE, FOR KEY SHARE), or a command that has no place in a SELECT.
_NOT_READ_ONLY: Final = _words(
    """
    INSERT UPDATE DELETE MERGE INTO SHARE COPY CALL DO TRUNCATE CREATE DROP ALTER GRANT REVOKE
    LOCK SET RESET COMMIT ROLLBACK BEGIN START SAVEPOINT RELEASE PREPARE EXECUTE DEALLOCATE LISTEN
    NOTIFY UNLISTEN VACUUM ANALYZE CLUSTER REINDEX REFRESH DISCARD IMPORT SECURITY COMMENT DECLARE
    LOAD CHECKPOINT REASSIGN ABORT EXPLAIN
    """
)


def read_only_select(statement: str) -> bool:
    """Whether ``statement``, read as the server reads it (after client-side interpolation), is
    provably one read-only SELECT: the lexer is certain, there is no ``;`` at all, it starts with
    SELECT or WITH (after parentheses), and no word of `_NOT_READ_ONLY` appears outside quotes.
    Characters the server rejects and number-letter junk (read differently across versions)
    count as doubt. Never raises for str input."""
    try:
        tokens, certain = _significant(statement, placeholders=False)
    except Exception:  # pragma: no cover - defensive
        return False
    if not certain or not tokens:
        return False
    first = 0
    while first < len(tokens) and tokens[first] == (lx.PUNCT, "("):
        first += 1
    if (
        first >= len(tokens)
        or tokens[first][0] != lx.WORD
        or tokens[first][1].upper() not in ("SELECT", "WITH")
    ):
        return False
    for kind, text in tokens:
        if kind == lx.WORD:
            if text.upper() in _NOT_READ_ONLY:
                return False
        elif kind == lx.PUNCT:
            if text == ";":
                return False
        elif kind == lx.JUNK or kind == lx.OTHER:
            return False
    return True
