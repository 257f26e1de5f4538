"""Relative and absolute date expressions pinned to the time a message was written."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from memfuse.layers.dates import DateMention, add_months, format_day, resolve_dates

# A Monday afternoon, as in the first LoCoMo session.
MONDAY = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def only_mention(text: str, reference: datetime = MONDAY) -> DateMention:
    mentions = resolve_dates(text, reference).mentions
    assert len(mentions) == 1, mentions
    return mentions[0]


@pytest.mark.parametrize(
    ("phrase", "label", "first_day", "end_day"),
    [
        ("today", "8 May 2023", date(2023, 5, 8), date(2023, 5, 9)),
        ("tonight", "8 May 2023", date(2023, 5, 8), date(2023, 5, 9)),
        ("this morning", "8 May 2023", date(2023, 5, 8), date(2023, 5, 9)),
        ("this evening", "8 May 2023", date(2023, 5, 8), date(2023, 5, 9)),
        ("yesterday", "7 May 2023", date(2023, 5, 7), date(2023, 5, 8)),
        ("last night", "7 May 2023", date(2023, 5, 7), date(2023, 5, 8)),
        ("the day before yesterday", "6 May 2023", date(2023, 5, 6), date(2023, 5, 7)),
        ("tomorrow", "9 May 2023", date(2023, 5, 9), date(2023, 5, 10)),
        ("the day after tomorrow", "10 May 2023", date(2023, 5, 10), date(2023, 5, 11)),
        ("last week", "the week of 1 May 2023", date(2023, 5, 1), date(2023, 5, 8)),
        ("this week", "the week of 8 May 2023", date(2023, 5, 8), date(2023, 5, 15)),
        ("next week", "the week of 15 May 2023", date(2023, 5, 15), date(2023, 5, 22)),
        ("last month", "April 2023", date(2023, 4, 1), date(2023, 5, 1)),
        ("this month", "May 2023", date(2023, 5, 1), date(2023, 6, 1)),
        ("next month", "June 2023", date(2023, 6, 1), date(2023, 7, 1)),
        ("last year", "2022", date(2022, 1, 1), date(2023, 1, 1)),
        ("this year", "2023", date(2023, 1, 1), date(2024, 1, 1)),
        ("next year", "2024", date(2024, 1, 1), date(2025, 1, 1)),
        ("last weekend", "the weekend of 6 May 2023", date(2023, 5, 6), date(2023, 5, 8)),
        ("this past weekend", "the weekend of 6 May 2023", date(2023, 5, 6), date(2023, 5, 8)),
        ("this weekend", "the weekend of 13 May 2023", date(2023, 5, 13), date(2023, 5, 15)),
        ("next weekend", "the weekend of 20 May 2023", date(2023, 5, 20), date(2023, 5, 22)),
        ("last Friday", "5 May 2023", date(2023, 5, 5), date(2023, 5, 6)),
        ("this Friday", "12 May 2023", date(2023, 5, 12), date(2023, 5, 13)),
        ("next Friday", "12 May 2023", date(2023, 5, 12), date(2023, 5, 13)),
        ("last Monday", "1 May 2023", date(2023, 5, 1), date(2023, 5, 2)),
        ("this Monday", "8 May 2023", date(2023, 5, 8), date(2023, 5, 9)),
        ("next Monday", "15 May 2023", date(2023, 5, 15), date(2023, 5, 16)),
        ("last Sunday", "7 May 2023", date(2023, 5, 7), date(2023, 5, 8)),
        ("3 days ago", "5 May 2023", date(2023, 5, 5), date(2023, 5, 6)),
        ("three days ago", "5 May 2023", date(2023, 5, 5), date(2023, 5, 6)),
        ("a couple of days ago", "6 May 2023", date(2023, 5, 6), date(2023, 5, 7)),
        ("a few days ago", "5 May 2023", date(2023, 5, 5), date(2023, 5, 6)),
        ("an hour ago", "8 May 2023", date(2023, 5, 8), date(2023, 5, 9)),
        ("a week ago", "the week of 1 May 2023", date(2023, 5, 1), date(2023, 5, 8)),
        ("two weeks ago", "the week of 24 April 2023", date(2023, 4, 24), date(2023, 5, 1)),
        ("a month ago", "April 2023", date(2023, 4, 1), date(2023, 5, 1)),
        ("6 months ago", "November 2022", date(2022, 11, 1), date(2022, 12, 1)),
        ("a few years ago", "2020", date(2020, 1, 1), date(2021, 1, 1)),
        ("in 3 days", "11 May 2023", date(2023, 5, 11), date(2023, 5, 12)),
        ("in two weeks", "the week of 22 May 2023", date(2023, 5, 22), date(2023, 5, 29)),
        ("last summer", "summer 2022", date(2022, 6, 1), date(2022, 9, 1)),
        ("last spring", "spring 2022", date(2022, 3, 1), date(2022, 6, 1)),
        ("last winter", "winter 2022-2023", date(2022, 12, 1), date(2023, 3, 1)),
        ("last fall", "fall 2022", date(2022, 9, 1), date(2022, 12, 1)),
        ("last autumn", "autumn 2022", date(2022, 9, 1), date(2022, 12, 1)),
        ("this summer", "summer 2023", date(2023, 6, 1), date(2023, 9, 1)),
    ],
)
def test_relative_phrases_on_a_monday_afternoon(
    phrase: str, label: str, first_day: date, end_day: date
) -> None:
    resolution = resolve_dates(f"We talked about it {phrase}.", MONDAY)

    assert resolution.text == f"We talked about it {phrase} ({label})."
    [mention] = resolution.mentions
    assert mention == DateMention(
        phrase=phrase,
        start=datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC),
        end=datetime(end_day.year, end_day.month, end_day.day, tzinfo=UTC),
        label=label,
    )


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The show was on 7 May 2023.", "7 May 2023"),
        ("The show was on May 7, 2023.", "7 May 2023"),
        ("The show was on May 7th.", "7 May 2023"),
        ("The show was on the 7th of May.", "7 May 2023"),
        ("The show was on 2023-05-07.", "7 May 2023"),
        ("We met in May 2022.", "May 2022"),
        ("We met in 2022.", "2022"),
    ],
)
def test_absolute_dates_are_found_but_left_as_written(text: str, label: str) -> None:
    resolution = resolve_dates(text, MONDAY)

    assert resolution.text == text
    assert [mention.label for mention in resolution.mentions] == [label]


def test_the_message_in_the_first_locomo_session() -> None:
    resolution = resolve_dates(
        "I went to a LGBTQ support group yesterday and it was so powerful.", MONDAY
    )

    assert resolution.text == (
        "I went to a LGBTQ support group yesterday (7 May 2023) and it was so powerful."
    )
    assert resolution.occurred_at == datetime(2023, 5, 7, tzinfo=UTC)


def test_several_mentions_in_text_order_and_occurred_at_is_the_first() -> None:
    resolution = resolve_dates("Last Friday was busy and next week will be too.", MONDAY)

    assert [mention.phrase for mention in resolution.mentions] == ["Last Friday", "next week"]
    assert resolution.text == (
        "Last Friday (5 May 2023) was busy and next week (the week of 15 May 2023) will be too."
    )
    assert resolution.occurred_at == datetime(2023, 5, 5, tzinfo=UTC)


def test_case_is_ignored_and_the_phrase_is_kept_as_written() -> None:
    mention = only_mention("YESTERDAY was long")

    assert mention.phrase == "YESTERDAY"
    assert mention.label == "7 May 2023"


def test_the_longest_expression_wins_over_the_one_inside_it() -> None:
    resolution = resolve_dates("It arrived the day before yesterday.", MONDAY)

    assert resolution.text == "It arrived the day before yesterday (6 May 2023)."
    assert len(resolution.mentions) == 1


def test_the_label_follows_a_possessive() -> None:
    resolution = resolve_dates("Last week's party was fun.", MONDAY)

    assert resolution.text == "Last week's (the week of 1 May 2023) party was fun."


def test_resolving_twice_does_not_annotate_twice() -> None:
    once = resolve_dates("I saw her yesterday and last week.", MONDAY)
    twice = resolve_dates(once.text, MONDAY)

    assert twice.text == once.text
    assert twice.mentions == once.mentions


def test_a_phrase_already_followed_by_a_date_keeps_that_date() -> None:
    resolution = resolve_dates("We left yesterday (Sunday 7 May) at noon.", MONDAY)

    assert resolution.text == "We left yesterday (Sunday 7 May) at noon."
    assert [mention.phrase for mention in resolution.mentions] == ["yesterday"]


@pytest.mark.parametrize(
    "text",
    [
        "See you on Friday!",  # a bare weekday may be past or future
        "Friday was fun.",
        "What is your last name?",
        "At last we got there.",
        "The last week has been hard.",  # the past seven days, not last calendar week
        "Over the next year we will see.",
        "Next summer we might travel.",  # May: this coming summer or the one after?
        "It was 31 February 2023, apparently.",
        "You may 5 times ask.",
        "I march 5 miles a day.",
        "",
        "(((",
        "9999 years ago",
    ],
)
def test_ambiguous_impossible_or_unrelated_text_is_not_resolved(text: str) -> None:
    resolution = resolve_dates(text, MONDAY)

    assert resolution.mentions == ()
    assert resolution.text == text
    assert resolution.occurred_at is None


@pytest.mark.parametrize(
    ("phrase", "label"),
    [
        ("last Monday", "8 May 2023"),
        ("last Friday", "5 May 2023"),
        ("this Monday", "8 May 2023"),
        ("this Friday", "12 May 2023"),
        ("next Monday", "15 May 2023"),
        ("next Friday", "12 May 2023"),
        ("next Wednesday", "17 May 2023"),
        ("last Wednesday", "3 May 2023"),
    ],
)
def test_weekdays_on_either_side_of_a_wednesday(phrase: str, label: str) -> None:
    wednesday = datetime(2023, 5, 10, 9, 0, tzinfo=UTC)

    assert only_mention(phrase, wednesday).label == label


def test_add_months_clamps_the_day_to_the_month() -> None:
    assert add_months(date(2023, 3, 31), -1) == date(2023, 2, 28)
    assert add_months(date(2024, 3, 31), -1) == date(2024, 2, 29)
    assert add_months(date(2023, 1, 31), 1) == date(2023, 2, 28)
    assert add_months(date(2023, 8, 31), 1) == date(2023, 9, 30)
    assert add_months(date(2023, 1, 15), -1) == date(2022, 12, 15)
    assert add_months(date(2023, 12, 15), 1) == date(2024, 1, 15)


def test_a_month_ago_on_the_last_of_march_is_february() -> None:
    march_31 = datetime(2023, 3, 31, 20, 0, tzinfo=UTC)

    assert only_mention("a month ago", march_31).label == "February 2023"
    assert only_mention("last month", march_31).label == "February 2023"


@pytest.mark.parametrize(
    ("reference", "phrase", "label"),
    [
        (datetime(2023, 1, 1, 10, 0, tzinfo=UTC), "yesterday", "31 December 2022"),
        (datetime(2023, 1, 2, 10, 0, tzinfo=UTC), "last week", "the week of 26 December 2022"),
        (datetime(2023, 1, 15, 10, 0, tzinfo=UTC), "last month", "December 2022"),
        (datetime(2023, 1, 15, 10, 0, tzinfo=UTC), "last winter", "winter 2021-2022"),
        (datetime(2023, 1, 15, 10, 0, tzinfo=UTC), "this winter", "winter 2022-2023"),
        (datetime(2022, 12, 31, 10, 0, tzinfo=UTC), "tomorrow", "1 January 2023"),
        (datetime(2022, 12, 31, 10, 0, tzinfo=UTC), "next week", "the week of 2 January 2023"),
        (datetime(2022, 12, 31, 10, 0, tzinfo=UTC), "next month", "January 2023"),
        (datetime(2022, 12, 31, 10, 0, tzinfo=UTC), "in 2 days", "2 January 2023"),
        (datetime(2023, 7, 15, 10, 0, tzinfo=UTC), "last summer", "summer 2022"),
        (datetime(2023, 10, 15, 10, 0, tzinfo=UTC), "last summer", "summer 2023"),
    ],
)
def test_year_and_season_boundaries(reference: datetime, phrase: str, label: str) -> None:
    assert only_mention(phrase, reference).label == label


def test_a_date_without_a_year_takes_the_references_year() -> None:
    new_year = datetime(2024, 1, 3, tzinfo=UTC)

    assert only_mention("on March 7th", new_year).label == "7 March 2024"


def test_today_is_the_date_in_the_references_own_timezone() -> None:
    tokyo = timezone(timedelta(hours=9), "JST")
    reference = datetime(2023, 5, 8, 1, 30, tzinfo=tokyo)  # still 7 May in UTC

    mention = only_mention("yesterday", reference)

    assert mention.label == "7 May 2023"
    assert mention.start == datetime(2023, 5, 7, tzinfo=tokyo)
    assert mention.start.tzinfo is tokyo
    assert mention.end == datetime(2023, 5, 8, tzinfo=tokyo)


def test_periods_across_a_daylight_saving_change_start_at_local_midnight() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        new_york = zoneinfo.ZoneInfo("America/New_York")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    reference = datetime(2023, 3, 13, 9, 0, tzinfo=new_york)  # the Monday after the change

    mention = only_mention("last weekend", reference)

    assert (mention.start.hour, mention.end.hour) == (0, 0)
    elapsed = mention.end.astimezone(UTC) - mention.start.astimezone(UTC)
    assert elapsed == timedelta(hours=47)  # clocks went forward that Sunday


def test_a_naive_reference_gives_naive_periods() -> None:
    mention = only_mention("yesterday", datetime(2023, 5, 8, 13, 56))

    assert mention.start == datetime(2023, 5, 7)
    assert mention.start.tzinfo is None


def test_format_day_has_no_zero_padding() -> None:
    assert format_day(date(2023, 5, 7)) == "7 May 2023"
