"""Process-level state: scheduler leadership heartbeats and pipeline self-test runs."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow


class SchedulerHeartbeat(SQLModel, table=True):
    """The leading scheduler writes here every tick; operators and /readyz read it."""

    __tablename__ = "scheduler_heartbeats"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=200, description="host:pid of the leader")
    became_leader_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    last_tick_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    ticks: int = 0


class SelfTestRun(SQLModel, table=True):
    """A two-actor round trip through the broker that proves workers are consuming."""

    __tablename__ = "selftest_runs"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    first_at: datetime | None = ts_field(default=None)
    first_worker: str | None = Field(default=None, max_length=200)
    second_at: datetime | None = ts_field(default=None)
    second_worker: str | None = Field(default=None, max_length=200)
    first_runs: int = 0
    second_runs: int = 0
