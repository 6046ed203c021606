"""Truncate: keep the most recent whole turns that fit. Cheapest; forgets old turns.

Use it for short-lived chats, or to cap cost per call. Here a 60-turn imported log is cut to
what fits 600 tokens; the history keeps everything.
"""

from convmem import Conversation
from convmem.strategies import Truncate
from convmem.testing import FakeChatServer

server = FakeChatServer().reply("Sure.")
conv = Conversation(
    server.client(), model="gpt-4o-mini", system="Be brief.", strategy=Truncate(max_tokens=600)
)
conv.extend(
    [
        m
        for i in range(60)
        for m in (
            {"role": "user", "content": f"Note {i}: remember the number {1000 + i}."},
            {"role": "assistant", "content": f"Noted {1000 + i}."},
        )
    ]
)
conv.send("Thanks!")
plan = conv.last_plan
assert plan is not None
print(plan)
print(
    f"sent {len(server.last_request['messages'])} of {len(conv.messages)} messages, "
    f"~{plan.corrected_tokens} tokens; dropped turns {plan.dropped[0]}-{plan.dropped[-1]}"
)
