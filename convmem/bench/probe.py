"""A synthetic probe set: long small-talk conversations with facts planted at known turns.

The set is generated, not downloaded, and is the same for the same arguments on every machine
(it uses only :class:`random.Random` seeded with a string). Each conversation alternates user
and assistant turns of varied, templated small talk (:mod:`convmem.bench.synth`; 20-60 words
each, so token counts and embeddings behave like real chat) and plants facts in user turns: a
name, a number, a date, a preference, and a *correction* (a value stated early and changed
later). Questions about them are asked after the last turn, phrased differently from the fact.

The *follow-up* category asks questions that only make sense with the last one to three turns
("which was the second one again?"): a strategy that spends the budget on old turns must still
keep the newest ones.

Filler never contains digits, month names, person names, city names or the preference items,
so an answer's keywords occur only in its evidence turn (and, for a correction, the stale turn):
a context that lost the turn cannot answer by luck.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from convmem.bench.data import BenchConversation, BenchQuestion, BenchTurn, Role, content_words
from convmem.bench.synth import message_text, pick_topic
from convmem.errors import UsageError

PROBE_CATEGORIES: tuple[str, ...] = (
    "name",
    "number",
    "date",
    "preference",
    "correction",
    "follow-up",
)

# Facts are planted before this share of the conversation, so every question is asked at least
# a tenth of the conversation after its evidence.
_PLANT_BEFORE = 0.9

# --- values ---------------------------------------------------------------------------------

_NAMES = (
    "Ingrid", "Tobias", "Marisol", "Kwame", "Siobhan", "Rafael", "Annika", "Dmitri", "Yusuf",
    "Beatrix", "Leopold", "Noriko", "Caspian", "Ottilie", "Henrike", "Matthias", "Priya",
    "Anselm", "Isolde", "Fenella", "Bartholomew", "Zuzana", "Cornelius", "Amara",
)  # fmt: skip
_CITIES = (
    "Lisbon", "Tallinn", "Porto", "Ljubljana", "Valencia", "Bergen", "Krakow", "Montreal",
    "Osaka", "Hobart", "Cork", "Graz", "Bruges", "Seville", "Gdansk", "Trieste",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True)
class _Subject:
    """Something a fact can be about: how to state it, ask about it and (maybe) correct it."""

    value: str  # "name" | "code" | "date" | "city" | "item"
    statements: tuple[str, ...]  # "{v}" is the value, "{c}" a city that is not the answer
    questions: tuple[str, ...]
    items: tuple[str, ...] = ()
    corrections: tuple[str, ...] = ()


_SUBJECTS: dict[str, tuple[_Subject, ...]] = {
    "name": (
        _Subject(
            "name",
            ("My sister's name is {v}.", "You haven't met my sister yet, she is called {v}."),
            ("What is my female sibling called?", "What do my sister's friends call her?"),
        ),
        _Subject(
            "name",
            ("My landlord's name is {v}.", "The man I rent my flat from is named {v}."),
            ("Who owns the apartment I live in?", "What's the name of the person I pay rent to?"),
        ),
        _Subject(
            "name",
            ("My dentist is called {v}.", "I finally found a good dentist, called {v}."),
            ("Who looks after my teeth?", "Which doctor do I see for my teeth?"),
        ),
        _Subject(
            "name",
            ("My new manager at work is {v}.", "The person I report to at work is called {v}."),
            ("Who is my boss at the office?", "Who do I answer to at my job?"),
        ),
        _Subject(
            "name",
            ("We named our new puppy {v}.", "Our puppy is called {v}, he chews everything."),
            ("What did we call our young dog?", "What's the name of our little dog?"),
        ),
        _Subject(
            "name",
            ("My piano teacher's name is {v}.", "I take piano lessons from someone called {v}."),
            ("Who gives me my keyboard lessons?", "Who teaches me to play the piano?"),
        ),
    ),
    "number": (
        _Subject(
            "code",
            ("My locker code at the gym is {v}.", "I set my gym locker combination to {v}."),
            ("Which digits open my storage box where I work out?",),
        ),
        _Subject(
            "code",
            ("The combination on my bike lock is {v}.", "My bicycle lock opens with {v}."),
            ("What digits unlock my bicycle?", "How do I open the lock on my bike?"),
        ),
        _Subject(
            "code",
            ("My employee ID at work is {v}.", "At my company my staff number is {v}."),
            ("What is my personnel number at the company?", "What's my ID at my job?"),
        ),
        _Subject(
            "code",
            ("The PIN for my library card is {v}.", "My library account PIN is {v}."),
            ("What code do I type in to borrow books?",),
        ),
        _Subject(
            "code",
            ("My parking permit number is {v}.", "The permit for my car has the number {v}."),
            ("What is printed on the pass that lets me leave my car?",),
        ),
    ),
    "date": (
        _Subject(
            "date",
            ("My flight to {c} is on {v}.", "I booked a flight to {c}, it leaves on {v}."),
            ("When do I fly out to {c}?", "What day is my plane trip to {c}?"),
        ),
        _Subject(
            "date",
            ("My driving test is scheduled for {v}.", "I finally booked my driving test, {v}."),
            ("When is my road exam for the licence?", "What day do I take my driving exam?"),
        ),
        _Subject(
            "date",
            ("I'm running a half marathon on {v}.", "The half marathon I signed up for is {v}."),
            ("What's the date of the long race I entered?", "When do I run that big race?"),
        ),
        _Subject(
            "date",
            ("My lease runs out on {v}.", "The rental contract on my flat ends on {v}."),
            ("When does the agreement for my apartment expire?",),
        ),
        _Subject(
            "date",
            ("I have a job interview on {v}.", "They invited me to an interview on {v}."),
            ("When is my interview for the new position?", "What day do I meet the employer?"),
        ),
    ),
    "preference": (
        _Subject(
            "item",
            ("I can't stand {v}, it ruins any dish for me.", "Honestly, I hate {v} in food."),
            ("Which ingredient should never go into a meal you cook for me?",),
            items=("cilantro", "olives", "anchovies", "licorice", "capers"),
        ),
        _Subject(
            "item",
            ("My favourite colour has always been {v}.", "I love anything in {v}."),
            ("If you knitted me a scarf, which shade would I like best?",),
            items=("teal", "burgundy", "lavender", "turquoise", "maroon"),
        ),
        _Subject(
            "item",
            ("I mostly listen to {v} these days.", "Nothing beats {v} for me, musically."),
            ("What kind of songs do I enjoy most?", "What genre do I put on at home?"),
            items=("bluegrass", "synthwave", "flamenco", "reggae", "ska"),
        ),
        _Subject(
            "item",
            ("The only sport I really enjoy watching is {v}.", "I could watch {v} all day."),
            ("Which game do I like to follow on TV?",),
            items=("curling", "snooker", "handball", "badminton", "fencing"),
        ),
        _Subject(
            "item",
            ("I never drink coffee, {v} is my thing.", "Every afternoon I make myself {v}."),
            ("What do I usually have instead of coffee?", "What's my go-to hot drink?"),
            items=("rooibos", "matcha", "chai", "kombucha", "yerba mate"),
        ),
    ),
    "correction": (
        _Subject(
            "code",
            ("The code for our garage door is {v}.",),
            ("What do I type in to open the garage these days?",),
            corrections=(
                "Actually, the garage door code changed, it's {v} now.",
                "Quick update: we reset the garage code to {v}.",
            ),
        ),
        _Subject(
            "code",
            ("The door code for my office building is {v}.",),
            ("What's the current code to get into my work building?",),
            corrections=(
                "Actually, they changed the office door code to {v}.",
                "Update on the office entrance: the new code is {v}.",
            ),
        ),
        _Subject(
            "city",
            ("We're moving to {v} next year.", "We decided to relocate to {v}."),
            ("Which city are we relocating to?", "Where will we be living after the move?"),
            corrections=(
                "Change of plans: we're moving to {v} instead.",
                "Actually, the move is to {v} now, not where I said before.",
            ),
        ),
        _Subject(
            "date",
            ("My haircut is booked for {v}.",),
            ("When am I getting my hair cut?", "What day is my salon appointment?"),
            corrections=(
                "Actually, the salon moved my haircut to {v}.",
                "Small change: my haircut is now on {v}.",
            ),
        ),
        _Subject(
            "name",
            ("The new team lead on my project is {v}.",),
            ("Who is leading my project team?", "Who runs the team on my project?"),
            corrections=(
                "Correction: {v} ended up taking the team lead role instead.",
                "Actually, the team lead is {v} after all, plans changed.",
            ),
        ),
    ),
}

# Follow-ups: options the user names in one of the last turns; the question refers back to
# one of them by position only, so nothing but the turn itself can answer it.
_FOLLOW_UP_MAX_WORDS = 60  # the longest message the generator writes (see synth)
_FOLLOW_UP_ITEMS = (
    "risotto", "gnocchi", "paella", "goulash", "moussaka", "tagine", "ramen", "falafel",
    "bibimbap", "ceviche", "pierogi", "jambalaya",
)  # fmt: skip
_FOLLOW_UPS = (
    (
        "I can't decide between {a} and {b} for dinner tonight.",
        "Which was the second option again?",
        "b",
    ),
    (
        "For the party I'm torn between making {a} or {b}.",
        "And the first one I mentioned?",
        "a",
    ),
    (
        "Tomorrow it's either {a} or {b} at the new place nearby.",
        "Sorry, what was the other one, not the first?",
        "b",
    ),
)

_LEAD_INS = ("", "By the way, ", "Oh, before I forget, ", "Random thing, but ", "Also, ")
_ACKS = (
    "Thanks for telling me, I'll keep that in mind.",
    "Good to know, noted.",
    "Got it, that's useful to remember.",
    "Understood, thanks for the update.",
    "Okay, I'll remember that.",
)


def _lead(rng: random.Random, sentence: str) -> str:
    lead = rng.choice(_LEAD_INS)
    if lead and not sentence.startswith(("I ", "I'")):
        sentence = sentence[0].lower() + sentence[1:]
    return lead + sentence


@dataclass
class _Values:
    """Draws values without replacement so no two facts in a conversation share a word."""

    rng: random.Random
    names: list[str]
    cities: list[str]
    months: list[str]
    days: list[int]
    codes: set[str]

    @classmethod
    def new(cls, rng: random.Random) -> _Values:
        return cls(
            rng,
            rng.sample(_NAMES, len(_NAMES)),
            rng.sample(_CITIES, len(_CITIES)),
            rng.sample(_MONTHS, len(_MONTHS)),
            rng.sample(range(1, 29), 28),
            set(),
        )

    def draw(self, kind: str, items: list[str]) -> str:
        if kind == "name":
            return self.names.pop()
        if kind == "city":
            return self.cities.pop()
        if kind == "date":
            return f"{self.days.pop()} {self.months.pop()}"
        if kind == "code":
            while (code := str(self.rng.randint(1000, 9999))) in self.codes:
                pass
            self.codes.add(code)
            return code
        return items.pop()


def _strata(rng: random.Random, slots: Sequence[int], n: int) -> list[int]:
    """``n`` slots, one drawn from each of ``n`` equal consecutive stretches of ``slots``."""
    bounds = [round(i * len(slots) / n) for i in range(n + 1)]
    return [slots[rng.randrange(bounds[i], bounds[i + 1])] for i in range(n)]


def _conversation(
    rng: random.Random, conversation_id: str, turns: int, per_kind: int
) -> BenchConversation:
    values = _Values.new(rng)
    plain: list[tuple[str, str, str, str]] = []  # (category, statement, question, answer)
    corrections: list[tuple[str, str, str, str, str, str]] = []  # + correcting statement, stale
    for category in _SUBJECTS:  # follow-ups are planted last, see _plant_follow_ups
        for subject in rng.sample(_SUBJECTS[category], per_kind):
            items = rng.sample(subject.items, len(subject.items))
            # A city that only sets the scene ("my flight to {c}"); never an answer elsewhere.
            uses_city = any("{c}" in t for t in (*subject.statements, *subject.questions))
            city = values.cities.pop() if uses_city else ""
            question = rng.choice(subject.questions).format(c=city)
            first = values.draw(subject.value, items)
            statement = rng.choice(subject.statements).format(v=first, c=city)
            if category != "correction":
                plain.append((category, statement, question, first))
                continue
            second = values.draw(subject.value, items)
            fix = rng.choice(subject.corrections).format(v=second)
            corrections.append((category, statement, question, second, fix, first))

    # Only user turns carry facts; turn 0 stays small talk, and the last tenth stays empty so
    # every question is asked well after its evidence.
    slots = list(range(2, int(turns * _PLANT_BEFORE), 2))
    n = len(plain) + 2 * len(corrections)
    if len(slots) < n:
        raise UsageError(
            f"turns={turns} leaves {len(slots)} user turns to plant {n} facts in; "
            f"use turns >= {int((2 * n + 2) / _PLANT_BEFORE) + 2} or fewer facts_per_kind"
        )
    positions = _strata(rng, slots, n)
    # Stale values go in the first half, their corrections in the second, so each correction
    # comes after the value it replaces with other facts in between.
    half = n // 2
    stale_at = rng.sample(range(half), len(corrections))
    fix_at = rng.sample(range(half, n), len(corrections))
    rest = [i for i in range(n) if i not in stale_at and i not in fix_at]
    rng.shuffle(rest)

    statements: dict[int, str] = {}
    questions: list[BenchQuestion] = []
    for (category, statement, question, answer), i in zip(plain, rest, strict=True):
        statements[positions[i]] = _lead(rng, statement)
        questions.append(_question(question, answer, category, positions[i]))
    for (category, statement, question, answer, fix, stale), i, j in zip(
        corrections, stale_at, fix_at, strict=True
    ):
        statements[positions[i]] = _lead(rng, statement)
        statements[positions[j]] = fix  # says "Actually, ..." itself
        q = _question(question, answer, category, positions[j])
        questions.append(
            BenchQuestion(
                question=q.question,
                answer=q.answer,
                category=q.category,
                evidence_turn_ids=q.evidence_turn_ids,
                unresolved_evidence=(),
                answer_keywords=q.answer_keywords,
                stale_answer=stale,
                stale_evidence_turn_ids=(positions[i],),
            )
        )

    bench_turns: list[BenchTurn] = []
    topic = pick_topic(rng)
    for tid in range(turns):
        role: Role = "user" if tid % 2 == 0 else "assistant"
        if role == "user":
            topic = pick_topic(rng)
            fact = statements.get(tid)
            text = message_text(rng, role, topic, insert=fact)
        else:
            ack = rng.choice(_ACKS) if tid - 1 in statements else None
            text = message_text(rng, role, topic, insert=ack, first=True)
        bench_turns.append(BenchTurn(tid, role, text, 1, None, f"T{tid}"))

    questions.extend(_plant_follow_ups(bench_turns, conversation_id, per_kind))
    order = {c: k for k, c in enumerate(PROBE_CATEGORIES)}
    questions.sort(key=lambda q: (order[q.category], q.evidence_turn_ids))
    return BenchConversation(conversation_id, tuple(bench_turns), tuple(questions))


def _plant_follow_ups(
    turns: list[BenchTurn], conversation_id: str, per_kind: int
) -> list[BenchQuestion]:
    """Puts a choice between two options in each of the last user turns (up to three turns
    back) and asks for one of them by position. Drawn from a random stream of its own, so the
    rest of the conversation is the same as without follow-ups."""
    rng = random.Random(f"convmem-probe-follow-up/{conversation_id}/{len(turns)}")
    users = [t.turn_id for t in turns if t.role == "user"][-min(per_kind, 3) :]
    items = rng.sample(_FOLLOW_UP_ITEMS, len(_FOLLOW_UP_ITEMS))
    out: list[BenchQuestion] = []
    for tid in users:
        statement, question, which = rng.choice(_FOLLOW_UPS)
        a, b = items.pop(), items.pop()
        old = turns[tid]
        # Keep the turn within 20-60 words: drop the filler's last sentences if needed.
        text = statement.format(a=a, b=b)
        for sentence in re.split(r"(?<=[.!?]) ", old.text):
            if len(text.split()) + len(sentence.split()) > _FOLLOW_UP_MAX_WORDS:
                break
            text += " " + sentence
        turns[tid] = BenchTurn(
            tid, old.role, text, old.session, old.date,
            old.source_id,
        )  # fmt: skip
        out.append(_question(question, a if which == "a" else b, "follow-up", tid))
    return out


def _question(question: str, answer: str, category: str, turn_id: int) -> BenchQuestion:
    return BenchQuestion(
        question=question,
        answer=answer,
        category=category,
        evidence_turn_ids=(turn_id,),
        unresolved_evidence=(),
        answer_keywords=content_words(answer),
    )


def generate_probe_set(
    *, conversations: int = 5, turns: int = 200, seed: int = 0, facts_per_kind: int = 2
) -> list[BenchConversation]:
    """Generate the synthetic probe set (deterministic for the same arguments).

    Each conversation has ``turns`` messages alternating user (even turn ids) and assistant
    (odd), and ``facts_per_kind`` questions in each category of :data:`PROBE_CATEGORIES`:

    - ``"name"``, ``"number"``, ``"date"``, ``"preference"``: one fact, stated once in a user
      turn; ``evidence_turn_ids`` is that turn.
    - ``"correction"``: a value stated in the first half of the planted turns and replaced in
      the second half. The gold ``answer`` is the new value and ``evidence_turn_ids`` the
      correcting turn; ``stale_answer`` and ``stale_evidence_turn_ids`` name the old one, so a
      benchmark can check that the newer value wins.

    Planted turns are spread evenly (one per equal stretch) over the first 90% of the
    conversation, the first within its first stretch; the questions are asked after the last
    turn and paraphrase the fact ("What is my female sibling called?" for "My sister's name is
    Ingrid."), so keyword overlap alone does not find the evidence.

    Conversation ``i`` depends only on ``seed``, ``i``, ``turns`` and ``facts_per_kind``, so
    asking for more conversations extends a set without changing the first ones.

    Args:
        conversations: Number of conversations.
        turns: Messages per conversation.
        seed: Seed; another seed gives other values, positions and filler.
        facts_per_kind: Questions per category per conversation (1 to 5).

    Returns:
        The conversations, ids ``"probe-<seed>-<i>"``.

    Raises:
        UsageError: If a count is negative, ``facts_per_kind`` is out of range, or ``turns``
            is too small to plant every fact in its own user turn.
    """
    if conversations < 0:
        raise UsageError(f"conversations must be >= 0, got {conversations}")
    most = min(len(s) for s in _SUBJECTS.values())
    if not 1 <= facts_per_kind <= most:
        raise UsageError(f"facts_per_kind must be between 1 and {most}, got {facts_per_kind}")
    if turns < 1:
        raise UsageError(f"turns must be >= 1, got {turns}")
    return [
        _conversation(
            random.Random(f"convmem-probe/{seed}/{i}/{turns}/{facts_per_kind}"),
            f"probe-{seed}-{i}",
            turns,
            facts_per_kind,
        )
        for i in range(conversations)
    ]


__all__ = ["PROBE_CATEGORIES", "generate_probe_set"]
