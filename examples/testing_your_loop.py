"""Test your own chat loop offline with convmem.testing.FakeChatServer.

The fake answers at the HTTP transport, so the real openai SDK builds and parses everything;
queue replies (text, streamed chunks, tool calls, errors, cut streams) and assert on the exact
request bodies your code sent.
"""

import contextlib

import openai

from convmem import Conversation
from convmem.testing import FakeChatServer, ToolCallSpec


def get_weather(city: str) -> str:
    """Current weather.

    Args:
        city: The city.
    """
    return f"sunny in {city}"


server = (
    FakeChatServer()
    .reply(None, tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"})])
    .reply("It is sunny in Paris.")
    .error(429, "rate limited")
)
conv = Conversation(server.client(), model="gpt-4o-mini")
conv.send("Weather in Paris?", tools=[get_weather])
assert server.requests[1]["messages"][-1] == {
    "role": "tool",
    "tool_call_id": "call_1",
    "content": "sunny in Paris",
}

before = conv.messages
with contextlib.suppress(openai.RateLimitError):  # the queued 429
    conv.send("And tomorrow?")
assert conv.messages == before  # a failed call leaves no half-written history
server.assert_all_used()
print("ok:", [m["role"] for m in conv.messages])
