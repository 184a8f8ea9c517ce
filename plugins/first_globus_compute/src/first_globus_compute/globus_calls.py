"""The calls to Globus Auth and Groups. globus-sdk is synchronous: these run in worker threads.

SDK clients are not thread-safe, so each worker thread has its own, all closed together. No
call is retried (``max_retries=0``): the caller is waiting, and a Globus that does not answer
now is reported at once as a 503, never as minutes of backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import globus_sdk
from globus_sdk.scopes import GroupsScopes
from globus_sdk.transport import RequestsTransport, RetryConfig

from .auth_errors import IdentityProviderUnavailable
from .auth_settings import AuthSettings

__all__ = ["GlobusCalls"]

log = logging.getLogger("first_globus_compute.auth")

GROUPS_SCOPE = str(GroupsScopes.view_my_groups_and_memberships)
GROUPS_SERVER = "groups.api.globus.org"


class GlobusCalls:
    """Token introspection and group membership, for one gateway's confidential client."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._local = threading.local()
        self._opened: list[globus_sdk.ConfidentialAppAuthClient | RequestsTransport] = []
        self._lock = threading.Lock()

    def introspect(self, token: str, *, include: str, policies: Sequence[str]) -> dict[str, Any]:
        """Globus Auth's introspection of ``token``, with Auth's evaluation of ``policies``."""
        auth, _ = self._clients()
        # oauth2_token_introspect sends only token and include; Globus Auth reads
        # authentication_policies from the same form body, so post that body directly.
        body = {"token": token, "include": include}
        if policies:
            body["authentication_policies"] = ",".join(policies)
        with _reported("Globus Auth", "check your access token"):
            answer = auth.post("/v2/oauth2/token/introspect", data=body, encoding="form")
        return dict(answer.data)

    def group_ids(self, token: str) -> frozenset[str] | None:
        """The Globus groups the token's user is an active member of, read with a dependent
        Groups token; None when the token yields no Groups token."""
        auth, transport = self._clients()
        try:
            with _reported("Globus Auth", "read your group memberships", token_errors=(400,)):
                dependent = auth.oauth2_get_dependent_tokens(token, scope=GROUPS_SCOPE)
        except _TokenRefused:
            return None
        found = dependent.by_resource_server.get(GROUPS_SERVER)
        if found is None:
            return None
        groups = globus_sdk.GroupsClient(
            authorizer=globus_sdk.AccessTokenAuthorizer(found["access_token"]),
            transport=transport, retry_config=RetryConfig(max_retries=0))
        with _reported("Globus Groups", "read your group memberships"):
            return frozenset(group["id"] for group in groups.get_my_groups(statuses="active"))

    def close(self) -> None:
        """Close every thread's clients; call once the worker threads have stopped."""
        with self._lock:
            opened, self._opened = self._opened, []
        for resource in opened:
            resource.close()

    def _clients(self) -> tuple[globus_sdk.ConfidentialAppAuthClient, RequestsTransport]:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            settings = self._settings
            transport = RequestsTransport(http_timeout=settings.auth_timeout)
            auth = globus_sdk.ConfidentialAppAuthClient(
                settings.client_id, settings.client_secret, transport=transport,
                retry_config=RetryConfig(max_retries=0))
            with self._lock:
                self._opened += [auth, transport]
            clients = self._local.clients = (auth, transport)
        return clients


class _TokenRefused(Exception):
    """Globus Auth refused a grant for the caller's token (not the gateway's credentials)."""


@contextlib.contextmanager
def _reported(service: str, doing: str, *, token_errors: tuple[int, ...] = ()) -> Iterator[None]:
    """Globus failures as the caller should see them: a 503 that says what is wrong.

    A status in ``token_errors`` means Globus refused the caller's token: :class:`_TokenRefused`.
    """
    retry = "The gateway asks again by itself: send the request again in a minute."
    try:
        yield
    except globus_sdk.NetworkError as e:
        log.warning("%s unreachable: %s", service, type(e).__name__)
        raise IdentityProviderUnavailable(
            f"{service} cannot be reached right now, so the gateway cannot {doing}. {retry}"
        ) from None
    except globus_sdk.GlobusAPIError as e:
        status = e.http_status
        if status in token_errors:
            raise _TokenRefused from None
        if status in (401, 403):
            log.error("%s refused the gateway's client credentials (%s %s): check "
                      "plugins.first_globus_compute.client_id and client_secret",
                      service, status, e.code)
            raise IdentityProviderUnavailable(
                f"{service} refused the gateway's own credentials, so it cannot {doing}. "
                "Tell the gateway administrator; this is not a problem with your token."
            ) from None
        log.warning("%s answered %s (%s)", service, status, e.code)
        raise IdentityProviderUnavailable(
            f"{service} answered {status}, so the gateway cannot {doing} now. {retry}"
        ) from None
