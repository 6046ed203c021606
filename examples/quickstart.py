"""Quickstart: a Conversation in place of a hand-kept `messages` list.

Runs offline against a local llama.cpp server (SmolLM2-135M, shipped in a wheel). With an
OpenAI key, use `client = OpenAI()` and `model="gpt-4o-mini"` instead; nothing else changes.
"""

from convmem import Conversation, TextDelta
from convmem.localserver import LocalModelServer

with LocalModelServer() as server:
    conv = Conversation(
        server.client(),  # any openai.OpenAI client: OpenAI, DashScope, vLLM, Ollama, llama.cpp
        model=server.model,
        context_window=server.context_window,  # known models (gpt-4o, qwen-plus, ...) need none
        system="You are a helpful assistant. Answer in one sentence.",
    )
    reply = conv.send("Hi, I am Xiaoming and I live in Hangzhou.", max_tokens=40)
    print("assistant:", reply.choices[0].message.content)

    print("assistant: ", end="")
    for event in conv.stream("Where do I live?", max_tokens=40):
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
    print()

    print(f"\n{len(conv.messages)} messages in the history; the last call sent:")
    print(conv.last_plan)
    print("usage so far:", conv.usage.to_dict())
