"""Globus access tokens → identities: introspected off the event loop, cached, one
introspection per new token however many requests bring it at once."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from first_proxy import AuthenticationError, Identity

from .auth_settings import AuthSettings
from .globus_calls import GlobusCalls
from .globus_identity import identity_from_introspection
from .single_flight import SingleFlightCache

__all__ = ["GlobusAuth"]

T = TypeVar("T")
_HELPER = "first-globus-token"


@dataclass(frozen=True)
class _Refusal:
    """Why Globus (or the gateway's reading of its answer) refuses a token: a 401."""

    message: str
    code: str


_INACTIVE = _Refusal(
    "This access token is not active in Globus Auth: it expired, was revoked, or is not a "
    f"Globus token for this gateway. Get a fresh one with `{_HELPER} get_access_token`, or log "
    f"in again with `{_HELPER} authenticate --force`.", "invalid_token")
_EXPIRED = _Refusal(
    f"This Globus access token has expired. Get a fresh one with `{_HELPER} get_access_token`.",
    "token_expired")
_NO_GROUPS = _Refusal(
    "This gateway checks Globus group memberships, and this token does not let it read them. "
    f"Log in again with `{_HELPER} authenticate --force` to grant that; if the problem stays, "
    "tell the gateway administrator (the gateway's scope must depend on the Groups scope).",
    "groups_unreadable")


class GlobusAuth:
    """Opened with ``async with``: the thread pool that calls the SDK lives as long as it."""

    def __init__(self, settings: AuthSettings, *, needs_groups: bool) -> None:
        self.settings = settings
        #: Read each caller's Globus groups (only when some rule looks at groups).
        self.needs_groups = needs_groups
        self._include = "identity_set,session_info" + (
            ",identity_set_detail" if settings.needs_domains else "")
        self._wrong_scope = _Refusal(
            f"This Globus access token was not issued for this gateway: it lacks the scope "
            f"{settings.scope}. Get a token for that scope with `{_HELPER} get_access_token` "
            f"(FIRST_GLOBUS_SCOPE={settings.scope}).", "insufficient_scope")
        self._tokens: SingleFlightCache[bytes, Identity | _Refusal] = SingleFlightCache(
            settings.cache_size)
        self._groups: SingleFlightCache[str, frozenset[str] | None] = SingleFlightCache(
            settings.cache_size)
        self._calls = GlobusCalls(settings)
        self._pool: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> GlobusAuth:
        self._pool = ThreadPoolExecutor(self.settings.auth_threads,
                                        thread_name_prefix="globus-auth")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._tokens.aclose()
        await self._groups.aclose()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
            self._pool = None
        self._calls.close()

    async def identify(self, token: str) -> Identity:
        """The identity ``token`` belongs to.

        Raises :class:`~first_proxy.AuthenticationError` for a token Globus does not accept
        for this gateway, and :class:`.IdentityProviderUnavailable` while Globus cannot say.
        """
        # Keyed by a digest: the cache never holds a caller's token.
        key = hashlib.sha256(token.encode()).digest()
        found = await self._tokens.get(key, lambda: self._check(token))
        if isinstance(found, _Refusal):
            raise AuthenticationError(found.message, code=found.code)
        return found

    async def _check(self, token: str) -> tuple[Identity | _Refusal, float]:
        data = await self._run(self._calls.introspect, token, include=self._include,
                               policies=self.settings.policies)
        now = time.time()
        refused_until = now + self.settings.negative_cache_seconds
        if data.get("active") is not True or not isinstance(data.get("sub"), str):
            return _INACTIVE, refused_until
        exp = data.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            return _EXPIRED, refused_until
        if self.settings.scope not in str(data.get("scope", "")).split():
            return self._wrong_scope, min(refused_until, exp)
        groups: frozenset[str] | None = frozenset()
        if self.needs_groups:
            groups = await self._groups.get(data["sub"], lambda: self._read_groups(token))
            if groups is None:
                return _NO_GROUPS, refused_until
        return identity_from_introspection(data, groups), min(exp, now + self.settings.cache_seconds)

    async def _read_groups(self, token: str) -> tuple[frozenset[str] | None, float]:
        groups = await self._run(self._calls.group_ids, token)
        # A token that cannot read groups says nothing of the user's other tokens: not kept.
        keep = time.time() + self.settings.cache_seconds if groups is not None else 0.0
        return groups, keep

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._pool is not None, "GlobusAuth is used outside its `async with`"
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(call, *args, **kwargs))
