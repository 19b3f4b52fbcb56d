"""Alembic environment: the URL comes from the caller's config, else from planner settings."""
from alembic import context

import planner.records  # noqa: F401  (registers the job tables on Base.metadata)
import pricing.store  # noqa: F401  (registers the price-book tables on Base.metadata)
from pricing.db import Base, make_engine

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from planner.config import load_settings

    return load_settings().db_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
