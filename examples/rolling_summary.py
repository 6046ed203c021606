"""RollingSummary: at 70% of the window, summarise the older half with a separate call.

Keeps durable facts (names, numbers, dates, decisions) from the whole conversation at a bounded
cost. The summariser can be a cheaper model or another endpoint:
`RollingSummary(client=OpenAI(), model="gpt-4o-mini")`. Here the local SmolLM2 summarises.
"""

from convmem import Conversation
from convmem.localserver import LocalModelServer
from convmem.strategies import RollingSummary

with LocalModelServer() as server:
    conv = Conversation(
        server.client(),
        model=server.model,
        context_window=1024,
        reply_reserve=64,
        system="You are a helpful assistant.",
        strategy=RollingSummary(max_summary_tokens=96),
    )
    facts = ["My name is Lena.", "My cat is called Miso.", "I work as a nurse in Graz."]
    conv.extend(
        [
            m
            for f in facts * 4
            for m in (
                {
                    "role": "user",
                    "content": f + " The weather has been lovely this week, hasn't it?" * 3,
                },
                {
                    "role": "assistant",
                    "content": "Thanks for sharing! Yes, it has been very pleasant." * 3,
                },
            )
        ]
    )
    reply = conv.send("What is my cat called?", max_tokens=24)
    print("assistant:", reply.choices[0].message.content)
    print(conv.last_plan)
    summary = conv.history.latest_summary
    if summary is not None:
        print(f"\nsummary covering turns {summary.covers[0]}-{summary.covers[-1]}:\n{summary.text}")
    print(
        "summariser tokens:",
        conv.usage.summary_prompt_tokens,
        "+",
        conv.usage.summary_completion_tokens,
    )
