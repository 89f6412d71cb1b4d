"""Who is calling: the key from `Authorization: Bearer` or `api-key`, checked by its SHA-256."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from gateway.config.policies import PolicySet, Principal
from gateway.errors import AuthenticationError, PermissionDenied


def presented_key(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value:
        scheme, _, key = value.partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return key.strip()
    return headers.get("api-key") or None


def authenticate(headers: Mapping[str, str], policies: PolicySet) -> Principal:
    if policies.open is not None:
        return policies.open
    key = presented_key(headers)
    if key is None:
        raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key")
    principal = policies.keys.get(hashlib.sha256(key.encode()).hexdigest())
    if principal is None:
        raise AuthenticationError("Incorrect API key provided.")
    return principal


def require_tools(tools: object, allowed: frozenset[str]) -> None:
    """Every function tool a request offers must be in its team's `tools`."""
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name not in allowed:
            raise PermissionDenied(f"This key may not use the tool `{name}`.", param="tools", code="tool_not_allowed")


def require_admin(principal: Principal) -> None:
    if not principal.admin:
        raise PermissionDenied("This key may not call the admin API.", code="admin_required")
