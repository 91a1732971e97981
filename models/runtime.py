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


class RelinkRequest(SQLModel, table=True):
    """A CRM record written whose address may match earlier unlinked mail (retroactive linking).

    Written in the same transaction as the record, so the intent survives a crash of the web
    process or a broker outage; the scheduler re-runs it for a while (mail still in the pipeline
    when the record arrived gets its addresses indexed a little later), then forgets it.
    """

    __tablename__ = "relink_requests"

    org_id: str = Field(primary_key=True, max_length=24)
    entity_type: str = Field(primary_key=True, max_length=16)
    entity_id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    last_run_at: datetime | None = ts_field(default=None)


class IdleWatcher(SQLModel, table=True):
    """A running ``mailpipe watcher`` (or the one inside ``serve``): its heartbeat tells the others
    it is alive, so each takes its fair share of the mailboxes to hold in IDLE."""

    __tablename__ = "idle_watchers"

    id: str = Field(primary_key=True, max_length=64)
    host: str = Field(max_length=200)
    pid: int
    started_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    heartbeat_at: datetime = ts_field(default_factory=utcnow, nullable=False, index=True)
    held: int = 0
    idling: int = 0
    capacity: int = 0
