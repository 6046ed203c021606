"""convmem.wrap: the tutorial's `while True: input()` loop, unchanged, with memory.

The loop keeps its own `messages` list and sends all of it every time, as tutorials do. The
wrapped client sends the strategy's context instead, so the list can grow for ever while every
request stays within the budget. Here 40 scripted user lines stand in for `input()`, against
the local llama.cpp server (SmolLM2-135M, a 2,048-token window).
"""

import convmem
from convmem.localserver import LocalModelServer
from convmem.strategies import Pipeline, RollingSummary, Truncate

LINES = [f"Fact {i}: locker {i} holds {100 + 7 * i} coins." for i in range(40)]
BUDGET = 250  # prompt tokens a request may use

with LocalModelServer() as server:
    client = convmem.wrap(
        server.client(),
        strategy=Pipeline(RollingSummary(max_summary_tokens=64), Truncate(max_tokens=BUDGET)),
    )
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    largest = 0
    for line in LINES:  # while True: line = input("> ")
        messages.append({"role": "user", "content": line})
        reply = client.chat.completions.create(
            model=server.model, messages=messages, max_tokens=8, temperature=0
        )
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))
        largest = max(largest, reply.usage.prompt_tokens)

    plan = client.last_plan
    print(plan)
    print(
        f"the loop's list: {len(messages)} messages; the last request: {len(plan.messages)}; "
        f"largest prompt the server saw: {largest} tokens (budget {BUDGET})"
    )
    print("usage:", client.usage.to_dict())
    assert largest <= BUDGET + 64, largest  # the server counts a little differently
