"""The policy file: TOML → a validated ``Policy``. Pure.

Every problem is reported at once and names its key (``rules[1].match.ref``,
``issuers.github.url``), so one edit fixes them all; risky but legal choices become warnings.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import cast, get_args

from nix_job.exchange.errors import PolicyError
from nix_job.exchange.policy import (
    BOOLEAN_KEYS,
    CACHE_PATTERN_RE,
    HARD_MAX_LIFETIME,
    MATCH_KEYS,
    MAX_LEEWAY,
    MIN_LIFETIME,
    OWNER_KEYS,
    Algorithm,
    CiKind,
    IssuerConfig,
    Permission,
    Policy,
    RateLimitSettings,
    Rule,
    ServiceSettings,
    check_url,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_policy(text: str, *, source: str) -> Policy:
    """Parse and validate a policy file; raise ``PolicyError`` listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PolicyError([f"not valid TOML: {error}"], source=source) from None
    parser = _Parser()
    policy = parser.policy(data)
    if parser.problems or policy is None:
        raise PolicyError(parser.problems, source=source)
    return policy


class _Parser:
    """Collects problems while reading; each method returns None for a value it refused."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.declared_issuers: set[str] = set()
        """Every [issuers.NAME], valid or not: a rule naming a broken one is not blamed too."""

    def bad(self, key: str, problem: str) -> None:
        self.problems.append(f"{key}: {problem}")

    # --- scalars ------------------------------------------------------------------------

    def int_in(self, table: Mapping[str, object], key: str, path: str, lo: int, hi: int) -> int:
        value = table[key]
        if type(value) is not int:
            self.bad(path, f"must be an integer number of seconds, not {_kind(value)}")
            return lo
        if not lo <= value <= hi:
            self.bad(path, f"{value} is out of range; use {lo} to {hi}")
            return lo
        return value

    def text(self, value: object, path: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.bad(path, f"must be a non-empty string, not {_kind(value)}")
            return None
        if value != value.strip():
            self.bad(path, f"{value!r} has leading or trailing whitespace")
            return None
        return value

    def unknown(self, table: Mapping[str, object], allowed: tuple[str, ...], path: str) -> None:
        for key in table:
            if key not in allowed:
                where = f"{path}.{key}" if path else key
                self.bad(where, f"unknown key; expected one of {', '.join(allowed)}")

    # --- sections -----------------------------------------------------------------------

    def policy(self, data: Mapping[str, object]) -> Policy | None:
        self.unknown(data, ("service", "rate_limit", "issuers", "rules"), "")
        service = self.service(self.table(data, "service"))
        rate_limit = self.rate_limit(self.table(data, "rate_limit"))
        issuers = self.issuers(data.get("issuers"))
        rules = self.rules(data.get("rules"), issuers, service)
        if self.problems:
            return None
        return Policy(
            service=service,
            rate_limit=rate_limit,
            issuers=issuers,
            rules=rules,
            warnings=tuple(self.warnings),
        )

    def table(self, data: Mapping[str, object], key: str) -> Mapping[str, object]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.bad(key, f"must be a table ([{key}]), not {_kind(value)}")
            return {}
        return cast("Mapping[str, object]", value)

    def service(self, table: Mapping[str, object]) -> ServiceSettings:
        allowed = (
            "max_lifetime",
            "leeway",
            "algorithm",
            "secret_file",
            "token_issuer",
            "token_audiences",
            "jwks_ttl",
        )
        for key in table:
            if key not in allowed and ("secret" in key.lower() or "key" in key.lower()):
                self.bad(
                    f"service.{key}",
                    "the signing secret never goes in the policy file; set "
                    "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64 or "
                    "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64 in the service's environment, or point "
                    "service.secret_file (or "
                    "--secret-file) at a file holding it",
                )
            elif key not in allowed:
                self.bad(f"service.{key}", f"unknown key; expected one of {', '.join(allowed)}")
        settings = ServiceSettings()
        max_lifetime = settings.max_lifetime
        if "max_lifetime" in table:
            max_lifetime = self.int_in(
                table, "max_lifetime", "service.max_lifetime", MIN_LIFETIME, HARD_MAX_LIFETIME
            )
        leeway = settings.leeway
        if "leeway" in table:
            leeway = self.int_in(table, "leeway", "service.leeway", 0, MAX_LEEWAY)
        jwks_ttl = settings.jwks_ttl
        if "jwks_ttl" in table:
            jwks_ttl = self.int_in(table, "jwks_ttl", "service.jwks_ttl", 60, 86400)
        algorithm: Algorithm | None = None
        if "algorithm" in table:
            value = table["algorithm"]
            if value in get_args(Algorithm):
                algorithm = cast("Algorithm", value)
            else:
                self.bad("service.algorithm", f"{value!r} is not one of HS256, RS256")
        secret_file = None
        if "secret_file" in table:
            secret_file = self.text(table["secret_file"], "service.secret_file")
            if secret_file is not None and not secret_file.startswith("/"):
                self.bad("service.secret_file", f"{secret_file!r} must be an absolute path")
                secret_file = None
        token_issuer = None
        if "token_issuer" in table:
            token_issuer = self.text(table["token_issuer"], "service.token_issuer")
        audiences: list[str] = []
        if "token_audiences" in table:
            value = table["token_audiences"]
            if not isinstance(value, list) or not value:
                self.bad("service.token_audiences", "must be a non-empty list of strings")
            else:
                for i, item in enumerate(value):
                    aud = self.text(item, f"service.token_audiences[{i}]")
                    if aud is not None:
                        audiences.append(aud)
        return ServiceSettings(
            max_lifetime=max_lifetime,
            leeway=leeway,
            algorithm=algorithm,
            secret_file=secret_file,
            token_issuer=token_issuer,
            token_audiences=tuple(audiences),
            jwks_ttl=jwks_ttl,
        )

    def rate_limit(self, table: Mapping[str, object]) -> RateLimitSettings:
        self.unknown(table, ("burst", "per_minute"), "rate_limit")
        defaults = RateLimitSettings()
        burst = defaults.burst
        if "burst" in table:
            burst = self.int_in(table, "burst", "rate_limit.burst", 1, 10_000)
        per_minute = defaults.per_minute
        if "per_minute" in table:
            per_minute = self.int_in(table, "per_minute", "rate_limit.per_minute", 1, 60_000)
        return RateLimitSettings(burst=burst, per_minute=per_minute)

    def issuers(self, value: object) -> tuple[IssuerConfig, ...]:
        if value is None:
            self.bad("issuers", "missing; add at least one [issuers.NAME] table")
            return ()
        if not isinstance(value, dict) or not value:
            self.bad("issuers", "must be a table of [issuers.NAME] tables, at least one")
            return ()
        result: list[IssuerConfig] = []
        seen_urls: dict[str, str] = {}
        for name, table in value.items():
            path = f"issuers.{name}"
            self.declared_issuers.add(name)
            if not _NAME_RE.match(name):
                self.bad(path, "issuer names use letters, digits, '.', '_' and '-' (max 64)")
            if not isinstance(table, dict):
                self.bad(path, f"must be a table, not {_kind(table)}")
                continue
            self.unknown(table, ("kind", "url", "audience"), path)
            kind = table.get("kind")
            if kind not in get_args(CiKind):
                self.bad(f"{path}.kind", f"{kind!r} is not one of github, gitlab")
            url = self.required_text(table, "url", path)
            if url is not None:
                problem = check_url(url)
                if problem:
                    self.bad(f"{path}.url", problem)
                elif url.endswith("/"):
                    self.bad(f"{path}.url", "drop the trailing '/': it must equal the tokens' iss")
                elif url in seen_urls:
                    self.bad(f"{path}.url", f"same URL as issuers.{seen_urls[url]}")
                else:
                    seen_urls[url] = name
            audience = self.required_text(table, "audience", path)
            if kind in get_args(CiKind) and url is not None and audience is not None:
                result.append(
                    IssuerConfig(name=name, kind=cast("CiKind", kind), url=url, audience=audience)
                )
        return tuple(result)

    def required_text(self, table: Mapping[str, object], key: str, path: str) -> str | None:
        if key not in table:
            self.bad(f"{path}.{key}", "missing")
            return None
        return self.text(table[key], f"{path}.{key}")

    def rules(
        self, value: object, issuers: tuple[IssuerConfig, ...], service: ServiceSettings
    ) -> tuple[Rule, ...]:
        if value is None:
            self.bad("rules", "missing; without a [[rules]] entry every request is refused")
            return ()
        if not isinstance(value, list) or not value:
            self.bad("rules", "must be an array of tables ([[rules]]), at least one")
            return ()
        by_name = {i.name: i for i in issuers}
        names: set[str] = set()
        result: list[Rule] = []
        for index, table in enumerate(value):
            path = f"rules[{index}]"
            if not isinstance(table, dict):
                self.bad(path, f"must be a table ([[rules]]), not {_kind(table)}")
                continue
            rule = self.rule(table, path, by_name, service, names)
            if rule is not None:
                result.append(rule)
        return tuple(result)

    def rule(
        self,
        table: Mapping[str, object],
        path: str,
        issuers: Mapping[str, IssuerConfig],
        service: ServiceSettings,
        names: set[str],
    ) -> Rule | None:
        self.unknown(table, ("name", "issuer", "match", "caches", "max_lifetime"), path)
        name = self.required_text(table, "name", path)
        if name is not None:
            if not _NAME_RE.match(name):
                self.bad(f"{path}.name", "use letters, digits, '.', '_' and '-' (max 64)")
            elif name in names:
                self.bad(f"{path}.name", f"{name!r} is used by an earlier rule; names are unique")
            names.add(name)
        issuer_name = self.required_text(table, "issuer", path)
        issuer = issuers.get(issuer_name) if issuer_name is not None else None
        if issuer_name is not None and issuer_name not in self.declared_issuers:
            known = ", ".join(sorted(self.declared_issuers)) or "none"
            self.bad(f"{path}.issuer", f"{issuer_name!r} is not an [issuers.NAME] (known: {known})")
        match = self.match(table.get("match"), f"{path}.match", issuer)
        caches = self.caches(table.get("caches"), f"{path}.caches")
        max_lifetime = service.max_lifetime
        if "max_lifetime" in table:
            max_lifetime = self.int_in(
                table, "max_lifetime", f"{path}.max_lifetime", MIN_LIFETIME, service.max_lifetime
            )
        if name is None or issuer is None or match is None or caches is None:
            return None
        return Rule(
            name=name, issuer=issuer.name, match=match, caches=caches, max_lifetime=max_lifetime
        )

    def match(
        self, value: object, path: str, issuer: IssuerConfig | None
    ) -> tuple[tuple[str, frozenset[str]], ...] | None:
        if not isinstance(value, dict) or not value:
            self.bad(path, "missing or empty; a rule must match claims ([rules.match])")
            return None
        if issuer is None:
            return None
        allowed = MATCH_KEYS[issuer.kind]
        result: list[tuple[str, frozenset[str]]] = []
        ok = True
        for key, raw in value.items():
            where = f"{path}.{key}"
            if key not in allowed:
                self.bad(
                    where, f"not a {issuer.kind} claim a rule can match; use {', '.join(allowed)}"
                )
                ok = False
                continue
            values = self.match_values(raw, where, boolean=key in BOOLEAN_KEYS)
            if values is None:
                ok = False
                continue
            if key == "ref":
                self.check_refs(values, where, issuer.kind)
            result.append((key, values))
        if ok and not any(k in OWNER_KEYS[issuer.kind] for k, _ in result):
            owners = ", ".join(OWNER_KEYS[issuer.kind])
            self.bad(
                path,
                f"must pin whose jobs it trusts with at least one of {owners}: {issuer.url} "
                "signs tokens for every repository it hosts",
            )
            ok = False
        keys = {k for k, _ in result}
        if issuer.kind == "github" and "repository" in keys and "repository_id" not in keys:
            self.warnings.append(
                f"{path}: matches `repository` without `repository_id`; a deleted or renamed "
                "repository's name can be taken by someone else, add repository_id to pin it"
            )
        return tuple(result) if ok else None

    def match_values(self, raw: object, path: str, *, boolean: bool) -> frozenset[str] | None:
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            self.bad(path, "an empty list matches nothing; remove the key or list values")
            return None
        values: set[str] = set()
        for item in items:
            if boolean:
                if not isinstance(item, bool):
                    self.bad(path, f"must be true or false (a TOML boolean), not {_kind(item)}")
                    return None
                values.add("true" if item else "false")
                continue
            text = self.text(item, path)
            if text is None:
                return None
            values.add(text)
        return frozenset(values)

    def check_refs(self, values: frozenset[str], path: str, kind: CiKind) -> None:
        for ref in sorted(values):
            if kind == "github" and not ref.startswith("refs/"):
                self.bad(
                    path,
                    f"{ref!r}: GitHub's ref claim is fully qualified, e.g. refs/heads/{ref} "
                    f"or refs/tags/{ref}",
                )
            if kind == "gitlab" and ref.startswith("refs/"):
                self.bad(
                    path,
                    f"{ref!r}: GitLab's ref claim is the bare branch or tag name "
                    "(use ref_type to tell them apart)",
                )

    def caches(
        self, value: object, path: str
    ) -> tuple[tuple[str, frozenset[Permission]], ...] | None:
        if not isinstance(value, dict) or not value:
            self.bad(path, 'missing or empty; e.g. caches = { "main" = ["pull", "push"] }')
            return None
        result: list[tuple[str, frozenset[Permission]]] = []
        ok = True
        for pattern, perms in value.items():
            where = f"{path}.{pattern}"
            if not CACHE_PATTERN_RE.match(pattern):
                self.bad(where, "not an Attic cache name or pattern (letters, digits, -_+ and *)")
                ok = False
                continue
            if (
                not isinstance(perms, list)
                or not perms
                or any(p not in get_args(Permission) for p in perms)
            ):
                self.bad(where, f'must be ["pull"], ["push"] or ["pull", "push"], not {perms!r}')
                ok = False
                continue
            if len(set(perms)) != len(perms):
                self.bad(where, f"lists a permission twice: {perms!r}")
                ok = False
                continue
            result.append((pattern, frozenset(cast("list[Permission]", perms))))
        return tuple(result) if ok else None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
