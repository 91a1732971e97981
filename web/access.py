"""The caller of an API request as an :class:`models.access.Actor` (organization + acting user).

Every route asks :func:`actor` and goes through the actor for what it reads and writes; the rules
themselves live in :mod:`models.access`, the one place that decides who sees which mailbox.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from models.access import Actor, NotVisible

__all__ = ["Actor", "NotVisible", "actor", "own_user"]


def actor(request: HTTPConnection) -> Actor:
    """The organization of the API key and the ``X-Mailpipe-User`` (None: the whole organization)."""
    state = request.scope.get("state", {})
    user = state.get("acting_user")
    return Actor(str(state["org_id"]), str(user) if user else None)


def own_user(who: Actor, user_id: str | None, what: str = "user") -> str | None:
    """``user_id`` when the actor may act for that user (itself, or anyone for the org); the acting
    user when none is named; otherwise 404 (another user's notifications, tokens, connections)."""
    if user_id is None or user_id == "":
        return who.user_id
    if not who.may_act_as(user_id):
        raise NotVisible(what)
    return user_id
