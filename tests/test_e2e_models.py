"""Several Coze bots as models, per-model keys, and coze-discord-proxy's settings as aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from bridge_api.settings import ConfigError, load_settings
from simdiscord import SimulatedDiscord
from tests.conftest import TEST_COMPLETION, Bridge, BridgeFactory

USER = [{"role": "user", "content": "who are you?"}]


def two_models(sim: SimulatedDiscord, **second: Any) -> tuple[list[dict[str, Any]], int, int]:
    bot, channel = sim.add_coze_bot("Coze Two"), sim.add_channel("coze-two")
    models = [
        {"name": "coze", "coze_bot_id": sim.coze_bot_id, "channel_id": sim.channel_id},
        {"name": "coze-two", "coze_bot_id": bot, "channel_id": channel} | second,
    ]
    return models, bot, channel


async def test_each_model_is_answered_by_its_own_bot(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    models, bot, channel = two_models(sim)
    bridge: Bridge = await start_bridge(models=models)
    async with bridge.openai() as client:
        listed = sorted(m.id for m in (await client.models.list()).data)
        assert listed == ["bridge-health", "coze", "coze-two"]
        one = await client.chat.completions.create(model="coze", messages=USER)  # type: ignore[arg-type]
        two = await client.chat.completions.create(model="coze-two", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    assert one.choices[0].message.content
    assert two.choices[0].message.content
    first, second = sim.prompts_received
    assert first.bot_id == sim.coze_bot_id
    assert sim.world.channels[first.channel_id].parent_id == sim.channel_id
    assert second.bot_id == bot
    assert sim.world.channels[second.channel_id].parent_id == channel
    replies = {m.author_id for m in sim.messages if m.reference_id == second.message_id}
    assert replies == {bot}


async def test_a_model_with_keys_is_only_for_those_keys(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    models, _, _ = two_models(sim, api_keys=["sk-two"])
    bridge: Bridge = await start_bridge(models=models, api={"keys": ["sk-general"]})
    async with bridge.openai(api_key="sk-general") as general, bridge.openai(api_key="sk-two") as private:
        assert [m.id for m in (await general.models.list()).data] == ["coze", "bridge-health"]
        assert [m.id for m in (await private.models.list()).data] == ["coze", "coze-two", "bridge-health"]
        with pytest.raises(openai.NotFoundError):
            await general.chat.completions.create(model="coze-two", messages=USER)  # type: ignore[arg-type]
        answer = await private.chat.completions.create(model="coze-two", messages=USER)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
    async with bridge.openai(api_key="sk-wrong") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()
    assert len(sim.prompts_received) == 1


def proxy_environment(sim: SimulatedDiscord) -> dict[str, str]:
    return {
        "BOT_TOKEN": sim.bot_token,
        "GUILD_ID": str(sim.guild_id),
        "COZE_BOT_ID": str(sim.coze_bot_id),
        "CHANNEL_ID": str(sim.channel_id),
        "USER_AUTHORIZATION": ",".join(sim.user_tokens),
        "PROXY_SECRET": "secret-a,secret-b",
        "REQUEST_OUT_TIME": "12",
        "STREAM_REQUEST_OUT_TIME": "3",
    }


async def test_coze_discord_proxy_settings_work_unchanged(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, tmp_path: Path
) -> None:
    bot, channel = sim.add_coze_bot("Coze Drawing"), sim.add_channel("drawing")
    bot_config = tmp_path / "bot_config.json"
    entries = [
        {
            "proxySecret": "secret-draw",
            "cozeBotId": str(bot),
            "model": ["dall-e-3"],
            "channelId": str(channel),
        }
    ]
    bot_config.write_text(json.dumps(entries))
    settings = load_settings(
        environ=proxy_environment(sim) | {"USER_AUTHORIZATION": sim.user_tokens[0]},
        bot_config=bot_config,
        discord={"api_base": sim.api_base},
        completion={"quiet_seconds": TEST_COMPLETION["quiet_seconds"]},
        storage={"path": str(tmp_path / "bridge.db")},
    )
    assert settings.completion.max_reply_seconds == 12
    assert settings.completion.first_reply_timeout == 3
    bridge: Bridge = await start_bridge(settings=settings)
    async with bridge.openai(api_key="secret-draw") as drawer, bridge.openai(api_key="secret-a") as plain:
        await drawer.chat.completions.create(model="dall-e-3", messages=USER)  # type: ignore[arg-type]
        # Like coze-discord-proxy, any model name is answered (one-api sends its own names).
        await plain.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    drawn, plain_prompt = sim.prompts_received
    assert drawn.bot_id == bot
    assert plain_prompt.bot_id == sim.coze_bot_id
    assert {p.author_id for p in sim.prompts_received} == {sim.account(sim.user_tokens[0]).id}
    # Their clients send the secret in a header of its own.
    async with bridge.http.get(f"{bridge.base_url}/v1/models", headers={"proxy-secret": "secret-b"}) as resp:
        assert resp.status == 200


def test_our_own_names_win_over_the_aliases(sim: SimulatedDiscord, tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("[discord]\ncoze_bot_id = 42\n[completion]\nmax_reply_seconds = 99\n")
    settings = load_settings(config, environ=proxy_environment(sim), bot_config=tmp_path / "absent.json")
    assert settings.discord.coze_bot_id == 42
    assert settings.completion.max_reply_seconds == 99
    assert settings.discord.channel_id == sim.channel_id, "an alias still fills what we leave unset"
    assert [key.get_secret_value() for key in settings.api.keys] == ["secret-a", "secret-b"]
    assert settings.api.unknown_model == "first"


def test_without_aliases_an_unknown_model_is_an_error(tmp_path: Path) -> None:
    settings = load_settings(
        environ={},
        bot_config=tmp_path / "absent.json",
        discord={"bot_token": "t", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3},
    )
    assert settings.api.unknown_model == "error"
    assert [m.name for m in settings.model_routes] == ["coze"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{", "not valid"),
        ('{"cozeBotId": 1}', "list"),
        ('[{"cozeBotId": 1}]', "entry 1 needs cozeBotId and channelId"),
    ],
)
def test_a_broken_bot_config_is_a_clear_config_error(tmp_path: Path, content: str, fragment: str) -> None:
    bot_config = tmp_path / "bot_config.json"
    bot_config.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        load_settings(environ={}, bot_config=bot_config, discord={"bot_token": "t", "guild_id": 1})


def test_models_from_the_environment_as_json(tmp_path: Path) -> None:
    models = [
        {"name": "a", "coze_bot_id": 1, "channel_id": 2},
        {"name": "b", "coze_bot_id": 3, "channel_id": 4},
    ]
    settings = load_settings(
        environ={"BRIDGE_MODELS": json.dumps(models)},
        bot_config=tmp_path / "absent.json",
        discord={"bot_token": "t", "guild_id": 1},
    )
    assert [(m.name, m.coze_bot_id) for m in settings.model_routes] == [("a", 1), ("b", 3)]


def test_the_example_config_loads_and_names_every_setting(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "config.example.toml"
    settings = load_settings(example, environ={}, bot_config=tmp_path / "absent.json")
    text = example.read_text()
    for section in ("discord", "api", "completion", "accounts", "storage", "images", "log", "alerts"):
        for key in type(getattr(settings, section)).model_fields:
            assert f"{key} = " in text, f"{section}.{key} is not in config.example.toml"
    for key in ("name", "coze_bot_id", "channel_id", "api_keys"):
        assert f"# {key} = " in text


def test_user_tokens_from_the_environment_take_strings_and_tables(tmp_path: Path) -> None:
    tokens = ["plain-token", {"token": "table-token", "label": "alice", "max_in_flight": 1, "enabled": False}]
    settings = load_settings(
        environ={"BRIDGE_DISCORD__USER_TOKENS": json.dumps(tokens)},
        bot_config=tmp_path / "absent.json",
        discord={"bot_token": "t", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3},
    )
    plain, table = settings.discord.user_tokens
    assert (plain.token.get_secret_value(), plain.label, plain.max_in_flight) == ("plain-token", None, None)
    assert (table.token.get_secret_value(), table.label, table.max_in_flight) == ("table-token", "alice", 1)
    assert table.enabled is False
