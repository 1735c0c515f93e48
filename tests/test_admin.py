"""The admin endpoints over an in-memory backend: keys, validation, reload, status and metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from bot.interface import Finished, PromptRequest, Queued, ReplyEvent
from bot.mock import MockBackend
from bot.status import BackendStatus, ModelStatus, QueueStatus, TokenReport, TokenState
from bot.token_pool import fingerprint
from bridge_api.app import make_app, serving
from bridge_api.settings import ConfigError, load_settings
from simdiscord import SimulatedDiscord
from simdiscord.png import solid_png
from tests.conftest import Bridge, BridgeFactory

ADMIN_KEY = "sk-admin-0123456789"
CALLER_KEY = "sk-caller-0123456789"
DISCORD = '[discord]\nbot_token = "b"\nguild_id = 1\ncoze_bot_id = 2\nchannel_id = 3\n'
MODELS = (
    '[[models]]\nname = "alpha"\ncoze_bot_id = 11\nchannel_id = 21\n'
    '[[models]]\nname = "beta"\ncoze_bot_id = 12\nchannel_id = 22\n'
)
SINCE = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def api_section(**api: object) -> str:
    return "[api]\n" + "".join(f"{name} = {json.dumps(value)}\n" for name, value in api.items())


def token(
    label: str, token_id: str, state: TokenState = TokenState.HEALTHY, in_flight: int = 0
) -> TokenReport:
    return TokenReport(
        id=token_id,
        label=label,
        state=state,
        since=SINCE,
        reason=None,
        resting_until=None,
        resting_models={},
        in_flight=in_flight,
        max_in_flight=2,
        posts_today=3,
        daily_cap=50,
    )


class StatusBackend(MockBackend):
    """The mock, also reporting models' statuses (its own reports none)."""

    model_statuses: tuple[ModelStatus, ...] = ()
    state_since: datetime | None = None

    def status(self) -> BackendStatus:
        return replace(super().status(), models=self.model_statuses, state_since=self.state_since)


async def fine(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
    yield Finished("stop", "fine")


@dataclass
class Admin:
    base: str
    backend: StatusBackend
    config: Path
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, key: str | None = ADMIN_KEY, **kwargs: Any
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json(), resp.headers


@contextlib.asynccontextmanager
async def admin_bridge(
    folder: Path, text: str, handler: Any = fine, models: tuple[str, ...] = ("coze",)
) -> AsyncIterator[Admin]:
    """The app over a mock backend, with settings read (and re-read on reload) from a file."""
    config = folder / "bridge.toml"
    config.write_text(text)
    load = functools.partial(load_settings, config, environ={})
    backend = StatusBackend(handler, models=models)
    backend.tokens = [token("alice", "a1b2c3d4e5f60718"), token("bob", "0f1e2d3c4b5a6978", in_flight=1)]
    async with (
        serving(make_app(load(), 0, backend=backend, reload=load)) as (_, port),
        aiohttp.ClientSession() as http,
    ):
        yield Admin(f"http://127.0.0.1:{port}", backend, config, http)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_the_admin_key_opens_by_bearer_or_basic_and_nothing_else_does(tmp_path: Path) -> None:
    text = DISCORD + api_section(keys=[CALLER_KEY], admin_keys=[ADMIN_KEY])
    async with admin_bridge(tmp_path, text) as admin:
        status, body, _ = await admin.call("GET", "/admin/tokens")
        assert status == 200
        assert [t["label"] for t in body["tokens"]] == ["alice", "bob"]
        assert body["tokens"][1] | {"since": None} == {
            "id": "0f1e2d3c4b5a6978",
            "label": "bob",
            "state": "healthy",
            "since": None,
            "reason": None,
            "resting_until": None,
            "resting_models": {},
            "in_flight": 1,
            "max_in_flight": 2,
            "posts_today": 3,
            "daily_cap": 50,
            "holders": {},
        }
        for user in ("admin", "", "anyone at all"):
            status, _, _ = await admin.call("GET", "/admin/tokens", key=None, headers=basic(user, ADMIN_KEY))
            assert status == 200, f"Basic with user {user!r}"

        refusals: list[dict[str, str]] = [
            {},
            {"Authorization": f"Bearer {CALLER_KEY}"},  # a caller's key is no admin key
            {"Authorization": f"Bearer {ADMIN_KEY}x"},
            basic("admin", CALLER_KEY),
            {"Authorization": "Basic not-base64!"},
            {"Authorization": "Basic " + base64.b64encode(b"no colon").decode()},
            {"Authorization": "Basic " + base64.b64encode(b"u:\xff\xfe").decode()},
            {"Authorization": f"Token {ADMIN_KEY}"},
            {"proxy-secret": ADMIN_KEY},  # the callers' alternative header is not read here
        ]
        for headers in refusals:
            status, body, resp_headers = await admin.call("GET", "/admin/tokens", key=None, headers=headers)
            assert status == 401, headers
            assert resp_headers["WWW-Authenticate"] == 'Basic realm="coze-bridge admin"'
            assert body["error"]["type"] == "invalid_request_error"
            assert body["error"]["code"] == "invalid_admin_key"
            assert ADMIN_KEY not in json.dumps(body)

        # An admin key opens nothing of the callers' API.
        status, body, _ = await admin.call("GET", "/v1/models", key=ADMIN_KEY)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        assert (await admin.call("GET", "/v1/models", key=CALLER_KEY))[0] == 200


async def test_without_admin_keys_the_endpoints_are_off_and_say_which_setting(tmp_path: Path) -> None:
    async with admin_bridge(tmp_path, DISCORD + api_section(keys=[CALLER_KEY])) as admin:
        calls = [
            ("GET", "/admin/tokens", {}),
            ("PATCH", "/admin/tokens/a1b2c3d4e5f60718", {"json": {"enabled": False}}),
            ("POST", "/admin/tokens/a1b2c3d4e5f60718/check", {}),
            ("POST", "/admin/reload", {}),
        ]
        for method, path, kwargs in calls:
            for key in (CALLER_KEY, "", None):
                status, body, _ = await admin.call(method, path, key=key, **kwargs)
                assert status == 403, (method, path)
                assert body["error"]["code"] == "admin_disabled"
                assert "api.admin_keys" in body["error"]["message"]
        assert admin.backend.tokens[0].state is TokenState.HEALTHY
        assert admin.backend.configs == []


@pytest.mark.parametrize(
    "body",
    [
        {"enabled": "false"},
        {"enabled": 0},
        {"enabled": None},
        {},
        {"enabled": False, "reason": "no"},
        [{"enabled": False}],
        "enabled",
        b"{not json",
    ],
    ids=repr,
)
async def test_a_patch_takes_only_enabled_true_or_false(tmp_path: Path, body: object) -> None:
    async with admin_bridge(tmp_path, DISCORD + api_section(admin_keys=[ADMIN_KEY])) as admin:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, answer, _ = await admin.call(
            "PATCH", "/admin/tokens/a1b2c3d4e5f60718", data=data, headers={"Content-Type": "application/json"}
        )
        assert status == 400
        assert answer["error"]["type"] == "invalid_request_error"
        assert admin.backend.tokens[0].state is TokenState.HEALTHY


async def test_a_patch_turns_a_token_off_and_on_and_an_unknown_id_is_404(tmp_path: Path) -> None:
    async with admin_bridge(tmp_path, DISCORD + api_section(admin_keys=[ADMIN_KEY])) as admin:
        path = "/admin/tokens/a1b2c3d4e5f60718"
        status, body, _ = await admin.call("PATCH", path, json={"enabled": False})
        assert status == 200
        assert (body["id"], body["state"], body["reason"]) == (
            "a1b2c3d4e5f60718",
            "disabled",
            "disabled by an admin",
        )
        tokens = (await admin.call("GET", "/admin/tokens"))[1]["tokens"]
        assert [t["state"] for t in tokens] == ["disabled", "healthy"]
        status, body, _ = await admin.call("PATCH", path, json={"enabled": True})
        assert (status, body["state"], body["reason"]) == (200, "healthy", None)

        status, body, _ = await admin.call("POST", "/admin/tokens/0f1e2d3c4b5a6978/check")
        assert (status, body["label"]) == (200, "bob")

        for method, unknown, kwargs in [
            ("PATCH", "/admin/tokens/ffffffffffffffff", {"json": {"enabled": False}}),
            ("POST", "/admin/tokens/ffffffffffffffff/check", {}),
        ]:
            status, body, _ = await admin.call(method, unknown, **kwargs)
            assert status == 404
            assert unknown.split("/")[3] not in body["error"]["message"], (
                "an id (a pasted token?) is not echoed"
            )
            assert body["error"] | {"message": ""} == {
                "message": "",
                "type": "invalid_request_error",
                "param": None,
                "code": "token_not_found",
            }


async def test_admin_routes_are_not_rate_limited_nor_open_to_other_origins(tmp_path: Path) -> None:
    text = DISCORD + api_section(keys=[CALLER_KEY], admin_keys=[ADMIN_KEY], rate_limit_per_minute=1)
    async with admin_bridge(tmp_path, text) as admin:
        for _ in range(4):
            assert (await admin.call("GET", "/admin/tokens"))[0] == 200
            assert (await admin.call("POST", "/admin/tokens/a1b2c3d4e5f60718/check"))[0] == 200
        origin = {"Origin": "https://elsewhere.example"}
        status, _, headers = await admin.call("GET", "/admin/tokens", headers=origin)
        assert status == 200
        assert "Access-Control-Allow-Origin" not in headers
        preflight = origin | {"Access-Control-Request-Method": "PATCH"}
        async with admin.http.options(admin.base + "/admin/tokens/x", headers=preflight) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
        # A page elsewhere cannot trigger a reload with a form post (no preflight for those).
        async with admin.http.post(
            admin.base + "/admin/reload",
            data="a=b",
            headers=origin | {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "text/plain"},
        ) as resp:
            assert resp.status == 415
        assert admin.backend.configs == []
        # The callers' routes still carry CORS.
        status, _, headers = await admin.call("GET", "/v1/models", key=CALLER_KEY, headers=origin)
        assert headers["Access-Control-Allow-Origin"] == "*"


async def test_reload_applies_a_good_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    first = DISCORD + MODELS + api_section(keys=[CALLER_KEY], admin_keys=[ADMIN_KEY])
    async with admin_bridge(tmp_path, first, models=("alpha", "beta")) as admin:
        admin.config.write_text(
            DISCORD.replace("guild_id = 1", "guild_id = 5")
            + '[[models]]\nname = "gamma"\ncoze_bot_id = 13\nchannel_id = 23\n'
            + api_section(keys=["sk-new-caller"], admin_keys=[ADMIN_KEY])
            + "[accounts]\nmax_in_flight = 3\n[completion]\nquiet_seconds = 2.0\n"
        )
        status, body, _ = await admin.call("POST", "/admin/reload")
        assert status == 200
        assert body == {"reloaded": True, "restart_needed": ["discord.guild_id", "completion"]}
        [config] = admin.backend.configs
        assert [model.name for model in config.model_routes] == ["gamma"]
        assert config.accounts.max_in_flight == 3
        assert config.discord.guild_id == 1, "the guild waits for a restart"
        assert config.completion.quiet_seconds == 4.0
        # The new keys and models are in force at once.
        assert (await admin.call("GET", "/v1/models", key=CALLER_KEY))[0] == 401
        status, models, _ = await admin.call("GET", "/v1/models", key="sk-new-caller")
        assert [model["id"] for model in models["data"]] == ["gamma", "bridge-health"]

        admin.config.write_text(DISCORD + api_section(keys="sk-as-a-string", admin_keys=[ADMIN_KEY]))
        status, body, _ = await admin.call("POST", "/admin/reload")
        assert status == 400
        assert body["error"]["code"] == "invalid_settings"
        assert "api.keys" in body["error"]["message"]
        assert "sk-as-a-string" not in body["error"]["message"]
        assert len(admin.backend.configs) == 1, "the backend never saw the bad file"
        assert (await admin.call("GET", "/v1/models", key="sk-new-caller"))[0] == 200

        # A file that would leave no model while the [discord] bot waits for a restart.
        admin.config.write_text(
            '[discord]\nbot_token = "b"\nguild_id = 5\n' + api_section(admin_keys=[ADMIN_KEY])
        )
        status, body, _ = await admin.call("POST", "/admin/reload")
        assert status == 400
        admin.config.unlink()
        status, body, _ = await admin.call("POST", "/admin/reload")
        assert status == 400
        assert "cannot read config file" in body["error"]["message"]
        assert len(admin.backend.configs) == 1


async def test_reload_without_a_source_to_read_is_refused() -> None:
    discord = {"bot_token": "b", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3}
    settings = load_settings(environ={}, discord=discord, api={"admin_keys": [ADMIN_KEY]})
    backend = MockBackend(fine)
    async with serving(make_app(settings, 0, backend=backend)) as (_, port), aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with http.post(f"http://127.0.0.1:{port}/admin/reload", headers=headers) as resp:
            assert resp.status == 400
            assert "no file or environment" in (await resp.json())["error"]["message"]
    assert backend.configs == []


async def test_a_request_keeps_its_model_when_a_reload_reorders_them_while_it_waits(tmp_path: Path) -> None:
    """The route is read again by name right before the backend takes the request."""
    release = asyncio.Event()
    fetched = asyncio.Event()

    async def image(request: web.Request) -> web.Response:
        fetched.set()
        await release.wait()
        return web.Response(body=solid_png(1, 1, (1, 2, 3)), content_type="image/png")

    served: list[str] = []
    backend_ref: list[MockBackend] = []

    async def record(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        served.append(backend_ref[0].models[request.route].name)
        yield Finished("stop", "fine")

    images = web.Application()
    images.router.add_get("/cat.png", image)
    text = (
        DISCORD + MODELS + api_section(admin_keys=[ADMIN_KEY]) + "[images]\nallow_private_networks = true\n"
    )
    async with (
        serving(images) as (_, image_port),
        admin_bridge(tmp_path, text, handler=record, models=("alpha", "beta")) as admin,
    ):
        backend_ref.append(admin.backend)
        parts = [{"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{image_port}/cat.png"}}]
        for stream in (False, True):
            fetched.clear()
            release.clear()
            body = {"model": "beta", "stream": stream, "messages": [{"role": "user", "content": parts}]}
            asked = asyncio.ensure_future(admin.http.post(admin.base + "/v1/chat/completions", json=body))
            async with asyncio.timeout(10):
                await fetched.wait()
            # beta moves to the front while the request waits for its image.
            order = ("beta", "alpha") if not stream else ("alpha", "beta")
            admin.config.write_text(
                DISCORD
                + "".join(
                    f'[[models]]\nname = "{name}"\ncoze_bot_id = {11 + i}\nchannel_id = {21 + i}\n'
                    for i, name in enumerate(order)
                )
                + api_section(admin_keys=[ADMIN_KEY])
                + "[images]\nallow_private_networks = true\n"
            )
            assert (await admin.call("POST", "/admin/reload"))[0] == 200
            release.set()
            async with asyncio.timeout(10):
                resp = await asked
            async with resp:
                assert resp.status == 200
                await resp.read()
        assert served == ["beta", "beta"]


async def test_status_shows_the_queue_state_since_and_tokens_available(tmp_path: Path) -> None:
    text = DISCORD + api_section(admin_keys=[ADMIN_KEY])
    async with admin_bridge(tmp_path, text) as admin:
        admin.backend.queue = QueueStatus(length=7, limit=100, full_since=SINCE)
        admin.backend.state_since = SINCE
        admin.backend.model_statuses = (ModelStatus("coze", None, tokens_available=2),)
        status, body, _ = await admin.call("GET", "/v1/status", key=None)
        assert status == 200
        assert body["queue"] == {"length": 7, "limit": 100, "full_since": "2026-12-01T08:30:00+00:00"}
        assert body["state_since"] == "2026-12-01T08:30:00+00:00"
        assert body["models"] == [{"name": "coze", "resting_until": None, "tokens_available": 2}]
        assert [t["since"] for t in body["tokens"]] == ["2026-12-01T08:30:00+00:00"] * 2
        assert body["tokens"] == (await admin.call("GET", "/admin/tokens"))[1]["tokens"]
        admin.backend.queue = QueueStatus(length=0, limit=100)
        admin.backend.state_since = None
        _, body, _ = await admin.call("GET", "/v1/status", key=None)
        assert body["queue"]["full_since"] is None
        assert body["state_since"] is None


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_metrics_show_the_queue_and_each_tokens_in_flight_and_forget_removed_tokens(
    tmp_path: Path,
) -> None:
    async with admin_bridge(tmp_path, DISCORD) as admin:
        backend = admin.backend
        backend.queue = QueueStatus(length=5, limit=100)
        backend.tokens = [
            token("alice", "1" * 16, in_flight=2),
            token("bob", "2" * 16, TokenState.CAPPED),
            token("carol", "3" * 16, TokenState.RETIRING, in_flight=1),
            token("dave", "4" * 16, TokenState.DISABLED),
        ]

        async def scrape() -> str:
            async with admin.http.get(admin.base + "/metrics") as resp:
                assert resp.status == 200
                return await resp.text()

        text = await scrape()
        assert samples(text, "coze_bridge_queue_length") == {(): 5.0}
        assert samples(text, "coze_bridge_token_in_flight") == {
            (("token", "alice"),): 2.0,
            (("token", "bob"),): 0.0,
            (("token", "carol"),): 1.0,
            (("token", "dave"),): 0.0,
        }
        by_state = {labels[0][1]: value for labels, value in samples(text, "coze_bridge_user_tokens").items()}
        assert by_state == {
            "healthy": 1.0,
            "resting": 0.0,
            "capped": 1.0,
            "invalid": 0.0,
            "disabled": 1.0,
            "retiring": 1.0,
        }
        # carol finished her prompts and left the pool; the queue drained.
        backend.tokens = [backend.tokens[0], backend.tokens[1], backend.tokens[3]]
        backend.queue = QueueStatus(length=0, limit=100)
        text = await scrape()
        assert samples(text, "coze_bridge_queue_length") == {(): 0.0}
        assert (("token", "carol"),) not in samples(text, "coze_bridge_token_in_flight")
        assert len(samples(text, "coze_bridge_token_in_flight")) == 3
        assert samples(text, "coze_bridge_user_tokens")[(("state", "retiring"),)] == 0.0


async def test_a_waiting_stream_hears_how_many_wait_before_it(tmp_path: Path) -> None:
    async def waits(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        yield Queued(ahead=2)
        yield Queued(ahead=0)
        yield Queued()
        yield Finished("stop", "served")

    async with admin_bridge(tmp_path, DISCORD, handler=waits) as admin:
        body = {"model": "coze", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with admin.http.post(admin.base + "/v1/chat/completions", json=body) as resp:
            raw = (await resp.read()).decode()
    comments = [frame for frame in raw.split("\n\n") if frame.startswith(":")]
    assert comments == [": queued, 2 ahead", ": queued, 0 ahead", ": queued"]
    assert raw.endswith("data: [DONE]\n\n")


# End to end: the real backend on the simulated Discord.


async def admin_call(bridge: Bridge, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with bridge.http.request(method, bridge.base_url + path, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


async def ask(bridge: Bridge, text: str) -> None:
    body = {"model": "coze", "messages": [{"role": "user", "content": text}]}
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def test_an_admin_disable_holds_across_a_restart(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    off = sim.user_tokens[0]
    token_id = fingerprint(off)
    bridge: Bridge = await start_bridge(api={"admin_keys": [ADMIN_KEY]})
    status, body = await admin_call(bridge, "PATCH", f"/admin/tokens/{token_id}", json={"enabled": False})
    assert status == 200
    assert (body["state"], body["reason"]) == ("disabled", "disabled by an admin")
    for n in range(4):
        await ask(bridge, f"while off {n}")
    assert sim.prompts_by(off) == []
    await bridge.stop()

    restarted: Bridge = await start_bridge(api={"admin_keys": [ADMIN_KEY]})
    status, body = await admin_call(restarted, "GET", "/admin/tokens")
    states = {token["id"]: (token["state"], token["reason"]) for token in body["tokens"]}
    assert states[token_id] == ("disabled", "disabled by an admin")
    assert [state for state, _ in states.values()].count("healthy") == 2
    await ask(restarted, "after the restart")
    assert sim.prompts_by(off) == []

    status, body = await admin_call(restarted, "PATCH", f"/admin/tokens/{token_id}", json={"enabled": True})
    assert (status, body["state"]) == (200, "healthy")
    for n in range(6):
        await ask(restarted, f"back on {n}")
    assert sim.prompts_by(off), "least busy, then fewest posts today: the token back on is chosen"


async def test_a_check_finds_a_token_revoked_in_discord(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    revoked = sim.user_tokens[1]
    token_id = fingerprint(revoked)
    bridge: Bridge = await start_bridge(api={"admin_keys": [ADMIN_KEY]})
    status, body = await admin_call(bridge, "POST", f"/admin/tokens/{token_id}/check")
    assert (status, body["state"]) == (200, "healthy")
    posts = len(sim.prompts_received)
    sim.revoke_token(revoked)
    status, body = await admin_call(bridge, "POST", f"/admin/tokens/{token_id}/check")
    assert status == 200
    assert body["state"] == "invalid"
    assert "401" in body["reason"]
    assert len(sim.prompts_received) == posts, "a check posts nothing"
    status, body = await admin_call(bridge, "POST", "/admin/tokens/0000000000000000/check")
    assert (status, body["error"]["code"]) == (404, "token_not_found")
    async with bridge.http.get(f"{bridge.base_url}/v1/status") as resp:
        shown = {token["id"]: token["state"] for token in (await resp.json())["tokens"]}
    assert shown[token_id] == "invalid"
    for n in range(3):
        await ask(bridge, f"after the revocation {n}")
    assert sim.prompts_by(revoked) == []


def test_an_admin_key_may_not_be_a_callers_key() -> None:
    with pytest.raises(ConfigError, match="admin key may not also be a caller's key") as refused:
        load_settings(
            environ={},
            discord={"bot_token": "b", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3},
            api={"keys": ["sk-same"], "admin_keys": ["sk-same"]},
        )
    assert "sk-same" not in str(refused.value)
