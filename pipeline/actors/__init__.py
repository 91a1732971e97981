"""Dramatiq actors. Importing this package sets up the broker first, then declares every actor.

``dramatiq pipeline.actors`` (what ``mailpipe worker`` runs) finds the broker as ``broker`` here.
"""

from pipeline.broker import setup_broker

broker = setup_broker()

from pipeline.actors import (  # noqa: E402
    attachments,
    fetch,
    ingest,
    leads,
    link,
    notify,
    notify_email,
    notion,
    parse,
    selftest,
    send,
    tracking,
)
from pipeline import fleet  # noqa: E402,F401  (registers the fleet-gauge sweep beside the actors' sweeps)

__all__ = ["attachments", "broker", "fetch", "ingest", "leads", "link", "notify", "notify_email", "notion", "parse", "selftest", "send", "tracking"]
