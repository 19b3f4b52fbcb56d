"""Engine, sessions, the schema check, the clock and the UTC column type shared by every table in the project.

Alembic owns the schema (`planner db upgrade`); the application never calls create_all. SQLite runs
in WAL mode with a busy timeout so a cron refresh, `planner serve` and CLI reads can share one file.
"""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

# The Alembic scripts live inside the `planner` package (they cover the price book and the job tables),
# so an installed wheel carries them; the checkout's top-level migrations/ links to the same directory.
MIGRATIONS_PACKAGE = "planner"


def migrations_dir() -> Path:
    return Path(str(resources.files(MIGRATIONS_PACKAGE).joinpath("migrations")))


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def database_now(session) -> datetime:
    """The database's clock, in UTC: the one clock every host sharing the database agrees on, so leases and
    claims compare times from one source however far the hosts' own clocks drift apart."""
    from sqlalchemy import text

    if session.get_bind().dialect.name == "sqlite":  # a file on this host: its clock, to the millisecond
        value = session.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    now = "clock_timestamp()" if session.get_bind().dialect.name == "postgresql" else "CURRENT_TIMESTAMP"
    value = session.execute(text(f"SELECT {now}")).scalar_one()  # clock_timestamp: now, not the transaction's start
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


class SchemaBehind(RuntimeError):
    """The database is missing or older than this code; the fix is `planner db upgrade`."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


# DBAPI module -> the pip requirement that provides it, for the "install the driver" message
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL",
                   "MySQLdb": "mysqlclient", "asyncpg": "asyncpg", "pg8000": "pg8000", "oracledb": "oracledb",
                   "pyodbc": "pyodbc", "mysql": "mysql-connector-python"}


def url_problem(url: str) -> str | None:
    """Why `url` cannot open a database from here (bad syntax, unknown dialect, driver not installed), as
    a fix for the user; None when it can. Never echoes the URL: it may hold a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "not a database URL; use e.g. sqlite:////path/planner.db or postgresql+psycopg://user@host/db"
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"no SQLAlchemy dialect {parsed.drivername!r}; use sqlite:///... or postgresql+psycopg://..."
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (exc.name or "").split(".")[0] or parsed.get_driver_name()
        package = DRIVER_PACKAGES.get(module, module)
        hint = " (or use postgresql+psycopg:// with psycopg[binary])" if module == "psycopg2" else ""
        return f"the {parsed.drivername} driver is not installed; run: pip install '{package}'{hint}"
    return None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return make_engine(url)


def session_factory(url: str) -> sessionmaker:
    return sessionmaker(engine_for(url), expire_on_commit=False)


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str]:
    """Run migrations; return (revision before, revision after)."""
    from alembic import command

    before = current_revision(url)
    command.upgrade(alembic_config(url), revision)
    return before, current_revision(url) or ""


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine_for(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current_schema(url: str) -> None:
    """Raise SchemaBehind unless the database is at the newest migration."""
    current, head = current_revision(url), head_revision()
    if current != head:
        state = "has no schema yet" if current is None else f"is at revision {current}, code expects {head}"
        raise SchemaBehind(f"the database {state}; run: planner db upgrade")
