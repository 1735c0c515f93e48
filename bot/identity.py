"""What a user token's requests say about where they come from: Discord's web app in a browser.

A user account that calls the API with a script's headers (aiohttp's User-Agent, no Origin, no
X-Super-Properties) stands out from every real client and risks a ban, so each user token sends
the headers the web client sends, and its X-Super-Properties describe the same browser as its
User-Agent.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from bot.config import AccountSettings, UserTokenSettings
from bot.proxy import parse_proxy
from bot.rest import Credential

ORIGIN = "https://discord.com"
REFERER = "https://discord.com/channels/@me"
LOCALE = "en-US"
ACCEPT_LANGUAGE = "en-US,en;q=0.9"
# What Intl.DateTimeFormat() resolves to on the (UTC) hosts the bridge usually runs on.
TIMEZONE = "UTC"
# The web client's build when DESKTOP_USER_AGENT's browser was current; Discord reads it for
# statistics, and accepts older builds.
CLIENT_BUILD_NUMBER = 460000

# Most specific first: Edge and Opera also say "Chrome/", Chrome also says "Safari/".
_BROWSERS = (
    ("Edge", re.compile(r"Edg(?:e|A|iOS)?/([\d.]+)")),
    ("Opera", re.compile(r"OPR/([\d.]+)")),
    ("Firefox", re.compile(r"Firefox/([\d.]+)")),
    ("Chrome", re.compile(r"(?:Chrome|CriOS)/([\d.]+)")),
    ("Safari", re.compile(r"Version/([\d.]+).*Safari/")),
)
_SYSTEMS = (
    ("Windows", re.compile(r"Windows NT ([\d.]+)")),
    ("iOS", re.compile(r"(?:iPhone|iPad)[^)]*OS ([\d_]+)")),
    ("Mac OS X", re.compile(r"Mac OS X ([\d_.]+)")),
    ("Android", re.compile(r"Android ([\d.]+)")),
    ("Linux", re.compile(r"Linux()")),
)


def _match(table: tuple[tuple[str, re.Pattern[str]], ...], user_agent: str) -> tuple[str, str]:
    for name, pattern in table:
        found = pattern.search(user_agent)
        if found:
            return name, found.group(1).replace("_", ".")
    return "Other", ""


# The web client names Windows by its marketing version, not its NT one.
_WINDOWS_VERSIONS = {"10.0": "10", "6.3": "8.1", "6.2": "8", "6.1": "7"}


def super_properties(user_agent: str) -> dict[str, Any]:
    """The web client's X-Super-Properties object for a browser with this User-Agent."""
    browser, browser_version = _match(_BROWSERS, user_agent)
    os_name, os_version = _match(_SYSTEMS, user_agent)
    if os_name == "Windows":
        os_version = _WINDOWS_VERSIONS.get(os_version, os_version)
    return {
        "os": os_name,
        "browser": browser,
        "device": "",
        "system_locale": LOCALE,
        "has_client_mods": False,
        "browser_user_agent": user_agent,
        "browser_version": browser_version,
        "os_version": os_version,
        "referrer": "",
        "referring_domain": "",
        "referrer_current": "",
        "referring_domain_current": "",
        "release_channel": "stable",
        "client_build_number": CLIENT_BUILD_NUMBER,
        "client_event_source": None,
    }


def browser_headers(user_agent: str) -> dict[str, str]:
    """The headers Discord's web client sends with every API call, for this User-Agent."""
    properties = json.dumps(super_properties(user_agent), separators=(",", ":"))
    return {
        "User-Agent": user_agent,
        "Accept": "*/*",
        "Accept-Language": ACCEPT_LANGUAGE,
        "Origin": ORIGIN,
        "Referer": REFERER,
        "X-Discord-Locale": LOCALE,
        "X-Discord-Timezone": TIMEZONE,
        "X-Debug-Options": "bugReporterEnabled",
        "X-Super-Properties": base64.b64encode(properties.encode()).decode(),
    }


def user_credential(entry: UserTokenSettings, accounts: AccountSettings, label: str) -> Credential:
    """The credential a user token posts with: a browser's headers and the token's own proxy.

    Raises StartupError (credentials masked) for a `proxy` that is not a proxy URL.
    """
    if entry.proxy is not None and entry.proxy.get_secret_value():
        parse_proxy(entry.proxy.get_secret_value())
    return Credential(
        entry.token.get_secret_value(),
        is_bot=False,
        label=label,
        headers=browser_headers(entry.user_agent or accounts.user_agent),
        proxy=entry.proxy,
    )
