"""Who is calling: bearer tokens mapped to a subject and a role.

Two authenticators, chosen by settings:

* :class:`TokensFile` — a YAML list of ``{token, subject, role}`` (outside a cluster, and
  for people in it). Tokens are compared by SHA-256 digest; the file's tokens never reach a
  log or the audit log.
* :class:`TokenReviewer` — projected ServiceAccount tokens checked with the Kubernetes
  TokenReview API (audience ``stowage``); an agent's subject is the node its pod runs on.
  Answers are cached briefly so 200 reports/s do not become 200 TokenReviews/s.

Roles: ``agent`` may post reports for its own node only; ``reader`` may read; ``admin`` may
do everything.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from optimizer.rbac import needs

NODE_NAME_EXTRA: Final = "authentication.kubernetes.io/node-name"


class Role(enum.StrEnum):
    """What a caller may do."""

    AGENT = "agent"
    READER = "reader"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str
    role: Role


class Authenticator(Protocol):
    """Maps a bearer token to a principal; None when the token is not valid.

    ``blocking`` says whether :meth:`authenticate` may wait on the network (the API then
    calls it from a worker thread; a lookup in memory runs on the event loop)."""

    blocking: bool

    def authenticate(self, token: str) -> Principal | None:
        """The token's principal, or None."""


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=16)
    subject: str = Field(min_length=1)
    role: Role


class TokensFileError(ValueError):
    """The tokens file is unreadable or malformed (the message never quotes a token)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokensFile:
    """Tokens from a YAML file: a list of ``{token, subject, role}``."""

    blocking = False  # a dictionary lookup

    def __init__(self, entries: Sequence[_TokenEntry]) -> None:
        self._by_digest = {_digest(e.token): Principal(e.subject, e.role) for e in entries}

    @classmethod
    def load(cls, path: Path) -> TokensFile:
        """Read and validate ``path``.

        Raises:
            TokensFileError: unreadable file, or an entry without a valid token, subject or
                role (tokens shorter than 16 characters are refused).
        """
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise TokensFileError(f"{path}: cannot read tokens: {type(error).__name__}") from None
        try:
            entries = TypeAdapter(list[_TokenEntry]).validate_python(data)
        except ValidationError as error:
            where = "; ".join(
                ".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in error.errors()
            )
            raise TokensFileError(f"{path}: {where}") from None
        digests = [_digest(e.token) for e in entries]
        if len(set(digests)) != len(digests):
            raise TokensFileError(f"{path}: the same token is listed twice")
        return cls(entries)

    def authenticate(self, token: str) -> Principal | None:
        return self._by_digest.get(_digest(token))


class TokenReviewer:
    """Agents' projected ServiceAccount tokens, checked with the TokenReview API.

    Args:
        review: sends a TokenReview and returns its ``status`` as a dict (the adapter over
            the official Kubernetes client, see :func:`kubernetes_token_review`).
        agent_username: the agents' ServiceAccount user name.
        fallback: an authenticator for people's tokens (the tokens file), tried first.
        cache_s: how long an answer is reused; ``clock`` is injectable.
    """

    blocking = True  # a cache miss sends a TokenReview

    def __init__(
        self,
        *,
        review: Callable[[str], dict[str, Any]],
        agent_username: str,
        fallback: Authenticator | None = None,
        cache_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.review = review
        self.agent_username = agent_username
        self.fallback = fallback
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def authenticate(self, token: str) -> Principal | None:
        if self.fallback is not None and (found := self.fallback.authenticate(token)):
            return found
        key = _digest(token)
        cached = self._cache.get(key)
        now = self.clock()
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        principal = self._principal(self.review(token))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now, principal)
        return principal

    def _principal(self, status: dict[str, Any]) -> Principal | None:
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        if user.get("username") != self.agent_username:
            return None
        nodes = (user.get("extra") or {}).get(NODE_NAME_EXTRA) or []
        if len(nodes) != 1:
            return None  # a token not bound to a pod on one node cannot speak for a node
        return Principal(subject=nodes[0], role=Role.AGENT)


@needs("authentication.k8s.io", "tokenreviews", "create")
def kubernetes_token_review(
    *, audience: str, api_client: Any | None = None
) -> Callable[[str], dict[str, Any]]:
    """A TokenReview sender over the official client.

    Args:
        audience: the audience the token must have been issued for.
        api_client: a ``kubernetes.client.ApiClient``; default: the in-cluster config.
    """
    from kubernetes import client, config

    if api_client is None:
        config.load_incluster_config()
    api = client.AuthenticationV1Api(api_client)

    def review(token: str) -> dict[str, Any]:
        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[audience])
        )
        status = api.create_token_review(body).status
        if status is None:
            return {"authenticated": False}
        user = status.user
        return {
            "authenticated": bool(status.authenticated),
            "user": {
                "username": user.username if user else None,
                "extra": dict(user.extra or {}) if user else {},
            },
        }

    return review
