"""Drives Bulkhead's /mcp with the official MCP Python SDK, as an outside agent framework
would: one client per tenant key, each must see and call only its own tenant's tools.

Usage: mcp_client.py <base-url> <acme-key> <globex-key>
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def with_session(base, key, work):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with http:
        async with streamable_http_client(f"{base}/mcp", http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)


def text(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def main(base, acme, globex):
    async def acme_work(session):
        tools = await session.list_tools()
        names = sorted(t.name for t in tools.tools)
        assert names == ["slack__list_channels", "slack__post_message"], names
        result = await session.call_tool(
            "slack__post_message", {"channel": "#general", "text": "from the python sdk"}
        )
        assert not result.is_error, text(result)
        assert json.loads(text(result))["ok"] is True, text(result)
        result = await session.call_tool("slack__post_message", {"channel": 5})
        assert result.is_error and "invalid_arguments" in text(result), text(result)

    async def globex_work(session):
        tools = await session.list_tools()
        names = sorted(t.name for t in tools.tools)
        assert names == ["crm__ping"], names
        result = await session.call_tool(
            "slack__post_message", {"channel": "#general", "text": "not mine"}
        )
        assert result.is_error and "unknown_tool" in text(result), text(result)

    await with_session(base, acme, acme_work)
    await with_session(base, globex, globex_work)
    print("all mcp checks passed")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
