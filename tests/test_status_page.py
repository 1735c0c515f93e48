"""The status page: its keys, headers and files and the overview it polls (over MockBackend), then
the page itself in Debian's chromium, driven by Playwright, against a bridge on the simulated Discord.

Without chromium or the playwright package the browser tests fail (the README's test command and
.ci/run install both). They save the page's screenshots into docs/.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.interface import Finished, PromptRequest, ReplyEvent, TextDelta
from bot.mock import MockBackend
from bot.status import BackendStatus, ModelStatus
from bot.token_pool import fingerprint
from bridge_api.app import make_app, serving
from bridge_api.middleware import key_fingerprint
from bridge_api.settings import load_settings
from simdiscord import SimulatedDiscord
from tests.conftest import BridgeFactory
from tests.test_admin import basic, token

ADMIN_KEY = "sk-admin-page-0123456789"
CALLER_KEY = "sk-caller-page-0123456789"
DISCORD = '[discord]\nbot_token = "b"\nguild_id = 1\ncoze_bot_id = 2\nchannel_id = 3\n'
CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"
# Text a caller or the settings may dictate, which the page must show as text.
MARKUP = "<img src=x> alice"
RESTING = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CALLER = {"Authorization": f"Bearer {CALLER_KEY}"}
PAGE_FILES = (
    "/",
    "/admin/overview",
    "/admin/static/page.js",
    "/admin/static/page.css",
    "/admin/static/icon.svg",
)


class StatusBackend(MockBackend):
    """The mock, also reporting models' statuses (its own reports none)."""

    model_statuses: tuple[ModelStatus, ...] = ()

    def status(self) -> BackendStatus:
        return replace(super().status(), models=self.model_statuses)


async def streamed(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
    yield TextDelta("fi")
    yield Finished("stop", "fine")


def write_settings(folder: Path, **api: object) -> Path:
    config = folder / "bridge.toml"
    settings = {"keys": [CALLER_KEY], "admin_keys": [ADMIN_KEY]} | api
    config.write_text(DISCORD + "[api]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return config


@contextlib.asynccontextmanager
async def page_bridge(folder: Path, **api: object) -> AsyncIterator[tuple[str, StatusBackend]]:
    """An app over the mock backend, its settings read (and re-read on reload) from a file."""
    load = functools.partial(load_settings, write_settings(folder, **api), environ={})
    backend = StatusBackend(streamed, models=("coze", "beta"))
    backend.tokens = [token(MARKUP, "a1b2c3d4e5f60718"), token("bob", "0f1e2d3c4b5a6978", in_flight=1)]
    backend.model_statuses = (
        ModelStatus("coze", None, tokens_available=2),
        ModelStatus("beta", None),
        ModelStatus("gamma", RESTING, tokens_available=1),
    )
    async with serving(make_app(load(), 0, backend=backend, reload=load)) as (_, port):
        yield f"http://127.0.0.1:{port}", backend


async def fetch(
    base: str, path: str, method: str = "GET", **kwargs: Any
) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(method, base + path, **kwargs) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


# --- keys, headers and files ------------------------------------------------------------------


async def test_the_page_opens_to_an_admin_key_by_basic_or_bearer_and_asks_the_browser_otherwise(
    tmp_path: Path,
) -> None:
    async with page_bridge(tmp_path, cors_origins=["*"]) as (base, _):
        for path in PAGE_FILES:
            for refused in ({}, CALLER, basic("admin", "wrong")):
                status, body, headers = await fetch(base, path, headers=refused)
                assert status == 401, (path, refused)
                assert headers["WWW-Authenticate"].startswith("Basic ")  # so a browser asks
                assert json.loads(body)["error"]["code"] == "invalid_admin_key"
            for opening in (ADMIN, basic("anyone", ADMIN_KEY)):
                status, body, headers = await fetch(
                    base, path, headers=opening | {"Origin": "https://x.test"}
                )
                assert status == 200, (path, opening)
                policy = headers["Content-Security-Policy"]
                assert "script-src 'self'" in policy
                assert "frame-ancestors 'none'" in policy
                assert "unsafe" not in policy
                assert headers["X-Frame-Options"] == "DENY"
                assert headers["Cache-Control"] == "no-store"
                assert "Access-Control-Allow-Origin" not in headers  # no other origin reads it

        status, page, headers = await fetch(base, "/", headers=ADMIN)
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert b'<script src="admin/static/page.js" defer></script>' in page
        assert b"<script>" not in page
        assert b"http" not in page.replace(b"http://www.w3.org", b"")
        for name, kind in (
            ("page.js", "text/javascript"),
            ("page.css", "text/css"),
            ("icon.svg", "image/svg+xml"),
        ):
            status, body, headers = await fetch(base, f"/admin/static/{name}", headers=ADMIN)
            assert headers["Content-Type"].startswith(kind)
            assert body == (Path(__file__).parent.parent / "bridge_api" / "static" / name).read_bytes()
        for unknown in ("index.htm", "..%2fpage.py", "..%2f__init__.py", "page.js%00"):
            status, body, _ = await fetch(base, f"/admin/static/{unknown}", headers=ADMIN)
            assert status == 404, unknown
            assert b"import" not in body


async def test_without_admin_keys_the_page_is_off_and_says_which_setting(tmp_path: Path) -> None:
    async with page_bridge(tmp_path, admin_keys=[]) as (base, _):
        for path in PAGE_FILES:
            for headers in ({}, CALLER, ADMIN):
                status, body, _ = await fetch(base, path, headers=headers)
                assert status == 403, path
                error = json.loads(body)["error"]
                assert error["code"] == "admin_disabled"
                assert "api.admin_keys" in error["message"]


async def test_status_page_false_answers_404_and_leaves_the_admin_endpoints(tmp_path: Path) -> None:
    async with page_bridge(tmp_path) as (base, _):
        assert (await fetch(base, "/", headers=ADMIN))[0] == 200
        # Turned off by a reload, as by a restart.
        write_settings(tmp_path, status_page=False)
        assert (await fetch(base, "/admin/reload", "POST", headers=ADMIN))[0] == 200
        for path in PAGE_FILES:
            for headers in ({}, ADMIN):
                status, body, _ = await fetch(base, path, headers=headers)
                assert status == 404, path
                assert "api.status_page" in json.loads(body)["error"]["message"]
        assert (await fetch(base, "/admin/tokens", headers=ADMIN))[0] == 200


# --- the overview -----------------------------------------------------------------------------


async def test_the_overview_holds_the_pool_the_models_and_the_callers_requests_only(tmp_path: Path) -> None:
    async with page_bridge(tmp_path) as (base, backend):
        chat = {"model": "coze", "messages": [{"role": "user", "content": "hi"}]}
        assert (await fetch(base, "/v1/chat/completions", "POST", json=chat, headers=CALLER))[0] == 200
        long_model = "<b>" + "m" * 5000 + "\n"
        bad = chat | {"model": long_model}
        assert (await fetch(base, "/v1/chat/completions", "POST", json=bad, headers=CALLER))[0] == 404
        assert (await fetch(base, "/v1/models", headers={"Authorization": "Bearer sk-wrong"}))[0] == 401
        # The operator's own traffic is not the callers': none of it is kept.
        for path in ("/healthz", "/readyz", "/metrics", "/admin/tokens", "/", "/admin/overview"):
            await fetch(base, path, headers=ADMIN)
        await fetch(
            base,
            "/v1/models",
            "OPTIONS",
            headers={"Origin": "https://x.test", "Access-Control-Request-Method": "GET"},
        )

        status, raw, _ = await fetch(base, "/admin/overview", headers=ADMIN)
        assert status == 200
        assert CALLER_KEY.encode() not in raw
        assert b"sk-wrong" not in raw
        body = json.loads(raw)
        unauthorised, not_found, answered = body["requests"]  # newest first
        assert answered | {"at": None, "duration_seconds": None} == {
            "at": None,
            "method": "POST",
            "path": "/v1/chat/completions",
            "status": 200,
            "code": None,
            "key": key_fingerprint(CALLER_KEY),
            "model": "coze",
            "first_token_seconds": answered["first_token_seconds"],
            "duration_seconds": None,
            "continued": False,  # the mock's answers start no conversation of their own
        }
        assert 0 <= answered["first_token_seconds"] <= answered["duration_seconds"]
        assert (not_found["status"], not_found["code"]) == (404, "model_not_found")
        assert not_found["model"] == "<b>" + "m" * 197 + "..."  # cut as the access line cuts it
        assert (unauthorised["status"], unauthorised["code"]) == (401, "invalid_api_key")
        assert unauthorised["key"] == key_fingerprint("sk-wrong")
        assert unauthorised["model"] is None
        assert unauthorised["first_token_seconds"] is None

        assert len(body["minutes"]) == 60
        now = body["minutes"][-1]
        assert (now["requests"], now["errors"]) == (3, 2)
        assert now["first_token_mean"] == now["first_token_max"] == answered["first_token_seconds"]

        assert body["gateway"] == {"state": "ready", "since": None, "message_content_missing": False}
        assert [(t["label"], t["id"], t["in_flight"]) for t in body["tokens"]] == [
            (MARKUP, "a1b2c3d4e5f60718", 0),
            ("bob", "0f1e2d3c4b5a6978", 1),
        ]
        assert body["models"] == [
            {"name": "coze", "state": "ready", "resting_until": None, "tokens_available": 2},
            {"name": "beta", "state": "no tokens", "resting_until": None, "tokens_available": 0},
            {
                "name": "gamma",
                "state": "resting",
                "resting_until": RESTING.isoformat(),
                "tokens_available": 1,
            },
        ]
        assert body["queue"] == {"length": 0, "limit": 0, "full_since": None}
        assert (body["open_streams"], body["open_replies"]) == (0, 0)
        assert backend.requests[0].model == "coze"


# --- in a browser -----------------------------------------------------------------------------


def require_browser() -> None:
    missing = [
        what
        for what, there in (
            ("the Python package playwright", importlib.util.find_spec("playwright") is not None),
            (str(CHROMIUM), os.access(CHROMIUM, os.X_OK)),
        )
        if not there
    ]
    if missing:
        # A missing browser fails the test: a skipped one would pass without proving anything.
        pytest.fail(
            f"the browser tests need {' and '.join(missing)} (the README's test command installs them)"
        )


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    require_browser()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)  # the page polls every 3 s
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(browser: Any, url: str, width: int = 1280) -> tuple[Any, list[str]]:
    """A page signed in with the admin key, and the list its console errors go into."""
    context = await browser.new_context(
        http_credentials={"username": "admin", "password": ADMIN_KEY},
        viewport={"width": width, "height": 900},
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    response = await page.goto(url)
    assert response is not None
    assert response.status == 200
    return page, problems


async def admin_tokens(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    async with http.get(base + "/admin/tokens", headers=ADMIN) as resp:
        assert resp.status == 200
        return {entry["id"]: entry for entry in (await resp.json())["tokens"]}


async def test_the_page_in_chromium_shows_the_pool_and_requests_and_drives_a_token(
    browser: Any, sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    from playwright.async_api import expect

    one, two = sim.user_tokens[:2]
    bridge = await start_bridge(
        api={"keys": [CALLER_KEY], "admin_keys": [ADMIN_KEY]},
        discord={"user_tokens": [{"token": one, "label": MARKUP}, {"token": two, "label": "bob"}]},
    )
    page, problems = await open_page(browser, bridge.base_url + "/")
    await expect(page.locator("#gateway-state")).to_have_text("ready")
    tokens = await admin_tokens(bridge.http, bridge.base_url)
    assert set(tokens) == {fingerprint(one), fingerprint(two)}
    for token_id, entry in tokens.items():
        row = page.locator(f'tr[data-token="{token_id}"]')
        await expect(row).to_contain_text(entry["label"])
        await expect(row).to_contain_text("healthy")
    assert await page.locator("#tokens img").count() == 0  # the label is text, not markup

    # Requests made while the page is open show up without a reload.
    async with bridge.openai(api_key=CALLER_KEY) as client:
        await client.chat.completions.create(model="coze", messages=[{"role": "user", "content": "hello"}])
        stream = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": "hello again"}], stream=True
        )
        async for _ in stream:
            pass
    async with bridge.http.post(
        bridge.base_url + "/v1/chat/completions",
        json={"model": "<b>bold</b>", "messages": [{"role": "user", "content": "hi"}]},
        headers=CALLER,
    ) as resp:
        assert resp.status == 404
    rows = page.locator("#requests tr")
    await expect(rows).to_have_count(3)
    await expect(rows.nth(0)).to_contain_text("<b>bold</b>")
    await expect(rows.nth(0)).to_contain_text("404 model_not_found")
    for answered in (rows.nth(1), rows.nth(2)):
        await expect(answered).to_contain_text("POST /v1/chat/completions")
        await expect(answered).to_contain_text(key_fingerprint(CALLER_KEY))
        await expect(answered).to_contain_text("200")
    assert await page.locator("#requests b").count() == 0
    await expect(page.locator("#hour-requests")).to_have_text("3")
    await expect(page.locator("#rpm-chart rect.ok")).to_have_count(1)
    await expect(page.locator("#ttft-chart circle.dot")).to_have_count(1)
    assert CALLER_KEY not in await page.content()

    # "Disable" turns the token off, as the API confirms; "Check now" asks Discord about the other.
    row = page.locator(f'tr[data-token="{fingerprint(one)}"]')
    await row.get_by_role("button", name="Disable").click()
    await expect(row.get_by_role("button", name="Enable")).to_be_visible()
    await expect(row).to_contain_text("disabled")
    assert (await admin_tokens(bridge.http, bridge.base_url))[fingerprint(one)]["state"] == "disabled"
    await page.locator(f'tr[data-token="{fingerprint(two)}"]').get_by_role("button", name="Check now").click()
    await expect(page.locator("#message")).to_have_text("Checked bob.")

    await page.screenshot(path=DOCS / "status-page-1280.png", full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    # The charts are redrawn for the new width before the shot.
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.chart')].every(box => "
        "Number(box.querySelector('svg').getAttribute('width')) === Math.max(box.clientWidth, 200))"
    )
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off
    lefts = await page.evaluate("[...document.querySelectorAll('.card')].map(c => c.offsetLeft)")
    assert len(set(lefts)) == 1  # one column
    await page.screenshot(path=DOCS / "status-page-390.png", full_page=True)

    await row.get_by_role("button", name="Enable").click()
    await expect(row.get_by_role("button", name="Disable")).to_be_visible()
    assert (await admin_tokens(bridge.http, bridge.base_url))[fingerprint(one)]["state"] == "healthy"
    assert problems == []


async def test_in_chromium_a_wrong_password_gets_401_and_reload_posts_json(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import Error, expect

    async with page_bridge(tmp_path) as (base, backend):
        # A wrong password, as typed into the login prompt: the 401 page.
        context = await browser.new_context(http_credentials={"username": "admin", "password": "wrong"})
        response = await (await context.new_page()).goto(base + "/")
        assert response is not None
        assert response.status == 401
        await context.close()
        # No password: the challenge that makes a browser ask. Headless, there is no prompt to
        # show, and Playwright ends the navigation with an error instead of the 401 page.
        context = await browser.new_context()
        page = await context.new_page()
        async with page.expect_response(base + "/") as answer:
            with contextlib.suppress(Error):
                await page.goto(base + "/")
        challenge = await answer.value
        assert challenge.status == 401
        assert (await challenge.header_value("www-authenticate") or "").startswith("Basic ")
        await context.close()

        page, problems = await open_page(browser, base + "/", width=390)
        await expect(page.locator('tr[data-token="a1b2c3d4e5f60718"]')).to_contain_text(MARKUP)
        await page.get_by_role("button", name="Reload settings").click()
        await expect(page.locator("#message")).to_have_text("Settings reloaded.")
        assert len(backend.configs) == 1  # the reload reached the backend
        assert problems == []
