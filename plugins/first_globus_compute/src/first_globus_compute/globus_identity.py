"""A Globus token introspection as the gateway's :class:`~first_proxy.Identity`.

What the introspection carries (Globus Auth API reference, token introspection):

- ``sub``, ``username``, ``name``, ``email``, ``client_id`` (the app the token was issued to),
  ``scope``, ``exp``;
- ``identity_set`` (``include=identity_set``): the ids of the user's linked identities;
  ``identity_set_detail``: those identities with their usernames and identity providers;
- ``session_info`` (``include=session_info``): ``session_id`` and ``authentications``, one
  per identity logged in during the session: ``{idp, auth_time, acr, amr, custom_claims}``;
- ``policy_evaluations`` when the request names ``authentication_policies``:
  ``{policy_id: {"evaluation": true|false, ...}}``, Auth's verdict on whether the session
  meets each policy (high assurance: a recent enough login through an allowed IdP).

A client-credentials token belongs to the client's own identity,
``<client_id>@clients.auth.globus.org``, and has no logins in its session.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from first_proxy import Identity

__all__ = ["AUTH_NAME", "identity_from_introspection"]

#: ``Identity.extra["auth"]`` of every identity this plugin makes.
AUTH_NAME = "globus"
_CLIENT_DOMAIN = "@clients.auth.globus.org"


def identity_from_introspection(data: Mapping[str, Any], groups: frozenset[str]) -> Identity:
    """The identity of an active token's introspection ``data``, in ``groups``.

    ``idp`` is the identity provider of the session's newest login. ``extra`` holds the
    session: ``logins`` (newest first, each ``{identity_id, idp, domain, auth_time}``),
    ``session_id``, ``policies_met``, ``identity_set``, ``client_id``, ``service_account``,
    ``expires_at``, and ``name`` and ``email`` where Globus gives them.
    """
    sub = data["sub"]
    username = data.get("username") or sub
    usernames = {i["id"]: i.get("username") or "" for i in data.get("identity_set_detail") or ()
                 if isinstance(i, dict) and "id" in i}
    usernames.setdefault(sub, username)
    session = data.get("session_info") or {}
    logins = sorted(
        ({"identity_id": identity_id, "idp": facts.get("idp") or "",
          "domain": _domain(usernames.get(identity_id, "")), "auth_time": facts.get("auth_time")}
         for identity_id, facts in (session.get("authentications") or {}).items()
         if isinstance(facts, dict)),
        # Newest first; at the same time, the token's own identity first.
        key=lambda login: (login["auth_time"] or 0, login["identity_id"] == sub), reverse=True)
    evaluations = data.get("policy_evaluations") or {}
    extra: dict[str, Any] = {
        "auth": AUTH_NAME,
        "client_id": data.get("client_id"),
        "service_account": username.endswith(_CLIENT_DOMAIN),
        "identity_set": tuple(data.get("identity_set") or (sub,)),
        "session_id": session.get("session_id"),
        "logins": tuple(MappingProxyType(login) for login in logins),
        "policies_met": tuple(sorted(policy for policy, verdict in evaluations.items()
                                     if isinstance(verdict, dict) and verdict.get("evaluation") is True)),
        "expires_at": data["exp"],
    }
    for key in ("name", "email"):
        if data.get(key):
            extra[key] = data[key]
    return Identity(user_id=sub, username=username, groups=groups,
                    idp=logins[0]["idp"] if logins else "", extra=MappingProxyType(extra))


def _domain(username: str) -> str:
    return username.rpartition("@")[2].lower() if "@" in username else ""
