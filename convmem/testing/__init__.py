"""A scripted fake of the OpenAI chat-completions API, for testing chat loops offline.

:class:`FakeChatServer` answers at the HTTP transport (an ``httpx2.MockTransport``), so the real
``openai`` SDK builds the request, parses the reply, decodes the stream and raises its own
exceptions exactly as it would against a real server. Queue the replies a test expects, run the
code under test, then assert on the exact request bodies it sent::

    import openai
    from convmem.testing import FakeChatServer

    def ask(client: openai.OpenAI, history: list[dict], text: str) -> str:
        history.append({"role": "user", "content": text})
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=history)
        answer = reply.choices[0].message.content or ""
        history.append({"role": "assistant", "content": answer})
        return answer

    def test_my_loop_remembers() -> None:
        server = FakeChatServer().reply("Hi Ada!").reply("Your name is Ada.")
        client = server.client()
        history: list[dict] = []
        ask(client, history, "I am Ada")
        assert ask(client, history, "Who am I?") == "Your name is Ada."
        assert server.messages(-1)[0] == {"role": "user", "content": "I am Ada"}
        server.assert_all_used()

One queued item answers one HTTP request, first in first out. A request that finds the queue
empty gets HTTP 500 (``openai.InternalServerError``) saying ``FakeChatServer: no reply queued``,
so a test that makes one call too many fails loudly. Clients are built with ``max_retries=0``
so each SDK call is exactly one request.

The package's parts: :mod:`~convmem.testing.server` (:class:`FakeChatServer`: the queue and
the request handling), :mod:`~convmem.testing.specs` (what a test queues),
:mod:`~convmem.testing.wire` (the bodies and SSE chunks the real API sends) and
:mod:`~convmem.testing.refusals` (what the real API refuses with HTTP 400). A real server on
loopback lives in :mod:`convmem.localserver`.
"""

from .server import FakeChatServer
from .specs import ChoiceSpec, ToolCallSpec
from .specs import ToolCallLike as ToolCallLike  # type aliases of reply(); not in __all__
from .specs import UsageSpec as UsageSpec
from .wire import CREATED, estimate_tokens

__all__ = [
    "CREATED",
    "ChoiceSpec",
    "FakeChatServer",
    "ToolCallSpec",
    "estimate_tokens",
]
