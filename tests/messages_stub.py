"""A local stand-in for the Anthropic Messages API (``POST /v1/messages``) for the real SDK to talk to.

A test scripts what the API answers, in order: assistant messages (text and tool_use blocks, a stop
reason, token usage) or errors (status, error type, headers). Every request body is kept, so a test can
check what was sent: the system prompt, the tools, the history.
"""

from __future__ import annotations

import itertools
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

_ids = itertools.count(1)


def text(words: str) -> dict:
    return {"type": "text", "text": words}


def tool(name: str, args: dict) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": args}


class MessagesStub:
    def __init__(self) -> None:
        self.script: deque[tuple[int, dict, dict]] = deque()  # (status, body, headers) to answer with
        self.requests: list[dict] = []
        self.url = ""

    def reply(
        self, *content: dict, input_tokens: int = 1000, output_tokens: int = 50, stop_reason: str | None = None
    ) -> None:
        """An assistant message; its stop reason, unless given, is tool_use when it calls a tool, else end_turn."""
        calls = any(block["type"] == "tool_use" for block in content)
        stop_reason = stop_reason or ("tool_use" if calls else "end_turn")
        self.script.append((200, {
            "id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": "stub",
            "content": list(content), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }, {}))  # fmt: skip

    def error(self, status: int, kind: str, headers: dict | None = None) -> None:
        self.script.append((status, {"type": "error", "error": {"type": kind, "message": kind}}, headers or {}))

    async def _messages(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        if not self.script:  # a test that didn't expect this call: make it visible, not retried
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "nothing scripted"}}, status=400)  # fmt: skip
        status, body, headers = self.script.popleft()
        return web.json_response(body, status=status, headers=headers)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MessagesStub]:
        """Serve on a free loopback port while the block runs; ``url`` is the base URL for the SDK."""
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            yield self
        finally:
            await runner.cleanup()
