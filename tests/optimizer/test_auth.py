"""Authentication: the tokens file, and TokenReview over real HTTP with the official client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from optimizer.auth import (
    NODE_NAME_EXTRA,
    Principal,
    Role,
    TokenReviewer,
    TokensFile,
    TokensFileError,
    kubernetes_token_review,
)
from tests.agent.helpers import ManualClock

AGENT_USER = "system:serviceaccount:stowage:stowage-agent"


def _write(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def test_tokens_file_maps_tokens_to_principals(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"token": "a" * 32, "subject": "gpu-1", "role": "agent"},
            {"token": "b" * 32, "subject": "ops@example.com", "role": "admin"},
        ],
    )
    tokens = TokensFile.load(path)
    assert tokens.authenticate("a" * 32) == Principal("gpu-1", Role.AGENT)
    assert tokens.authenticate("b" * 32) == Principal("ops@example.com", Role.ADMIN)
    assert tokens.authenticate("c" * 32) is None


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([{"token": "short", "subject": "x", "role": "agent"}], "0.token"),
        ([{"token": "a" * 32, "subject": "x", "role": "root"}], "0.role"),
        ([{"token": "a" * 32, "role": "agent"}], "0.subject"),
        ({"token": "a" * 32}, "list"),
        (
            [{"token": "a" * 32, "subject": "x", "role": "agent"}] * 2,
            "the same token is listed twice",
        ),
    ],
)
def test_bad_tokens_files_are_refused_without_quoting_tokens(
    tmp_path: Path, entries: object, fragment: str
) -> None:
    with pytest.raises(TokensFileError) as caught:
        TokensFile.load(_write(tmp_path, entries))
    assert fragment in str(caught.value)
    assert "a" * 32 not in str(caught.value)


class _FakeApiServer:
    """Answers TokenReviews like kube-apiserver: authenticated when the token is known."""

    def __init__(self, known: dict[str, dict[str, Any]]) -> None:
        self.known = known
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body})
                spec = body["spec"]
                user = owner.known.get(spec["token"])
                status: dict[str, Any] = {"authenticated": False}
                if user is not None and "stowage" in spec.get("audiences", []):
                    status = {"authenticated": True, "user": user, "audiences": ["stowage"]}
                answer = json.dumps(
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "spec": spec,
                        "status": status,
                    }
                ).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api_server() -> Iterator[_FakeApiServer]:
    server = _FakeApiServer(
        {
            "agent-token": {
                "username": AGENT_USER,
                "extra": {NODE_NAME_EXTRA: ["gpu-node-7"]},
            },
            "other-sa": {"username": "system:serviceaccount:ml:trainer", "extra": {}},
            "unbound": {"username": AGENT_USER, "extra": {}},
        }
    )
    yield server
    server.stop()


def test_token_review_over_the_official_client(api_server: _FakeApiServer) -> None:
    configuration = k8s.Configuration(host=api_server.url)
    with k8s.ApiClient(configuration) as api_client:
        clock = ManualClock()
        reviewer = TokenReviewer(
            review=kubernetes_token_review(audience="stowage", api_client=api_client),
            agent_username=AGENT_USER,
            cache_s=60,
            clock=clock,
        )
        assert reviewer.authenticate("agent-token") == Principal("gpu-node-7", Role.AGENT)
        assert reviewer.authenticate("agent-token") == Principal("gpu-node-7", Role.AGENT)
        assert len(api_server.requests) == 1  # cached
        clock.advance(61)
        reviewer.authenticate("agent-token")
        assert len(api_server.requests) == 2
        assert reviewer.authenticate("other-sa") is None  # not the agents' account
        assert reviewer.authenticate("unbound") is None  # not bound to a node
        assert reviewer.authenticate("forged") is None
    first = api_server.requests[0]
    assert first["path"] == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert first["body"]["spec"]["audiences"] == ["stowage"]


def test_people_tokens_are_tried_before_token_review(tmp_path: Path) -> None:
    people = TokensFile.load(
        _write(tmp_path, [{"token": "p" * 20, "subject": "sre", "role": "reader"}])
    )
    calls: list[str] = []

    def review(token: str) -> dict[str, Any]:
        calls.append(token)
        return {"authenticated": False}

    reviewer = TokenReviewer(review=review, agent_username=AGENT_USER, fallback=people)
    assert reviewer.authenticate("p" * 20) == Principal("sre", Role.READER)
    assert calls == []
