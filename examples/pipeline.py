"""The recommended default for long-running assistants: summary + recall + recent turns.

`Pipeline(RollingSummary(), VectorRecall(), Truncate())` shares one budget: the summary keeps
durable facts, recall brings back verbatim details the summary lost, and the most recent turns
fill the rest. AsyncConversation can make the next summary in the background.
"""

import asyncio

from convmem import AsyncConversation
from convmem.localserver import LocalModelServer
from convmem.strategies import Pipeline, RollingSummary, Truncate, VectorRecall


async def main() -> None:
    with LocalModelServer() as server:
        conv = AsyncConversation(
            server.async_client(),
            model=server.model,
            context_window=1024,
            reply_reserve=64,
            strategy=Pipeline(RollingSummary(max_summary_tokens=96), VectorRecall(k=3), Truncate()),
            background_summary=True,
        )
        await conv.extend(
            [
                m
                for i in range(30)
                for m in (
                    {
                        "role": "user",
                        "content": f"Day {i}: I walked {i + 2} km along the river today.",
                    },
                    {"role": "assistant", "content": "That sounds like a lovely walk, well done!"},
                )
            ]
        )
        await conv.prepare_next()  # summarise the imported log now rather than on the next call
        reply = await conv.send("How far did I walk on day 3?", max_tokens=24)
        print("assistant:", reply.choices[0].message.content)
        print(conv.last_plan)
        await conv.drain()


asyncio.run(main())
