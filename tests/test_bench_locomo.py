"""LoCoMo loading (convmem.bench.locomo) and the shared data model (convmem.bench.data).

The real file is CC BY-NC and never copied into the repository: the tests that need it read
it from ../shared/data/locomo/locomo_dev.json and skip when it is absent. Everything else runs
on small LoCoMo-shaped files written by the tests themselves.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from convmem.bench import (
    BenchConversation,
    BenchQuestion,
    BenchTurn,
    bench_stats,
    content_words,
    keyword_recall,
    load_locomo,
    parse_evidence,
)
from convmem.errors import UsageError

LOCOMO_DEV = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"

# --- evidence parser: the README's data faults, verbatim ------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("D1:3", ("D1:3",)),
        ("D8:6; D9:17", ("D8:6", "D9:17")),
        ("D:11:26", ("D11:26",)),
        ("D9:1 D4:4 D4:6", ("D9:1", "D4:4", "D4:6")),
        ("D", ()),
        ("D30:05", ("D30:5",)),
        ("", ()),
    ],
)
def test_parse_evidence_faults(raw: str, expected: tuple[str, ...]) -> None:
    assert parse_evidence(raw) == expected


# --- a small LoCoMo-shaped file -----------------------------------------------------------


def _turn(speaker: str, dia: str, text: str, caption: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"speaker": speaker, "dia_id": dia, "text": text}
    if caption is not None:
        t["blip_caption"] = caption
        t["img_url"] = ["http://example.invalid/x.jpg"]
    return t


def _sample() -> dict[str, Any]:
    return {
        "sample_id": "mini-1",
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Bo",
            "session_1_date_time": "9:00 am on 1 March, 2024",
            "session_1": [
                _turn("Ann", "D1:1", "  Hello Bo!  "),
                _turn("Bo", "D1:2", "Look at my cat.", caption="a photo of a cat on a sofa"),
                _turn("Ann", "D1:3", "Cute. I adopted a parrot on Monday."),
                _turn("Bo", "D1:4", "Nice."),
            ],
            # Numbered past 9 so that string order ("session_10" < "session_2") would be wrong.
            "session_10_date_time": "5:00 pm on 3 May, 2024",
            "session_10": [
                _turn("Bo", "D10:1", "Back again."),
                _turn("Ann", "D10:2", "The parrot talks now."),
            ],
            "session_2_date_time": "8:00 pm on 2 April, 2024",
            "session_2": [
                _turn("Ann", "D2:1", "I ran 10 km."),
                _turn("Bo", "D2:2", "Wow."),
            ],
            # A date for a session with no turns, as conv-26 has.
            "session_11_date_time": "1:00 pm on 4 June, 2024",
        },
        "qa": [
            {
                "question": "q-multi",
                "answer": "parrot",
                "evidence": ["D1:3", "D10:2"],
                "category": 1,
            },
            {"question": "q-year", "answer": 2024, "evidence": ["D1:3; D2:1"], "category": 2},
            {"question": "q-open", "answer": "Cats, probably", "evidence": [], "category": 3},
            {"question": "q-single", "answer": "10 km", "evidence": ["D:2:1", "D"], "category": 4},
            {
                "question": "q-adv",
                "adversarial_answer": "a dog",
                "evidence": ["D1:2"],
                "category": 5,
            },
            {
                "question": "q-missing",
                "answer": "x y",
                "evidence": ["D9:9", "D1:1 D1:1"],
                "category": 4,
            },
        ],
    }


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def mini(tmp_path: Path) -> BenchConversation:
    (conv,) = load_locomo(_write(tmp_path, [_sample()]))
    return conv


def test_turns_are_ordered_by_session_number_and_rendered(mini: BenchConversation) -> None:
    assert mini.conversation_id == "mini-1"
    assert [t.source_id for t in mini.turns] == [
        "D1:1", "D1:2", "D1:3", "D1:4", "D2:1", "D2:2", "D10:1", "D10:2",
    ]  # fmt: skip
    assert [t.turn_id for t in mini.turns] == list(range(8))
    assert [t.session for t in mini.turns] == [1, 1, 1, 1, 2, 2, 10, 10]
    first, image = mini.turns[0], mini.turns[1]
    assert first.text == "(session 1, 9:00 am on 1 March, 2024)\nAnn: Hello Bo!"
    assert image.text == "Bo: Look at my cat. [image: a photo of a cat on a sofa]"
    assert image.image_caption == "a photo of a cat on a sofa"
    assert first.image_caption is None
    assert mini.turns[4].text.startswith("(session 2, 8:00 pm on 2 April, 2024)\nAnn: ")
    assert mini.turns[6].text == "(session 10, 5:00 pm on 3 May, 2024)\nBo: Back again."
    # Only a session's first turn carries the header; every turn carries the date.
    assert not mini.turns[5].text.startswith("(")
    assert mini.turns[5].date == "8:00 pm on 2 April, 2024"


def test_roles_follow_speakers_and_same_role_runs_are_kept(mini: BenchConversation) -> None:
    roles = [t.role for t in mini.turns]
    assert roles == ["user", "assistant"] * 3 + ["assistant", "user"]
    # Session 10 opens with Bo after session 2 ended with Bo: two assistant messages in a row,
    # kept as two turns (one per dia_id).
    assert mini.turns[5].role == mini.turns[6].role == "assistant"
    msgs = mini.messages()
    assert len(msgs) == len(mini.turns)
    assert msgs[1] == {"role": "assistant", "content": mini.turns[1].text}


def test_questions(mini: BenchConversation) -> None:
    q = {x.question: x for x in mini.questions}
    assert q["q-multi"].category == "multi-hop"
    assert q["q-multi"].evidence_turn_ids == (2, 7)
    assert q["q-year"].answer == "2024"  # JSON int coerced
    assert q["q-year"].answer_keywords == ("2024",)
    assert q["q-year"].evidence_turn_ids == (2, 4)
    assert q["q-year"].category == "temporal"
    assert q["q-open"].evidence_turn_ids == ()
    assert q["q-open"].unresolved_evidence == ()
    assert q["q-open"].answer_keywords == ("cats", "probably")
    assert q["q-single"].evidence_turn_ids == (4,)  # "D:2:1" -> D2:1; "D" -> nothing
    assert q["q-single"].answer_keywords == ("10", "km")
    assert q["q-adv"].category == "adversarial"
    assert q["q-adv"].answer is None
    assert q["q-adv"].adversarial_answer == "a dog"
    assert q["q-adv"].answer_keywords == ()
    assert q["q-missing"].evidence_turn_ids == (0,)  # deduplicated
    assert q["q-missing"].unresolved_evidence == ("D9:9",)


def test_stats_on_mini(mini: BenchConversation) -> None:
    s = bench_stats([mini])
    assert (s.conversations, s.turns, s.questions) == (1, 8, 6)
    assert s.questions_by_category == {
        "adversarial": 1, "multi-hop": 1, "open-domain": 1, "single-hop": 2, "temporal": 1,
    }  # fmt: skip
    assert s.evidence_resolved == 2 + 2 + 1 + 1 + 1
    assert s.evidence_unresolved == 1
    assert s.questions_without_evidence == 1
    assert s.image_turns == 1
    assert s.image_turn_share == pytest.approx(1 / 8)
    assert s.evidence_image_share == pytest.approx(1 / 7)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("conversation"),
        lambda d: d.pop("qa"),
        lambda d: d["conversation"].pop("speaker_b"),
        lambda d: d["conversation"]["session_1"][0].update(speaker="Cy"),
        lambda d: d["qa"][0].update(category=9),
    ],
)
def test_malformed_files_raise_usage_error(tmp_path: Path, mutate: Any) -> None:
    data = _sample()
    mutate(data)
    with pytest.raises(UsageError):
        load_locomo(_write(tmp_path, [data]))


def test_not_a_list_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_locomo(_write(tmp_path, {"sample_id": "x"}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError):
        load_locomo(bad)


# --- data model -----------------------------------------------------------------------------


def test_content_words() -> None:
    assert content_words("Melanie's daughter") == ("melanie", "daughter")
    assert content_words("7 May 2023") == ("7", "may", "2023")  # "may" is a month here
    assert content_words("The Sunday before 25 May 2023") == ("sunday", "25", "may", "2023")
    assert content_words("a 5K run, $1,000 and 3.5 at 1:56 pm") == (
        "5k", "run", "1,000", "3.5", "1:56", "pm",
    )  # fmt: skip
    assert content_words("books,movies,a pet") == ("books", "movies", "pet")
    assert content_words("I can’t stand it, I can't") == ("stand",)
    assert content_words("No") == ()
    assert content_words("tea, Tea, TEA") == ("tea",)


def test_keyword_recall_matches_whole_words() -> None:
    assert keyword_recall(("14", "march"), "on 14 March") == 1.0
    assert keyword_recall(("14", "march"), "on 140 marches") == 0.0
    assert keyword_recall(("melanie", "daughter"), "Melanie's kid") == 0.5
    assert keyword_recall((), "anything") is None


def _t(i: int) -> BenchTurn:
    return BenchTurn(i, "user", f"t{i}", 1, None, f"T{i}")


def test_conversation_validates_ids() -> None:
    q = BenchQuestion("q?", "a", "name", (1,), (), ("a",))
    BenchConversation("ok", (_t(0), _t(1)), (q,))
    with pytest.raises(UsageError):
        BenchConversation("gap", (_t(0), _t(2)))
    with pytest.raises(UsageError):
        BenchConversation("range", (_t(0),), (q,))
    stale = BenchQuestion("q?", "a", "correction", (0,), (), ("a",), stale_evidence_turn_ids=(5,))
    with pytest.raises(UsageError):
        BenchConversation("stale", (_t(0),), (stale,))


# --- the real development split -------------------------------------------------------------

needs_locomo = pytest.mark.skipif(not LOCOMO_DEV.exists(), reason=f"{LOCOMO_DEV} not present")


@pytest.fixture(scope="module")
def locomo() -> list[BenchConversation]:
    return load_locomo(LOCOMO_DEV)


@needs_locomo
def test_real_file_counts(locomo: list[BenchConversation]) -> None:
    assert [c.conversation_id for c in locomo] == [
        "conv-26", "conv-30", "conv-41", "conv-42", "conv-43",
    ]  # fmt: skip
    s = bench_stats(locomo)
    assert (s.conversations, s.turns, s.questions) == (5, 2760, 999)
    assert s.questions_by_category == {
        "adversarial": 237, "multi-hop": 142, "open-domain": 46, "single-hop": 418, "temporal": 156,
    }  # fmt: skip
    assert s.evidence_resolved == 1349
    assert s.evidence_unresolved == 1
    assert s.questions_without_evidence == 2
    assert s.image_turns == 602
    # The README: about 38% of evidence turns are image turns.
    assert s.evidence_image_share == pytest.approx(0.385, abs=0.005)


@needs_locomo
def test_real_file_faults(locomo: list[BenchConversation]) -> None:
    by_id = {c.conversation_id: c for c in locomo}
    unresolved = [
        (c.conversation_id, u) for c in locomo for q in c.questions for u in q.unresolved_evidence
    ]
    assert unresolved == [("conv-42", "D10:19")]

    def sources(conv: str, q: BenchQuestion) -> list[str]:
        return [by_id[conv].turns[i].source_id for i in q.evidence_turn_ids]

    # "D8:6; D9:17" (conv-26), "D:11:26" (conv-43), ["D1:18", "D", "D1:20"] (conv-42).
    assert any(sources("conv-26", q) == ["D8:6", "D9:17"] for q in by_id["conv-26"].questions)
    assert any("D11:26" in sources("conv-43", q) for q in by_id["conv-43"].questions)
    assert any(sources("conv-42", q) == ["D1:18", "D1:20"] for q in by_id["conv-42"].questions)

    answers = Counter((q.category, q.answer is None) for c in locomo for q in c.questions)
    # Adversarial questions have no gold answer, except two that carry one anyway.
    assert answers[("adversarial", True)] == 235
    assert answers[("adversarial", False)] == 2
    assert all(
        q.answer is not None for c in locomo for q in c.questions if q.category != "adversarial"
    )
    assert all(isinstance(q.answer, str) for c in locomo for q in c.questions if q.answer)
    # Only yes/no answers (and one quoted stopword) have no keywords to check for.
    no_keywords = [
        q.answer for c in locomo for q in c.questions if q.answer and not q.answer_keywords
    ]
    assert sorted(no_keywords) == ['"That"', "No", "No", "Yes", "Yes", "Yes", "Yes", "Yes"]


@needs_locomo
def test_real_file_roles_dates_and_images(locomo: list[BenchConversation]) -> None:
    for conv in locomo:
        for prev, turn in zip(conv.turns, conv.turns[1:], strict=False):
            if prev.role == turn.role:
                # Same role twice only where a new session starts with the previous speaker.
                assert turn.session != prev.session, (conv.conversation_id, turn.source_id)
            if turn.session != prev.session:
                assert turn.text.startswith(f"(session {turn.session}, {turn.date})\n")
        assert conv.turns[0].text.startswith(f"(session 1, {conv.turns[0].date})\n")
        assert all(t.date for t in conv.turns)
        assert all(t.role in ("user", "assistant") for t in conv.turns)
        for t in conv.turns:
            if t.image_caption is not None:
                assert t.text.endswith(f" [image: {t.image_caption}]")
        # dia_ids are "D<session>:<position in session>" throughout the file.
        assert all(t.source_id == f"D{t.session}:{i}" for t, i in _positions(conv))
    same_role = sum(
        a.role == b.role for c in locomo for a, b in zip(c.turns, c.turns[1:], strict=False)
    )
    assert same_role == 62


def _positions(conv: BenchConversation) -> list[tuple[BenchTurn, int]]:
    out, n, last = [], 0, None
    for t in conv.turns:
        n = n + 1 if t.session == last else 1
        last = t.session
        out.append((t, n))
    return out
