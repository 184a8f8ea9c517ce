"""A fake of Globus Auth and Globus Groups on loopback, for testing plugins with the real globus-sdk.

It speaks the HTTP API the SDK speaks: token introspection (with ``include=identity_set,
identity_set_detail,session_info`` and ``authentication_policies``), the token grants a
gateway and its users need (dependent tokens, client credentials, authorization code, refresh
token), revocation, userinfo, and ``GET /v2/groups/my_groups``. Tests register users, clients
and tokens with the facts Globus would hold about them, then point the SDK here with
``GLOBUS_SDK_SERVICE_URL_AUTH`` and ``GLOBUS_SDK_SERVICE_URL_GROUPS`` (the ``fake_globus``
fixture does), set before any SDK client is constructed.

The SDK is synchronous: call it through ``asyncio.to_thread`` (or the plugin's thread pool),
never on the event loop this fake serves on, or the test deadlocks.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BasicAuth, web

from .loopback import serve_on_loopback

__all__ = ["GROUPS_SCOPE", "FakeGlobus", "GlobusCall", "GlobusToken", "GlobusUser"]

#: The scope of a Groups token that can list the caller's memberships.
GROUPS_SCOPE = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"
_GROUPS_SERVER = "groups.api.globus.org"
_AUTH_SERVER = "auth.globus.org"
_CLIENT_DOMAIN = "clients.auth.globus.org"
_DEPENDENT_GRANT = "urn:globus:auth:grant_type:dependent_token"


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class GlobusUser:
    """One Globus identity: a person's login at an identity provider, or a client's own."""

    username: str
    id: str = field(default_factory=_new_id)
    name: str | None = None
    email: str | None = None
    #: The identity provider's id (a UUID in Globus); None for a client identity.
    idp: str | None = field(default_factory=_new_id)
    #: Ids of the Globus groups this identity is an active member of.
    groups: set[str] = field(default_factory=set)
    #: Other identities linked to this one (its identity set, after itself).
    linked: list[GlobusUser] = field(default_factory=list)

    def identity_set(self) -> list[GlobusUser]:
        return [self, *self.linked]


@dataclass
class GlobusToken:
    """An access token as Globus Auth knows it."""

    value: str
    user: GlobusUser
    scope: str
    #: The client the token was issued to.
    client_id: str
    exp: int
    #: The identities authenticated in the token's session (default: the user's own).
    session: list[GlobusUser] = field(default_factory=list)
    session_id: str = field(default_factory=_new_id)
    auth_time: int = field(default_factory=lambda: int(time.time()))
    #: Ids of the authentication policies the session meets.
    policies: set[str] = field(default_factory=set)
    #: Whether the token's scope lets its resource server get a dependent Groups token.
    groups_dependent: bool = True
    #: None: active until ``exp`` or revocation, as Globus reports; True or False: forced.
    active: bool | None = None
    revoked: bool = False
    refresh_token: str | None = None

    def is_active(self) -> bool:
        if self.revoked:
            return False
        if self.active is not None:
            return self.active
        return self.exp > time.time()

    @property
    def resource_server(self) -> str:
        return resource_server_of(self.scope.split()[0])


@dataclass
class GlobusCall:
    """One request the fake received: its route name, form fields and headers."""

    route: str
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class _Code:
    user: GlobusUser
    client_id: str
    scopes: list[str]
    policies: set[str]


def resource_server_of(scope: str) -> str:
    """The resource server a scope string belongs to, by Globus's naming of scopes."""
    if scope in ("openid", "profile", "email") or scope.startswith("urn:globus:auth:scope:auth"):
        return _AUTH_SERVER
    if scope.startswith("urn:globus:auth:scope:"):
        return scope.split(":")[4]
    if scope.startswith("https://auth.globus.org/scopes/"):
        return scope.split("/")[4]
    return scope


class FakeGlobus:
    """Globus Auth and Groups, in one aiohttp server; its state is open to the test."""

    def __init__(self) -> None:
        #: Confidential clients (the gateway, service accounts): client id → secret.
        self.clients: dict[str, str] = {}
        #: Native (public) clients, which authenticate with their client id alone.
        self.native_clients: set[str] = set()
        self.tokens: dict[str, GlobusToken] = {}
        self._refresh: dict[str, list[GlobusToken]] = {}
        self._codes: dict[str, _Code] = {}
        #: Route name → HTTP status to answer instead (``{"my_groups": 503}``).
        self.failing: dict[str, int] = {}
        #: How many requests each route received.
        self.calls: Counter[str] = Counter()
        self.received: list[GlobusCall] = []
        self.url = ""
        self._port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._runner: web.AppRunner | None = None

    # -- running ------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve on 127.0.0.1 (again on the same port after :meth:`stop`); returns the URL."""
        app = web.Application()
        app.router.add_post("/v2/oauth2/token/introspect", self._introspect)
        app.router.add_post("/v2/oauth2/token/revoke", self._revoke)
        app.router.add_post("/v2/oauth2/token", self._token)
        app.router.add_get("/v2/oauth2/userinfo", self._userinfo)
        app.router.add_get("/v2/groups/my_groups", self._my_groups)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = await serve_on_loopback(self._runner, port=self._port) + "/"
        self._port = self._runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        """Stop answering: connections to the port are refused until :meth:`start`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def pause(self) -> None:
        """Hold every request until :meth:`resume`, to let concurrent callers pile up."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def __aenter__(self) -> FakeGlobus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.resume()
        await self.stop()

    # -- what tests register ------------------------------------------------------------

    def add_client(self, client_id: str | None = None, secret: str | None = None) -> tuple[str, str]:
        """A confidential client (an app with a secret); returns ``(client_id, secret)``."""
        client_id = client_id or _new_id()
        secret = secret or secrets.token_urlsafe(16)
        self.clients[client_id] = secret
        return client_id, secret

    def add_native_client(self, client_id: str | None = None) -> str:
        client_id = client_id or _new_id()
        self.native_clients.add(client_id)
        return client_id

    def issue(self, user: GlobusUser, scope: str, *, client_id: str | None = None,
              expires_in: float = 3600, **facts: Any) -> str:
        """Register an access token for ``user`` with ``scope``; returns the token string.

        ``facts`` set :class:`GlobusToken` fields: ``session``, ``policies``, ``active``,
        ``groups_dependent``, ``auth_time``.
        """
        token = GlobusToken(value=f"fake-{secrets.token_urlsafe(24)}", user=user, scope=scope,
                            client_id=client_id or _new_id(), exp=int(time.time() + expires_in),
                            **facts)
        if not token.session and user.idp is not None:
            token.session = [user]
        self.tokens[token.value] = token
        return token.value

    def revoke(self, token: str) -> None:
        """Revoke a token as its owner would; a refresh token takes its access tokens along."""
        if token in self.tokens:
            self.tokens[token].revoked = True
        for access in self._refresh.pop(token, []):
            access.revoked = True

    def authorization_code(self, user: GlobusUser, client_id: str, scopes: list[str], *,
                           policies: set[str] | None = None) -> str:
        """The code Globus would show ``user`` after consenting to ``scopes`` for the native
        ``client_id``; exchanging it gives tokens (and refresh tokens) for those scopes."""
        code = secrets.token_urlsafe(16)
        self._codes[code] = _Code(user, client_id, scopes, policies or set())
        return code

    def service_identity(self, client_id: str) -> GlobusUser:
        """The identity of a client, as client-credentials tokens carry it."""
        return GlobusUser(username=f"{client_id}@{_CLIENT_DOMAIN}", id=client_id, idp=None)

    # -- handlers -----------------------------------------------------------------------

    async def _begin(self, request: web.Request, route: str) -> tuple[dict[str, str], web.Response | None]:
        """Record the request, hold it while paused; the canned failure for ``route``, if set."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.calls[route] += 1
        self.received.append(GlobusCall(route, form, dict(request.headers)))
        await self._open.wait()
        status = self.failing.get(route)
        if status is not None:
            return form, web.json_response({"code": "FAILING", "message": f"fake failing {status}"},
                                           status=status)
        return form, None

    def _confidential(self, request: web.Request) -> str | None:
        """The confidential client authenticated by the request's Basic auth, if any."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            return None
        return auth.login if self.clients.get(auth.login) == auth.password else None

    async def _introspect(self, request: web.Request) -> web.Response:
        form, failed = await self._begin(request, "introspect")
        if failed is not None:
            return failed
        if self._confidential(request) is None:
            return _unauthorized()
        token = self.tokens.get(form.get("token", ""))
        if token is None or not token.is_active():
            return web.json_response({"active": False})
        user = token.user
        body: dict[str, Any] = {
            "active": True, "token_type": "Bearer", "scope": token.scope,
            "client_id": token.client_id, "sub": user.id, "username": user.username,
            "name": user.name, "email": user.email,
            "aud": [token.resource_server, token.client_id], "iss": "https://auth.globus.org",
            "exp": token.exp, "iat": token.auth_time, "nbf": token.auth_time,
        }
        include = set(form.get("include", "").split(","))
        if "identity_set" in include:
            body["identity_set"] = [i.id for i in user.identity_set()]
        if "identity_set_detail" in include:
            body["identity_set_detail"] = [_identity(i) for i in user.identity_set()]
        if "session_info" in include:
            body["session_info"] = {
                "session_id": token.session_id if token.session else None,
                "authentications": {
                    i.id: {"idp": i.idp, "auth_time": token.auth_time, "acr": None, "amr": None,
                           "custom_claims": {}} for i in token.session}}
        wanted = [p for p in form.get("authentication_policies", "").split(",") if p]
        if wanted:
            body["policy_evaluations"] = {p: {"id": p, "evaluation": p in token.policies}
                                          for p in wanted}
        return web.json_response(body)

    async def _token(self, request: web.Request) -> web.Response:
        grant = (await request.post()).get("grant_type", "")
        route = "dependent_token" if grant == _DEPENDENT_GRANT else str(grant)
        form, failed = await self._begin(request, route)
        if failed is not None:
            return failed
        if route == "dependent_token":
            return self._dependent(request, form)
        if route == "client_credentials":
            return self._client_credentials(request, form)
        if route == "authorization_code":
            return self._exchange_code(form)
        if route == "refresh_token":
            return self._refresh_grant(form)
        return _grant_error("unsupported_grant_type", 400)

    def _dependent(self, request: web.Request, form: dict[str, str]) -> web.Response:
        client = self._confidential(request)
        if client is None:
            return _unauthorized()
        token = self.tokens.get(form.get("token", ""))
        if token is None or not token.is_active() or token.resource_server != client:
            return _grant_error("invalid_grant", 400)
        wanted = form.get("scope", GROUPS_SCOPE).split()
        if not token.groups_dependent or GROUPS_SCOPE not in wanted:
            return web.json_response([])  # nothing this token's scope depends on
        groups = self.issue(token.user, GROUPS_SCOPE, client_id=client, expires_in=172800)
        return web.json_response([_token_body(self.tokens[groups])])

    def _client_credentials(self, request: web.Request, form: dict[str, str]) -> web.Response:
        client = self._confidential(request)
        if client is None:
            return _unauthorized()
        scopes = form.get("scope", "").split()
        tokens = [self.tokens[self.issue(self.service_identity(client), " ".join(group),
                                         client_id=client, expires_in=172800)]
                  for group in _by_server(scopes)]
        return _token_response(tokens)

    def _exchange_code(self, form: dict[str, str]) -> web.Response:
        code = self._codes.pop(form.get("code", ""), None)
        if code is None or code.client_id != form.get("client_id"):
            return _grant_error("invalid_grant", 400)
        tokens = []
        for group in _by_server(code.scopes):
            token = self.tokens[self.issue(code.user, " ".join(group), client_id=code.client_id,
                                           expires_in=172800, policies=set(code.policies))]
            token.refresh_token = f"fake-refresh-{secrets.token_urlsafe(24)}"
            self._refresh[token.refresh_token] = [token]
            tokens.append(token)
        return _token_response(tokens)

    def _refresh_grant(self, form: dict[str, str]) -> web.Response:
        issued = self._refresh.get(form.get("refresh_token", ""))
        if not issued or form.get("client_id") not in self.native_clients:
            return _grant_error("invalid_grant", 400)
        first = issued[0]
        token = self.tokens[self.issue(first.user, first.scope, client_id=first.client_id,
                                       expires_in=172800, policies=set(first.policies))]
        token.refresh_token = first.refresh_token
        issued.append(token)
        return _token_response([token])

    async def _revoke(self, request: web.Request) -> web.Response:
        form, failed = await self._begin(request, "revoke")
        if failed is not None:
            return failed
        if self._confidential(request) is None and form.get("client_id") not in self.native_clients:
            return _unauthorized()
        self.revoke(form.get("token", ""))
        return web.json_response({"active": False})

    def _bearer(self, request: web.Request, server: str) -> GlobusToken | None:
        value = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = self.tokens.get(value)
        if token is None or not token.is_active() or token.resource_server != server:
            return None
        return token

    async def _userinfo(self, request: web.Request) -> web.Response:
        _, failed = await self._begin(request, "userinfo")
        if failed is not None:
            return failed
        token = self._bearer(request, _AUTH_SERVER)
        if token is None:
            return _unauthorized()
        user = token.user
        return web.json_response({
            "sub": user.id, "preferred_username": user.username, "name": user.name,
            "email": user.email, "identity_provider": user.idp,
            "identity_set": [_identity(i) for i in user.identity_set()]})

    async def _my_groups(self, request: web.Request) -> web.Response:
        _, failed = await self._begin(request, "my_groups")
        if failed is not None:
            return failed
        token = self._bearer(request, _GROUPS_SERVER)
        if token is None:
            return _unauthorized()
        memberships: dict[str, list[dict[str, Any]]] = {}
        for identity in token.user.identity_set():
            for group in identity.groups:
                memberships.setdefault(group, []).append(
                    {"group_id": group, "identity_id": identity.id, "username": identity.username,
                     "role": "member", "status": "active"})
        return web.json_response([
            {"id": group, "name": f"group {group[:8]}", "description": "", "parent_id": None,
             "group_type": "regular", "enforce_session": False, "session_limit": 28800,
             "session_timeouts": {}, "my_memberships": members,
             "policies": {"group_visibility": "private", "group_members_visibility": "managers"}}
            for group, members in sorted(memberships.items())])


def _identity(user: GlobusUser) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "name": user.name,
            "email": user.email, "identity_provider": user.idp, "organization": None,
            "identity_type": "login", "status": "used"}


def _by_server(scopes: list[str]) -> list[list[str]]:
    """Scopes grouped by resource server, in the order first seen: one token per group."""
    groups: dict[str, list[str]] = {}
    for scope in scopes:
        groups.setdefault(resource_server_of(scope), []).append(scope)
    return list(groups.values())


def _token_body(token: GlobusToken) -> dict[str, Any]:
    return {"access_token": token.value, "scope": token.scope, "token_type": "Bearer",
            "resource_server": token.resource_server,
            "expires_in": max(0, token.exp - int(time.time())),
            "refresh_token": token.refresh_token}


def _token_response(tokens: list[GlobusToken]) -> web.Response:
    """Globus's shape: the first token at the top level, the others in ``other_tokens``."""
    if not tokens:
        return _grant_error("invalid_scope", 400)
    first, *others = tokens
    return web.json_response({**_token_body(first), "state": "_default",
                              "other_tokens": [_token_body(t) for t in others]})


def _unauthorized() -> web.Response:
    return web.json_response({"error": "invalid_client", "errors": [
        {"status": "401", "code": "UNAUTHORIZED", "detail": "Call must be authenticated"}]},
        status=401)


def _grant_error(error: str, status: int) -> web.Response:
    return web.json_response({"error": error, "errors": [
        {"status": str(status), "code": error.upper(), "detail": error}]}, status=status)
