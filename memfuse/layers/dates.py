"""Resolve relative and absolute date expressions in English text against a message's time.

A fact such as "I went there yesterday" is useless a month later unless "yesterday" is pinned
to a date. :func:`resolve_dates` finds date expressions, turns each into a period
``[start, end)`` in the reference's timezone, and rewrites the text so that every relative
phrase carries its absolute label: ``"yesterday (7 May 2023)"``.

Everything here is pure, deterministic and stdlib-only. Conventions:

* weeks start on Monday; "this Friday" is the Friday of the reference's Monday-start week,
  "last Friday" the most recent Friday strictly before the reference day, "next Friday" the
  first Friday strictly after it;
* "last/this/next weekend" is the Saturday and Sunday of the previous/current/next week;
* "N hours/days ago" denotes a day, "N weeks ago" a Monday-start week, "N months ago" a month
  and "N years ago" a year, each containing the reference moved back by N units (months
  clamp the day, so 31 March minus one month lands in February); "in N days/weeks/months/
  years" likewise forward; N is digits, one to twelve, "a"/"an", "a couple (of)" (2) or
  "a few" (3);
* "this past weekend" means "last weekend", "this coming Friday" "next Friday";
* seasons are the northern hemisphere's meteorological ones (spring is March to May, summer
  June to August, fall September to November, winter December to February, labelled
  "winter 2022-2023"); "last summer" is the latest summer that ended before the current
  season began, "this summer" the one of the reference's year ("this winter" before June is
  the one that began the previous December);
* absolute dates ("7 May 2023", "May 7, 2023", "7th of May", "2023-05-07", "May 2023",
  "in 2022") are found and left as written; one without a year takes the reference's.

Deliberately not resolved, because a wrong date is worse than none: a bare weekday ("Friday",
"on Friday", which may be past or future), a bare month ("in May"), "next summer", phrases
introduced by "the" ("the last week", "the next year", which mean a span ending or starting
now rather than a calendar period), and anything not listed above. ``last`` in other senses
("my last name", "at last") is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

__all__ = ["DateMention", "DateResolution", "add_months", "format_day", "resolve_dates"]


@dataclass(frozen=True, slots=True)
class DateMention:
    """One date expression found in a text and the period it denotes.

    ``start`` is midnight of the period's first day and ``end`` midnight after its last day,
    both in the reference's timezone; ``label`` renders the period without reference to "now".
    """

    phrase: str
    start: datetime
    end: datetime
    label: str


@dataclass(frozen=True, slots=True)
class DateResolution:
    """The text with relative phrases annotated, and every date mention in text order."""

    text: str
    mentions: tuple[DateMention, ...]

    @property
    def occurred_at(self) -> datetime | None:
        """The start of the first mention: when the text says something happened, if it does."""
        return self.mentions[0].start if self.mentions else None


_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MONTHS: dict[str, int] = {name.lower(): number for number, name in enumerate(_MONTH_NAMES, 1)}
_MONTHS.update(
    {
        "jan": 1,
        "feb": 2,
        "mar": 3,
        "apr": 4,
        "jun": 6,
        "jul": 7,
        "aug": 8,
        "sep": 9,
        "sept": 9,
        "oct": 10,
        "nov": 11,
        "dec": 12,
    }
)
_WEEKDAYS = {
    name: number
    for number, name in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
}
_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "a": 1,
    "an": 1,
}
# Meteorological seasons: the month each starts in.
_SEASON_START = {"spring": 3, "summer": 6, "fall": 9, "autumn": 9, "winter": 12}
# Month names that are also common lowercase words ("you may 2 ...", "we march 5 miles");
# without a year they are a date only when capitalised.
_AMBIGUOUS_MONTHS = frozenset({"may", "march"})

_F = re.IGNORECASE
_MONTH = (
    r"(?P<mon>january|february|march|april|may|june|july|august|september|october|november"
    r"|december|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\b\.?"
)
_ORDINAL = r"(?:st|nd|rd|th)?"
_NUMBER = (
    r"(?P<n>\d{1,4}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve"
    r"|a\s+couple(?:\s+of)?|couple\s+of|a\s+few|few|an|a)"
)
_UNIT = r"(?P<unit>hour|day|week|month|year)s?"
_WEEKDAY = r"monday|tuesday|wednesday|thursday|friday|saturday|sunday"

_SIMPLE_RE = re.compile(
    r"\b(?P<w>the\s+day\s+before\s+yesterday|the\s+day\s+after\s+tomorrow|yesterday|today"
    r"|tonight|tomorrow|last\s+night|this\s+(?:morning|afternoon|evening))\b",
    _F,
)
# "the last week" is the span of seven days ending now, not last calendar week.
_RELATIVE_RE = re.compile(
    r"(?<!the\s)\b(?P<dir>this\s+past|this\s+coming|last|this|next)\s+"
    rf"(?P<what>weekend|week|month|year|{_WEEKDAY}|summer|winter|spring|fall|autumn)\b",
    _F,
)
_AGO_RE = re.compile(rf"\b{_NUMBER}\s+{_UNIT}\s+ago\b", _F)
_IN_RE = re.compile(rf"\bin\s+{_NUMBER}\s+{_UNIT}\b", _F)
_DAY_MONTH_RE = re.compile(
    rf"\b(?P<d>\d{{1,2}}){_ORDINAL}\s+(?:of\s+)?{_MONTH}(?:,?\s+(?P<y>\d{{4}})\b)?", _F
)
_MONTH_DAY_RE = re.compile(
    rf"\b{_MONTH}\s+(?P<d>\d{{1,2}}){_ORDINAL}\b(?:,?\s+(?P<y>\d{{4}})\b)?", _F
)
_MONTH_YEAR_RE = re.compile(rf"\b{_MONTH},?\s+(?P<y>\d{{4}})\b", _F)
_IN_YEAR_RE = re.compile(r"\bin\s+(?P<y>(?:1[89]|2[01])\d\d)\b", _F)
_ISO_RE = re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})\b")
# A parenthesis right after a phrase; it counts as an annotation when it holds a date.
_PARENTHESIS_RE = re.compile(r"\s*\(([^()]{1,60})\)")
_DATE_WORD_RE = re.compile(
    r"\b(?:\d{4}|" + "|".join(name.lower() for name in _MONTH_NAMES) + r")\b", _F
)
_POSSESSIVE_RE = re.compile(r"['\u2019]s\b")

_Period = tuple[date, date, str]
_Handler = Callable[[re.Match[str], datetime], _Period | None]


def format_day(day: date) -> str:
    """``"7 May 2023"``: day, month name and year, without zero padding."""
    return f"{day.day} {_MONTH_NAMES[day.month - 1]} {day.year}"


def _format_month(day: date) -> str:
    return f"{_MONTH_NAMES[day.month - 1]} {day.year}"


def add_months(day: date, months: int) -> date:
    """``day`` moved by ``months``, clamping the day to the target month's length.

    31 March minus one month is 28 (or 29) February, not 3 March: without the clamp the
    result would fall in the wrong month.
    """
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_first = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    length = (next_first - date(year, month, 1)).days
    return date(year, month, min(day.day, length))


def _day_period(day: date) -> _Period:
    return day, day + timedelta(days=1), format_day(day)


def _week_period(day: date) -> _Period:
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=7), f"the week of {format_day(monday)}"


def _weekend_period(day: date) -> _Period:
    saturday = day - timedelta(days=day.weekday()) + timedelta(days=5)
    return saturday, saturday + timedelta(days=2), f"the weekend of {format_day(saturday)}"


def _month_period(day: date) -> _Period:
    first = day.replace(day=1)
    return first, add_months(first, 1), _format_month(first)


def _year_period(year: int) -> _Period:
    return date(year, 1, 1), date(year + 1, 1, 1), str(year)


def _season_period(season: str, year: int) -> _Period:
    """The occurrence of ``season`` starting in ``year`` (winter starts in December)."""
    first = date(year, _SEASON_START[season], 1)
    label = f"{season} {year}-{year + 1}" if season == "winter" else f"{season} {year}"
    return first, add_months(first, 3), label


def _current_season_start(day: date) -> date:
    """The first day of the meteorological season containing ``day``."""
    back = (day.month - 3) % 3  # months since the season began
    return add_months(day.replace(day=1), -back)


def _parse_number(text: str) -> int:
    words = text.lower().split()
    if "few" in words:
        return 3
    if "couple" in words:
        return 2
    if words[0].isdigit():
        return int(words[0])
    return _NUMBER_WORDS[words[0]]


def _shift(now: datetime, amount: int, unit: str) -> _Period:
    """The period of ``unit`` granularity containing ``now`` moved by ``amount`` units."""
    if unit == "hour":
        return _day_period((now + timedelta(hours=amount)).date())
    today = now.date()
    if unit == "day":
        return _day_period(today + timedelta(days=amount))
    if unit == "week":
        return _week_period(today + timedelta(weeks=amount))
    if unit == "month":
        return _month_period(add_months(today, amount))
    return _year_period(today.year + amount)


def _simple(match: re.Match[str], now: datetime) -> _Period:
    word = " ".join(match["w"].lower().split())
    offset = {
        "the day before yesterday": -2,
        "yesterday": -1,
        "last night": -1,
        "tomorrow": 1,
        "the day after tomorrow": 2,
    }.get(word, 0)
    return _day_period(now.date() + timedelta(days=offset))


def _relative(match: re.Match[str], now: datetime) -> _Period | None:
    today = now.date()
    direction = match["dir"].lower().split()[-1]
    step = {"last": -1, "past": -1, "this": 0, "next": 1, "coming": 1}[direction]
    what = match["what"].lower()
    if what == "week":
        return _week_period(today + timedelta(weeks=step))
    if what == "weekend":
        return _weekend_period(today + timedelta(weeks=step))
    if what == "month":
        return _month_period(add_months(today, step))
    if what == "year":
        return _year_period(today.year + step)
    if what in _WEEKDAYS:
        target = _WEEKDAYS[what]
        if step < 0:
            back = (today.weekday() - target) % 7 or 7
            return _day_period(today - timedelta(days=back))
        if step > 0:
            ahead = (target - today.weekday()) % 7 or 7
            return _day_period(today + timedelta(days=ahead))
        return _day_period(today + timedelta(days=target - today.weekday()))
    return _season(what, step, today)


def _season(season: str, step: int, today: date) -> _Period | None:
    if step > 0:
        return None  # "next summer" in May may mean either of two summers
    if step == 0:
        if season == "winter":
            return _season_period(season, today.year - 1 if today.month <= 5 else today.year)
        return _season_period(season, today.year)
    current = _current_season_start(today)
    for year in (today.year, today.year - 1, today.year - 2):
        period = _season_period(season, year)
        if period[1] <= current:
            return period
    return None  # unreachable for real seasons; kept so odd input never raises


def _ago(match: re.Match[str], now: datetime) -> _Period:
    return _shift(now, -_parse_number(match["n"]), match["unit"].lower())


def _in(match: re.Match[str], now: datetime) -> _Period:
    return _shift(now, _parse_number(match["n"]), match["unit"].lower())


def _absolute_day(match: re.Match[str], now: datetime) -> _Period | None:
    month_word = match["mon"]
    year = match["y"]
    if year is None and month_word in _AMBIGUOUS_MONTHS:
        return None  # lowercase "may"/"march" without a year is a verb more often than not
    day = date(int(year) if year else now.year, _MONTHS[month_word.lower()], int(match["d"]))
    return _day_period(day)


def _month_year(match: re.Match[str], now: datetime) -> _Period:
    return _month_period(date(int(match["y"]), _MONTHS[match["mon"].lower()], 1))


def _year(match: re.Match[str], now: datetime) -> _Period:
    return _year_period(int(match["y"]))


def _iso(match: re.Match[str], now: datetime) -> _Period:
    return _day_period(date(int(match["y"]), int(match["m"]), int(match["d"])))


# (pattern, handler, relative?, group giving the phrase). Relative phrases get a label in
# parentheses; absolute dates are already absolute and are left as written.
_PATTERNS: tuple[tuple[re.Pattern[str], _Handler, bool, str | int], ...] = (
    (_SIMPLE_RE, _simple, True, 0),
    (_RELATIVE_RE, _relative, True, 0),
    (_AGO_RE, _ago, True, 0),
    (_IN_RE, _in, True, 0),
    (_DAY_MONTH_RE, _absolute_day, False, 0),
    (_MONTH_DAY_RE, _absolute_day, False, 0),
    (_MONTH_YEAR_RE, _month_year, False, 0),
    (_IN_YEAR_RE, _year, False, "y"),
    (_ISO_RE, _iso, False, 0),
)


def _midnight(day: date, tz: tzinfo | None) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def resolve_dates(text: str, reference: datetime) -> DateResolution:
    """Find the date expressions in ``text`` and pin them to periods relative to ``reference``.

    ``reference`` is when the text was written; results keep its tzinfo, and "today" is its
    local date. The returned text has each relative phrase followed by its label in
    parentheses, unless a parenthesised date already follows it, so resolving twice changes
    nothing. Where expressions overlap, the earliest and then the longest wins ("the day
    before yesterday" over "yesterday"). Unknown or impossible dates ("31 February") are
    skipped: this never raises on odd text.
    """
    tz = reference.tzinfo
    # (start, -length, pattern priority, end, relative, period or None). A candidate that
    # names an impossible date still claims its span, so "31 February 2023" does not fall
    # back to "February 2023".
    found: list[tuple[int, int, int, int, bool, _Period | None]] = []
    for priority, (pattern, handler, relative, group) in enumerate(_PATTERNS):
        for match in pattern.finditer(text):
            try:
                period = handler(match, reference)
            except (ValueError, OverflowError, KeyError):
                period = None
            start, end = match.span(group)
            found.append((start, start - end, priority, end, relative, period))
    if not found:
        return DateResolution(text, ())
    found.sort(key=lambda candidate: candidate[:3])

    pieces: list[str] = []
    mentions: list[DateMention] = []
    cursor = 0
    for start, _, _, end, relative, period in found:
        if start < cursor:
            continue  # overlaps a longer or earlier expression, or sits in its annotation
        pieces.append(text[cursor:end])
        cursor = end
        if period is None:
            continue
        first, last, label = period
        mentions.append(
            DateMention(text[start:end], _midnight(first, tz), _midnight(last, tz), label)
        )
        if not relative:
            continue
        possessive = _POSSESSIVE_RE.match(text, cursor)
        if possessive:
            pieces.append(possessive.group())
            cursor = possessive.end()
        annotated = _PARENTHESIS_RE.match(text, cursor)
        if annotated and _DATE_WORD_RE.search(annotated.group(1)):
            pieces.append(annotated.group())
            cursor = annotated.end()
        else:
            pieces.append(f" ({label})")
    pieces.append(text[cursor:])
    return DateResolution("".join(pieces), tuple(mentions))
