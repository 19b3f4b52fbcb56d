"""A project identity and launch claims.

`project` holds one row, made here: the identity every instance label and local run of this database's
project carries (planner.run.backends.base.instance_label), so one project's reaper and local runs touch only
its own boxes, however many projects share one provider account or one runs directory. It lives in the
database, so every machine that supervises the project agrees on it.

`attempts.launch_fence` / `attempts.launch_lease_until`: the claim on an attempt's create. The launching
supervisor renews the lease (database clock) while the create is in flight; another supervisor may
recover the attempt only once the lease has lapsed, and does so by bumping the fence, so the first one's
late answer cannot be recorded over it (it ends its instance instead).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""
import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    project = op.create_table(
        'project',
        sa.Column('id', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.bulk_insert(project, [{'id': 'p' + uuid.uuid4().hex[:8],
                              'created_at': datetime.now(timezone.utc).replace(tzinfo=None)}])
    with op.batch_alter_table('attempts') as batch:
        batch.add_column(sa.Column('launch_fence', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('launch_lease_until', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        batch.drop_column('launch_lease_until')
        batch.drop_column('launch_fence')
    op.drop_table('project')
