"""Shared helpers of the exchange tests: the test policy, a signer, the app served in-process.

The app runs in a real Uvicorn server on a thread (127.0.0.1, a free port) rather than
Starlette's TestClient, which now warns that it wants another HTTP library.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import uvicorn
from starlette.applications import Starlette

from nix_job.exchange.app import Deps, create_app
from nix_job.exchange.mint import Signer, load_signer
from nix_job.exchange.policy import Policy
from nix_job.exchange.policy_file import parse_policy

AUDIENCE = "https://attic.test"
HS256_SECRET = bytes(range(48))
"""48 bytes: the Attic double is started with the same secret."""


def secret_env(secret: bytes = HS256_SECRET) -> dict[str, str]:
    return {"ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64": base64.b64encode(secret).decode()}


def hs256_signer(secret: bytes = HS256_SECRET) -> Signer:
    return load_signer(algorithm=None, secret_file=None, env=secret_env(secret))


def policy_text(github_url: str, gitlab_url: str, *, burst: int = 20, service: str = "") -> str:
    """The policy most tests run against: GitHub and GitLab, publish + pull rules, and a
    permissive rule (any event of repository 777) to exercise the pull-request floor."""
    return f"""
[service]
leeway = 30
{service}

[rate_limit]
burst = {burst}
per_minute = 60

[issuers.github]
kind = "github"
url = "{github_url}"
audience = "{AUDIENCE}"

[issuers.gitlab]
kind = "gitlab"
url = "{gitlab_url}"
audience = "{AUDIENCE}"

[[rules]]
name = "gh-publish"
issuer = "github"
max_lifetime = 1800
caches = {{ "main" = ["pull", "push"] }}
[rules.match]
repository = "octo-org/octo-repo"
repository_id = "4242"
ref = "refs/heads/main"
event_name = ["push", "schedule", "workflow_dispatch"]

[[rules]]
name = "gh-pull"
issuer = "github"
max_lifetime = 900
caches = {{ "main" = ["pull"] }}
[rules.match]
repository_id = "4242"

[[rules]]
name = "gh-permissive"
issuer = "github"
caches = {{ "other" = ["pull", "push"], "push-only" = ["push"] }}
[rules.match]
repository_id = "777"

[[rules]]
name = "gl-publish"
issuer = "gitlab"
caches = {{ "main" = ["pull", "push"] }}
[rules.match]
project_id = "20"
ref = "main"
ref_protected = true
pipeline_source = ["push", "web", "api", "schedule"]

[[rules]]
name = "gl-pull"
issuer = "gitlab"
caches = {{ "main" = ["pull"] }}
[rules.match]
project_id = "20"
"""


def make_policy(github_url: str, gitlab_url: str, *, burst: int = 20, service: str = "") -> Policy:
    return parse_policy(
        policy_text(github_url, gitlab_url, burst=burst, service=service), source="test.toml"
    )


@contextlib.contextmanager
def serve(app: Starlette, *, port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with Uvicorn on a thread (on ``port``, default: a free one); yields
    its base URL, stops it after."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, name="exchange-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the exchange app did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def exchange_client(
    policy: Policy,
    signer: Signer | None = None,
    *,
    clock: Callable[[], float] = time.time,
    refetch_interval: float = 60.0,
) -> Iterator[httpx.Client]:
    """The app served in-process, and an HTTP client for it."""
    app = create_app(
        Deps(
            policy=policy,
            signer=signer or hs256_signer(),
            clock=clock,
            jwks_refetch_interval=refetch_interval,
        )
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client
