"""A shared MLflow tracking server for a team, brought up on one machine: PostgreSQL (Debian's
`postgresql` package) as the backend store and registry, listening on 127.0.0.1 only, and
MLflow's artifact proxy (`--serve-artifacts`) writing to a folder that stands in for object
storage (S3, GCS in production).

Everything lives under one home folder; `start` is idempotent (it creates only what is missing
and leaves running servers as they are). `start` records the address and ports it used, so
`status`, `stop` and a later `start` need only the home; flags that disagree with the record are
refused (by `start` only while something runs):

    postgres/      the database cluster (initdb), owned by the user PostgreSQL runs as
    postgres.log   PostgreSQL's log
    db-password    the `mlflow` role's password (mode 0600; only the MLflow server reads it)
    artifacts/     the artifact store the server proxies
    server.log, server.pid
    server.json    the MLflow host and port and PostgreSQL's port the last `start` used
    lock           held by a `start` or `stop` while it runs: a second one waits for it

Clients only ever see the server's http URI, never the database. PostgreSQL refuses to run as
root, so as root (a container, a server box) it runs as Debian's `postgres` user, and the home
folder defaults to /var/lib (a folder that user can reach).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from utkface.mlops.runs import process_alive

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DB_OWNER_AS_ROOT = "postgres"  # the system user Debian's postgresql package creates
START_TIMEOUT_S = 180.0  # a first start creates MLflow's tables (about 20 s on 2 cores)
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
RECORD = "server.json"
RECORDED = ("host", "port", "db_port")  # the ServerConfig fields `start` records there


class TrackingServerError(RuntimeError):
    """Something the user can fix: a missing package, a port in use, a refused address."""


@dataclass(frozen=True)
class ServerConfig:
    home: Path
    host: str = "127.0.0.1"
    port: int = 5000
    db_port: int = 5433  # not 5432, which a system cluster may hold
    db_name: str = "mlflow"
    db_user: str = "mlflow"

    def __post_init__(self) -> None:
        for value in (self.db_name, self.db_user):
            if not IDENTIFIER.fullmatch(value):
                raise TrackingServerError(f"{value!r} is not a plain PostgreSQL name")

    @property
    def cluster(self) -> Path:
        return self.home / "postgres"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def tracking_uri(self) -> str:
        """What clients export as MLFLOW_TRACKING_URI on this machine."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


def default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/utkface-pipeline/tracking-server")
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "utkface-pipeline" / "tracking-server"


def recorded(home: Path) -> dict[str, str | int]:
    """The host and ports the home's last `start` used; empty for a home never started."""
    try:
        return json.loads((home / RECORD).read_text())
    except FileNotFoundError:
        return {}


def check_flags(home: Path, flags: dict[str, str | int]) -> None:
    """Refuse flags that disagree with the home's record: `status --port 5000` on a server started
    on 5155 would otherwise report on (or stop) a server that is not this home's."""
    record = recorded(home)
    wrong = [
        f"--{name.replace('_', '-')} {value} disagrees with {record[name]}"
        for name, value in flags.items()
        if name in record and record[name] != value
    ]
    if wrong:
        raise TrackingServerError(
            f"{'; '.join(wrong)} recorded in {home} by its start; leave the flag out"
        )


def configured(home: Path, flags: dict[str, str | int]) -> ServerConfig:
    """The flags given; the rest from the home's record, else the defaults."""
    return ServerConfig(home, **{**recorded(home), **flags})


def _record(config: ServerConfig, db_port: int) -> None:
    values = {"host": config.host, "port": config.port, "db_port": db_port}
    partial = config.home / f"{RECORD}.tmp"
    partial.write_text(json.dumps(values))
    partial.replace(config.home / RECORD)  # atomic: `status` reads it without the lock


def check_host(host: str, allow_remote: bool) -> None:
    if host not in LOOPBACK and not allow_remote:
        raise TrackingServerError(
            f"refusing to listen on {host}: MLflow's server has no authentication of its own, "
            "so anyone who reaches the port can read, change and delete every run and model. "
            "Pass --allow-remote only behind a firewall or an authenticating proxy."
        )


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's versioned folder (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    folders = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in folders:
        if (folder / name).exists():
            return str(folder / name)
    raise TrackingServerError(
        f"PostgreSQL's {name} is not installed: apt-get install postgresql (Debian, Ubuntu)"
    )


def _db_owner() -> str:
    return DB_OWNER_AS_ROOT if os.geteuid() == 0 else getpass.getuser()


def _as_db_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", DB_OWNER_AS_ROOT, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, stdin: str | None = None) -> str:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TrackingServerError(f"{what} failed:\n{(done.stderr or done.stdout).strip()}")
    return done.stdout


def ensure_cluster(config: ServerConfig) -> None:
    """initdb once: local connections by the owner only (peer), TCP with a password (SCRAM)."""
    if (config.cluster / "PG_VERSION").exists():
        return
    config.cluster.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(config.cluster, DB_OWNER_AS_ROOT, DB_OWNER_AS_ROOT)
    command = [postgres_bin("initdb"), "-D", str(config.cluster), "-U", _db_owner()]
    command += ["--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8"]
    _run(_as_db_owner(command), f"initdb in {config.cluster}")


def running_postgres_port(config: ServerConfig) -> int | None:
    """The port of the cluster's running postmaster (line 4 of postmaster.pid), or None."""
    done = subprocess.run(
        _as_db_owner([postgres_bin("pg_ctl"), "-D", str(config.cluster), "status"]),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    return int((config.cluster / "postmaster.pid").read_text().splitlines()[3])


def ensure_postgres(config: ServerConfig) -> int:
    """Start the cluster on 127.0.0.1 unless it runs; its port (the running one wins)."""
    port = running_postgres_port(config)
    if port is not None:
        return port
    log = config.home / "postgres.log"
    if os.geteuid() == 0 and not log.exists():
        log.touch()
        shutil.chown(log, DB_OWNER_AS_ROOT)
    options = f"-h 127.0.0.1 -p {config.db_port} -k {config.cluster}"
    command = [postgres_bin("pg_ctl"), "-D", str(config.cluster), "-l", str(log), "-w"]
    _run(_as_db_owner([*command, "-o", options, "start"]), f"PostgreSQL start (log: {log})")
    return config.db_port


def _password(config: ServerConfig) -> str:
    path = config.home / "db-password"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def ensure_database(config: ServerConfig, port: int) -> str:
    """The `mlflow` role (its password re-set from db-password) and database; the SQLAlchemy URI
    the MLflow server connects with."""
    password = _password(config)
    psql = [postgres_bin("psql"), "-h", str(config.cluster), "-p", str(port), "-d", "postgres"]
    psql = _as_db_owner([*psql, "-v", "ON_ERROR_STOP=1", "-qtA"])
    user, name = config.db_user, config.db_name
    # The password travels on stdin (never in a process list); psql's :'var' quotes it.
    role_sql = (
        f"\\set pw '{password}'\n"
        f"SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') AS missing \\gset\n"
        f"\\if :missing\nCREATE ROLE {user} LOGIN;\n\\endif\n"
        f"ALTER ROLE {user} PASSWORD :'pw';\n"
        f"SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}') AS missing \\gset\n"
        f"\\if :missing\nCREATE DATABASE {name} OWNER {user};\n\\endif\n"
    )
    _run([*psql, "-f", "-"], "creating the MLflow database", stdin=role_sql)
    return f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/{name}"


def healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_pid(config: ServerConfig) -> int | None:
    """The MLflow server's pid from server.pid, while that process lives."""
    try:
        pid = int(config.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if process_alive(pid) else None


def ensure_mlflow(config: ServerConfig, backend_uri: str) -> bool:
    """Start `mlflow server` in the background unless it already answers; True if started."""
    if server_pid(config) is not None and healthy(config.tracking_uri):
        return False
    if healthy(config.tracking_uri):
        raise TrackingServerError(f"another server already answers on {config.tracking_uri}")
    config.artifacts.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--host", config.host]
    command += ["--port", str(config.port), "--serve-artifacts"]
    command += ["--artifacts-destination", str(config.artifacts)]
    # The backend URI holds the password: given in the environment, never on the command line.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_uri}
    with open(config.log, "ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    config.pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not healthy(config.tracking_uri):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = config.log.read_text(errors="replace")[-2000:]
            stop_mlflow(config)
            raise TrackingServerError(f"the MLflow server did not come up; {config.log}:\n{tail}")
        time.sleep(0.5)
    return True


@contextlib.contextmanager
def exclusive(config: ServerConfig) -> Iterator[None]:
    """One `start` or `stop` at a time per home (two terminals, two team members): without it,
    a second first `start` ran initdb on a half-made cluster, and a second MLflow server lost
    the port to the first while it was still coming up."""
    config.home.mkdir(parents=True, exist_ok=True)
    with open(config.home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def check_not_moved(config: ServerConfig) -> None:
    """Refuse a `start` on other ports than the home's running servers use: it would record
    ports they do not listen on (so `status` and `stop` would look elsewhere) and start a second
    MLflow server on the same data."""
    record = recorded(config.home)
    if not record or all(record[name] == getattr(config, name) for name in RECORDED):
        return
    running = []
    if server_pid(config) is not None:
        running.append(f"the MLflow server on {configured(config.home, {}).tracking_uri}")
    db_port = running_postgres_port(config) if (config.cluster / "PG_VERSION").exists() else None
    if db_port is not None:
        running.append(f"PostgreSQL on 127.0.0.1:{db_port}")
    if running:
        raise TrackingServerError(
            f"{config.home} already runs {' and '.join(running)}: stop it first to start on "
            f"{config.tracking_uri} with PostgreSQL on port {config.db_port}"
        )


def start(config: ServerConfig, allow_remote: bool = False) -> list[str]:
    """Bring both servers up; lines saying what runs where."""
    check_host(config.host, allow_remote)
    with exclusive(config):
        check_not_moved(config)
        if os.geteuid() == 0:
            config.home.chmod(0o755)  # the postgres user reaches its cluster below it
        ensure_cluster(config)
        port = ensure_postgres(config)
        _record(config, port)
        backend_uri = ensure_database(config, port)
        started = ensure_mlflow(config, backend_uri)
    return [
        f"PostgreSQL on 127.0.0.1:{port} (database {config.db_name}, user {config.db_user}), "
        f"data in {config.cluster}",
        f"MLflow server {'started' if started else 'already running'} on "
        f"{config.tracking_uri}, artifacts in {config.artifacts}, log {config.log}",
        "it has no authentication: keep it on loopback, or behind a firewall or an "
        "authenticating proxy",
    ]


def stop_mlflow(config: ServerConfig) -> bool:
    pid = server_pid(config)
    config.pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)  # the server and its uvicorn workers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not group_alive(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. Zombies do not: a server that `start` ran
    from a process that is still alive (a test session, a notebook) stays one after it exits,
    until that process reaps it, and kept `stop` waiting for its 30 s deadline."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process_alive(process.pid):
                return True
    return False


def stop(config: ServerConfig) -> list[str]:
    # no lock (and no home folder created) where nothing was ever started
    with exclusive(config) if config.home.is_dir() else contextlib.nullcontext():
        stopped = stop_mlflow(config)
        lines = ["MLflow server stopped" if stopped else "MLflow server was not running"]
        if (config.cluster / "PG_VERSION").exists() and running_postgres_port(config) is not None:
            command = [postgres_bin("pg_ctl"), "-D", str(config.cluster), "-m", "fast", "-w"]
            _run(_as_db_owner([*command, "stop"]), "PostgreSQL stop")
            lines.append("PostgreSQL stopped")
        else:
            lines.append("PostgreSQL was not running")
    return lines


def status(config: ServerConfig) -> tuple[bool, list[str]]:
    """Whether both run, and a line on each."""
    port = running_postgres_port(config) if (config.cluster / "PG_VERSION").exists() else None
    server = server_pid(config) is not None and healthy(config.tracking_uri)
    lines = [
        f"PostgreSQL: running on 127.0.0.1:{port}" if port else "PostgreSQL: stopped",
        f"MLflow server: running on {config.tracking_uri}" if server else "MLflow server: stopped",
    ]
    return port is not None and server, lines
