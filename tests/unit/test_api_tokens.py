"""API tokens and scopes in process with the fake pool: every route against every scope, and the token store."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from corral.api import tokens as tokens_module
from corral.api.app import create_app
from corral.api.auth import OPEN_ROUTES, ROUTE_SCOPES, decide, route_scope
from corral.api.tokens import PREFIX, SCOPES, ApiToken, TokenStore, hash_token, parse_expires, parse_scopes
from corral.errors import UsageError
from corral.jobs.models import utc_now
from corral.jobs.sql import TOKENS, SqlJobStore
from corral.jobs.store import JobStore, open_store
from corral.settings import Settings
from tests.fake_pool import FakePool, InProcess

REPO = "https://example.com/r.git"
SECRET = "tokens-test-secret"


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def tokens(store: JobStore) -> TokenStore:
    return TokenStore.of(store)


def serve(settings: Settings, store: JobStore, *, secret: str = "") -> tuple[InProcess, FakePool, list[bool]]:
    settings = Settings(home=settings.home, runner_secret=secret)
    pool = FakePool(settings, store)
    drained: list[bool] = []
    app = create_app(settings, pool=pool, store=store, environ={}, on_drain=lambda: drained.append(True))
    return InProcess(app), pool, drained


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def call(api: InProcess, method: str, template: str, job_id: str, token_id: str, headers: dict[str, str]) -> Any:
    """One request to the route ``method template`` with a body it accepts."""
    path = template.replace("{job_id}", job_id).replace("{token_id}", token_id)
    bodies: dict[str, Any] = {
        "/execute": {"prompt": "p", "repo_url": REPO},
        "/v1/jobs": {"prompt": "p", "repo": REPO},
        "/v1/jobs/{job_id}/messages": {"prompt": "more"},
        "/v1/jobs/{job_id}/egress": {"allow": ["example.com"]},
        "/v1/tokens": {"scopes": ["jobs:read"]},
    }
    params = {"follow": "false"} if template.endswith("/events") else None
    body = bodies.get(template) if method != "GET" else None
    return api.request(method, path, json=body, params=params, headers=headers)


# -- the pure parts ------------------------------------------------------------------------------


def test_a_token_is_the_prefix_and_32_random_bytes_and_its_hash_is_sha256() -> None:
    one, two = tokens_module.new_token_value(), tokens_module.new_token_value()
    assert one.startswith(PREFIX)
    assert len(one) == len(PREFIX) + 43
    assert one != two
    assert hash_token(one) == hashlib.sha256(one.encode()).hexdigest() != one


def test_scopes_and_expiry_parse_or_are_refused_with_a_sentence() -> None:
    assert parse_scopes(["admin", "jobs:read", "jobs:read"]) == ("jobs:read", "admin")
    assert parse_expires("30d") == timedelta(days=30)
    assert parse_expires(" 2w ") == timedelta(weeks=2)
    assert parse_expires("12h") == timedelta(hours=12)
    with pytest.raises(UsageError, match="'jobs:delete' is unknown"):
        parse_scopes(["jobs:delete"])
    with pytest.raises(UsageError, match="at least one scope"):
        parse_scopes([])
    for text in ("0d", "30", "soon", "-1d"):
        with pytest.raises(UsageError, match="not a positive duration"):
            parse_expires(text)


def test_route_scope_matches_concrete_paths_and_closes_unknown_ones() -> None:
    assert route_scope("GET", "/v1/jobs/abc") == ("/v1/jobs/{job_id}", "jobs:read")
    assert route_scope("post", "/v1/jobs/abc/cancel") == ("/v1/jobs/{job_id}/cancel", "jobs:write")
    assert route_scope("GET", "/v1/jobs/a/b") == ("/v1/jobs/a/b", "admin")


def test_decide_as_data() -> None:
    now = utc_now()
    read = ApiToken("t1", "", ("jobs:read",), now)
    admin = ApiToken("t2", "", ("admin",), now)
    expired = ApiToken("t3", "", ("admin",), now - timedelta(days=2), expires_at=now - timedelta(seconds=1))
    revoked = ApiToken("t4", "", ("admin",), now, revoked_at=now)
    base: dict[str, Any] = {"what": "X /y", "secret": "", "given_secret": None, "now": now, "tokens_configured": True}
    assert decide("jobs:write", **{**base, "tokens_configured": False}, bearer=None, token=None) is None
    assert decide("jobs:read", **base, bearer="v", token=read) is None
    assert decide("jobs:write", **base, bearer="v", token=admin) is None
    cases = [
        ("jobs:write", "v", read, 403, "has the scopes jobs:read, but X /y needs jobs:write"),
        ("jobs:read", "v", expired, 401, "expired at"),
        ("jobs:read", "v", revoked, 401, "was revoked at"),
        ("jobs:read", "v", None, 401, "not an API token of this server"),
        ("jobs:read", None, None, 401, "needs an API token with the scope jobs:read"),
    ]
    for needed, given, token, status, words in cases:
        refusal = decide(needed, **base, bearer=given, token=token)  # type: ignore[arg-type]
        assert refusal is not None, (needed, token)
        assert (refusal.status, words in refusal.message) == (status, True), (needed, token)
    with_secret = {**base, "secret": SECRET, "tokens_configured": False}
    assert decide("admin", **{**with_secret, "given_secret": SECRET}, bearer=None, token=None) is None
    wrong = decide("jobs:read", **{**with_secret, "given_secret": "nope"}, bearer=None, token=None)
    assert wrong is not None
    assert wrong.status == 401


# -- the store ------------------------------------------------------------------------------------


def test_the_store_keeps_only_the_hash_and_finds_the_token_by_it(store: JobStore, tokens: TokenStore) -> None:
    token, value = tokens.create(["jobs:read"], name="ci", expires_in=timedelta(days=30))
    assert isinstance(store, SqlJobStore)
    with store.engine.connect() as conn:
        row = conn.execute(select(TOKENS)).one()
    assert row.token_hash == hashlib.sha256(value.reveal().encode()).hexdigest()
    assert value.reveal() not in [str(item) for item in row]
    assert repr(value) == "Secret('***')"
    assert tokens.find(value.reveal()) == token
    assert tokens.find(value.reveal() + "x") is None
    assert token.expires_at is not None
    assert token.expires_at - token.created_at == timedelta(days=30)


def test_tokens_are_compared_as_hashes_in_constant_time(tokens: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _, value = tokens.create(["jobs:read"])
    compared: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("corral.api.tokens.hmac.compare_digest", spy)
    assert tokens.find(value.reveal()) is not None
    assert compared == [(hash_token(value.reveal()), hash_token(value.reveal()))]


def test_revoking_keeps_the_row_and_the_server_closed(tokens: TokenStore) -> None:
    assert not tokens.configured()
    token, _ = tokens.create(["admin"])
    revoked = tokens.revoke(token.id)
    assert revoked.status(utc_now()) == "revoked"
    assert tokens.revoke(token.id).revoked_at == revoked.revoked_at  # twice changes nothing
    assert tokens.configured()
    assert [found.id for found in tokens.list()] == [token.id]


# -- over HTTP ------------------------------------------------------------------------------------

ALLOWED = {
    "jobs:read": {route for route, scope in ROUTE_SCOPES.items() if scope == "jobs:read"},
    "jobs:write": {route for route, scope in ROUTE_SCOPES.items() if scope == "jobs:write"},
    "admin": set(ROUTE_SCOPES),
}


@pytest.mark.parametrize("scope", SCOPES)
def test_each_scope_reaches_exactly_its_routes(
    settings: Settings, store: JobStore, tokens: TokenStore, scope: str
) -> None:
    _, value = tokens.create([scope])
    api, pool, drained = serve(settings, store)
    reached = set()
    with api:
        for method, template in ROUTE_SCOPES:
            job = pool.submit("p", REPO)
            spare, _ = tokens.create(["jobs:read"])
            response = call(api, method, template, job.id, spare.id, bearer(value.reveal()))
            assert response.status_code not in (401, 500), (method, template, response.text)
            if response.status_code == 403:
                assert response.json()["error"]["code"] == "forbidden"
                assert f"needs {ROUTE_SCOPES[(method, template)]}" in response.json()["error"]["message"]
            else:
                reached.add((method, template))
    assert reached == ALLOWED[scope]
    assert drained == ([True] if scope == "admin" else [])


def test_the_route_table_is_the_app_s_routes(settings: Settings, store: JobStore) -> None:
    api, _, _ = serve(settings, store)
    paths = api.app.openapi()["paths"]
    routes = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert set(ROUTE_SCOPES) <= routes
    assert {path for _, path in routes - set(ROUTE_SCOPES)} <= OPEN_ROUTES
    assert {"jobs:read", "jobs:write", "admin"} == set(ROUTE_SCOPES.values())


def test_without_a_credential_every_guarded_route_is_401_and_nothing_is_stored(
    settings: Settings, store: JobStore, tokens: TokenStore
) -> None:
    tokens.create(["admin"])
    api, pool, drained = serve(settings, store)
    job = pool.submit("p", REPO)
    with api:
        for method, template in ROUTE_SCOPES:
            response = call(api, method, template, job.id, "x", {})
            assert response.status_code == 401, (method, template)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        health = [api.get(path).status_code for path in ("/health", "/healthz")]
    assert [j.id for j in store.list()] == [job.id]
    assert drained == []
    assert health == [200, 200]


def test_expired_revoked_and_wrong_tokens_are_401(settings: Settings, store: JobStore, tokens: TokenStore) -> None:
    assert isinstance(store, SqlJobStore)
    admin, admin_value = tokens.create(["admin"])
    old, old_value = tokens.create(["jobs:read"], expires_in=timedelta(days=1))
    with store.engine.begin() as conn:
        conn.execute(update(TOKENS).where(TOKENS.c.id == old.id).values(expires_at=utc_now() - timedelta(seconds=1)))
    gone, gone_value = tokens.create(["jobs:read"])
    api, _, _ = serve(settings, store)
    with api:
        before = api.get("/v1/jobs", headers=bearer(gone_value.reveal()))
        revoked = api.request("DELETE", f"/v1/tokens/{gone.id}", headers=bearer(admin_value.reveal()))
        after = api.get("/v1/jobs", headers=bearer(gone_value.reveal()))
        expired = api.get("/v1/jobs", headers=bearer(old_value.reveal()))
        wrong = api.get("/v1/jobs", headers=bearer(admin_value.reveal()[:-2] + "xx"))
        basic = api.get("/v1/jobs", headers={"Authorization": f"Basic {admin_value.reveal()}"})
    assert before.status_code == 200
    assert (revoked.status_code, revoked.json()["status"]) == (200, "revoked")
    for response, words in (
        (after, f"{gone.id} was revoked"),
        (expired, f"{old.id} expired"),
        (wrong, "not an API token"),
        (basic, "not an API token"),
    ):
        assert response.status_code == 401, response.text
        assert words in response.json()["error"]["message"]
    assert admin.id not in wrong.text


def test_the_secret_still_works_beside_tokens(settings: Settings, store: JobStore, tokens: TokenStore) -> None:
    tokens.create(["jobs:read"])
    api, _, drained = serve(settings, store, secret=SECRET)
    with api:
        ok = api.post("/v1/jobs", json={"prompt": "p", "repo": REPO}, headers={"X-Runner-Secret": SECRET})
        drain = api.post("/admin/drain", headers={"X-Runner-Secret": SECRET})
        wrong = api.get("/v1/jobs", headers={"X-Runner-Secret": "nope"})
    assert (ok.status_code, drain.status_code, wrong.status_code) == (202, 202, 401)
    assert drained == [True]


def test_open_when_nothing_is_configured_and_closed_from_the_first_token(
    settings: Settings, store: JobStore, tokens: TokenStore
) -> None:
    api, _, _ = serve(settings, store)
    with api:
        open_ = api.post("/v1/jobs", json={"prompt": "p", "repo": REPO})
        made = api.post("/v1/tokens", json={"scopes": ["jobs:write"], "name": "bot", "expires": "1d"})
        closed = api.post("/v1/jobs", json={"prompt": "p", "repo": REPO})
        value = made.json()["token"]
        with_token = api.post("/v1/jobs", json={"prompt": "p", "repo": REPO}, headers=bearer(value))
        listed = api.get("/v1/tokens", headers=bearer(value))
    assert (open_.status_code, made.status_code, closed.status_code, with_token.status_code) == (202, 201, 401, 202)
    assert listed.status_code == 403  # jobs:write does not manage tokens
    stored = tokens.list()
    assert [(t.id, t.name, t.scopes) for t in stored] == [(made.json()["id"], "bot", ("jobs:write",))]
    assert stored[0].last_used_at is not None
    assert made.json()["expires_at"] is not None


def test_listing_tokens_never_shows_a_value_or_a_hash(settings: Settings, store: JobStore, tokens: TokenStore) -> None:
    _, value = tokens.create(["admin"], name="root")
    api, _, _ = serve(settings, store)
    with api:
        listed = api.get("/v1/tokens", headers=bearer(value.reveal()))
    assert listed.status_code == 200
    assert [token["name"] for token in listed.json()["tokens"]] == ["root"]
    assert value.reveal() not in listed.text
    assert hash_token(value.reveal()) not in listed.text
