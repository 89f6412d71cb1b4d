"""The prompt admin API (SPEC section 6): list, show, push a version, move a label.

Moving `production` runs the target version's test cases first, in-process through the app itself
(the same path a client request takes, with the caller's key); a failing case refuses the move
unless the body says `"force": true`, and a forced move is logged as such and stored with a flag.

A team admin (`admin = "team"`) reads and changes only the prompt ids its team's `prompts` list
names (a team without that list owns none); any other id answers 404, as a missing one does, so
what other teams keep is not revealed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import Route

from gateway.admin import endpoint
from gateway.config.policies import PolicySet
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.pipeline.auth import AdminScope
from gateway.pipeline.body import read_json
from gateway.prompts.registry import DEFAULT_LABEL, Prompt, Version
from gateway.prompts.runner import run_cases
from gateway.prompts.schema import LabelMove, VersionSpec
from gateway.prompts.service import PromptService

log = logging.getLogger("gateway.prompts")
_AUTH_HEADERS = ("authorization", "api-key")


def owned(scope: AdminScope, prompt_id: str) -> str:
    """The id, if the caller may see it; else 404, as for a missing prompt (nothing is revealed)."""
    if not scope.owns_prompt(prompt_id):
        raise NotFound(f"The prompt `{prompt_id}` does not exist.", param="prompt", code="prompt_not_found")
    return prompt_id


def version_json(prompt: Prompt, version: Version) -> dict[str, Any]:
    labels = sorted(name for name, label in prompt.labels.items() if label.version == version.number)
    head = {"id": prompt.id, "version": version.number, "hash": version.hash, "source": version.source, "labels": labels}
    return head | version.spec.model_dump(mode="json")


class PromptAdmin:
    def __init__(self, service: PromptService, policies: Callable[[], PolicySet], max_body: int) -> None:
        self.service = service
        self.policies = policies
        self.max_body = max_body

    def routes(self) -> list[Route]:
        return [
            Route("/admin/prompts", endpoint(self.policies, self.index), methods=["GET"]),
            Route("/admin/prompts/{id}", endpoint(self.policies, self.show), methods=["GET"]),
            Route("/admin/prompts/{id}/versions", endpoint(self.policies, self.push), methods=["POST"]),
            Route("/admin/prompts/{id}/labels/{label}", endpoint(self.policies, self.label), methods=["PUT"]),
        ]

    async def index(self, request: Request, scope: AdminScope) -> tuple[int, Any]:
        status = self.service.status()
        if scope.prompts is None:
            return 200, status
        # the file names and a reload error may name other teams' prompts: a team admin sees its own rows only
        return 200, {"prompts": [p for p in status["prompts"] if scope.owns_prompt(p["id"])], "store": status["store"]}

    async def show(self, request: Request, scope: AdminScope) -> tuple[int, Any]:
        """The whole prompt, or with `?ref=LABEL|N` the one version it resolves to."""
        registry = self.service.registry
        prompt_id = owned(scope, request.path_params["id"])
        ref = request.query_params.get("ref")
        if ref is not None:
            resolved = registry.lookup(prompt_id, ref or None)
            return 200, version_json(registry.prompt(prompt_id), resolved.version) | {"label": resolved.label}
        prompt = registry.prompt(prompt_id)
        labels = {name: {"version": lb.version, "source": lb.source, "forced": lb.forced} for name, lb in prompt.labels.items()}
        return 200, {"id": prompt.id, "labels": labels, "versions": [version_json(prompt, v) for v in prompt.versions.values()]}

    async def push(self, request: Request, scope: AdminScope) -> tuple[int, Any]:
        prompt_id = owned(scope, request.path_params["id"])
        body = await read_json(request, self.max_body)
        try:
            spec = VersionSpec.model_validate(body)
        except ValidationError as exc:
            lines = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
            raise BadRequest(f"Invalid prompt version: {lines}", code="invalid_prompt") from None
        number, digest, created = await self.service.push(prompt_id, spec)
        if created:
            log.info("prompt %s: version %d pushed (hash %s)", prompt_id, number, digest[:16])
        return (201 if created else 200), {"id": prompt_id, "version": number, "hash": digest, "created": created}

    async def label(self, request: Request, scope: AdminScope) -> tuple[int, Any]:
        prompt_id, label = owned(scope, request.path_params["id"]), request.path_params["label"]
        try:
            move = LabelMove.model_validate(await read_json(request, self.max_body))
        except ValidationError as exc:
            raise BadRequest(f"Expected {{'version': N, 'force': false}}: {exc.errors()[0]['msg']}", code="invalid_value") from None
        version = self.service.registry.resolve(prompt_id, version=move.version).version
        results: list[dict[str, object]] = []
        failing = False
        if label == DEFAULT_LABEL and version.spec.tests:
            outcome = await self._run_tests(request, prompt_id, version)
            results = [r.json() for r in outcome]
            failing = not all(r.ok for r in outcome)
        if failing and not move.force:
            failed = ", ".join(str(r["case"]) for r in results if not r["ok"])
            raise Conflict(
                f"Refusing to move `{label}` of `{prompt_id}` to version {move.version}: "
                f"test case(s) {failed} fail. Use force to move anyway.",
                code="prompt_tests_failed",
            )
        forced = failing and move.force
        await self.service.move_label(prompt_id, label, move.version, forced)
        if forced:
            log.warning("prompt %s: label %s FORCED to version %d with failing tests", prompt_id, label, move.version)
        else:
            log.info("prompt %s: label %s moved to version %d", prompt_id, label, move.version)
        return 200, {"id": prompt_id, "label": label, "version": move.version, "forced": forced, "tests": results}

    async def _run_tests(self, request: Request, prompt_id: str, version: Version) -> list[Any]:
        headers = {h: request.headers[h] for h in _AUTH_HEADERS if h in request.headers}
        transport = httpx.ASGITransport(app=request.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=120) as client:
            return await run_cases(client, prompt_id, version.number, version.spec.tests, headers)
