"""A throwaway PostgreSQL for tests and benchmarks: initdb + pg_ctl on a free loopback port.

    with Postgres() as pg:                  # its own data folder, trust auth on 127.0.0.1 only
        url = pg.create_database("t1")      # postgresql://gasguard@127.0.0.1:<port>/t1

Debian's server binaries live in /usr/lib/postgresql/<major>/bin (not on PATH); `find_bin` looks there.
PostgreSQL refuses to run as root: as root the cluster is owned by and run as the `postgres` system user
(created by the Debian package), through `runuser`. `.ci/run` installs the `postgresql` package on a fresh
machine.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gasguard.testing.mosquitto import free_port


class PostgresError(RuntimeError):
    pass


def find_bin(name: str = "pg_ctl") -> str | None:
    """The newest installed server's binary (Debian keeps them off PATH), else one on PATH."""
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return cands[-1] if cands else shutil.which(name)


class Postgres:
    def __init__(self, port: int | None = None, user: str = "gasguard"):
        pg_ctl = find_bin("pg_ctl")
        if not pg_ctl:
            raise PostgresError("PostgreSQL server binaries not found: apt-get install postgresql "
                                "(.ci/run does it on a fresh machine)")
        self.bindir = Path(pg_ctl).parent
        self.port = port or free_port()
        self.user = user
        self.dir = Path(tempfile.mkdtemp(prefix="gg-postgres-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as = []
        if os.geteuid() == 0:
            # the server will not run as root; the Debian package's 'postgres' user owns the cluster
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self.started = False

    def _run(self, *args: str, timeout: float = 60) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise PostgresError(f"{Path(args[0]).name} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}"
                                f"; log: {self.log}")

    def start(self) -> "Postgres":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                  "--encoding=UTF8", "--no-locale", "--no-sync")
        # fsync off: a test cluster that dies with the test needs no durability (tests of our own
        # durability kill *our* processes, never the database server)
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w",
                  "-t", "60", "start")
        self.started = True
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                          timeout=30)
            except (PostgresError, subprocess.TimeoutExpired):
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Postgres":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class WireTrace:
    """What one psycopg connection puts on the wire, from libpq's own trace (PQtrace), while the block runs:

        with WireTrace(conn, tmp_path / "wire.trace") as w:
            ...
        w.statements, w.round_trips

    `statements`: statements executed (extended-protocol Binds and simple Queries). `round_trips`: the times the
    client, having sent, read the server's answers; the server answers only at a Sync or a Flush, so a run of
    answers is one wait, however many statements it answers."""

    def __init__(self, conn, path):
        self.conn, self.path = conn, Path(path)
        self.statements = self.round_trips = 0

    def __enter__(self) -> "WireTrace":
        import psycopg
        self.f = open(self.path, "w")
        self.conn.pgconn.trace(self.f.fileno())
        self.conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        return self

    def __exit__(self, *exc) -> None:
        self.conn.pgconn.untrace()
        self.f.close()
        lines = [line.split("\t") for line in self.path.read_text().splitlines()]
        self.statements = sum(1 for p in lines if p[0] == "F" and p[2].strip() in ("Bind", "Query"))
        self.round_trips = sum(1 for a, b in zip(lines, lines[1:]) if a[0] == "F" and b[0] == "B")


def wait_ready(url: str, timeout: float = 10.0) -> None:
    import psycopg
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
