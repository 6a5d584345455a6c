"""``nix-job token-exchange``: load the policy and the signing secret, then serve (Uvicorn).

The composition root of the service and the only place that sees the process environment
(passed in as ``env``). Exit codes: 0 after a graceful shutdown (SIGTERM/SIGINT) or a
passing ``--check``; 1 when the server cannot start (e.g. the port is taken); 2 for bad usage,
a bad policy or no usable signing secret (the message names the key or source and what to do).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from nix_job.args import USAGE_EXIT, Exit, Parser, UsageError
from nix_job.exchange.app import Deps, create_app
from nix_job.exchange.errors import PolicyError, SigningKeyError
from nix_job.exchange.mint import load_signer
from nix_job.exchange.policy_file import parse_policy

DEFAULT_LISTEN = "127.0.0.1:8787"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

log = logging.getLogger("nix_job.exchange")


def _parser() -> Parser:
    parser = Parser(
        prog="nix-job token-exchange",
        description="Exchange CI OIDC ID tokens (GitHub Actions, GitLab CI) for short-lived "
        "Attic tokens, as a policy file allows. The signing secret is read from "
        "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64 / ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64 or a "
        "file, never from the command line or the policy.",
    )
    parser.add_argument("--config", required=True, metavar="POLICY.toml", help="the policy file")
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve on (default: {DEFAULT_LISTEN}; put TLS in front of it)",
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        metavar="PATH",
        help="a file holding atticd's base64 signing secret (overrides service.secret_file)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the policy and the signing secret, then exit (0 when both are usable)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    return parser


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def main(argv: list[str], env: Mapping[str, str]) -> int:
    try:
        args = _parser().parse_args(argv)
        host, port = parse_listen(args.listen)
    except UsageError as error:
        print(f"nix-job token-exchange: {error} (see --help)", file=sys.stderr)
        return USAGE_EXIT
    except Exit as done:
        return done.status
    _configure_logging(args.log_level)
    config = Path(args.config)
    try:
        policy = parse_policy(config.read_text(encoding="utf-8"), source=str(config))
    except OSError as error:
        print(
            f"nix-job token-exchange: cannot read the policy {config}: {error.strerror}",
            file=sys.stderr,
        )
        return USAGE_EXIT
    except (PolicyError, UnicodeDecodeError) as error:
        message = error.message if isinstance(error, PolicyError) else f"{config}: not UTF-8"
        print(f"nix-job token-exchange: {message}", file=sys.stderr)
        return USAGE_EXIT
    secret_file = args.secret_file
    if secret_file is None and policy.service.secret_file is not None:
        secret_file = Path(policy.service.secret_file)
    try:
        signer = load_signer(algorithm=policy.service.algorithm, secret_file=secret_file, env=env)
    except SigningKeyError as error:
        print(f"nix-job token-exchange: {error.message}", file=sys.stderr)
        return USAGE_EXIT
    for warning in policy.warnings:
        log.warning("policy: %s", warning)
    log.info(
        "policy %s: %d issuer(s), %d rule(s); signing with the %s",
        config,
        len(policy.issuers),
        len(policy.rules),
        signer,
    )
    if args.check:
        print(f"nix-job token-exchange: {config} and the signing secret are usable")
        return 0
    app = create_app(Deps(policy=policy, signer=signer))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # keep this process's logging; no access log (decisions are)
            access_log=False,
            server_header=False,
            lifespan="on",
        )
    )
    stopped_by: list[int] = []
    # Uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was in place before it: this one records it, so the exit stays 0.
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.run()
    except SystemExit:  # Uvicorn exits (3) when it cannot start, e.g. the port is taken
        log.error("the server did not start (see the error above); exit 1")  # noqa: TRY400 - uvicorn logged the cause
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        return 1
    names = ", ".join(signal.Signals(s).name for s in stopped_by) or "shutdown"
    log.info("stopped (%s); exit 0", names)
    return 0


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # SECURITY: header-level debug output of the HTTP clients never reaches the log.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
