"""Budgets and reservations (planner.plan.budget); the monthly row exists from the start so reservations can lock it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    budgets = op.create_table('budgets',
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('usd', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('scope')
    )
    op.create_table('reservations',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('usd', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('job_id')
    )
    op.bulk_insert(budgets, [{"scope": "monthly", "usd": None,
                              "updated_at": datetime.now(timezone.utc).replace(tzinfo=None)}])


def downgrade() -> None:
    op.drop_table('reservations')
    op.drop_table('budgets')
