"""The baseline the bridge is measured against: the least code that can relay Coze to SSE.

Raw gateway socket (same compression discord.py picks) -> REST post of the prompt straight into
the channel -> match Coze's reply by message_reference -> SSE write. No threads, no detector, no
timers, no validation and no error handling. A reply that reaches the gateway before the POST
returns its prompt's id is held briefly under that id.

    python -m bench.bare_relay --api-base URL --bot-token T --user-token U --channel-id C --coze-bot-id B --port P
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from typing import Any

import aiohttp
from aiohttp import web

try:
    import zstandard
except ImportError:  # pragma: no cover - zstandard ships with the test extras
    zstandard = None

INTENTS = (1 << 0) | (1 << 9) | (1 << 15)  # guilds, guild messages, message content
# How long a reply whose prompt's POST has not returned yet is kept (seconds).
EARLY_KEEP = 10.0
FINISH = b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"


class Relay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.coze_id = str(args.coze_bot_id)
        self.waiting: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        # Replies to prompts whose POST has not returned yet, by the prompt's id.
        self.early: dict[str, list[dict[str, Any]]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    async def start(self, app: web.Application) -> Any:
        self.session = aiohttp.ClientSession()
        async with self.session.get(
            f"{self.args.api_base}/gateway/bot", headers={"Authorization": f"Bot {self.args.bot_token}"}
        ) as resp:
            url = (await resp.json())["url"]
        self.tasks.append(asyncio.create_task(self.gateway(url)))
        await asyncio.wait_for(self.ready.wait(), 10)
        yield
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()

    async def gateway(self, url: str) -> None:
        assert self.session is not None
        compress = "zstd-stream" if zstandard is not None else "zlib-stream"
        inflate: Any = zstandard.ZstdDecompressor().decompressobj() if zstandard else zlib.decompressobj()
        async with self.session.ws_connect(f"{url}?v=10&encoding=json&compress={compress}") as ws:
            async for frame in ws:
                payload = json.loads(inflate.decompress(frame.data))
                op = payload["op"]
                if op == 10:
                    interval = payload["d"]["heartbeat_interval"] / 1000
                    self.tasks.append(asyncio.create_task(self.heartbeat(ws, interval)))
                    await ws.send_json(
                        {"op": 2, "d": {"token": self.args.bot_token, "intents": INTENTS, "properties": {}}}
                    )
                elif op == 0:
                    kind = payload["t"]
                    if kind == "READY":
                        self.ready.set()
                    elif kind in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
                        self.route(payload["d"])

    async def heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while True:
            await ws.send_json({"op": 1, "d": None})
            await asyncio.sleep(interval)

    def route(self, message: dict[str, Any]) -> None:
        reference = message.get("message_reference")
        if reference is None or message["author"]["id"] != self.coze_id:
            return
        prompt_id = reference["message_id"]
        queue = self.waiting.get(prompt_id)
        if queue is not None:
            queue.put_nowait(message)
        elif prompt_id in self.early:
            self.early[prompt_id].append(message)
        else:
            # Its prompt's POST may not have returned yet; forget it if no request claims it.
            self.early[prompt_id] = [message]
            asyncio.get_running_loop().call_later(EARLY_KEEP, self.early.pop, prompt_id, None)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async with self.session.post(
            f"{self.args.api_base}/channels/{self.args.channel_id}/messages",
            json={"content": f"<@{self.coze_id}> {prompt}"},
            headers={"Authorization": self.args.user_token},
        ) as resp:
            prompt_id = (await resp.json())["id"]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in self.early.pop(prompt_id, ()):
            queue.put_nowait(message)
        self.waiting[prompt_id] = queue
        head = b'data: {"id":"bare","object":"chat.completion.chunk","created":%d,"model":"coze",' % int(
            time.time()
        )
        sent = 0
        try:
            while True:
                message = await queue.get()
                content = message["content"]
                if len(content) > sent:
                    delta = json.dumps(content[sent:]).encode()
                    sent = len(content)
                    await response.write(
                        head
                        + b'"choices":[{"index":0,"delta":{"content":'
                        + delta
                        + b'},"finish_reason":null}]}\n\n'
                    )
                if message["components"]:
                    break
            await response.write(head + FINISH + DONE)
        finally:
            del self.waiting[prompt_id]
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--api-base", "--bot-token", "--user-token", "--channel-id", "--coze-bot-id"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    relay = Relay(args)
    app = web.Application()
    app.cleanup_ctx.append(relay.start)
    app.router.add_post("/v1/chat/completions", relay.chat)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
