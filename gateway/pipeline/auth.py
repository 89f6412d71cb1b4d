"""Who is calling: the key from `Authorization: Bearer` or `api-key`, checked by its SHA-256."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.policies import PolicySet, Principal
from gateway.errors import AuthenticationError, PermissionDenied


def presented_key(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value:
        scheme, _, key = value.partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return key.strip()
    return headers.get("api-key") or None


def _listed(key: str | None, policies: PolicySet) -> Principal | None:
    return policies.keys.get(hashlib.sha256(key.encode()).hexdigest()) if key is not None else None


def _refuse(key: str | None) -> AuthenticationError:
    if key is None:
        return AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key")
    return AuthenticationError("Incorrect API key provided.")


def authenticate(headers: Mapping[str, str], policies: PolicySet) -> Principal:
    """The key's principal; in open mode, a request without a listed key is the open principal (the
    SDKs insist on sending some key, so an unlisted one counts as none)."""
    key = presented_key(headers)
    principal = _listed(key, policies) or policies.open
    if principal is None:
        raise _refuse(key)
    return principal


def require_tools(tools: object, allowed: frozenset[str]) -> None:
    """Every function tool a request offers must be in its team's `tools`."""
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name not in allowed:
            raise PermissionDenied(f"This key may not use the tool `{name}`.", param="tools", code="tool_not_allowed")


@dataclass(frozen=True, slots=True)
class AdminScope:
    """Whose objects an admin call may see and change: every team's (`team` None) or one team's."""

    team: str | None
    prompts: frozenset[str] | None  # the prompt ids it may read and change; None: all

    def owns_prompt(self, prompt_id: str) -> bool:
        return self.prompts is None or prompt_id in self.prompts

    def require_global(self) -> None:
        if self.team is not None:
            raise PermissionDenied(
                "This endpoint needs a global admin key (admin = true); this key administers one team.", code="admin_required"
            )


def authenticate_admin(headers: Mapping[str, str], policies: PolicySet) -> AdminScope:
    """An admin key from a policy file, always: open mode makes nobody an admin, so a keyless or
    unlisted caller is 401 here even where it may call the model endpoints."""
    key = presented_key(headers)
    principal = _listed(key, policies)
    if principal is None:
        raise _refuse(key)
    if not principal.admin:
        raise PermissionDenied("This key may not call the admin API.", code="admin_required")
    if principal.admin == "team":  # a team with no `prompts` list owns no prompt: `None` there means "may use any"
        return AdminScope(principal.team, principal.prompts or frozenset())
    return AdminScope(None, None)
