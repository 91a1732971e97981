"""Mailbox accounts: test, create, read with sync status, patch, delete, manual sync."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, StringConstraints, field_validator
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from models import EmailAccount, User, utcnow
from models.db import get_engine
from models.oauth import OAuthGrant
from ops.keys import seal
from pipeline.flows import accounts as svc
from pipeline.flows import tokens
from pipeline.flows.events_outbox import note_sync_state
from pipeline.flows.sync import fetch_now
from pipeline.stages.wire_text import control_character, host_problem
from web.access import Actor, actor
from web.api import ApiRouter
from web.errors import ApiError
from web.params import Param
from web.present import account_json
from web.ratelimit import CONNECTION_TESTS
from web.schemas.accounts import AccountOut, AccountsOut, ConnTestOut, SyncQueuedOut
from web.validation import Body, parse_body

router = ApiRouter("accounts")

Security = Literal["ssl", "starttls", "none"]
Provider = Literal["gmail", "outlook", "exchange", "imap"]


class ServerIn(Body):
    host: str | None = Field(default=None, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Security | None = None
    username: str | None = Field(default=None, max_length=320)
    password: SecretStr | None = None

    # mode="before": checked as sent, before whitespace is stripped (a trailing CR/LF is refused, not dropped)
    @field_validator("host", mode="before")
    @classmethod
    def _host(cls, v: object) -> object:
        if isinstance(v, str):
            problem = host_problem(v)
            if problem is not None:
                raise ValueError(problem)
        return v

    @field_validator("username", "password", mode="before")
    @classmethod
    def _no_control_characters(cls, v: object) -> object:
        if isinstance(v, str) and (bad := control_character(v)) is not None:
            raise ValueError(f"must not contain control characters ({bad})")
        return v


UserIds = list[Annotated[str, StringConstraints(min_length=1, max_length=64)]]


class TestIn(Body):
    provider: Provider = "imap"
    email: str = Field(max_length=320)
    imap: ServerIn = ServerIn()
    smtp: ServerIn = ServerIn()
    oauth: dict[str, Any] | None = None
    user_id: str | None = Field(default=None, max_length=64, description="accepted (and ignored) so a create body can be tested as is")
    skip_test: bool = False
    shared: bool | None = Field(default=None, description="create: a team inbox whose members see it (ignored by the test)")
    members: UserIds | None = Field(default=None, max_length=500, description="create: users who see the shared mailbox")
    delegates: UserIds | None = Field(default=None, max_length=500, description="create: users the owner delegates it to")

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if "@" not in v or any(c.isspace() for c in v) or control_character(v) is not None:
            raise ValueError("must be an email address")
        return v


class AccountIn(TestIn):
    user_id: str = Field(min_length=1, max_length=64)


class AccountPatch(Body):
    imap: ServerIn | None = None
    smtp: ServerIn | None = None
    poll_seconds: int | None = Field(default=None, ge=15, le=86_400)
    saves_sent_copy: bool | None = None
    disabled: bool | None = None
    skip_test: bool = False
    shared: bool | None = None
    members: UserIds | None = Field(default=None, max_length=500)
    delegates: UserIds | None = Field(default=None, max_length=500)


def _json(s: Session, a: EmailAccount) -> dict[str, Any]:
    """The account as the API shows it, with who else sees it."""
    return {**account_json(a), "shared": a.shared, **svc.access_lists(s, [a.id])[a.id]}


def _set_access(s: Session, who: Actor, a: EmailAccount, body: AccountIn | AccountPatch) -> None:
    """Sharing and delegation: the owner's (or the organization's) decision; 422 for unknown users."""
    if body.shared is None and body.members is None and body.delegates is None:
        return
    if who.user_id is not None and who.user_id != a.user_id:
        raise ApiError(403, "not_owner", "only the mailbox's owner (or the organization) changes who sees it")
    try:
        svc.set_access(s, a, shared=body.shared, members=body.members, delegates=body.delegates, by=who.user_id)
    except svc.UnknownUsers as exc:
        raise ApiError(422, "unknown_user", f"not users of this organization: {exc}", {"unknown": exc.unknown}) from None


def _endpoints(body: TestIn) -> tuple[svc.Endpoint, svc.Endpoint]:
    def given(server: ServerIn) -> dict[str, Any]:
        return {"host": server.host, "port": server.port, "security": server.security, "username": server.username}

    i, s = svc.apply_presets(body.provider, body.email, given(body.imap), given(body.smtp))
    missing = [name for name, d in (("imap.host", i), ("smtp.host", s)) if not d.get("host")]
    if missing:
        raise ApiError(422, "validation_error", f"{', '.join(missing)} required for provider {body.provider!r}",
                       {"errors": [{"field": m, "message": "required for this provider", "type": "missing"} for m in missing]})
    token = (body.oauth or {}).get("access_token")

    def secret(server: ServerIn) -> str | None:
        return server.password.get_secret_value() if server.password is not None else None

    def ep(d: dict[str, Any], server: ServerIn) -> svc.Endpoint:
        password = secret(server)
        if password is None and token is None:
            raise ApiError(422, "validation_error", "a password (or an oauth access_token) is required",
                           {"errors": [{"field": "password", "message": "required", "type": "missing"}]})
        return svc.Endpoint(str(d["host"]), int(d["port"]), str(d["security"]), str(d["username"]),
                            password, token if password is None else None)

    return ep(i, body.imap), ep(s, body.smtp)


def _refused(exc: svc.EndpointRefused) -> ApiError:
    """A 422 naming the field the guard refused (host_not_allowed, plaintext_not_allowed, password_required)."""
    return ApiError(422, exc.code, exc.message, {"errors": [{"field": exc.field(), "message": exc.message, "type": exc.code}]})


async def _guarded(imap_ep: svc.Endpoint, smtp_ep: svc.Endpoint) -> None:
    """The connection guard's verdict before anything connects (the hosts are resolved here)."""
    try:
        await run_in_threadpool(svc.guard_endpoints, imap_ep, smtp_ep)
    except svc.EndpointRefused as exc:
        raise _refused(exc) from None


async def _tested(request: Request, imap_ep: svc.Endpoint, smtp_ep: svc.Endpoint) -> svc.ConnTest:
    """Run the connection test, counted against the organization's rate limit (429 beyond it)."""
    CONNECTION_TESTS.check(actor(request).org_id)
    return await run_in_threadpool(svc.test_connection, imap_ep, smtp_ep)


@router.route("POST", "/api/v1/accounts/test", summary="Test IMAP and SMTP logins without saving", body=TestIn,
              response=ConnTestOut, responses={422: "invalid body, or a host the connection guard refuses", 429: "too many tests"})
async def test_account(request: Request) -> JSONResponse:
    body = await parse_body(request, TestIn)
    imap_ep, smtp_ep = _endpoints(body)
    await _guarded(imap_ep, smtp_ep)
    result = await _tested(request, imap_ep, smtp_ep)
    return JSONResponse(result.as_json())


def _create(who: Actor, body: AccountIn, imap_ep: svc.Endpoint, smtp_ep: svc.Endpoint) -> dict[str, Any]:
    org_id = who.org_id
    with Session(get_engine(), expire_on_commit=False) as s:
        dup = s.execute(select(EmailAccount.id).where(EmailAccount.org_id == org_id, EmailAccount.email_norm == body.email.strip().lower(),
                                                      col(EmailAccount.deleted_at).is_(None))).first()
        if dup is not None:
            raise ApiError(409, "account_exists", f"{body.email} is already connected", {"account_id": dup[0]})
        account = svc.create_account(s, org_id=org_id, user_id=body.user_id, provider=body.provider, email=body.email.strip(),
                                     imap_ep=imap_ep, smtp_ep=smtp_ep, oauth=body.oauth)
        if s.get(User, (org_id, body.user_id)) is None:
            s.add(User(org_id=org_id, id=body.user_id, name=body.email[:300], email=body.email, email_norm=body.email.lower()))
            s.flush()
        _set_access(s, Actor(org_id), account, body)
        try:
            s.commit()
        except IntegrityError:  # a concurrent create of the same mailbox won the unique index
            raise ApiError(409, "account_exists", f"{body.email} is already connected") from None
        fetch_now(account.id)
        return _json(s, account)


@router.route("POST", "/api/v1/accounts", summary="Connect a mailbox (tested first unless skip_test)", body=AccountIn,
              status=201, response=AccountOut, responses={403: "user_id is not the acting user", 409: "already connected",
                                                           422: "connection test failed, a refused host, or invalid body",
                                                           429: "too many tests"})
async def create_account(request: Request) -> JSONResponse:
    body = await parse_body(request, AccountIn)
    who = actor(request)
    if not who.may_act_as(body.user_id):
        raise ApiError(403, "not_owner", "a user connects their own mailboxes (user_id must be the X-Mailpipe-User)")
    imap_ep, smtp_ep = _endpoints(body)
    await _guarded(imap_ep, smtp_ep)
    if not body.skip_test:
        result = await _tested(request, imap_ep, smtp_ep)
        if not result.ok:
            raise ApiError(422, "connection_test_failed", "the mailbox could not be reached or logged in to", result.as_json())
    data = await run_in_threadpool(_create, who, body, imap_ep, smtp_ep)
    return JSONResponse(data, status_code=201)


def _load(s: Session, who: Actor, account_id: str) -> EmailAccount:
    """The mailbox, when the caller may see it (404 otherwise)."""
    return who.account(s, account_id)


@router.route("GET", "/api/v1/accounts", summary="List mailboxes", query=(Param.text("user_id", max_length=64),),
              response=AccountsOut)
async def list_accounts(request: Request) -> JSONResponse:
    who, user_id = actor(request), request.query_params.get("user_id")

    def run() -> list[dict[str, Any]]:
        with Session(get_engine()) as s:
            stmt = select(EmailAccount).where(EmailAccount.org_id == who.org_id, col(EmailAccount.deleted_at).is_(None),
                                              who.visible(EmailAccount.id))
            if user_id:
                stmt = stmt.where(EmailAccount.user_id == user_id)
            rows = list(s.execute(stmt.order_by(EmailAccount.id)).scalars())
            access = svc.access_lists(s, [a.id for a in rows])
            return [{**account_json(a), "shared": a.shared, **access[a.id]} for a in rows]

    return JSONResponse({"items": await run_in_threadpool(run)})


@router.route("GET", "/api/v1/accounts/{id}", summary="A mailbox with its sync status", response=AccountOut,
              responses={404: "not found"})
async def get_account(request: Request) -> JSONResponse:
    who, account_id = actor(request), request.path_params["id"]

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            return _json(s, _load(s, who, account_id))

    return JSONResponse(await run_in_threadpool(run))


@router.route("PATCH", "/api/v1/accounts/{id}", summary="Change servers, credentials, interval; disable or enable",
              body=AccountPatch, response=AccountOut, responses={403: "only the owner changes sharing and delegates", 404: "not found",
                                            409: "the OAuth grant is revoked: connect again",
                                            422: "connection test failed, a refused host, or a changed server without its password",
                                            429: "too many tests", 503: "the OAuth provider is unreachable"})
async def patch_account(request: Request) -> JSONResponse:
    who, account_id = actor(request), request.path_params["id"]
    body = await parse_body(request, AccountPatch)

    def current() -> EmailAccount:
        with Session(get_engine(), expire_on_commit=False) as s:
            acct = _load(s, who, account_id)
            if (body.shared is not None or body.members is not None or body.delegates is not None) and \
                    who.user_id is not None and who.user_id != acct.user_id:
                raise ApiError(403, "not_owner", "only the mailbox's owner (or the organization) changes who sees it")
            return acct

    a = await run_in_threadpool(current)
    changes: dict[str, Any] = {}
    if body.imap is not None or body.smtp is not None:
        imap_ep, smtp_ep = await _patched_endpoints(a, body)
        await _guarded(imap_ep, smtp_ep)
        if not body.skip_test:
            result = await _tested(request, imap_ep, smtp_ep)
            if not result.ok:
                raise ApiError(422, "connection_test_failed", "the new settings did not work; nothing was changed", result.as_json())
        for proto, ep in (("imap", imap_ep), ("smtp", smtp_ep)):
            secret = seal("email_accounts", f"{proto}_password_enc", ep.password) if ep.password else getattr(a, f"{proto}_password_enc")
            changes.update({f"{proto}_host": ep.host, f"{proto}_port": ep.port, f"{proto}_security": ep.security,
                            f"{proto}_username": ep.username, f"{proto}_password_enc": secret})
        changes.update(sync_state="idle", last_error=None, last_error_code=None, consecutive_failures=0,
                       next_fetch_at=utcnow() - timedelta(seconds=1))
    if body.poll_seconds is not None:
        changes["poll_seconds"] = body.poll_seconds
    if body.saves_sent_copy is not None:
        changes["saves_sent_copy"] = body.saves_sent_copy
    if body.disabled is not None:
        changes["sync_state"] = "disabled" if body.disabled else "idle"
        if body.disabled:  # a queued or running fetch finds its token/lease gone and stops
            changes.update(fetch_token=None, fetch_owner=None, fetch_lease_until=None)
        else:
            changes["next_fetch_at"] = utcnow() - timedelta(seconds=1)

    def save() -> dict[str, Any]:
        with Session(get_engine(), expire_on_commit=False) as s:
            acct = _load(s, who, account_id)
            for k, v in changes.items():
                setattr(acct, k, v)
            s.add(acct)
            _set_access(s, who, acct, body)
            if "sync_state" in changes:
                s.flush()
                note_sync_state(s, acct.id, changes["sync_state"])
            s.commit()
            return _json(s, acct)

    return JSONResponse(await run_in_threadpool(save))


async def _patched_endpoints(a: EmailAccount, body: AccountPatch) -> tuple[svc.Endpoint, svc.Endpoint]:
    """The endpoints a PATCH asks for (see svc.patch_endpoints: a stored secret never follows a changed server)."""
    def given(server: ServerIn | None) -> dict[str, Any] | None:
        if server is None:
            return None
        data = server.model_dump(exclude={"password"})
        if server.password is not None:
            data["password"] = server.password.get_secret_value()
        return data

    try:
        return await run_in_threadpool(svc.patch_endpoints, a, {"imap": given(body.imap), "smtp": given(body.smtp)})
    except svc.EndpointRefused as exc:
        raise _refused(exc) from None
    except tokens.ReconnectRequired as exc:
        raise ApiError(409, "reconnect_required", f"this mailbox's OAuth access is gone ({exc})") from None
    except tokens.TokenUnavailable:
        raise ApiError(503, "provider_unavailable", "the OAuth provider could not be reached for a token; try again") from None


@router.route("DELETE", "/api/v1/accounts/{id}", summary="Stop syncing; ?erase=true also deletes its mail",
              status=204, query=(Param.boolean("erase", False, description="also delete its mail"),),
              responses={403: "only the owner disconnects a mailbox", 404: "not found"})
async def delete_account(request: Request) -> Response:
    who, account_id = actor(request), request.path_params["id"]
    erase = request.query_params.get("erase", "false").lower() in ("1", "true", "yes")

    def run() -> None:
        from pipeline.clients.storage import get_storage

        with Session(get_engine()) as s:
            acct = _load(s, who, account_id)
            if who.user_id is not None and who.user_id != acct.user_id:
                raise ApiError(403, "not_owner", "only the mailbox's owner (or the organization) disconnects it")
            acct.deleted_at = utcnow()
            acct.sync_state = "disabled"
            acct.fetch_token, acct.fetch_owner, acct.fetch_lease_until = None, None, None
            acct.imap_password_enc = acct.smtp_password_enc = acct.oauth_enc = None  # secrets do not outlive the account
            s.add(acct)
            s.execute(delete(OAuthGrant).where(OAuthGrant.account_id == account_id))
            keys = svc.erase_account_mail(s, account_id) if erase else []
            s.commit()
        storage = get_storage()
        for key in keys:
            storage.delete(key)

    await run_in_threadpool(run)
    return Response(status_code=204)


@router.route("POST", "/api/v1/accounts/{id}/sync", summary="Fetch now (manual refresh)", status=202, response=SyncQueuedOut,
              responses={404: "not found", 409: "account disabled"})
async def sync_now(request: Request) -> JSONResponse:
    who, account_id = actor(request), request.path_params["id"]

    def run() -> dict[str, Any]:
        with Session(get_engine(), expire_on_commit=False) as s:
            acct = _load(s, who, account_id)
            if acct.sync_state == "disabled":
                raise ApiError(409, "account_disabled", "enable the account first (PATCH disabled=false)")
            fetch_now(account_id)
            return {"id": account_id, "status": "queued"}

    return JSONResponse(await run_in_threadpool(run), status_code=202)
