"""The Globus Auth settings of ``plugins.first_globus_compute``, read and checked with key paths."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AUTH_KEYS", "AuthSettings", "is_uuid", "read_auth_settings"]

_DOMAIN = re.compile(r"^(?=.{3,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$",
                     re.I)


@dataclass(frozen=True)
class AuthSettings:
    """How callers' Globus access tokens are checked, and who may use the gateway."""

    #: The gateway's confidential client (its Globus app), which introspects tokens.
    client_id: str
    client_secret: str
    #: The scope every token must carry: the gateway's own, e.g.
    #: ``https://auth.globus.org/scopes/<client_id>/action_all``.
    scope: str
    #: Callers must be in one of these Globus groups (ids).
    allowed_groups: frozenset[str] = frozenset()
    #: The session must include a login through one of these identity providers: IdP ids
    #: (UUIDs) or the domains of the identities' usernames (``anl.gov``).
    authorized_idps: frozenset[str] = frozenset()
    #: Globus authentication policies (ids) the session must meet, such as high assurance.
    policies: tuple[str, ...] = ()
    #: A login through the key's IdP (id or domain) requires one of its groups.
    groups_by_idp: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Client ids whose client-credentials tokens are accepted, as their client identity.
    service_accounts: frozenset[str] = frozenset()
    #: Seconds an introspection (and a user's groups) is trusted before asking again.
    cache_seconds: float = 60.0
    #: Seconds a refused token is remembered as refused.
    negative_cache_seconds: float = 5.0
    cache_size: int = 10_000
    #: Threads that call Globus (the SDK is synchronous), and each call's HTTP timeout.
    auth_threads: int = 4
    auth_timeout: float = 10.0

    @property
    def needs_domains(self) -> bool:
        """Whether a rule names an IdP by domain: introspection must then detail identities."""
        return any(not is_uuid(key) for key in (*self.authorized_idps, *self.groups_by_idp))


#: Every key of ``plugins.first_globus_compute`` that Globus Auth reads.
AUTH_KEYS = frozenset({
    "client_id", "client_secret", "scope", "allowed_groups", "authorized_idps", "policies",
    "groups_by_idp", "service_accounts", "cache_seconds", "negative_cache_seconds",
    "cache_size", "auth_threads", "auth_timeout"})
_RULES = ("allowed_groups", "authorized_idps", "policies", "groups_by_idp", "service_accounts")


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def read_auth_settings(section: Mapping[str, Any],
                       path: str) -> tuple[AuthSettings | None, list[tuple[str, str]]]:
    """The settings in ``section`` (None when Globus Auth is not configured) and the problems.

    Globus Auth for callers is on once ``scope`` (what callers' tokens must carry) is set;
    ``client_id`` and ``client_secret`` alone may be there for Globus Compute only.
    """
    reader = _Reader(section, path)
    if "scope" not in section:
        for key in _RULES:
            if key in section:
                reader.problem(key, "needs client_id, client_secret and scope: Globus Auth is off "
                                    "without them")
        return None, reader.problems
    defaults = AuthSettings("", "", "")
    settings = AuthSettings(
        client_id=reader.text("client_id", uuid_=True),
        client_secret=reader.text("client_secret"),
        scope=reader.text("scope"),
        allowed_groups=frozenset(reader.uuids("allowed_groups", "Globus group ids")),
        authorized_idps=frozenset(reader.idps("authorized_idps")),
        policies=tuple(reader.uuids("policies", "Globus authentication policy ids")),
        groups_by_idp=reader.groups_by_idp(),
        service_accounts=frozenset(reader.uuids("service_accounts", "Globus client ids")),
        cache_seconds=reader.number("cache_seconds", defaults.cache_seconds),
        negative_cache_seconds=reader.number("negative_cache_seconds",
                                             defaults.negative_cache_seconds),
        cache_size=int(reader.number("cache_size", defaults.cache_size, integer=True, least=1)),
        auth_threads=int(reader.number("auth_threads", defaults.auth_threads, integer=True,
                                       least=1)),
        auth_timeout=reader.number("auth_timeout", defaults.auth_timeout, least=0.1),
    )
    return settings, reader.problems


class _Reader:
    def __init__(self, section: Mapping[str, Any], path: str) -> None:
        self.section = section
        self.path = path
        self.problems: list[tuple[str, str]] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append((f"{self.path}.{key}", message))

    def text(self, key: str, *, uuid_: bool = False) -> str:
        value = self.section.get(key)
        if not isinstance(value, str) or not value.strip():
            self.problem(key, "required: " + _ABOUT[key])
            return ""
        if uuid_ and not is_uuid(value):
            self.problem(key, f"expected a UUID (the Globus app's client id), got {value!r}")
        return value.strip()

    def strings(self, key: str, value: Any = None, where: str | None = None) -> list[str]:
        value = self.section.get(key) if value is None else value
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(where or key, f"expected a list of strings, got {type(value).__name__}")
            return []
        return value

    def uuids(self, key: str, what: str, value: Any = None, where: str | None = None) -> list[str]:
        found = []
        for i, item in enumerate(self.strings(key, value, where)):
            if is_uuid(item):
                found.append(str(uuid.UUID(item)))
            else:
                self.problem(f"{where or key}[{i}]", f"expected {what} (UUIDs), got {item!r}")
        return found

    def idps(self, key: str) -> list[str]:
        found = []
        for i, item in enumerate(self.strings(key)):
            idp = _idp(item)
            if idp is None:
                self.problem(f"{key}[{i}]", f"expected an identity provider id (UUID) or a "
                                            f"domain such as anl.gov, got {item!r}")
            else:
                found.append(idp)
        return found

    def groups_by_idp(self) -> dict[str, frozenset[str]]:
        value = self.section.get("groups_by_idp")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem("groups_by_idp", "expected a mapping of identity provider (id or domain) "
                                          "to a list of Globus group ids")
            return {}
        rules = {}
        for idp, groups in value.items():
            where = f"groups_by_idp.{idp}"
            key = _idp(str(idp))
            if key is None:
                self.problem(where, "expected an identity provider id (UUID) or a domain "
                                    "such as anl.gov as the key")
                continue
            ids = self.uuids("groups_by_idp", "Globus group ids", groups if groups is not None
                             else [], where)
            if not ids:
                self.problem(where, "expected a non-empty list of Globus group ids")
            rules[key] = frozenset(ids)
        return rules

    def number(self, key: str, default: float, *, integer: bool = False,
               least: float = 0.0) -> float:
        value = self.section.get(key, default)
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < least or (integer and number != int(number)):
            kind = "an integer" if integer else "a number"
            self.problem(key, f"expected {kind} >= {least:g}, got {value!r}")
            return default
        return number


def _idp(value: str) -> str | None:
    """An IdP rule's key as compared: a UUID in canonical form, or a lower-case domain."""
    if is_uuid(value):
        return str(uuid.UUID(value))
    return value.lower() if _DOMAIN.match(value) else None


_ABOUT = {
    "client_secret": "the Globus app's secret; write ${GLOBUS_CLIENT_SECRET}, never the secret",
    "scope": "the scope tokens must carry, e.g. "
             "https://auth.globus.org/scopes/<client_id>/action_all",
    "client_id": "the Globus app's client id",
}
