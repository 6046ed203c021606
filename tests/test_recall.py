"""VectorRecall with the packaged all-MiniLM-L6-v2 and an in-memory Chroma."""

from __future__ import annotations

import asyncio
import random

import pytest

from convmem import AsyncConversation, Conversation, UsageError
from convmem.strategies import Pipeline, RollingSummary, Truncate, VectorRecall
from convmem.strategies.recall import RECALL_HEADER
from convmem.testing import FakeChatServer

pytestmark = pytest.mark.recall

chromadb = pytest.importorskip("chromadb")

TOPICS = [
    "the weather was grey and windy this morning",
    "I watched a documentary about deep sea fish",
    "my neighbour is repainting the fence again",
    "we talked about the best way to brew green tea",
    "the train was late because of works on the line",
    "I tried a new recipe with lentils and cumin",
    "the library extended its opening hours",
    "a podcast about medieval castles was fun",
]


def filler(i: int, rng: random.Random) -> str:
    return f"Small talk {i}: {rng.choice(TOPICS)}, and {rng.choice(TOPICS)}."


def echo_server(n: int) -> FakeChatServer:
    server = FakeChatServer()
    server.respond_with(lambda body: "Noted, thanks for sharing.", times=n)
    return server


def long_log(n_turns: int, fact_turn: int, fact: str) -> list[dict[str, str]]:
    rng = random.Random(7)
    msgs = []
    for i in range(n_turns):
        text = fact if i == fact_turn else filler(i, rng)
        msgs += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "Noted, thanks for sharing."},
        ]
    return msgs


def test_fact_from_turn_3_of_200_reaches_a_late_question_truncate_alone_loses_it() -> None:
    fact = "My daughter's piano teacher is called Ms Okonkwo and lessons are on Thursdays."
    log = long_log(200, 3, fact)
    question = "What is the name of my daughter's piano teacher?"

    trunc = Conversation(
        echo_server(1).client(), model="gpt-4o-mini", strategy=Truncate(max_tokens=2000)
    )
    trunc.extend(log)
    plan_t = trunc.preview(question)
    assert 3 in plan_t.dropped
    assert "Okonkwo" not in str(plan_t.messages)

    recall = VectorRecall(client=chromadb.EphemeralClient(), collection="test_fact_turn3", k=4)
    server = echo_server(1)
    conv = Conversation(
        server.client(),
        model="gpt-4o-mini",
        system="Be helpful.",
        strategy=Pipeline(recall, Truncate(max_tokens=2000)),
    )
    conv.extend(log)
    conv.send(question)
    sent = server.last_request["messages"]
    recalled = [m for m in sent if m["content"].startswith(RECALL_HEADER)]
    assert len(recalled) == 1 and "Okonkwo" in recalled[0]["content"]
    assert sent[0] == {"role": "system", "content": "Be helpful."}
    assert sent[-1] == {"role": "user", "content": question}
    plan = conv.last_plan
    assert plan is not None and 3 in plan.recalled
    assert plan.corrected_tokens <= 2000
    decision = next(d for d in plan.decisions if d.turn_id == 3)
    assert decision.action == "recalled" and decision.score is not None and decision.score > 0.3
    # The recalled block is delimited, carries the turn id and time.
    assert '<turn id="3"' in recalled[0]["content"] and "time=" in recalled[0]["content"]


def test_conversations_sharing_a_collection_only_recall_their_own_turns() -> None:
    client = chromadb.EphemeralClient()
    convs = []
    for i in range(12):
        strategy = VectorRecall(client=client, collection="shared_isolation", k=3)
        conv = Conversation(
            echo_server(1).client(),
            model="gpt-4o-mini",
            strategy=strategy,
            conversation_id=f"user-{i}",
        )
        conv.extend(
            [
                {"role": "user", "content": f"My locker code is {1000 + i}."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "I enjoy hiking on weekends."},
                {"role": "assistant", "content": "Nice."},
            ]
        )
        convs.append(conv)
    for i, conv in enumerate(convs):
        conv.drain()
        plan = conv.preview("What is my locker code?")
        text = str(plan.messages)
        assert f"{1000 + i}" in text
        others = [f"{1000 + j}" for j in range(12) if j != i]
        assert not any(o in text for o in others)
    assert convs[0].strategy.store.count() == 24  # type: ignore[attr-defined]


def test_recall_section_is_chronological_and_within_its_budget() -> None:
    recall = VectorRecall(
        client=chromadb.EphemeralClient(), collection="test_chrono", k=5, max_recall_tokens=300
    )
    conv = Conversation(
        echo_server(1).client(),
        model="gpt-4o-mini",
        strategy=Pipeline(recall, Truncate(max_turns=2)),
    )
    conv.extend(long_log(40, 5, "I adopted a cat named Pixel in 2019."))
    conv.extend(
        [
            {"role": "user", "content": "Pixel the cat loves tuna."},
            {"role": "assistant", "content": "Cute."},
        ]
    )
    plan = conv.preview("Tell me about my cat Pixel")
    sec = plan.section("recalled")
    assert sec is not None and sec.tokens <= 300
    assert list(sec.turn_ids) == sorted(sec.turn_ids)
    assert 5 in sec.turn_ids
    # Turns in the recent section are never repeated in the recalled section.
    recent = plan.section("recent")
    assert recent is not None and not set(recent.turn_ids) & set(sec.turn_ids)


def test_min_score_filters_everything_out() -> None:
    recall = VectorRecall(
        client=chromadb.EphemeralClient(), collection="test_minscore", min_score=0.99
    )
    conv = Conversation(echo_server(1).client(), model="gpt-4o-mini", strategy=recall)
    conv.extend(long_log(10, 2, "The wifi password is hunter2."))
    plan = conv.preview("completely unrelated quantum chromodynamics")
    assert plan.recalled == []


def test_recall_with_summary_in_one_pipeline_and_invariants() -> None:
    server = FakeChatServer()

    def reply(body: dict) -> str:
        if "keep the memory" in body["messages"][0]["content"]:
            return "- the user chats a lot"
        return "ok"

    server.respond_with(reply, times=200)
    recall = VectorRecall(client=chromadb.EphemeralClient(), collection="test_pipe_sum", k=3)
    conv = Conversation(
        server.client(),
        model="m",
        context_window=1500,
        reply_reserve=200,
        strategy=Pipeline(RollingSummary(), recall, Truncate()),
    )
    conv.extend(long_log(30, 1, "My passport number is X123-998."))
    conv.prepare_next()
    assert conv.history.summaries
    conv.send("What is my passport number?")
    plan = conv.last_plan
    assert plan is not None
    assert plan.section("summary") is not None
    assert 1 in plan.recalled  # a summarised turn can come back verbatim
    assert "X123-998" in str(server.last_request["messages"])


def test_async_recall_stores_in_background() -> None:
    async def main() -> None:
        server = FakeChatServer()
        server.respond_with(lambda body: "ok", times=10)
        recall = VectorRecall(
            client=chromadb.EphemeralClient(), collection="test_async_recall", k=2
        )
        conv = AsyncConversation(
            server.async_client(),
            model="gpt-4o-mini",
            strategy=Pipeline(recall, Truncate(max_turns=1)),
        )
        await conv.send("My favourite colour is teal.")
        for i in range(3):
            await conv.send(f"Random chatter number {i} about trains.")
        await conv.send("What is my favourite colour?")
        assert "teal" in str(server.last_request["messages"][:-1])
        assert conv.last_plan is not None and 0 in conv.last_plan.recalled

    asyncio.run(main())


def test_callable_embedder_and_argument_errors() -> None:
    calls: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return [[float(len(t) % 7), 1.0, float("cat" in t)] for t in texts]

    recall = VectorRecall(
        client=chromadb.EphemeralClient(), collection="test_callable", embedder=embed, k=1
    )
    conv = Conversation(echo_server(1).client(), model="gpt-4o-mini", strategy=recall)
    conv.extend(long_log(5, 1, "I have a cat"))
    conv.drain()
    assert calls and calls[0] == 5  # the finished turns were embedded in one batch
    conv.preview("cat?")
    with pytest.raises(UsageError):
        VectorRecall(k=0)
    with pytest.raises(UsageError):
        VectorRecall(collection="ab")
