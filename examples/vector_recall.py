"""VectorRecall: bring back the past turns most similar to the new message.

Every finished turn is embedded (all-MiniLM-L6-v2, offline) and stored in Chroma; a question
about turn 3 of a 200-turn conversation gets turn 3 back even though only recent turns fit.
Use `VectorRecall(client=chromadb.PersistentClient("memory/"))` to keep the store on disk.
"""

import random

from convmem import Conversation
from convmem.strategies import Pipeline, Truncate, VectorRecall
from convmem.testing import FakeChatServer

rng = random.Random(0)
topics = ["the weather", "a film I saw", "my commute", "a recipe", "the news", "a podcast"]
log = []
for i in range(200):
    text = (
        "My daughter's piano teacher is Ms Okonkwo."
        if i == 3
        else f"Small talk {i} about {rng.choice(topics)} and {rng.choice(topics)}."
    )
    log += [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted!"}]

server = FakeChatServer().reply("Ms Okonkwo.")
conv = Conversation(
    server.client(),
    model="gpt-4o-mini",
    strategy=Pipeline(VectorRecall(k=4), Truncate(max_tokens=2000)),
)
conv.extend(log)
conv.send("Who is my daughter's piano teacher?")
plan = conv.last_plan
assert plan is not None
print(plan)
recalled = plan.section("recalled")
assert recalled is not None and "Okonkwo" in recalled.messages[0]["content"]
print("\nrecalled section sent to the model:\n" + recalled.messages[0]["content"][:600])
