"""Daily roll-up of the hourly price aggregates (pricing.store.PriceDaily), backfilled from price_hourly.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    daily = op.create_table('price_daily',
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('gpu_model', sa.String(length=100), nullable=False),
    sa.Column('tier', sa.String(length=32), nullable=False),
    sa.Column('spot', sa.Boolean(), nullable=False),
    sa.Column('day', sa.DateTime(), nullable=False),
    sa.Column('min_usd', sa.Float(), nullable=False),
    sa.Column('median_sum', sa.Float(), nullable=False),
    sa.Column('hours', sa.Integer(), nullable=False),
    sa.Column('offer_count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'gpu_model', 'tier', 'spot', 'day')
    )
    with op.batch_alter_table('price_daily', schema=None) as batch_op:
        batch_op.create_index('ix_price_daily_gpu_day', ['gpu_model', 'day'], unique=False)
    hourly = sa.table('price_hourly', sa.column('provider'), sa.column('gpu_model'), sa.column('tier'),
                      sa.column('spot'), sa.column('hour', sa.DateTime()), sa.column('min_usd'),
                      sa.column('median_usd'), sa.column('offer_count'))
    days: dict[tuple, list] = {}
    for p, g, t, s, hour, low, median, count in op.get_bind().execute(sa.select(hourly)):
        key = (p, g, t, s, hour.replace(hour=0, minute=0, second=0, microsecond=0))
        row = days.setdefault(key, [low, 0.0, 0, 0])
        row[0], row[1], row[2], row[3] = min(row[0], low), row[1] + median, row[2] + 1, max(row[3], count)
    if days:
        op.bulk_insert(daily, [dict(provider=p, gpu_model=g, tier=t, spot=s, day=day, min_usd=low, median_sum=total,
                                    hours=n, offer_count=count)
                               for (p, g, t, s, day), (low, total, n, count) in days.items()])


def downgrade() -> None:
    with op.batch_alter_table('price_daily', schema=None) as batch_op:
        batch_op.drop_index('ix_price_daily_gpu_day')
    op.drop_table('price_daily')
