"""The token-exchange service: CI OIDC ID tokens in, short-lived Attic tokens out.

A job proves who it is with its CI's ID token (GitHub Actions, GitLab CI); a default-deny
policy decides which caches it may pull or push, and the service mints an Attic JWT with
atticd's own signing secret. Pull/merge-request identities never get push (a hard floor in
code). Optional: installed with the ``exchange`` extra, never by the action.

    policy.py       policy values (pure)          policy_file.py  TOML → Policy (pure)
    identity.py     claims → Identity, the floor  decide.py       rule → Grant | Refusal (pure)
    jwks.py         discovery, JWKS cache (httpx) oidc.py         ID token verification (PyJWT)
    mint.py         signing secret, Attic claims  ratelimit.py    token buckets
    audit.py        the decision line (pure)      errors.py       refusals, startup errors
    app.py          Starlette routes              service.py      CLI, Uvicorn (composition)

See docs/token-exchange.md.
"""
