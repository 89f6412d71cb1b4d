"""`gateway prompts ...`: the prompt registry from a terminal.

Every command talks to a running gateway's admin API (`--url`, default $GATEWAY_URL, else
http://127.0.0.1:8080; `--key`, default $GATEWAY_ADMIN_KEY). `list`, `show`, `diff` and `test` also
take `--local`: read the prompt files named by the config instead (no gateway needed for the first
three, so they work in CI or on a checkout; pushed versions and runtime label moves are then not
seen). `test` always sends its cases through a gateway. Exit codes: 0 ok, 1 a test case failed or
the gateway refused, 2 the command could not run (bad input, gateway unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from gateway.admin_client import AdminError, bearer, call
from gateway.config import ConfigError, default_path, load
from gateway.config.problems import from_validation
from gateway.errors import GatewayError
from gateway.prompts.admin import version_json
from gateway.prompts.files import load_files
from gateway.prompts.registry import Registry, build
from gateway.prompts.runner import run_cases, table
from gateway.prompts.schema import PromptCase, PromptFile
from gateway.prompts.store import StoreState

DEFAULT_URL = "http://127.0.0.1:8080"


class CommandError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return call(method, args.url, path, args.key, 300, **kwargs)
    except AdminError as exc:  # unreachable, or the key or the prompt is wrong: 2; refused otherwise: 1
        raise CommandError(str(exc), code=2 if exc.status in {None, 401, 403, 404} else 1) from None


def _local(args: argparse.Namespace) -> Registry:
    try:
        config = load(Path(args.config) if args.config else default_path())
        return build(load_files(config).prompts, StoreState())
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def _split(ref: str) -> tuple[str, str | None]:
    prompt_id, _, version = ref.partition("@")
    return prompt_id, version or None


def _version(args: argparse.Namespace, prompt_id: str, ref: str | None) -> dict[str, Any]:
    if args.local:
        registry = _local(args)
        try:
            resolved = registry.lookup(prompt_id, ref)
        except GatewayError as exc:
            raise CommandError(exc.message) from None
        return version_json(registry.prompt(prompt_id), resolved.version) | {"label": resolved.label}
    found: dict[str, Any] = _call(args, "GET", f"/admin/prompts/{prompt_id}", params={"ref": ref or ""})
    return found


def render(version: dict[str, Any]) -> str:
    """A version as readable text: what `show` prints and `diff` compares."""
    lines = [
        f"# {version['id']}@{version['version']}  hash {version['hash']}  labels {', '.join(version['labels']) or '-'}",
        f"model = {version['model']}",
        f"params = {json.dumps(version['params'], sort_keys=True)}",
        f"variables = {', '.join(version['variables']) or '-'}",
    ]
    for i, message in enumerate(version["messages"], 1):
        lines += [f"--- message {i} ({message['role']})", *message["content"].splitlines()]
    for i, case in enumerate(version["tests"], 1):
        lines.append(f"--- test {i}: {json.dumps({k: v for k, v in case.items() if v is not None}, sort_keys=True)}")
    return "\n".join(lines) + "\n"


def cmd_list(args: argparse.Namespace) -> int:
    if args.local:
        registry = _local(args)
        rows = [(p.id, list(p.versions), {n: lb.version for n, lb in p.labels.items()}) for p in registry.prompts.values()]
    else:
        status = _call(args, "GET", "/admin/prompts")
        rows = [(p["id"], p["versions"], p["labels"]) for p in status["prompts"]]
        if status.get("last_error"):
            print(f"warning: the last prompt reload failed, serving the last good set:\n{status['last_error']}", file=sys.stderr)
    out = [("ID", "VERSIONS", "LABELS")]
    out += [(pid, ",".join(map(str, versions)), " ".join(f"{k}={v}" for k, v in sorted(labels.items()))) for pid, versions, labels in rows]
    width = [max(len(r[i]) for r in out) for i in range(2)]
    for r in out:
        print(f"{r[0].ljust(width[0])}  {r[1].ljust(width[1])}  {r[2]}".rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(render(_version(args, *_split(args.ref))), end="")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    a, b = _version(args, args.id, args.a), _version(args, args.id, args.b)
    diff = difflib.unified_diff(
        render(a).splitlines(keepends=True), render(b).splitlines(keepends=True), f"{args.id}@{a['version']}", f"{args.id}@{b['version']}"
    )
    sys.stdout.writelines(diff)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if path.suffix == ".json":
            if not args.id:
                raise CommandError("a JSON file holds one version: name its prompt with --id")
            pushes = [(args.id, json.loads(path.read_text()))]
        else:
            parsed = PromptFile.model_validate(tomllib.loads(path.read_text()))
            pushes = [(pid, v.model_dump(mode="json")) for pid, p in parsed.prompts.items() for v in p.versions]
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            raise CommandError("\n".join(str(p) for p in from_validation(str(path), exc))) from None
        raise CommandError(f"{path}: {exc}") from None
    for pid, spec in pushes:
        answer = _call(args, "POST", f"/admin/prompts/{pid}/versions", json=spec)
        print(f"{pid}@{answer['version']}  {'created' if answer['created'] else 'exists '}  {answer['hash']}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    body = {"version": args.version, "force": args.force}
    answer = _call(args, "PUT", f"/admin/prompts/{args.id}/labels/{args.label}", json=body)
    forced = "  (FORCED: its tests fail)" if answer["forced"] else ""
    print(f"{args.id}: {args.label} -> {answer['version']}{forced}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    prompt_id, ref = _split(args.ref)
    version = _version(args, prompt_id, ref)
    cases = [PromptCase.model_validate(c) for c in version["tests"]]
    if not cases:
        print(f"{prompt_id}@{version['version']} has no test cases")
        return 0
    print(f"{prompt_id}@{version['version']} ({version['model']}) through {args.url}")
    results = asyncio.run(_run(args, prompt_id, version["version"], cases))
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


async def _run(args: argparse.Namespace, prompt_id: str, version: int, cases: list[PromptCase]) -> list[Any]:
    async with httpx.AsyncClient(base_url=args.url.rstrip("/"), timeout=300) as client:
        return await run_cases(client, prompt_id, version, cases, bearer(args.key))


def run(args: argparse.Namespace) -> int:
    try:
        code: int = args.prompts_func(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    return code


def add_parser(sub: Any) -> None:
    top = sub.add_parser("prompts", help="the prompt registry: list, show, diff, push, label, test", description=__doc__)
    top.set_defaults(func=run)
    commands = top.add_subparsers(dest="prompts_command", required=True)

    def command(name: str, func: Any, help: str, local: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help)
        url_help = f"gateway URL (default $GATEWAY_URL, else {DEFAULT_URL})"
        p.add_argument("--url", default=os.environ.get("GATEWAY_URL", DEFAULT_URL), help=url_help)
        p.add_argument("--key", default=os.environ.get("GATEWAY_ADMIN_KEY"), help="admin API key (default $GATEWAY_ADMIN_KEY)")
        if local:
            p.add_argument("--local", action="store_true", help="read the prompt files named by the config instead of the gateway")
            p.add_argument("--config", help="config file for --local (default: $GATEWAY_CONFIG, else ./config.toml)")
        p.set_defaults(prompts_func=func, local=False)
        return p

    command("list", cmd_list, "list prompts, their versions and labels (admin API, or --local files)", local=True)
    show = command("show", cmd_show, "print one version: ID (label production), ID@LABEL or ID@N (admin API, or --local files)", local=True)
    show.add_argument("ref", metavar="ID[@REF]")
    diff = command("diff", cmd_diff, "unified diff of two versions of a prompt; A and B are labels or numbers", local=True)
    diff.add_argument("id")
    diff.add_argument("a")
    diff.add_argument("b")
    push = command("push", cmd_push, "push every version in a prompts TOML file (or one version as JSON, with --id) to the gateway")
    push.add_argument("file")
    push.add_argument("--id", help="the prompt id, for a JSON file holding one version")
    label = command("label", cmd_label, "move LABEL of prompt ID to VERSION through the gateway (production: its tests must pass)")
    label.add_argument("id")
    label.add_argument("label")
    label.add_argument("version", type=int)
    label.add_argument("--force", action="store_true", help="move even when the version's tests fail (logged as forced)")
    test = command("test", cmd_test, "run a version's test cases through the gateway; exit 1 when any fails", local=True)
    test.add_argument("ref", metavar="ID@REF")
