"""convmem.wrap with AsyncOpenAI and streaming: an async chat loop, unchanged, with memory.

`create(stream=True)` returns the SDK's own `AsyncStream` of chunks; the reply is committed
when the stream ends (a stream the loop abandons commits nothing). 40 turns against the local
llama.cpp server; each request stays within the budget while the loop's list keeps growing.
"""

import asyncio

import convmem
from convmem.localserver import LocalModelServer
from convmem.strategies import Truncate

BUDGET = 200


async def chat(client: convmem.AsyncMemoryOpenAI, model: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    for i in range(40):
        messages.append({"role": "user", "content": f"Turn {i}: name a colour."})
        stream = await client.chat.completions.create(
            model=model, messages=messages, stream=True, max_tokens=8, temperature=0
        )
        text = ""
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
        messages.append({"role": "assistant", "content": text})
    return messages


with LocalModelServer() as server:
    client = convmem.wrap(server.async_client(), strategy=Truncate(max_tokens=BUDGET))
    messages = asyncio.run(chat(client, server.model))
    plan = client.last_plan
    print(plan)
    print(
        f"the loop's list: {len(messages)} messages; the last request sent "
        f"{len(plan.messages)}; server-reported prompt tokens {plan.reported_prompt_tokens}"
    )
    assert plan.reported_prompt_tokens is not None
    assert plan.reported_prompt_tokens <= BUDGET + 64
