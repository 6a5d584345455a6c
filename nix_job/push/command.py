"""``python -m nix_job push``: push store paths and their closures to Attic, in any CI.

Owns the command line (server and cache from flags or ``ATTIC_SERVER``/``ATTIC_CACHE``, the
token from ``ATTIC_TOKEN`` only), the short report, and the exit code: 0 when done (failures
only warn), 1 on failures with ``--require``, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping

from nix_job.args import USAGE_EXIT, Exit, Parser, UsageError
from nix_job.cache.attic import AtticClient, normalise_endpoint
from nix_job.core.errors import AtticError
from nix_job.core.nixhash import STORE_DIR
from nix_job.core.secret import Secret
from nix_job.core.text import Redactor
from nix_job.core.values import (
    CACHE_NAME_RE,
    CLOSURE_MODES,
    parse_size,
    pattern_problem,
    show_size,
)
from nix_job.nix.store import NixStore
from nix_job.process import scrubbed_env
from nix_job.push.exclude import ExcludeMatcher
from nix_job.push.plan import PushPolicy
from nix_job.push.report import PushReport, throttle_text, verification_text
from nix_job.push.retry import RetryPolicy
from nix_job.push.session import PushSession
from nix_job.push.types import Excluder, PushClient, PushStore


def _parser() -> Parser:
    parser = Parser(
        prog="python -m nix_job push",
        description="Push store paths and their closures to an Attic cache. The token is read "
        "from the ATTIC_TOKEN environment variable only (never an argument).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="store paths or links to them")
    parser.add_argument("--server", help="Attic server URL (default: $ATTIC_SERVER)")
    parser.add_argument("--cache", help="Attic cache name (default: $ATTIC_CACHE)")
    parser.add_argument("--jobs", type=int, default=4, help="parallel uploads (default: 4)")
    parser.add_argument("--exclude", metavar="REGEX", help="skip store paths matching REGEX")
    parser.add_argument(
        "--max-size",
        metavar="SIZE",
        help="skip paths whose NAR is larger than SIZE, e.g. 500M or 2G (default: no limit)",
    )
    parser.add_argument(
        "--closure",
        choices=CLOSURE_MODES,
        default="runtime",
        help="runtime: the paths and their runtime closures (default); build: also their "
        "build-time inputs; outputs: the paths only",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="give up after SECONDS (default: 1800)"
    )
    parser.add_argument(
        "--require",
        action="store_true",
        help="exit 1 when anything failed or was left unpushed, or a path is not in the cache "
        "at the end (default: warn, exit 0)",
    )
    parser.add_argument("--verbose", action="store_true", help="log each batch")
    return parser


class _Redacting(logging.Filter):
    """Log records with every registered secret replaced."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._redactor.redact(record.getMessage()), None
        return True


def to_store_path(arg: str, store_dir: str = STORE_DIR) -> str:
    """A store path, or a link into the store (``./result``), as a top-level store path."""
    prefix = store_dir.rstrip("/") + "/"
    candidate = arg if arg.startswith(prefix) else os.path.realpath(arg)
    if not candidate.startswith(prefix) or candidate == prefix:
        raise UsageError(f"{arg!r} is not in {store_dir} (nor a link into it)")
    return prefix + candidate[len(prefix) :].split("/", 1)[0]


def main(argv: list[str], env: Mapping[str, str]) -> int:
    """Run the push command; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
        server, cache, exclude, max_size, paths = _check(args, env)
    except UsageError as exc:
        print(f"nix-job push: {exc}", file=sys.stderr)
        print(
            "usage: python -m nix_job push [--server URL] [--cache NAME] PATH...", file=sys.stderr
        )
        return USAGE_EXIT
    except Exit as done:
        return done.status
    require: bool = args.require

    raw_token = env.get("ATTIC_TOKEN", "").strip()
    # SECURITY: server answers are printed, and GitLab masks nothing at run time: every line
    # this command prints goes through a redactor that knows the token's forms.
    redactor = Redactor()
    for form in Secret(raw_token).derived_forms() if raw_token else ():
        redactor.add(form)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger().handlers[0].addFilter(_Redacting(redactor))
    if not raw_token:
        print(
            "nix-job push: ATTIC_TOKEN is not set, so nothing was pushed. Set it to an Attic "
            f"token with push ('w') and pull ('r') permission on cache '{cache}'.",
            file=sys.stderr,
        )
        return 1 if require else 0
    client = AtticClient(
        endpoint=server, cache=cache, token=Secret(raw_token), max_connections=args.jobs + 1
    )
    try:
        config = client.cache_config()
    except AtticError as exc:
        client.close()
        print(redactor.redact(f"nix-job push: {exc.message}"), file=sys.stderr)
        return 1 if require else 0
    if config.store_dir and config.store_dir.rstrip("/") != STORE_DIR:
        client.close()
        print(
            f"nix-job push: cache '{cache}' holds paths of store {config.store_dir}, but this "
            f"machine's store is {STORE_DIR}; push to a cache created for {STORE_DIR}.",
            file=sys.stderr,
        )
        return 1 if require else 0
    # SECURITY: Nix runs without ATTIC_TOKEN in its environment.
    store = NixStore(scrubbed_env(env), store_dir=STORE_DIR)
    report = push_once(
        paths,
        store=store,
        client=client,
        upstream_key_names=config.upstream_cache_key_names,
        exclude=ExcludeMatcher(exclude, env=scrubbed_env(env)) if exclude else None,
        policy=PushPolicy(max_size=max_size, closure=args.closure),
        jobs=args.jobs,
        timeout_s=args.timeout,
    )
    print(redactor.redact(format_report(report, server=server, cache=cache)))
    missing = report.verification is not None and report.verification.outputs_missing > 0
    return 1 if require and (missing or not report.complete) else 0


def _check(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[str, str, str | None, int | None, list[str]]:
    problems: list[str] = []
    server = (args.server or env.get("ATTIC_SERVER", "")).strip()
    cache = (args.cache or env.get("ATTIC_CACHE", "")).strip()
    if not server:
        problems.append("no Attic server: pass --server URL or set ATTIC_SERVER")
    else:
        try:
            server = normalise_endpoint(server)
        except ValueError as exc:
            problems.append(str(exc))
    if not cache:
        problems.append("no cache: pass --cache NAME or set ATTIC_CACHE")
    elif not CACHE_NAME_RE.match(cache):
        problems.append(f"cache name {cache!r} is not a valid Attic cache name")
    if args.jobs < 1 or args.jobs > 64:
        problems.append(f"--jobs must be between 1 and 64, not {args.jobs}")
    if not args.timeout > 0:
        problems.append(f"--timeout must be positive, not {args.timeout}")
    exclude = None
    if args.exclude:
        if why := pattern_problem(args.exclude):
            problems.append(f"--exclude {args.exclude!r} {why}")
        else:
            exclude = args.exclude
    max_size = None
    if args.max_size is not None:
        max_size = parse_size(args.max_size)
        if max_size is None:
            problems.append(
                f"--max-size {args.max_size!r} is not a size above zero such as 500M or 2G"
            )
    paths: list[str] = []
    for arg in args.paths:
        try:
            paths.append(to_store_path(arg))
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("; ".join(problems))
    return server, cache, exclude, max_size, paths


def format_report(report: PushReport, *, server: str, cache: str) -> str:
    """A few lines for a CI log: what went up, what was skipped, what failed."""
    mib = report.pushed.bytes / (1024 * 1024)
    lines = [
        f"Pushed {report.pushed.paths} path(s) ({mib:.1f} MiB) to cache '{cache}' on {server} "
        f"in {report.drain_seconds:.1f} s.",
        f"Skipped: {report.already_cached.paths} already cached, {report.upstream.paths} from "
        f"upstream caches, {report.excluded.paths} excluded, {report.vanished} garbage-collected.",
    ]
    if report.oversize.paths:
        names = ", ".join(p.rsplit("/", 1)[-1] for p in report.oversize_sample[:3])
        lines.append(
            f"Too large to push (--max-size): {report.oversize.paths} path(s), "
            f"{show_size(report.oversize.bytes)} of NAR: {names}"
            + (" …" if report.oversize.paths > 3 else "")
        )
    if report.closure_mode == "build" and report.without_derivation:
        lines.append(
            f"Build-time inputs unknown for {report.without_derivation} path(s): their "
            "derivation is not in this store (substituted, or collected)."
        )
    if report.throttle.throttled or report.throttle.server_errors:
        lines.append(throttle_text(report))
    if report.verification is not None:
        lines.append(verification_text(report.verification))
    if report.exclude_undecided:
        lines.append(
            f"--exclude ran out of time on {report.exclude_undecided} path(s); they were not "
            "pushed. Simplify the pattern."
        )
    if report.nar_fallbacks:
        lines.append(
            f"{report.nar_fallbacks} NAR(s) read through nix-store --dump instead of the "
            f"store's files (first reason: {report.nar_fallback_reason})."
        )
    if report.auth_error:
        lines.append(f"Stopped: {report.auth_error}")
    if report.failed.paths:
        lines.append(f"Failed: {report.failed.paths} path(s).")
        lines.extend(f"  {f.path}: {f.reason}" for f in report.failures)
        if report.failed.paths > len(report.failures):
            lines.append(f"  … and {report.failed.paths - len(report.failures)} more")
    if report.left_over.paths:
        lines.append(
            f"Left unpushed at the deadline: {report.left_over.paths} path(s); "
            "raise --timeout or push again."
        )
    return "\n".join(lines)


def push_once(
    paths: Iterable[str],
    *,
    store: PushStore,
    client: PushClient,
    upstream_key_names: Iterable[str] = (),
    exclude: Excluder | None = None,
    policy: PushPolicy | None = None,
    jobs: int = 4,
    timeout_s: float = 600.0,
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
    verify: bool = True,
) -> PushReport:
    """Push ``paths`` (with what ``policy.closure`` takes) once, as ``final``; then, unless
    ``verify`` is False, reconcile with the cache; then drain. All within ``timeout_s``;
    closes the client."""
    session = PushSession(
        store=store,
        client=client,
        upstream_key_names=upstream_key_names,
        exclude=exclude,
        policy=policy,
        jobs=jobs,
        retry=retry,
        clock=clock,
    )
    roots = list(paths)
    deadline = clock() + timeout_s
    try:
        session.queue(roots, origin="final")
        verification = None
        if verify and session.wait_idle(timeout_s):
            verification = session.verify(roots, max(0.0, deadline - clock()))
        report = session.drain(max(0.0, deadline - clock()))
        # The whole push (planning, uploads, reconcile), not only the session's last wait.
        return dataclasses.replace(
            report, verification=verification, drain_seconds=clock() - deadline + timeout_s
        )
    finally:
        session.close()
