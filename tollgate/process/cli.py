"""The ``tollgate`` command: serve, check-config, db upgrade / db status / db import, mock-upstream, demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tollgate import __version__
from tollgate.accounting.logs import LOG_FORMATS, configure_logging
from tollgate.config import Config, load_config
from tollgate.errors import ConfigError, DatabaseError

__all__ = ["main"]

# How a supervisor hands its workers the log format it settled on (the command line's, else the config's).
LOG_FORMAT_ENV = "TOLLGATE_LOG_FORMAT"


def _serve_logging(args: argparse.Namespace, config: Config) -> str:
    """The log level and format of ``serve``: the command line's (or $TOLLGATE_LOG_FORMAT) over the config's
    ``logging:``; every logger set to them, and the format left in the environment for workers."""
    level = args.log_level or config.logging.level
    log_format = args.log_format or config.logging.format
    configure_logging(level, log_format)
    os.environ[LOG_FORMAT_ENV] = log_format
    return level


def _cmd_serve(args: argparse.Namespace) -> int:
    from tollgate.process.server import serve_forever, with_listen_address
    from tollgate.process.supervisor import Supervisor, run_worker, worker_log_format, workers_problem
    from tollgate.runtime.state import GatewayState

    if args.worker is not None:  # the supervisor passes its level and format on (--log-level, $TOLLGATE_LOG_FORMAT)
        configure_logging(
            args.log_level or "info",
            args.log_format or "text",
            text_format=worker_log_format(args.worker),
            worker=args.worker,
        )
        return run_worker(args.config, args.worker, start_from=args.start_from, host=args.host, port=args.port)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_problems(args.config, exc)
        return 2
    config = with_listen_address(config, args.host, args.port)
    problem = workers_problem(config, args.workers)
    if problem is not None:
        print(f"{args.config}: {problem}", file=sys.stderr)
        return 2
    level = _serve_logging(args, config)
    if args.workers > 1:
        return Supervisor(args.config, config, args.workers, log_level=level).run()
    data_dir = config.data_dir
    try:
        state = GatewayState(config, config_path=args.config)
        del config  # the state holds the version in force; a reference here would keep the first one after a reload
        serve_forever(state)
    except DatabaseError as exc:  # the database of record cannot be opened or migrated: nothing to serve from
        where = f"data_dir {data_dir}" if data_dir else "the working folder"
        print(f"{args.config}: cannot start: {exc} (relative state paths are read under {where})", file=sys.stderr)
        return 1
    return 0


def _workers_arg(text: str) -> int:
    from tollgate.process.supervisor import parse_workers

    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}: {exc}") from None


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        _print_problems(args.file, exc)
        return 1
    print(f"{args.file}: ok ({len(config.upstreams)} upstreams, {len(config.models)} models)")
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    """``db upgrade``: apply the missing migrations; ``db status``: exit 0 when current, 1 when some are pending."""
    import asyncio

    from tollgate.database import Database, known_migrations, migrate, open_database, schema_status

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_problems(args.config, exc)
        return 2
    settings = config.database
    if settings.url is None:
        print(f"{args.config}: no database.url: the config names no database", file=sys.stderr)
        return 2
    try:
        db: Database = open_database(settings.url, base_dir=config.state_dir, pool_size=1, timeout=settings.timeout)
    except ConfigError as exc:
        _print_problems(args.config, exc)
        return 2

    async def upgrade() -> int:
        applied = await migrate(db)
        status = await schema_status(db)
        if applied:
            names = {m.version: m.name for m in known_migrations()}
            for version in applied:
                print(f"applied {names.get(version, version)}")
            print(f"{db.description}: schema version {status.current} (latest)")
        else:
            print(f"{db.description}: schema version {status.current} is current, nothing to apply")
        return 0

    async def status() -> int:
        state = await schema_status(db)
        print(f"database: {db.description}")
        print(f"current: {state.current}")
        print(f"latest: {state.latest}")
        if state.too_new:
            print(f"the database is newer than this gateway knows ({state.current} > {state.latest})", file=sys.stderr)
            return 2
        print(f"pending: {', '.join(state.pending) if state.pending else 'none'}")
        return 1 if state.pending else 0

    async def run() -> int:
        await db.open()
        try:
            return await (upgrade() if args.db_command == "upgrade" else status())
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except DatabaseError as exc:
        print(f"{db.description}: {exc}", file=sys.stderr)
        return 2


def _cmd_db_import(args: argparse.Namespace) -> int:
    from tollgate.process.db_import import import_command

    return import_command(args.config, args.from_registry, args.from_usage)


def _cmd_mock_upstream(args: argparse.Namespace) -> int:
    from tollgate.mock.upstream import run_mock, settings_from_args

    run_mock(args.host, args.port, settings_from_args(args))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tollgate.process.demo import run_demo

    return run_demo(host=args.host, port=args.port, admin_port=args.admin_port)


def _print_problems(source: str, exc: ConfigError) -> None:
    print(f"{source}: {len(exc.problems)} problem(s):", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from tollgate.mock.settings import add_arguments as add_mock_arguments  # the options alone: not the mock (aiohttp)

    parser = argparse.ArgumentParser(prog="tollgate", description="Multi-tenant gateway for OpenAI-style LLM traffic.")
    parser.add_argument("--version", action="version", version=f"tollgate {__version__}")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="application log level (default: the config's logging.level for serve; warning for the demo, whose "
        "start prints what it needs; else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get(LOG_FORMAT_ENV) or None,
        help="application logs as text lines or JSON lines (default: $TOLLGATE_LOG_FORMAT, else the config's "
        "logging.format for serve, else text)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--host", help="override listeners.public.host")
    p.add_argument("--port", type=int, help="override listeners.public.port")
    p.add_argument(
        "--workers",
        type=_workers_arg,
        default=os.environ.get("TOLLGATE_WORKERS", "1"),
        metavar="N",
        help="worker processes on the one port (SO_REUSEPORT) under a supervisor; 'auto' = one per core; "
        "more than 1 needs store.backend: redis (default: $TOLLGATE_WORKERS or 1)",
    )
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor on the processes it starts
    p.add_argument("--start-from", help=argparse.SUPPRESS)  # the supervisor's last valid copy of a file broken since
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and list every problem")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("db", help="the database of record: migrate it ahead of a deploy, or see where it stands")
    db_sub = p.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("upgrade", "apply the schema migrations the database lacks and name each one applied"),
        ("status", "current and latest schema version, and the pending migrations (exit 1 when some are pending)"),
    ):
        q = db_sub.add_parser(name, help=text)
        q.add_argument("--config", required=True, help="YAML config file with a database.url")
        q.set_defaults(func=_cmd_db)
    q = db_sub.add_parser(
        "import", help="copy today's file or Redis registry and usage store into the database (twice: same result)"
    )
    q.add_argument("--config", required=True, help="YAML config file with a database.url")
    q.add_argument("--from-registry", metavar="PATH_OR_REDIS_URL", help="default: the config's registry: store")
    q.add_argument("--from-usage", metavar="PATH_OR_REDIS_URL", help="default: the config's usage path or url")
    q.set_defaults(func=_cmd_db_import)

    p = sub.add_parser("mock-upstream", help="run the OpenAI-compatible mock upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    add_mock_arguments(p)
    p.set_defaults(func=_cmd_mock_upstream)

    p = sub.add_parser("demo", help="gateway + built-in mock upstream + demo tenants, ready for curl")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="public port (default 8080, or a free one when 8080 is taken)")
    p.add_argument("--admin-port", type=int, help="admin API port (default 8081, or a free one when 8081 is taken)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format is not None and args.log_format not in LOG_FORMATS:  # from the environment, unchecked
        parser.error(f"${LOG_FORMAT_ENV}: invalid log format {args.log_format!r} (choose from text, json)")
    configure_logging(args.log_level or ("warning" if args.command == "demo" else "info"), args.log_format or "text")
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
