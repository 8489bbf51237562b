"""The ``tollgate`` command: serve, check-config, mock-upstream, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tollgate.config import load_config
from tollgate.errors import ConfigError

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from tollgate.process.server import serve_forever, with_listen_address
    from tollgate.process.supervisor import Supervisor, run_worker, worker_log_format, workers_problem
    from tollgate.runtime.state import GatewayState

    if args.worker is not None:
        logging.basicConfig(
            level=logging.root.level, format=worker_log_format(args.worker), stream=sys.stderr, force=True
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
    if args.workers > 1:
        return Supervisor(args.config, config, args.workers, log_level=args.log_level).run()
    serve_forever(GatewayState(config, config_path=args.config))
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


def _cmd_mock_upstream(args: argparse.Namespace) -> int:
    from tollgate.mock.upstream import run_mock, settings_from_args

    run_mock(args.host, args.port, settings_from_args(args))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tollgate.process.demo import run_demo

    return run_demo(host=args.host, port=args.port)


def _print_problems(source: str, exc: ConfigError) -> None:
    print(f"{source}: {len(exc.problems)} problem(s):", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from tollgate.mock.upstream import add_arguments as add_mock_arguments

    parser = argparse.ArgumentParser(prog="tollgate", description="Multi-tenant gateway for OpenAI-style LLM traffic.")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
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

    p = sub.add_parser("mock-upstream", help="run the OpenAI-compatible mock upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    add_mock_arguments(p)
    p.set_defaults(func=_cmd_mock_upstream)

    p = sub.add_parser("demo", help="gateway + built-in mock upstream + demo tenants, ready for curl")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
