"""Dramatiq actors: thin shells that decode a message, call one flow (:mod:`pipeline.flows`) and let
Dramatiq retry what raised. Importing this package sets up the broker first, then declares every
actor and registers every scheduler sweep.

``dramatiq pipeline.actors`` (what ``mailpipe worker`` runs) finds the broker as ``broker`` here.
"""

from pipeline.broker import setup_broker

broker = setup_broker()

from pipeline.actors import (  # noqa: E402
    fetch,
    flags,
    ingest,
    notify_email,
    notion,
    privacy,
    selftest,
    send,
    sentiment,
    tracking,
    webhooks,
)
from pipeline.flows import sweeps  # noqa: E402,F401  (registers every sweep with the scheduler)

__all__ = ["broker", "fetch", "flags", "ingest", "notify_email", "notion", "privacy", "selftest", "send", "sentiment", "tracking",
           "webhooks"]
