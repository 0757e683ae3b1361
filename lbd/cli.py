"""``lbd serve | check | schema | version``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lbd import __version__
from lbd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbd", description="Inference-aware HTTP load balancer daemon.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("-c", "--config", type=Path, default=None,
                       help=f"YAML config (default: the embedded {DEFAULT_CONFIG_PATH.name})")
    check = commands.add_parser("check", help="validate a config file, as nginx -t does")
    check.add_argument("file", type=Path)
    check.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    commands.add_parser("schema", help="print the config's JSON Schema (for editor completion)")
    reload = commands.add_parser("reload", help="apply the config file again, through the admin API")
    reload.add_argument("-c", "--config", type=Path, default=None,
                        help="the file lbd serves: its admin.address and admin.token_file say where to ask")
    reload.add_argument("--admin", default=None, help="the admin API's host:port (default: from the config)")
    hash_key = commands.add_parser("hash-key", help="print the SHA-256 of an API key, for auth.keys[].sha256")
    hash_key.add_argument("key", nargs="?", help="the key (default: read from standard input, out of shell history)")
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"lbd {__version__}")
        return 0
    if args.command == "schema":
        from lbd.config.schema import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.command == "hash-key":
        from lbd.security import hash_key as digest

        key = args.key if args.key is not None else sys.stdin.readline().strip()
        if not key:
            print("no key given", file=sys.stderr)
            return 1
        print(digest(key))
        return 0
    if args.command == "check":
        return _check(args.file, args.quiet)
    if args.command == "reload":
        return _reload(args.config, args.admin)
    return _serve(args.config)


def _check(path: Path, quiet: bool) -> int:
    from lbd.proxy.tls import certificate_problems

    try:
        problems = certificate_problems(load_config(path))
        if problems:
            raise ConfigError(str(path), problems)
    except ConfigError as exc:
        for message in exc.messages:
            print(f"{exc.source}: {message}", file=sys.stderr)
        print(f"{path}: test failed", file=sys.stderr)
        return 1
    if not quiet:
        print(f"{path}: syntax is ok\n{path}: test is successful")
    return 0


def _reload(path: Path | None, admin: str | None) -> int:
    from lbd.admin.client import admin_target, read_token, reload

    address, token_file = admin_target(path or DEFAULT_CONFIG_PATH)
    try:
        token = read_token(token_file)
    except OSError as exc:
        print(f"lbd reload: cannot read the admin token file {token_file}: {exc.strerror}", file=sys.stderr)
        return 1
    ok, message = reload(admin or address, token)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _serve(path: Path | None) -> int:
    from lbd.daemon import run

    source = path or DEFAULT_CONFIG_PATH
    try:
        config = load_config(source)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return run(config, source)


if __name__ == "__main__":
    sys.exit(main())
