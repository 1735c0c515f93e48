"""The doctor's entry on the Discord side: run the setup checks (and the probe) over REST."""

from __future__ import annotations

import aiohttp

from bot.config import BackendConfig
from bot.doctor_checks import Line, SetupChecks
from bot.doctor_probe import probe
from bot.interface import StartupError
from bot.proxy import configured, connector
from bot.rest import DiscordRest, RestError

# Every REST call of the doctor is quick; a hung Discord (or proxy) should not hang it.
CALL_TIMEOUT = 30.0


async def diagnose(config: BackendConfig, *, with_probe: bool = False) -> list[Line]:
    # The doctor reaches Discord the way the bridge does: through discord.proxy when set.
    try:
        proxy = await configured(config.discord.proxy)
    except StartupError as exc:
        return [Line("FAIL", "proxy", str(exc))]
    async with aiohttp.ClientSession(
        connector=connector(proxy), timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    ) as session:
        rest = DiscordRest(config.discord.api_base, session)
        checks = SetupChecks(config, rest)
        if proxy is not None:
            checks.found.add("ok", "proxy", f"{proxy.shown} accepts connections")
        try:
            found = await checks.run()
            if with_probe:
                await probe(config, rest, checks.bot, found)
        except RestError as exc:
            # Discord unreachable or answering 5xx: nothing further can be told.
            checks.found.add("FAIL", "discord", f"{exc} (api_base {config.discord.api_base})")
        return checks.found.lines
