"""The synthetic probe set (convmem.bench.probe)."""

from __future__ import annotations

from collections import Counter

import pytest

from convmem.bench import (
    PROBE_CATEGORIES,
    BenchConversation,
    content_words,
    generate_probe_set,
    keyword_recall,
)
from convmem.errors import UsageError


@pytest.fixture(scope="module")
def probe() -> list[BenchConversation]:
    return generate_probe_set()


@pytest.fixture(scope="module")
def many() -> list[BenchConversation]:
    """Several seeds and shapes, for properties that must hold for every draw."""
    out: list[BenchConversation] = []
    for seed in range(8):
        out += generate_probe_set(conversations=3, seed=seed)
    out += generate_probe_set(conversations=3, turns=41, seed=3, facts_per_kind=1)
    out += generate_probe_set(conversations=2, turns=300, seed=4, facts_per_kind=5)
    return out


def test_deterministic_for_a_seed(probe: list[BenchConversation]) -> None:
    assert generate_probe_set() == probe
    assert generate_probe_set(seed=0) == probe


def test_other_seed_differs(probe: list[BenchConversation]) -> None:
    other = generate_probe_set(seed=1)
    for a, b in zip(probe, other, strict=True):
        assert a.conversation_id != b.conversation_id
        assert [t.text for t in a.turns] != [t.text for t in b.turns]
        assert [q.answer for q in a.questions] != [q.answer for q in b.questions]


def test_more_conversations_extend_the_set(probe: list[BenchConversation]) -> None:
    assert generate_probe_set(conversations=2) == probe[:2]


def test_sizes_as_requested(probe: list[BenchConversation]) -> None:
    assert len(probe) == 5
    assert [c.conversation_id for c in probe] == [f"probe-0-{i}" for i in range(5)]
    for conv in probe:
        assert len(conv.turns) == 200
        assert len(conv.messages()) == 200
        assert Counter(q.category for q in conv.questions) == dict.fromkeys(PROBE_CATEGORIES, 2)
    small = generate_probe_set(conversations=2, turns=41, facts_per_kind=1)
    assert len(small) == 2
    assert all(len(c.turns) == 41 for c in small)
    assert all(len(c.questions) == len(PROBE_CATEGORIES) for c in small)
    assert generate_probe_set(conversations=0) == []


def test_roles_alternate_from_user(many: list[BenchConversation]) -> None:
    for conv in many:
        assert [t.role for t in conv.turns] == [
            "user" if i % 2 == 0 else "assistant" for i in range(len(conv.turns))
        ]
        assert all(t.session == 1 and t.date is None for t in conv.turns)


def test_filler_is_varied_and_turn_sized(many: list[BenchConversation]) -> None:
    for conv in many:
        lengths = [len(t.text.split()) for t in conv.turns]
        assert min(lengths) >= 20, conv.conversation_id
        assert max(lengths) <= 60, conv.conversation_id
        assert len({t.text for t in conv.turns}) >= 0.9 * len(conv.turns)
        # Not a handful of sentences on repeat: the vocabulary is broad.
        vocab = {w for t in conv.turns for w in content_words(t.text)}
        if len(conv.turns) >= 200:
            assert len(vocab) > 250


def test_facts_are_in_their_evidence_turns(many: list[BenchConversation]) -> None:
    for conv in many:
        for q in conv.questions:
            assert q.answer is not None
            assert q.answer_keywords == content_words(q.answer)
            assert q.unresolved_evidence == ()
            assert len(q.evidence_turn_ids) == 1
            (ev,) = q.evidence_turn_ids
            assert conv.turns[ev].role == "user"
            assert q.answer in conv.turns[ev].text
            if q.category == "correction":
                assert q.stale_answer is not None
                (stale,) = q.stale_evidence_turn_ids
                assert stale < ev  # the newer value comes later
                assert q.stale_answer in conv.turns[stale].text
                assert q.stale_answer != q.answer
                assert q.answer not in conv.turns[stale].text
                assert q.stale_answer not in conv.turns[ev].text
            else:
                assert q.stale_answer is None
                assert q.stale_evidence_turn_ids == ()


def test_answers_appear_nowhere_else(many: list[BenchConversation]) -> None:
    """Filler never gives an answer away, so only the evidence turn can answer a question."""
    for conv in many:
        # Keywords are content words, so the turn's content words are enough to look them up in.
        words = [set(content_words(t.text)) for t in conv.turns]
        for q in conv.questions:
            assert keyword_recall(q.answer_keywords, q.question) == 0.0, q.question
            stale_keywords = content_words(q.stale_answer or "")
            for tid, turn_words in enumerate(words):
                found = [k in turn_words for k in q.answer_keywords]
                assert all(found) if tid in q.evidence_turn_ids else not any(found), (
                    conv.conversation_id,
                    q.answer,
                    tid,
                )
                stale = [k in turn_words for k in stale_keywords]
                assert all(stale) if tid in q.stale_evidence_turn_ids else not any(stale)


def test_questions_paraphrase_the_fact(many: list[BenchConversation]) -> None:
    for conv in many:
        for q in conv.questions:
            words = set(content_words(q.question))
            evidence = set(content_words(conv.turns[q.evidence_turn_ids[0]].text))
            assert words - evidence, q.question  # some of the question's words are new


def test_planted_turns_are_spread(many: list[BenchConversation]) -> None:
    for conv in many:
        n = len(conv.turns)
        planted = sorted(
            i
            for q in conv.questions
            if q.category != "follow-up"  # those are in the last turns, by design
            for i in (*q.evidence_turn_ids, *q.stale_evidence_turn_ids)
        )
        assert len(planted) == len(set(planted)), "one fact per turn"
        assert planted[0] < 0.15 * n, "some facts are planted early"
        assert planted[-1] < 0.9 * n, "questions come well after the last fact"
        assert planted[-1] > 0.5 * n, "facts are not all bunched at the start"
        # Turn 0 is small talk.
        assert planted[0] >= 2


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        generate_probe_set(conversations=-1)
    with pytest.raises(UsageError):
        generate_probe_set(turns=0)
    with pytest.raises(UsageError):
        generate_probe_set(facts_per_kind=0)
    with pytest.raises(UsageError):
        generate_probe_set(facts_per_kind=6)
    with pytest.raises(UsageError, match="turns") as info:
        generate_probe_set(turns=20)  # 12 facts cannot fit in 8 user turns
    suggested = int(str(info.value).split("turns >= ")[1].split()[0])
    assert len(generate_probe_set(conversations=1, turns=suggested)[0].questions) == 12
    with pytest.raises(UsageError):
        generate_probe_set(conversations=1, turns=suggested - 4)


def test_follow_ups_need_the_last_turns_only(many: list[BenchConversation]) -> None:
    for conv in many:
        users = [t.turn_id for t in conv.turns if t.role == "user"]
        follow = [q for q in conv.questions if q.category == "follow-up"]
        assert 1 <= len(follow) <= 3
        for q in follow:
            (ev,) = q.evidence_turn_ids
            assert ev in users[-3:]  # within the last three turns
            assert q.answer is not None and q.answer in conv.turns[ev].text
            # The question names neither option: only their position refers back.
            assert q.answer.lower() not in q.question.lower()
    # Planting follow-ups draws from its own random stream: the other facts do not move.
    a = generate_probe_set(conversations=1, turns=200)[0]
    b = generate_probe_set(conversations=1, turns=200)[0]
    assert a == b
