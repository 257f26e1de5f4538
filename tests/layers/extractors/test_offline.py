"""The offline extractor on LoCoMo-like chat turns: what becomes a fact and what does not."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from memfuse.layers.extractors.base import FactCandidate, FactExtractor
from memfuse.layers.extractors.offline import (
    OfflineFactExtractor,
    facts_from_message,
    split_sentences,
)
from memfuse.types import ChunkData

SESSION_1 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
USER, AGENT, SESSION = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def turn(
    content: str,
    speaker: str | None = "Caroline",
    at: datetime = SESSION_1,
    seq: int = 1,
    role: str | None = "user",
) -> ChunkData:
    """One chat message as the M0 layer hands it to an extractor."""
    return ChunkData(
        content=content,
        user_id=USER,
        agent_id=AGENT,
        session_id=SESSION,
        message_ids=(uuid.uuid5(SESSION, f"{seq}:{content}"),),
        first_seq=seq,
        last_seq=seq,
        started_at=at,
        ended_at=at,
        token_count=len(content.split()),
        role=role,
        speaker=speaker,
    )


async def extract(*messages: ChunkData) -> list[FactCandidate]:
    return await OfflineFactExtractor().extract(messages)


async def only_fact(
    content: str, speaker: str | None = "Caroline", role: str | None = "user"
) -> FactCandidate:
    facts = await extract(turn(content, speaker=speaker, role=role))
    assert len(facts) == 1, facts
    return facts[0]


def test_it_is_a_fact_extractor() -> None:
    extractor = OfflineFactExtractor()

    assert isinstance(extractor, FactExtractor)
    assert extractor.name == "offline"


async def test_a_dated_event_is_attributed_to_the_speaker_and_pinned_to_a_day() -> None:
    message = turn("I went to a LGBTQ support group yesterday and it was so powerful.")

    [fact] = await extract(message)

    assert fact.content == (
        "Caroline went to a LGBTQ support group yesterday (7 May 2023) and it was so powerful."
    )
    assert fact.fact_type == "event"
    assert fact.occurred_at == datetime(2023, 5, 7, tzinfo=UTC)
    assert fact.message_ids == message.message_ids
    assert fact.entities == ("Caroline", "LGBTQ")
    assert fact.key is None
    assert fact.confidence == 0.7


@pytest.mark.parametrize(
    "content",
    [
        "What did you paint last week?",
        "How have you been? 😊",
        "what are you up to",
        "Noted!",
        "Hi!",
        "Thanks!",
        "Thank you so much for sharing that with me!",
        "Wow, that's great!",
        "That's so awesome to hear!",
        "Haha",
        "See you",
        "See you tomorrow, take care!",
        "Sounds like a plan!",
        "I'm so happy for you!",
        "Me too!",
        "I know, right?",
        "Good luck with the adoption!",
        "Sure thing.",
        "😊",
    ],
)
async def test_questions_greetings_and_reactions_give_no_fact(content: str) -> None:
    assert await extract(turn(content)) == []


async def test_a_short_first_person_statement_with_content_is_kept() -> None:
    assert (await only_fact("I'm vegan.")).content == "Caroline is vegan."
    assert (await only_fact("I moved to Lisbon.")).content == "Caroline moved to Lisbon."


async def test_moving_supersedes_where_the_speaker_lives() -> None:
    earlier = await only_fact("I live in Boston.")
    later = await only_fact("I moved to Denver last month.")

    assert earlier.key == later.key == "caroline|lives_in"
    assert earlier.fact_type == later.fact_type == "attribute"
    assert later.content == "Caroline moved to Denver last month (April 2023)."
    assert later.occurred_at == datetime(2023, 4, 1, tzinfo=UTC)
    assert later.confidence == 0.8


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("My name is Caroline Smith.", "caroline|name"),
        ("I work at Google as a designer.", "caroline|works_at"),
        ("I'm currently working for the Red Cross.", "caroline|works_at"),
        ("I work as a nurse.", "caroline|job"),
        ("I'm a high school teacher.", "caroline|job"),
        ("My favorite book is Charlotte's Web.", "caroline|favorite_book"),
        ("My favourite thing to do is painting.", "caroline|favorite_thing_to_do"),
        ("I am 32 years old.", "caroline|age"),
        ("I'm 32.", "caroline|age"),
        ("I'm happily married.", "caroline|relationship_status"),
        ("I got engaged last weekend!", "caroline|relationship_status"),
        ("I'm single.", "caroline|relationship_status"),
    ],
)
async def test_attribute_patterns_name_their_slot(content: str, key: str) -> None:
    fact = await only_fact(content)

    assert fact.key == key
    assert fact.fact_type == "attribute"


@pytest.mark.parametrize(
    "content",
    [
        "I'm a big fan of pottery.",  # not a job
        "I'm an artist at heart.",
        "I'm 5 minutes away from the park.",  # not an age
        "I'm getting married next year!",  # a plan, not yet a status
        "I don't live in Boston anymore.",
        "I live in a tiny apartment.",  # not a place name
        "Melanie lives in Boston, she told me.",  # about someone else
    ],
)
async def test_sentences_that_only_look_like_attributes_have_no_key(content: str) -> None:
    assert all(fact.key is None for fact in await extract(turn(content)))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("I'm proud of my kids.", "Caroline is proud of Caroline's kids."),
        ("I've been painting since 2010.", "Caroline has been painting since 2010."),
        ("I\u2019ve adopted two cats.", "Caroline has adopted two cats."),
        ("I'll bring my guitar next time.", "Caroline will bring Caroline's guitar next time."),
        ("I'd love to visit Japan someday.", "Caroline would love to visit Japan someday."),
        ("I'd never been there before.", "Caroline had never been there before."),
        ("I don't really like horror movies.", "Caroline doesn't really like horror movies."),
        ("Melanie gave me a book about Van Gogh.", "Melanie gave Caroline a book about Van Gogh."),
        ("I built the shelf myself.", "Caroline built the shelf themself."),
        ("i think it's time for a change", "Caroline think it's time for a change"),
        (
            "Wow, I finally finished my first marathon!",
            "Caroline finally finished Caroline's first marathon!",
        ),
    ],
)
async def test_first_person_is_rewritten_to_the_speaker(content: str, expected: str) -> None:
    assert (await only_fact(content)).content == expected


async def test_thanks_followed_by_a_statement_is_kept() -> None:
    fact = await only_fact("Thanks to my therapist I finally sleep well again.")

    assert fact.content == "Thanks to Caroline's therapist Caroline finally sleep well again."


async def test_a_sentence_without_first_person_is_reported_as_said() -> None:
    fact = await only_fact("The transgender stories were so inspiring!")

    assert fact.content == "Caroline said: The transgender stories were so inspiring!"
    assert fact.fact_type == "statement"
    assert fact.confidence == 0.5


async def test_a_sentence_that_names_its_speaker_is_kept_as_is() -> None:
    fact = await only_fact("Caroline here, just checking in on the adoption process.")

    assert fact.content == "Caroline here, just checking in on the adoption process."
    assert fact.confidence == 0.6


async def test_the_speaker_falls_back_to_the_role() -> None:
    fact = await only_fact("I have two cats at home.", speaker=None, role="user")

    assert fact.content == "user has two cats at home."
    assert fact.entities[0] == "user"


@pytest.mark.parametrize(
    ("content", "fact_type"),
    [
        ("I'm going to the Pride parade next Saturday.", "plan"),
        ("I'm hoping to adopt a child soon.", "plan"),
        ("I love painting sunsets with Mel.", "preference"),
        ("My kids really enjoyed the camping trip.", "event"),
        ("I have two cats and a dog.", "statement"),
    ],
)
async def test_fact_types(content: str, fact_type: str) -> None:
    assert (await only_fact(content)).fact_type == fact_type


async def test_a_plan_for_a_future_day_occurs_on_that_day() -> None:
    fact = await only_fact("I'm going to the Pride parade next Saturday.")

    assert fact.occurred_at == datetime(2023, 5, 13, tzinfo=UTC)
    assert "next Saturday (13 May 2023)" in fact.content


async def test_entities_are_the_speaker_then_proper_nouns() -> None:
    fact = await only_fact("Yesterday I met Melanie's brother in New York with Dr. Lee.")

    assert fact.entities == ("Caroline", "Melanie", "New York", "Dr. Lee")


async def test_a_participant_opening_a_sentence_is_an_entity() -> None:
    facts = await extract(
        turn("How was the concert?", speaker="Melanie", seq=1),
        turn("Melanie, the concert with my sister was amazing.", seq=2),
        turn("Pottery classes take up my evenings now.", seq=3),
    )

    assert [fact.entities for fact in facts] == [("Caroline", "Melanie"), ("Caroline",)]


async def test_one_fact_per_sentence_in_order_with_lineage_to_its_message() -> None:
    first = turn("Hey Mel! I started a new job at the bakery. My boss is really kind.", seq=1)
    second = turn("We adopted a puppy named Oscar last week!", speaker="Melanie", seq=2)

    facts = await extract(first, second)

    assert [fact.content for fact in facts] == [
        "Caroline started a new job at the bakery.",
        "Caroline's boss is really kind.",
        "Melanie said: We adopted a puppy named Oscar last week (the week of 1 May 2023)!",
    ]
    assert [fact.message_ids for fact in facts] == [
        first.message_ids,
        first.message_ids,
        second.message_ids,
    ]
    assert facts[2].entities == ("Melanie", "Oscar")


async def test_a_sentence_repeated_in_a_message_is_one_fact() -> None:
    facts = await extract(turn("I love hiking in the Alps. I love hiking in the Alps!"))

    assert [fact.content for fact in facts] == ["Caroline love hiking in the Alps."]


async def test_the_same_messages_always_give_the_same_facts() -> None:
    messages = [
        turn("I went to a LGBTQ support group yesterday and it was so powerful.", seq=1),
        turn("I moved to Denver last month. My favorite color is blue.", seq=2),
        turn("That's great! We went camping in Yosemite.", speaker="Melanie", seq=3),
    ]

    assert await extract(*messages) == await extract(*messages)
    assert await extract(*messages) == await OfflineFactExtractor().extract(messages)


def test_sentences_are_split_at_punctuation_but_not_inside_abbreviations() -> None:
    text = (
        "Mr. Smith paid 3.5 dollars, e.g. for coffee. Really?! I was thinking... maybe not… "
        "Then we left 😊 See you\nBye"
    )

    assert split_sentences(text) == [
        "Mr. Smith paid 3.5 dollars, e.g. for coffee.",
        "Really?!",
        "I was thinking... maybe not…",
        "Then we left 😊",
        "See you",
        "Bye",
    ]


def test_a_typical_message_takes_well_under_a_millisecond() -> None:
    message = turn(
        "Hey Mel! I went to a LGBTQ support group yesterday and it was so powerful. The "
        "transgender stories were so inspiring! I was so happy and thankful for all the support."
    )
    facts_from_message(message)  # warm up

    started = time.perf_counter()
    for _ in range(200):
        facts_from_message(message)
    per_message = (time.perf_counter() - started) / 200

    assert per_message < 0.002  # typically about 0.15 ms; generous for slow CI machines
