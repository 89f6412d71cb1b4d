"""The `gateway` command: serve, check, keys, prompts."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.config import Config, ConfigError, Problem, default_path, load
from gateway.config.load import inspect
from gateway.config.policies import load_policies
from gateway.prompts import commands as prompt_commands
from gateway.prompts.files import load_files
from gateway.traces import cli as trace_commands


def _config_path(value: str | None) -> Path | None:
    return Path(value) if value else default_path()


def _load(path: Path | None) -> Config:
    return load(path)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    path = _config_path(args.config)
    try:
        config = _load(path)
        load_policies(config)
        load_files(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    server = config.file.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    workers = args.workers or server.workers
    return serve(config, str(path) if path else None, host, port, workers)


def cmd_check(args: argparse.Namespace) -> int:
    """Every problem of the file set in one run: the config's own (schema, secrets, references), then
    the policy and prompt files', checked against what the config says even when it has problems."""
    config, problems = inspect(_config_path(args.config))
    if config is not None:
        problems.extend(_file_set_problems(config, with_catalog=not problems))
    for problem in problems:
        print(problem)
    if problems or config is None:
        return 1
    print(f"ok: {config.source} (hash {config.hash})")
    return 0


def _file_set_problems(config: Config, with_catalog: bool) -> list[Problem]:
    from gateway.catalog import build_catalog
    from gateway.upstream import Pool

    steps: list[Callable[[Config], object]] = [load_policies, load_files]
    if with_catalog:  # a salvaged config is only good to check files against, not to build upon
        steps.insert(0, lambda c: build_catalog(c, Pool(1)))
    problems: list[Problem] = []
    for step in steps:
        try:
            step(config)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = "sk-gw-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(f"API key (shown once, store it now): {key}\n")
    print("Policy snippet:\n")
    print(f'[[keys]]\nname = "{args.name}"\nteam = "{args.team}"\nsha256 = "{digest}"')
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gateway", description="An OpenAI-compatible LLM gateway.")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $GATEWAY_CONFIG, else ./config.toml, else built-in defaults)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate config, policies and prompts; exit 1 with one line per problem")
    check.add_argument("--config")
    check.set_defaults(func=cmd_check)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    new = keys.add_parser("new", help="print a new API key once, and its policy snippet")
    new.add_argument("--name", default="new-key")
    new.add_argument("--team", default="default")
    new.set_defaults(func=cmd_keys_new)
    prompt_commands.add_parser(sub)
    trace_commands.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command. In a pipe whose reader has gone (`... | head`) or on Ctrl-C, exit quietly with the
    code a shell would give a command killed by that signal, instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit, which would raise once more: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return code
