"""Bearer-token authentication.

Tokens come from an environment variable (one or more, comma-separated) and/or a secret file
(one per line; blank lines and `#` comments skipped), so they can be rotated by listing old and
new together. With no token configured the service refuses to start, unless the config sets
`auth.insecure_no_auth: true` for a local demo. Tokens are compared in constant time against
their SHA-256 digests, so neither the comparison time nor a memory dump of the checker gives
away a token directly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from surgray.errors import UserError
from surgray.serving.config import AuthConfig
from surgray.serving.errors import Unauthorized

MIN_TOKEN_CHARS = 16
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="surgray"'}


class AuthError(Unauthorized):
    """401 with a `WWW-Authenticate: Bearer` challenge."""

    def __init__(self, message: str, *, code: str = "unauthorized") -> None:
        super().__init__(message, code=code, headers=_CHALLENGE)


class AuthConfigError(UserError, RuntimeError):
    """Authentication is not configured (or badly); the service must not start."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class TokenChecker:
    """Accepts a request whose `Authorization` header is `Bearer <one of the tokens>`.

    `insecure` means no authentication at all (local demos only).
    """

    digests: tuple[bytes, ...]
    insecure: bool = False

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> TokenChecker:
        cleaned = [token.strip() for token in tokens if token.strip()]
        for token in cleaned:
            if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
                raise AuthConfigError(
                    f"API tokens must be at least {MIN_TOKEN_CHARS} characters with no "
                    f"whitespace; one configured token has {len(token)} characters"
                )
        if not cleaned:
            raise AuthConfigError("no API token given")
        return cls(digests=tuple(dict.fromkeys(_digest(token) for token in cleaned)))

    @classmethod
    def insecure_no_auth(cls) -> TokenChecker:
        return cls(digests=(), insecure=True)

    def check(self, authorization: str | None) -> None:
        """Raise AuthError unless the header carries a configured token."""
        if self.insecure:
            return
        if not authorization:
            raise AuthError("missing 'Authorization: Bearer <token>' header")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        offered = _digest(credentials.strip())
        # Compare against every digest, without an early exit, so timing says nothing about
        # which (or whether an earlier) token matched.
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(offered, digest)
        if not matched:
            raise AuthError("invalid API token", code="invalid_token")


def _tokens_from_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise AuthConfigError(f"auth.token_file {path!r} does not exist") from None
    except OSError as exc:
        raise AuthConfigError(f"auth.token_file {path!r} cannot be read: {exc}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise AuthConfigError(f"auth.token_file {path!r} holds no token")
    return tokens


def load_tokens(config: AuthConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Tokens from the configured environment variable and file (both may be used at once)."""
    env = os.environ if environ is None else environ
    tokens: list[str] = []
    if config.token_env and env.get(config.token_env, "").strip():
        tokens += [part.strip() for part in env[config.token_env].split(",") if part.strip()]
    if config.token_file:
        tokens += _tokens_from_file(config.token_file)
    return tokens


def build_token_checker(
    config: AuthConfig, environ: Mapping[str, str] | None = None
) -> TokenChecker:
    """The checker for a ServeConfig's auth section; raises AuthConfigError to stop startup."""
    tokens = load_tokens(config, environ)
    if tokens:
        return TokenChecker.from_tokens(tokens)
    if config.insecure_no_auth:
        return TokenChecker.insecure_no_auth()
    env_hint = (
        f"set the environment variable {config.token_env} to one or more comma-separated tokens"
        if config.token_env
        else "set auth.token_env to the name of an environment variable holding tokens"
    )
    raise AuthConfigError(
        "refusing to start without authentication: no API token is configured. Either "
        f"{env_hint}, or set auth.token_file to a file with one token per line "
        '(e.g. generated by `python -c "import secrets; print(secrets.token_urlsafe(32))"`). '
        "For a local demo only, set auth.insecure_no_auth: true to serve without authentication."
    )
