"""Hit/miss, key pattern and TTL for Redis command spans (the contrib instrumentation's hooks).

The request hook parses the command (`parse_command`): its keys, whether it reads, writes
(with which expiry) or deletes them, and how to read hit or miss off the reply. The response
hook counts hits and misses. Both set the `hms.cache.*` attributes and leave a `CacheCall`
on the span for the span processor (attribute ``_hms_cache``). Commands sent by a Django
cache call are left alone: the call's own span (`instrument.django_cache`) has the cache
attributes and is what the signals count, so its Redis children would only repeat them at
some 20 µs each. Pipelines get no request hook and their command stack is already reset when
the response hook runs: `instrument.redis` keeps a copy in `pipeline_commands` around
``Pipeline.execute``.

Command families (the reply decides hit or miss):

=============================================== ==========================================
GET GETDEL GETEX GETSET HGET LINDEX, SET ... GET nil reply = miss
HGETALL HKEYS HVALS LRANGE SMEMBERS ZRANGE       empty reply = miss (a missing key reads empty)
HEXISTS, EXISTS with one key                     0 = miss
MGET, HMGET (per field), EXISTS with many keys   hits / misses counted per key (field)
SET SETNX SETEX PSETEX MSET MSETNX GETSET        writes; TTL from EX/PX/EXAT/PXAT (none: no
                                                 expiry; KEEPTTL: a modification, below)
EXPIRE PEXPIRE EXPIREAT PEXPIREAT, GETEX EX/...  writes of an expiry; PERSIST, GETEX PERSIST:
                                                 a write without expiry
DEL UNLINK GETDEL                                deletes (one per key)
INCR*, DECR*, HSET*, LPUSH/RPUSH, SADD, ZADD ... modifications: key pattern only (they keep
                                                 the key's expiry, so they are not writes)
anything else                                    operation only
=============================================== ==========================================

Raw keys stay in the process (a hash tells repeated keys apart) unless
HMS_OTEL_CAPTURE_CACHE_KEYS=true, which adds ``hms.cache.key``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.context import user_location
from hms_otel_agent.instrument.sdk_internals import set_attributes
from hms_otel_agent.signals.cache_signals import common_pattern
from hms_otel_agent.signals.key_pattern import KeyPatterns
from hms_otel_agent.signals.records import CacheCall
from hms_otel_agent.signals.vocabulary import CACHE_RECORD, COMMAND_RECORD, code_attributes

MAX_CAPTURED_KEY_CHARS = 1024
MAX_PATTERN_KEYS = 32  # keys of a multi-key command whose patterns are merged
# The process's key patterns: the built-in structural words and those learned from its keys.
PATTERNS = KeyPatterns()

# The Django cache call in progress, if any (set by `instrument.django_cache`): the Redis
# commands under it get no hms.cache.* attributes and are not recorded.
current_django_call: ContextVar[Any] = ContextVar("hms_otel_django_cache_call", default=None)
# The command stack of the pipeline being executed (set by `instrument.redis`).
pipeline_commands: ContextVar[Sequence[tuple[Any, ...]] | None] = ContextVar(
    "hms_otel_redis_pipeline", default=None
)

# How the reply tells hit from miss.
NO_READ, NIL, EMPTY, TRUTHY, PER_KEY, COUNT = 0, 1, 2, 3, 4, 5

_NIL_READS = frozenset(("GET", "GETDEL", "GETEX", "HGET", "LINDEX"))
_EMPTY_READS = frozenset(("HGETALL", "HKEYS", "HVALS", "LRANGE", "SMEMBERS", "ZRANGE"))
_TTL_COMMANDS = {"EXPIRE": 1.0, "PEXPIRE": 0.001}
_TTL_AT_COMMANDS = {"EXPIREAT": 1.0, "PEXPIREAT": 0.001}
_EXPIRY_OPTIONS = {"EX": 1.0, "PX": 0.001}
_EXPIRY_AT_OPTIONS = {"EXAT": 1.0, "PXAT": 0.001}
_SET_VALUE_OPTIONS = frozenset(("IFEQ", "IFNE", "IFDEQ", "IFDNE"))


def _words(*groups: str) -> frozenset[str]:
    return frozenset(word for group in groups for word in group.split())


# First argument is a key; no read, write or delete to count.
_KEY_COMMANDS = _words(
    "INCR INCRBY INCRBYFLOAT DECR DECRBY APPEND SETRANGE SETBIT GETRANGE GETBIT STRLEN",
    "HSET HSETNX HMSET HDEL HINCRBY HINCRBYFLOAT HLEN HSTRLEN HSCAN HEXPIRE HTTL",
    "LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LREM LTRIM LINSERT LLEN LPOS",
    "SADD SREM SPOP SCARD SISMEMBER SMISMEMBER SRANDMEMBER SSCAN",
    "ZADD ZREM ZINCRBY ZCARD ZSCORE ZMSCORE ZRANK ZREVRANK ZCOUNT ZRANGEBYSCORE ZREVRANGE",
    "ZREVRANGEBYSCORE ZREMRANGEBYSCORE ZREMRANGEBYRANK ZSCAN PFADD PFCOUNT XADD XLEN XRANGE",
    "TTL PTTL EXPIRETIME PEXPIRETIME TYPE DUMP RESTORE JSON.GET JSON.SET JSON.DEL",
)


class RedisCommand:
    """What one Redis command does to which keys (see the table in the module docstring)."""

    __slots__ = ("deletes", "keys", "operation", "read", "ttl_s", "writes")

    def __init__(
        self,
        operation: str,
        keys: Sequence[Any] = (),
        read: int = NO_READ,
        writes: int = 0,
        ttl_s: float | None = None,
        deletes: int = 0,
    ) -> None:
        self.operation = operation
        self.keys = keys
        self.read = read
        self.writes = writes
        self.ttl_s = ttl_s
        self.deletes = deletes

    def count(self, reply: Any) -> tuple[int, int, int]:
        """(reads, hits, misses) from the command's reply; (0, 0, 0) for an error reply."""
        read = self.read
        if read == NO_READ or isinstance(reply, BaseException):
            return 0, 0, 0
        if read == NIL:
            return (1, 0, 1) if reply is None else (1, 1, 0)
        if read == EMPTY:
            return (1, 0, 1) if not reply else (1, 1, 0)
        if read == TRUTHY:
            return (1, 1, 0) if reply else (1, 0, 1)
        if read == PER_KEY:
            if not isinstance(reply, (list, tuple)):
                return 0, 0, 0
            hits = sum(1 for value in reply if value is not None)
            return len(reply), hits, len(reply) - hits
        if read == COUNT:
            total = len(self.keys)
            try:
                hits = min(max(int(reply), 0), total)
            except (TypeError, ValueError):
                return 0, 0, 0
            return total, hits, total - hits
        return 0, 0, 0


# Commands whose second word is a subcommand (``CONFIG GET``, ``CLIENT SETNAME``).
_CONTAINERS = frozenset(
    """ACL CLIENT CLUSTER COMMAND CONFIG DEBUG FUNCTION LATENCY MEMORY MODULE OBJECT PUBSUB SCRIPT
    SLOWLOG XGROUP XINFO""".split()  # noqa: SIM905 - a word list reads better as text
)
# Letters, and the dots, underscores and bars of module and subcommand names: a first word with
# digits or dashes (an identifier sent as a command) reads as "?", never as a command name.
_COMMAND_WORD = re.compile(r"[A-Za-z][A-Za-z._|]{0,31}")


def command_head(first: Any) -> tuple[list[str], int]:
    """The command's name words in its first argument, and how many more words follow there.

    redis-py splits a first argument on whitespace before sending it (``execute_command("CONFIG
    GET", name)``), so ``execute_command(f"GET {key}")`` sends a GET of `key`. Only the command
    and a subcommand of the `_CONTAINERS` are command words; a first word that does not read as
    a command is ``?``."""
    words = key_text(first).split()
    if not words:
        return [], 0
    head = [words[0] if _COMMAND_WORD.fullmatch(words[0]) else "?"]
    if len(words) > 1 and head[0].upper() in _CONTAINERS and _COMMAND_WORD.fullmatch(words[1]):
        head.append(words[1])
    return head, len(words) - len(head)


def _token(value: Any) -> str:
    if value.__class__ is str:
        return value.upper()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("ascii", "replace").upper()
    return str(value).upper()


def _seconds(value: Any, scale: float) -> float:
    return round(float(value) * scale, 3)


def _until(value: Any, scale: float) -> float:
    return round(max(0.0, float(value) * scale - time.time()), 3)


def _set_command(args: Sequence[Any]) -> RedisCommand:
    """SET key value [NX|XX|IFEQ v ...] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]"""
    command = RedisCommand("SET", args[1:2], writes=1)
    index, end = 3, len(args)
    while index < end:
        option = _token(args[index])
        if option in _EXPIRY_OPTIONS and index + 1 < end:
            command.ttl_s = _seconds(args[index + 1], _EXPIRY_OPTIONS[option])
            index += 2
        elif option in _EXPIRY_AT_OPTIONS and index + 1 < end:
            command.ttl_s = _until(args[index + 1], _EXPIRY_AT_OPTIONS[option])
            index += 2
        elif option in _SET_VALUE_OPTIONS:
            index += 2
        else:
            if option == "GET":
                command.read = NIL
            elif option == "KEEPTTL":
                command.writes = 0  # keeps the key's expiry: a modification
            index += 1
    return command


def _getex_command(args: Sequence[Any]) -> RedisCommand:
    """GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]"""
    command = RedisCommand("GETEX", args[1:2], read=NIL)
    if len(args) >= 3:
        option = _token(args[2])
        if option == "PERSIST":
            command.writes = 1
        elif len(args) >= 4 and option in _EXPIRY_OPTIONS:
            command.writes, command.ttl_s = 1, _seconds(args[3], _EXPIRY_OPTIONS[option])
        elif len(args) >= 4 and option in _EXPIRY_AT_OPTIONS:
            command.writes, command.ttl_s = 1, _until(args[3], _EXPIRY_AT_OPTIONS[option])
    return command


def parse_command(args: Sequence[Any]) -> RedisCommand:
    """The keys and effects of one command, from the arguments redis-py sends."""
    if not args:
        return RedisCommand("")
    name = _token(args[0])
    if not _COMMAND_WORD.fullmatch(name):
        # redis-py splits a first argument on whitespace before sending it: "CONFIG GET" and
        # the like, but also execute_command(f"GET {key}"), whose key must not be the operation.
        head, _ = command_head(args[0])
        if len(head) != 1:
            return RedisCommand(" ".join(head).upper())
        name = head[0].upper()
        args = (*key_text(args[0]).split(), *args[1:])
    n = len(args)
    if name in _NIL_READS:
        if name == "GETEX":
            return _getex_command(args)
        return RedisCommand(name, args[1:2], read=NIL, deletes=1 if name == "GETDEL" else 0)
    if name == "SET":
        return _set_command(args)
    if name in _EMPTY_READS:
        return RedisCommand(name, args[1:2], read=EMPTY)
    if name == "MGET":
        return RedisCommand(name, args[1:], read=PER_KEY)
    if name == "HMGET":
        return RedisCommand(name, args[1:2], read=PER_KEY)
    if name == "EXISTS":
        keys = args[1:]
        return RedisCommand(name, keys, read=TRUTHY if len(keys) == 1 else COUNT)
    if name == "HEXISTS":
        return RedisCommand(name, args[1:2], read=TRUTHY)
    if name in ("DEL", "UNLINK"):
        return RedisCommand(name, args[1:], deletes=n - 1)
    if name == "SETEX" and n >= 3:
        return RedisCommand(name, args[1:2], writes=1, ttl_s=_seconds(args[2], 1.0))
    if name == "PSETEX" and n >= 3:
        return RedisCommand(name, args[1:2], writes=1, ttl_s=_seconds(args[2], 0.001))
    if name in ("SETNX", "PERSIST"):
        return RedisCommand(name, args[1:2], writes=1)
    if name == "GETSET":
        return RedisCommand(name, args[1:2], read=NIL, writes=1)
    if name in ("MSET", "MSETNX"):
        keys = args[1::2]
        return RedisCommand(name, keys, writes=len(keys))
    if name in _TTL_COMMANDS and n >= 3:
        return RedisCommand(name, args[1:2], writes=1, ttl_s=_seconds(args[2], _TTL_COMMANDS[name]))
    if name in _TTL_AT_COMMANDS and n >= 3:
        return RedisCommand(name, args[1:2], writes=1, ttl_s=_until(args[2], _TTL_AT_COMMANDS[name]))
    if name in _KEY_COMMANDS:
        return RedisCommand(name, args[1:2])
    return RedisCommand(name)


# --- keys --------------------------------------------------------------------------------------


def key_text(key: Any) -> str:
    if key.__class__ is str:
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key).decode("utf-8", "replace")
    return str(key)


def key_hash(keys: Sequence[Any]) -> int | None:
    """In-process identity of a key (or of a set of keys); never exported."""
    if not keys:
        return None
    if len(keys) == 1:
        return hash(key_text(keys[0]))
    return hash(tuple(key_text(k) for k in keys))


def keys_pattern(keys: Sequence[Any]) -> str:
    """The pattern of a key, or the common pattern of several (`common_pattern`)."""
    if not keys:
        return ""
    if len(keys) == 1:
        return PATTERNS.pattern(keys[0])
    return common_pattern(PATTERNS.pattern(k) for k in keys[:MAX_PATTERN_KEYS])


def captured_keys(keys: Sequence[Any]) -> str:
    """``hms.cache.key`` (opt-in): the key, or the keys separated by spaces, bounded."""
    text = key_text(keys[0]) if len(keys) == 1 else " ".join(key_text(k) for k in keys[:MAX_PATTERN_KEYS])
    return text[:MAX_CAPTURED_KEY_CHARS]


def read_attributes(reads: int, hits: int, misses: int, single: bool) -> dict[str, Any]:
    """``hms.cache.hit`` for single-key reads, ``hms.cache.hits``/``misses`` for the others."""
    if not reads:
        return {}
    if single:
        return {"hms.cache.hit": hits > 0}
    return {"hms.cache.hits": hits, "hms.cache.misses": misses}


# --- the hooks ---------------------------------------------------------------------------------


def _on_request(span: Any, args: Sequence[Any], capture_keys: bool) -> None:
    command = parse_command(args)
    location = user_location()
    keys = command.keys
    pattern = keys_pattern(keys)
    attributes: dict[str, Any] = {"hms.cache.operation": command.operation}
    if pattern:
        attributes["hms.cache.key_pattern"] = pattern
    if command.writes and command.ttl_s is not None:
        attributes["hms.cache.ttl_s"] = command.ttl_s
    if capture_keys and keys:
        attributes["hms.cache.key"] = captured_keys(keys)
    if location is not None:
        attributes.update(code_attributes(location))
    set_attributes(span, attributes)
    setattr(span, COMMAND_RECORD, command)
    setattr(
        span,
        CACHE_RECORD,
        CacheCall(
            operation=command.operation,
            key_pattern=pattern,
            start_ns=0,
            duration_ns=0,
            backend="redis",
            writes=command.writes,
            deletes=command.deletes,
            ttl_s=command.ttl_s,
            key_hash=key_hash(keys),
            location=location,
        ),
    )


def _on_response(span: Any, command: RedisCommand, reply: Any) -> None:
    reads, hits, misses = command.count(reply)
    if not reads:
        return
    call: CacheCall = getattr(span, CACHE_RECORD)
    call.reads, call.hits, call.misses = reads, hits, misses
    set_attributes(span, read_attributes(reads, hits, misses, command.read in (NIL, EMPTY, TRUTHY)))


def _on_pipeline(span: Any, stack: Sequence[tuple[Any, ...]], replies: Any, capture_keys: bool) -> None:
    """One CacheCall for the whole pipeline: reads, hits, misses, writes and deletes summed.

    The TTL is the shortest one written; None when some key written without an expiry is not
    given one by a later EXPIRE in the same pipeline (MSET + EXPIRE per key is fine).
    """
    location = user_location()
    if not isinstance(replies, (list, tuple)) or len(replies) != len(stack):
        replies = [None] * len(stack)
        counted = False
    else:
        counted = True
    operations: list[str] = []
    all_keys: list[Any] = []
    reads = hits = misses = deletes = 0
    written: dict[str, float | None] = {}  # key -> expiry after the pipeline
    for args, reply in zip(stack, replies, strict=False):
        command = parse_command(args)
        operations.append(command.operation)
        all_keys.extend(command.keys)
        deletes += command.deletes
        if counted:
            r, h, m = command.count(reply)
            reads, hits, misses = reads + r, hits + h, misses + m
        if command.writes:
            for key in command.keys:
                written[key_text(key)] = command.ttl_s  # a later EXPIRE replaces the SET's None
    single_command = len(set(operations)) == 1
    operation = operations[0] if single_command and operations else "PIPELINE"
    unique_keys = list(dict.fromkeys(key_text(k) for k in all_keys))
    pattern = keys_pattern(unique_keys)
    writes = len(written)
    ttls = list(written.values())
    ttl_s = None if not ttls or any(t is None for t in ttls) else min(t for t in ttls if t is not None)
    attributes: dict[str, Any] = {"hms.cache.operation": operation}
    if pattern:
        attributes["hms.cache.key_pattern"] = pattern
    if writes and ttl_s is not None:
        attributes["hms.cache.ttl_s"] = ttl_s
    if capture_keys and unique_keys:
        attributes["hms.cache.key"] = captured_keys(unique_keys)
    attributes.update(read_attributes(reads, hits, misses, single=reads == 1))
    set_attributes(span, attributes)
    setattr(
        span,
        CACHE_RECORD,
        CacheCall(
            operation=operation,
            key_pattern=pattern,
            start_ns=0,
            duration_ns=0,
            backend="redis",
            reads=reads,
            hits=hits,
            misses=misses,
            writes=writes,
            deletes=deletes,
            ttl_s=ttl_s if writes else None,
            key_hash=key_hash(unique_keys),
            location=location,
        ),
    )


def redis_request_hook(settings: Settings) -> Callable[..., None] | None:
    capture_keys = settings.capture_cache_keys

    def request_hook(span: Any, instance: Any, args: Any, kwargs: Any) -> None:
        try:
            # Commands under a Django cache call: that call's span has the cache attributes
            # and is what the signals count; its Redis children keep only the contrib's.
            if current_django_call.get() is None and span.is_recording():
                _on_request(span, args, capture_keys)
        except Exception as exc:
            guard.report("redis request hook", exc)

    return request_hook


def redis_response_hook(settings: Settings) -> Callable[..., None] | None:
    capture_keys = settings.capture_cache_keys

    def response_hook(span: Any, instance: Any, response: Any) -> None:
        try:
            # Under a Django cache call there is neither a command record (the request hook
            # skipped it) nor a pipeline copy (instrument.redis): nothing to do.
            if not span.is_recording():
                return
            command = getattr(span, COMMAND_RECORD, None)
            if command is not None:
                _on_response(span, command, response)
                return
            stack = pipeline_commands.get()
            if stack is not None:
                _on_pipeline(span, stack, response, capture_keys)
        except Exception as exc:
            guard.report("redis response hook", exc)

    return response_hook
