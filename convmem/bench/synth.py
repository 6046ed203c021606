"""Synthetic chat text: the one generator of small talk that every benchmark conversation uses.

Templated user and assistant sentences on everyday topics (weather, cooking, work, moods, ...),
filled from word lists with a seeded :class:`random.Random`, so the same seed gives the same
text on every machine and nothing is downloaded. :func:`make_history` gives a plain chat of any
length (the speed benchmark's history, the recall benchmark's texts);
:func:`pick_topic` and :func:`message_text` are the parts the probe set
(:mod:`convmem.bench.probe`) plants its facts into; :func:`summary_text` stands in for a
summary a model made.

The filler never contains digits, month names, person names, city names or the probe set's
preference items, so a planted fact's keywords occur only where it was planted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from convmem import UsageError

Topic = tuple[tuple[str, ...], tuple[str, ...]]
"""What a user says about a topic, and what an assistant replies about it (templates)."""

_MIN_WORDS, _MAX_TARGET, _MAX_WORDS = 20, 42, 60

_WORDS: dict[str, tuple[str, ...]] = {
    "adj": (
        "lovely", "exhausting", "relaxing", "chaotic", "surprising", "peaceful", "hectic",
        "pleasant", "strange", "cosy", "busy", "quiet", "productive", "lazy", "memorable",
    ),
    "feeling": (
        "tired", "cheerful", "restless", "content", "distracted", "hopeful", "calm", "grumpy",
        "motivated", "nostalgic",
    ),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "time": (
        "this morning", "last night", "yesterday afternoon", "earlier today",
        "over the weekend", "on my lunch break", "after work",
    ),
    "weather": ("drizzly", "sunny", "windy", "foggy", "humid", "cold", "grey", "stormy"),
    "dish": (
        "lentil soup", "vegetable curry", "banana bread", "roast potatoes", "a tomato salad",
        "pancakes", "fried rice", "stuffed peppers", "apple crumble", "garlic noodles",
    ),
    "show": (
        "a documentary about deep sea creatures", "a detective series", "a cooking competition",
        "an old sitcom", "a nature programme about owls", "a baking show",
        "a thriller miniseries", "a history podcast",
    ),
    "book": (
        "a novel about a lighthouse keeper", "a biography of an explorer",
        "a short story collection", "a mystery set on a train", "a book about sleep",
        "a travel memoir",
    ),
    "place": (
        "the park", "the farmers market", "the riverside path", "the library",
        "the hardware store", "the bakery down the road", "the community garden",
        "the old bookshop", "the swimming pool",
    ),
    "activity": (
        "a long walk", "some gardening", "a bit of painting", "a bike ride", "some yoga",
        "a board game night", "a jigsaw puzzle", "a picnic", "some stretching",
    ),
    "plant": ("tomatoes", "sunflowers", "strawberries", "peas", "lettuces", "marigolds"),
    "chore": (
        "laundry", "the dishes", "vacuuming", "paying bills", "fixing a squeaky door",
        "repotting plants", "cleaning the windows",
    ),
    "ride": ("the bus", "the train", "the tram", "the ferry"),
}  # fmt: skip

# Each topic: sentences a user says about it, then sentences an assistant replies with.
_TOPICS: tuple[Topic, ...] = (
    (
        (
            "The weather here has been {weather} all week, so I've mostly stayed indoors.",
            "It was {weather} {time}, which made the walk to {place} feel twice as long.",
            "I keep checking the forecast, but it just says {weather} again and again.",
            "On {weather} days like this I mostly want a blanket and a warm drink.",
        ),
        (
            "A {weather} spell can really change the mood of a whole week.",
            "Staying in sounds sensible when it's {weather} outside.",
            "Hopefully the weather turns a bit kinder by {day}.",
        ),
    ),
    (
        (
            "I tried making {dish} {time} and it turned out better than I expected.",
            "I've been cooking a lot more lately, mostly simple things like {dish}.",
            "My kitchen is a mess after attempting {dish} for the first time.",
            "I found a recipe for {dish} that only needs a handful of ingredients.",
        ),
        (
            "Homemade {dish} sounds like a great idea, especially on a {weather} day.",
            "Cooking at home is such a nice way to unwind after a {adj} day.",
            "Did you follow the recipe closely or improvise as you went?",
        ),
    ),
    (
        (
            "I started watching {show} {time} and couldn't stop.",
            "Have you ever noticed how {show} can be both {adj} and strangely calming?",
            "Someone recommended {show} to me, and now I'm hooked.",
        ),
        (
            "Shows like that are perfect for winding down in the evening.",
            "It's always nice to find something new to watch that actually holds your attention.",
            "Was it more {adj} or more relaxing than you expected?",
        ),
    ),
    (
        (
            "I'm halfway through {book}, and it's more {adj} than I expected.",
            "I picked up {book} at {place} and read the first chapters {time}.",
            "Reading before bed has helped me feel a lot less {feeling} lately.",
        ),
        (
            "That sounds like a good read, I'd be curious how it ends.",
            "Reading a few pages before sleep is a lovely habit to keep.",
            "Books you find by chance are often the most rewarding ones.",
        ),
    ),
    (
        (
            "The {plant} in the garden are finally doing well after all that rain.",
            "I spent {time} weeding around the {plant}, and my back is complaining.",
            "I'm thinking of planting more {plant} along the fence next season.",
        ),
        (
            "Gardening is such a rewarding way to spend a {adj} afternoon.",
            "It must be satisfying to watch the {plant} grow week by week.",
            "A bit of time outside with the plants does wonders for the mood.",
        ),
    ),
    (
        (
            "I spent most of the day on {chore}, which was about as fun as it sounds.",
            "I keep putting off {chore}, but I really should get it done by {day}.",
            "After finishing {chore} I rewarded myself with a quiet hour on the sofa.",
        ),
        (
            "Chores are never fun, but it feels good once they're out of the way.",
            "Breaking the jobs into small pieces can make them feel less daunting.",
            "A quiet hour afterwards sounds very well deserved.",
        ),
    ),
    (
        (
            "The ride on {ride} was packed {time}, so I stood the whole way.",
            "I've started taking {ride} instead of driving, and I quite like it.",
            "Somebody on {ride} was playing music out loud, which was a bit much.",
        ),
        (
            "Commuting can be so {adj}, especially when it's crowded.",
            "Taking {ride} at least gives you a moment to read or think.",
            "Hopefully the journey is calmer for you next time.",
        ),
    ),
    (
        (
            "I'm thinking about {activity} at {place} on {day}.",
            "I went for {activity} {time} and felt much better afterwards.",
            "My plan for {day} is very simple, just {activity} and an early night.",
        ),
        (
            "That sounds like a {adj} way to spend the day.",
            "Getting out for {activity} is a great way to clear your head.",
            "I hope the weather plays along on {day}.",
        ),
    ),
    (
        (
            "Work has been {adj} lately, with meetings piling up on top of each other.",
            "I finished a tricky task {time} and felt weirdly proud of myself.",
            "Our team had a long discussion {time} about changing how we plan things.",
        ),
        (
            "It sounds like you've had a lot on your plate at work.",
            "Finishing something tricky is a great feeling, well done.",
            "Hopefully things settle into a calmer rhythm soon.",
        ),
    ),
    (
        (
            "I've been feeling a bit {feeling} today, not sure why.",
            "Honestly, I woke up {feeling} and it stayed with me all day.",
            "Some days just feel {adj} from start to finish.",
        ),
        (
            "It's completely normal to have days like that.",
            "Maybe a short walk or an early night would help you reset.",
            "Thanks for sharing how you feel, that matters.",
        ),
    ),
)

_GENERIC_USER = (
    "Anyway, that's pretty much what's been going on with me.",
    "I don't know, it just felt worth mentioning.",
    "What have you been thinking about today?",
    "It's funny how small things can shape a whole day.",
    "I'm trying to keep a better routine this month.",
)
_GENERIC_ASSISTANT = (
    "That sounds {adj}!",
    "I'd love to hear more about it.",
    "How did that make you feel afterwards?",
    "It's nice that you made time for yourself.",
    "Small routines like that can make a real difference.",
    "Let me know how it goes.",
)


_SLOTS: dict[str, tuple[str, ...]] = {}


def _fill(rng: random.Random, template: str) -> str:
    keys = _SLOTS.get(template)
    if keys is None:  # in _WORDS order, so the draws (and the text) never depend on the cache
        keys = _SLOTS[template] = tuple(k for k in _WORDS if "{" + k + "}" in template)
    if not keys:
        return template
    return template.format(**{k: rng.choice(_WORDS[k]) for k in keys})


def _turn_text(
    rng: random.Random, fixed: str | None, pools: Sequence[Sequence[str]], *, first: bool
) -> str:
    """Filler drawn from ``pools`` (topic first) to 20-60 words, with ``fixed`` put in.

    ``fixed`` opens the turn when ``first``, else it opens or follows the first sentence.
    """
    target = rng.randint(_MIN_WORDS, _MAX_TARGET)
    sentences: list[str] = []
    used: set[str] = set()  # templates, so a turn never says the same thing twice
    words = len(fixed.split()) if fixed else 0
    while words < target:
        pool = pools[0] if not sentences or rng.random() < 0.7 else rng.choice(pools)
        fresh = [t for t in pool if t not in used] or [t for p in pools for t in p if t not in used]
        if not fresh:
            break
        template = rng.choice(fresh)
        used.add(template)
        sentence = _fill(rng, template)
        if words + len(sentence.split()) > _MAX_WORDS:
            continue
        sentences.append(sentence)
        words += len(sentence.split())
    if fixed:
        sentences.insert(0 if first else rng.randint(0, min(1, len(sentences))), fixed)
    return " ".join(sentences)


def pick_topic(rng: random.Random) -> Topic:
    """A topic for the next user message (and the assistant's reply to it)."""
    return rng.choice(_TOPICS)


def message_text(
    rng: random.Random,
    role: str,
    topic: Topic,
    *,
    insert: str | None = None,
    first: bool = False,
) -> str:
    """One message of small talk on ``topic``: 20 to 60 words, no sentence said twice.

    Args:
        rng: The generator to draw from (the text depends only on its state).
        role: ``"user"`` or ``"assistant"``: which side of the topic speaks.
        topic: From :func:`pick_topic`.
        insert: A sentence to put in (a planted fact, an acknowledgement).
        first: Open the message with ``insert``; otherwise it opens or follows the first
            sentence.
    """
    if role == "user":
        return _turn_text(rng, insert, (topic[0], _GENERIC_USER), first=first)
    return _turn_text(rng, insert, (topic[1], _GENERIC_ASSISTANT), first=first)


# Openers make plain chats more varied (make_history only; the probe set does not use them).
_OPENERS = ("", "", "Quick question.", "Also,", "By the way,", "Thanks!", "OK so", "Update:")
_LEADS = ("", "", "That sounds reasonable.", "Good idea.", "I understand.", "Oh,", "Right,")


def _exact_text(rng: random.Random, role: str, topic: Topic, words: int) -> str:
    """Small talk cut to exactly ``words`` words, ending as a sentence; no sentence twice.

    Mostly sentences on the topic, some generic ones, drawn without replacement (a partial
    shuffle: only the sentences used cost a draw, so 100k messages take seconds).
    """
    own, generic = (topic[0], _GENERIC_USER) if role == "user" else (topic[1], _GENERIC_ASSISTANT)
    pools = [list(own), list(generic)]
    taken = [0, 0]
    opener = rng.choice(_OPENERS if role == "user" else _LEADS)
    out: list[str] = opener.split()
    while len(out) < words:
        side = 0 if rng.random() < 0.7 else 1
        if taken[side] == len(pools[side]):
            side = 1 - side
            if taken[side] == len(pools[side]):
                break  # every template used: more than 60 words, never reached in practice
        pool, i = pools[side], taken[side]
        j = rng.randrange(i, len(pool))
        pool[i], pool[j] = pool[j], pool[i]
        taken[side] += 1
        out.extend(_fill(rng, pool[i]).split())
    text = " ".join(out[:words])
    return text if text.endswith((".", "?", "!")) else text.rstrip(",:;") + "."


def make_history(messages: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """A deterministic chat of ``messages`` alternating user/assistant messages, user first.

    Each message is 20 to 60 words (uniformly: long enough that token counts behave like real
    chat) of small talk; each user message picks a topic and the reply stays on it.

    Args:
        messages: How many messages (even, at least 2).
        seed: The random seed; the same seed gives the same history.

    Returns:
        OpenAI message dicts, without a system message.

    Raises:
        UsageError: ``messages`` is odd or below 2.
    """
    if isinstance(messages, bool) or not isinstance(messages, int) or messages < 2:
        raise UsageError(f"a history needs at least 2 messages, got {messages!r}")
    if messages % 2:
        raise UsageError(f"sizes must be even (user/assistant pairs), got {messages}")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    topic = pick_topic(rng)
    for i in range(messages):
        role = "user" if i % 2 == 0 else "assistant"
        if role == "user":
            topic = pick_topic(rng)
        out.append({"role": role, "content": _exact_text(rng, role, topic, rng.randint(20, 60))})
    return out


def summary_text(seed: int) -> str:
    """Fourteen "- fact" lines of the same small talk: what a summariser might return."""
    rng = random.Random(seed + 1)
    lines = [_fill(rng, rng.choice(pick_topic(rng)[0])) for _ in range(14)]
    return "\n".join(f"- {line}" for line in lines)


__all__ = ["Topic", "make_history", "message_text", "pick_topic", "summary_text"]
