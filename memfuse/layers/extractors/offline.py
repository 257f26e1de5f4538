"""A rule-based fact extractor that needs no network and no model.

It is the default when no LLM is configured and the baseline the LLM extractor is measured
against. Each message is split into sentences; questions, greetings and acknowledgements are
dropped; the rest become third-person facts about the speaker ("I moved to Lisbon" said by
Caroline becomes "Caroline moved to Lisbon"), with relative dates pinned to the message's time
by :func:`memfuse.layers.dates.resolve_dates`. Everything is regular expressions compiled once
at import, linear in the text, so it can run on the event loop.

What it does not do: resolve "you", "he", "she" or "it" to people (a wrong attribution is
worse than none), conjugate verbs ("I go" becomes "Caroline go"), merge facts across
sentences, or understand negation beyond not matching attribute patterns that contain it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from memfuse.layers.dates import DateResolution, resolve_dates
from memfuse.layers.extractors.base import FactCandidate
from memfuse.types import ChunkData

__all__ = ["OfflineFactExtractor", "facts_from_message", "split_sentences"]

# Confidence per form of fact: a slot-filling pattern is the most reliable reading, a
# first-person statement is the speaker's own claim, a reported sentence ("X said: ...") may
# be about anyone.
ATTRIBUTE_CONFIDENCE = 0.8
FIRST_PERSON_CONFIDENCE = 0.7
NAMED_CONFIDENCE = 0.6
REPORTED_CONFIDENCE = 0.5
INLINE_BATCH = 20
"""Batches up to this many messages (a few milliseconds) run on the event loop directly."""

_MIN_WORDS = 4


def _words(text: str) -> frozenset[str]:
    """The space-separated words of ``text``: a compact way to write a word list."""
    return frozenset(text.split())


_EMOJI = "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d]"
_EMOJI_RE = re.compile(f"{_EMOJI}+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})

# --- sentences -----------------------------------------------------------------------------

_BOUNDARY_RE = re.compile(
    r"\n\s*"
    rf"|(?:\.{{2,}}|\u2026|[.!?]+)[\"')\]]*(?:\s*{_EMOJI}+)*(?=\s|$)"
    rf"|{_EMOJI}+(?=\s+[A-Z])"
)
_PREVIOUS_TOKEN_RE = re.compile(r"(\S+)$")
_NEXT_CHARACTER_RE = re.compile(r"\s*(\S)")
# Abbreviations after which a period never ends a sentence.
_ABBREVIATIONS = _words(
    "mr mrs ms dr prof sr jr st vs e.g i.e eg ie approx dept fig vol mt ft u.s u.k jan feb "
    "mar apr jun jul aug sep sept oct nov dec"
)
# Abbreviations that may end a sentence: a boundary only when a capital letter follows.
_SOFT_ABBREVIATIONS = _words("etc a.m p.m am pm inc ltd co")


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    mark = match.group()
    if mark[0] == "\n" or mark[0] in "!?" or _EMOJI_RE.match(mark):
        return True
    next_char = _NEXT_CHARACTER_RE.match(text, match.end())
    following = next_char.group(1) if next_char else ""
    if mark.startswith("..") or mark[0] == "\u2026":
        return not following.islower()  # "I was thinking... maybe not" is one sentence
    previous = _PREVIOUS_TOKEN_RE.search(text, max(0, match.start() - 24), match.start())
    if previous is None:
        return True
    token = previous.group(1).lstrip("(\"'").lower()
    if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
        return False  # "Mr. Smith", "e.g. this", initials as in "J. K. Rowling"
    if token in _SOFT_ABBREVIATIONS:
        return following.isupper()
    return True


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences at ``.``, ``!``, ``?``, ellipses, emoji and line breaks.

    Periods after abbreviations ("Mr.", "e.g.") and inside numbers ("3.5") do not cut, and
    the punctuation stays with its sentence so questions can be recognised.
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY_RE.finditer(text):
        if not _is_boundary(text, match):
            continue
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


# --- what to skip --------------------------------------------------------------------------

_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")
_QUESTION_END_RE = re.compile(r"\?[!?.\s]*$")
_QUESTION_START_RE = re.compile(
    r"^(?:what|how|why|where|when|who|whom|whose|which|do\s+you|did\s+you|are\s+you|have\s+you"
    r"|can\s+you|could\s+you|would\s+you|will\s+you|is\s+it|is\s+there|are\s+there)\b",
    re.IGNORECASE,
)
_INTERJECTIONS = (
    r"hi|hey|hello|hiya|yo|wow|woah|whoa|oh|ooh|ah|aw+|omg|oh\s+my\s+(?:god|gosh)|gosh|ha(?:ha)+h?"
    r"|he(?:he)+|lol|lmao|yeah|yes|yep|yup|no|nope|nah|ok|okay|well|so|hmm+|um+|uh+|yay|cool"
    r"|great|nice|awesome|amazing|sure|right|true|exactly|absolutely|definitely|totally|indeed"
    r"|wonderful|fantastic|perfect|oops|ugh|alright|dear|man|dude|bye|goodbye|cheers|noted"
)
_LEADING_INTERJECTIONS_RE = re.compile(rf"^(?:(?:{_INTERJECTIONS})\b[\s,!.\-\u2014]*)+", re.I)
# Only interjections set off by punctuation are cut from a fact: "Wow, I ..." but not "Great
# Britain ...".
_SET_OFF_INTERJECTIONS_RE = re.compile(rf"^(?:(?:{_INTERJECTIONS})\s*[,!.\-\u2014]+\s*)+", re.I)
_POSITIVE = (
    r"great|awesome|amazing|cool|nice|wonderful|lovely|fantastic|incredible|beautiful|good"
    r"|sweet|exciting|inspiring|impressive|fun|interesting|brilliant|perfect|hilarious|funny"
    r"|sad|tough|hard|rough|crazy|wild|true|right|fair|stunning|gorgeous|adorable|cute|neat"
    r"|epic|huge|special|awful|terrible|scary|heartwarming|touching|powerful|meaningful"
)
_ACKNOWLEDGEMENT_RE = re.compile(
    r"^(?:"
    rf"(?:that|it|this|which|what)(?:'s|\s+is|\s+was|\s+sounds|\s+looks|\s+seems|\s+must\s+be"
    rf"|\s+must\s+have\s+been)(?:\s+like)?(?:\s+(?:so|really|very|super|totally|absolutely|just"
    rf"|such|an?|quite|pretty|truly|incredibly))*\s+(?:{_POSITIVE})"
    r"(?:\s+(?:to\s+hear|news|of\s+you|for\s+you|idea|thing|stuff|experience|time))?"
    r"(?:\s+(?:to\s+hear|that|about\s+that|it))?"
    # thanks, unless a first-person statement follows: "Thanks to therapy I sleep again."
    r"|(?:thanks?|thank\s+you|ty|thx)\b(?!\s+to\b)(?:(?!\bi\b|\bi').)*"
    r"|noted|got\s+it|you\s+too|me\s+too|same\s+here|same"
    r"|no\s+(?:problem|worries)|of\s+course|my\s+pleasure|(?:you're|you\s+are)\s+welcome"
    r"|see\s+(?:you|ya)\b.*|talk\s+(?:to\s+you\s+)?(?:soon|later)\b.*|take\s+care\b.*"
    r"|(?:have|enjoy)\s+(?:a|an|your)\s+(?:\w+\s+)?(?:day|night|evening|weekend|time|trip)\b.*"
    r"|good\s+(?:morning|night|afternoon|evening|luck)\b.*|congrat(?:s|ulations)\b.*"
    r"|(?:so\s+|really\s+)?(?:glad|happy)\s+(?:to\s+hear|for\s+you)\b.*"
    r"|i(?:'m|\s+am)\s+(?:so\s+|really\s+|very\s+)*(?:glad|happy|proud|sorry|excited)\s+"
    r"(?:to\s+hear|for\s+you|of\s+you|about\s+that)\b.*"
    r"|(?:it\s+was\s+)?(?:nice|great|good|lovely)\s+(?:to\s+)?(?:see|meet|talk(?:ing)?\s+to"
    r"|chat(?:ting)?\s+with|hear(?:ing)?\s+from)\s+you\b.*"
    r"|sounds\s+(?:good|great|fun|like\s+a\s+plan|amazing|awesome|lovely|perfect)\b.*"
    r"|i\s+(?:know|agree|see|understand|bet|guess)(?:\s+(?:right|what\s+you\s+mean))?"
    r"|i\s+(?:think|guess|hope|believe|suppose)\s+so"
    r"|keep\s+(?:it\s+up|going|up\s+the\s+good\s+work)\b.*|you\s+(?:got|can\s+do)\s+this\b.*"
    r"|(?:long\s+time\s+no\s+see|nice\s+one|well\s+done|good\s+job|way\s+to\s+go|fair\s+enough)"
    r")[\s!.,]*$",
    re.IGNORECASE,
)
_FILLER_TOKENS = _words(
    "i i'm i've i'll i'd me my mine myself am is was were do did does don't didn't have has "
    "had will would can could so too also really very just it that this know see agree guess "
    "think bet mean hope understand remember love like feel get got same totally definitely "
    "sure yes no not a an the to of and but or you your well oh thanks thank glad happy sorry "
    "hear mind wish wonder miss promise swear suppose believe doubt care try tried can't "
    "won't there here now again all right ok okay haha lol wow yeah fine good great alright "
    "agreed excited proud"
)


def _is_question(sentence: str) -> bool:
    bare = _EMOJI_RE.sub("", sentence).rstrip(" \"')]")
    if _QUESTION_END_RE.search(bare):
        return True
    return bool(bare) and bare[-1] not in ".!" and bool(_QUESTION_START_RE.match(bare))


def _is_filler(sentence: str) -> bool:
    """Greetings, thanks and reactions: a reply's politeness, not a fact about anyone."""
    bare = _EMOJI_RE.sub("", sentence).strip()
    rest = _LEADING_INTERJECTIONS_RE.sub("", bare)
    if not _WORD_RE.search(rest):
        return True
    return bool(_ACKNOWLEDGEMENT_RE.match(rest))


def _has_content(words: Sequence[str]) -> bool:
    return any(word.lower() not in _FILLER_TOKENS for word in words)


# --- speaker attribution -------------------------------------------------------------------

_FIRST_PERSON_RE = re.compile(
    r"(?<![\w'])(?:"
    r"(?P<i>i)(?:'(?P<contraction>m|ve|ll|d)|\s+(?P<aux>am|have|haven't|do|don't)(?![\w']))?"
    r"(?![\w']|\.\w)"
    r"|(?P<myself>myself)|(?P<my>my)|(?P<mine>mine)|(?P<me>me)"
    r")(?![\w'])",
    re.IGNORECASE,
)
_NEXT_WORDS_RE = re.compile(r"(?:\s+([A-Za-z']+))(?:\s+([A-Za-z']+))?")
_HAD_AFTER_I_D = _words("been had gone done seen got taken made better rather")
_ADVERBS_AFTER_I_D = _words("just never already ever always really not also")
_ED_NOT_PAST = _words("need feed proceed succeed exceed bleed breed speed seed weed heed")


def _would_or_had(text: str, end: int) -> str:
    """ "I'd": "had" before a past participle ("I'd been"), else "would" ("I'd love to")."""
    following = _NEXT_WORDS_RE.match(text, end)
    if following is None:
        return "would"
    word = following.group(1).lower()
    if word in _ADVERBS_AFTER_I_D and following.group(2):
        word = following.group(2).lower()
    if word in _HAD_AFTER_I_D or (word.endswith("ed") and word not in _ED_NOT_PAST):
        return "had"
    return "would"


def _attribute_speaker(text: str, speaker: str) -> str:
    """``text`` with first-person singular words replaced by the speaker's name."""

    def replace(match: re.Match[str]) -> str:
        if match.group("i"):
            form = (match.group("contraction") or match.group("aux") or "").lower()
            verb = {
                "m": "is",
                "am": "is",
                "ve": "has",
                "have": "has",
                "haven't": "hasn't",
                "ll": "will",
                "do": "does",
                "don't": "doesn't",
            }.get(form)
            if form == "d":
                verb = _would_or_had(text, match.end())
            return f"{speaker} {verb}" if verb else speaker
        if match.group("my") or match.group("mine"):
            return f"{speaker}'s"
        if match.group("myself"):
            already_named = _FIRST_PERSON_RE.search(text, 0, match.start()) is not None
            return "themself" if already_named else f"{speaker} themself"
        return speaker

    return _FIRST_PERSON_RE.sub(replace, text)


# --- attributes (supersession keys) --------------------------------------------------------

_CAPITALISED_RUN = r"[A-Z][\w'&.-]*(?:\s+[A-Z][\w'&.-]*)*"
_ADVERB = r"(?:now|currently|still|recently|just|finally|actually|also|officially|happily|newly)"
_I_AM = r"\b[Ii](?:'m|\s+am)"
_I_HAVE = r"\b[Ii](?:'ve|\s+have)"
_JOBS = (
    "teacher|nurse|doctor|physician|surgeon|engineer|developer|programmer|designer|lawyer"
    "|attorney|accountant|student|chef|cook|baker|writer|author|artist|painter|musician"
    "|photographer|scientist|researcher|professor|lecturer|manager|consultant|architect"
    "|pharmacist|dentist|therapist|psychologist|counselor|counsellor|social worker|firefighter"
    "|police officer|cop|pilot|mechanic|electrician|plumber|carpenter|farmer|journalist|editor"
    "|librarian|cashier|barista|waiter|waitress|bartender|salesperson|analyst|entrepreneur"
    "|veterinarian|vet|paramedic|soldier|secretary|receptionist|translator|tutor|coach"
    "|trainer|freelancer|actor|actress|dancer|singer|software engineer|data scientist"
    "|web developer|graphic designer|social media manager|real estate agent|driver"
    "|stay-at-home (?:mom|dad|parent)|homemaker|retiree|intern|clerk|technician|banker"
)
_KEY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("name", re.compile(rf"\b(?i:my\s+name\s+is)\s+(?P<v>{_CAPITALISED_RUN})")),
    (
        "lives_in",
        re.compile(
            rf"(?:\b[Ii](?:\s+{_ADVERB})*\s+(?:live|moved|relocated)"
            rf"|{_I_AM}\s+(?:{_ADVERB}\s+)*living"
            rf"|{_I_HAVE}\s+(?:{_ADVERB}\s+)*(?:moved|relocated))"
            rf"\s+(?:back\s+|here\s+|over\s+)?(?:to|in)\s+(?:the\s+)?(?P<v>{_CAPITALISED_RUN})"
        ),
    ),
    (
        "works_at",
        re.compile(
            rf"(?:\b[Ii](?:\s+{_ADVERB})*\s+work|{_I_AM}\s+(?:{_ADVERB}\s+)*working)"
            rf"\s+(?:at|for)\s+(?:the\s+)?(?P<v>{_CAPITALISED_RUN})"
        ),
    ),
    (
        "job",
        re.compile(
            rf"(?:\b[Ii](?:\s+{_ADVERB})*\s+work(?:\s+full-time|\s+part-time)?\s+as"
            rf"|{_I_AM}(?:\s+{_ADVERB})*(?:\s+working\s+as)?)"
            rf"\s+(?:an?\s+)?(?P<v>(?:[a-z-]+\s+){{0,2}}?(?:{_JOBS}))(?![\w'-])(?!\s+(?:of|at\s+heart))",
            re.IGNORECASE,
        ),
    ),
    (
        "favorite",
        re.compile(
            r"\b(?i:my)\s+(?:(?i:all-time|absolute|personal|current)\s+)?(?i:favou?rite)\s+"
            r"(?P<thing>[a-z]+(?:\s+[a-z]+){0,2}?)\s+(?:is|are)\s+\S"
        ),
    ),
    (
        "age",
        re.compile(
            rf"(?:{_I_AM}\s+(?P<v>\d{{1,3}})(?:\s+(?:years?|yrs?)(?:\s+old)?\b|(?=\s*(?:[.!,;]|$)))"
            rf"|\b[Ii]\s+(?:just\s+)?turned\s+(?P<w>\d{{1,3}})\b)"
        ),
    ),
    (
        "relationship_status",
        re.compile(
            rf"(?:{_I_AM}\s+(?:{_ADVERB}\s+)*|\b[Ii](?:\s+{_ADVERB})*\s+got\s+"
            rf"|{_I_HAVE}\s+been\s+)(?P<v>married|single|engaged|divorced|widowed|separated)\b",
            re.IGNORECASE,
        ),
    ),
)
# The job pattern starts with "I'm a": it must not read "I'm a big fan of" as a job.
_JOB_ARTICLE_RE = re.compile(r"(?:'m|\s+am|\s+as)\s+(?:[a-z]+\s+)*?an?\s", re.IGNORECASE)


def _key(sentence: str, speaker: str) -> str | None:
    """The supersession slot a sentence fills, as ``"<speaker>|<slot>"``, if it clearly does."""
    for slot, pattern in _KEY_PATTERNS:
        match = pattern.search(sentence)
        if match is None:
            continue
        if slot == "job" and not _JOB_ARTICLE_RE.search(match.group()):
            continue  # "I'm working as" / "I'm a" need the article; "I'm student" is odd
        if slot == "favorite":
            slot = "favorite_" + "_".join(match.group("thing").lower().split())
        return f"{speaker.lower()}|{slot}"
    return None


# --- fact types ----------------------------------------------------------------------------

_PLAN_RE = re.compile(
    r"\b(?:going\s+to|gonna|planning\b|plan\s+to|plans\s+to|want\s+to|wanna|hoping\s+to"
    r"|hope\s+to|intend\s+to|will|'ll|would\s+(?:like|love)\s+to|'d\s+(?:like|love)\s+to"
    r"|looking\s+forward\s+to|about\s+to|thinking\s+(?:about|of)\s+\w+ing|can't\s+wait\s+to"
    r"|next\s+(?:time|step))\b",
    re.IGNORECASE,
)
_PREFERENCE_RE = re.compile(
    r"\b(?:(?:i|we)(?:\s+(?:really|also|just|still|totally|absolutely|do|don't|didn't|never"
    r"|always|kind\s+of|truly|honestly|personally))*\s+(?:like|love|loved|liked|hate|hated"
    r"|enjoy|enjoyed|prefer|adore|dislike|can't\s+stand)"
    r"|favou?rites?|fan\s+of|(?:'m|\s+am)\s+(?:really\s+|so\s+)?into)\b",
    re.IGNORECASE,
)
_IRREGULAR_PAST = (
    "went|did|got|made|saw|met|took|had|bought|began|came|ran|ate|drank|wrote|found|gave|left"
    "|lost|won|spent|sent|felt|told|heard|brought|built|caught|taught|flew|drove|rode|sang"
    "|swam|grew|became|fell|forgot|held|kept|paid|sold|sat|stood|slept|woke|wore|threw|spoke"
    "|chose|broke|knew|thought"
)
_PAST_ACTION_RE = re.compile(
    r"\b(?:i|we|they|he|she|(?:my|our|his|her|their)\s+\w+)"
    r"\s+(?:(?:just|finally|recently|already|actually|also|really|once|even|never)\s+)?"
    rf"(?P<verb>[a-z]+ed|{_IRREGULAR_PAST})\b",
    re.IGNORECASE,
)


def _is_past_action(sentence: str) -> bool:
    for match in _PAST_ACTION_RE.finditer(sentence):
        if match.group("verb").lower() not in _ED_NOT_PAST:
            return True
    return False


def _fact_type(sentence: str, resolution: DateResolution, now: datetime, key: str | None) -> str:
    """The first that applies: attribute, dated past event, plan, preference, event."""
    if key is not None:
        return "attribute"
    today = datetime(now.year, now.month, now.day, tzinfo=now.tzinfo)
    tomorrow = today + timedelta(days=1)
    if any(mention.end <= today for mention in resolution.mentions):
        return "event"
    if any(mention.start >= tomorrow for mention in resolution.mentions):
        return "plan"
    if _PLAN_RE.search(sentence):
        return "plan"
    if _PREFERENCE_RE.search(sentence):
        return "preference"
    if resolution.mentions or _is_past_action(sentence):
        return "event"
    return "statement"


# --- entities ------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[A-Za-z0-9][\w&'-]*")
_NOT_ENTITIES = _words(
    "i i'm i've i'll i'd me my we you he she they it his her their our your its this that omg "
    "lol ok okay lmao btw haha yes no hi hey hello january february march april may june july "
    "august september october november december monday tuesday wednesday thursday friday "
    "saturday sunday"
)
# Capitalised at the start of a sentence for grammar's sake, not because they are names.
_SENTENCE_STARTERS = _words(
    "the a an my our your his her their its this that these those we you he she they it "
    "yesterday today tomorrow tonight last next so and but or well oh wow hey hi hello thanks "
    "thank yes no yeah just also then when what how why where who if because after before "
    "since there here maybe sure ok okay haha lol omg please let sounds that's it's we're "
    "you're they're there's what's being been do did does can could would should will was "
    "were is are am have has had not all some any every each one two many much more most very "
    "really actually honestly definitely totally anyway recently lately finally luckily "
    "unfortunately hopefully sometimes always never often usually still even again though "
    "although as at in on for with from to by about like love great good nice awesome amazing "
    "cool congrats congratulations glad happy sorry now back first once"
)


_TITLE_GAP_RE = re.compile(r"\.\s+")
_TITLES = _words("mr mrs ms dr prof st")


def _entities(sentence: str, speaker: str, names: frozenset[str]) -> tuple[str, ...]:
    """The speaker, then runs of capitalised words that are not there for grammar's sake.

    A single capitalised word opening the sentence is a name only if it is one of ``names``
    (the speakers of the conversation, casefolded): "Melanie gave ..." yes, "Pottery is ..." no.
    """
    found: list[str] = [speaker]
    seen = {speaker.casefold()}
    run: list[re.Match[str]] = []

    def flush() -> None:
        single_opening = len(run) == 1 and run[0].start() == 0
        if not (single_opening and _bare(run[0].group()) not in names):
            name = sentence[run[0].start() : run[-1].end()]
            if name.lower().endswith("'s"):
                name = name[:-2]
            if name.casefold() not in seen:
                seen.add(name.casefold())
                found.append(name)
        run.clear()

    for index, token in enumerate(_TOKEN_RE.finditer(sentence)):
        bare = _bare(token.group())
        is_name = token.group()[:1].isupper() and bare not in _NOT_ENTITIES
        if index == 0 and bare in _SENTENCE_STARTERS:
            is_name = False
        if run:
            gap = sentence[run[-1].end() : token.start()]
            contiguous = gap.isspace() or (
                bool(_TITLE_GAP_RE.fullmatch(gap)) and _bare(run[-1].group()) in _TITLES
            )
            if not is_name or not contiguous:
                flush()
        if is_name:
            run.append(token)
    if run:
        flush()
    return tuple(found)


def _bare(word: str) -> str:
    """``word`` lowercased without a possessive "'s"."""
    lowered = word.lower()
    return lowered[:-2] if lowered.endswith("'s") else lowered


# --- extraction ----------------------------------------------------------------------------


def _speaker_of(message: ChunkData) -> str:
    return (message.speaker or message.role or "").strip() or "user"


def _clean(sentence: str) -> str:
    text = " ".join(_EMOJI_RE.sub(" ", sentence.translate(_APOSTROPHES)).split())
    stripped = _SET_OFF_INTERJECTIONS_RE.sub("", text)
    if stripped and _WORD_RE.match(stripped) and stripped != text:
        text = stripped[0].upper() + stripped[1:]
    return text


def _names(sentence: str, speaker: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(speaker)}(?!\w)", sentence, re.IGNORECASE) is not None


def facts_from_message(
    message: ChunkData, participants: Collection[str] = ()
) -> list[FactCandidate]:
    """The facts one message states about its speaker, in sentence order, without repeats.

    ``participants`` are the names of the conversation's speakers; they are recognised as
    entities even where they open a sentence.
    """
    speaker = _speaker_of(message)
    names = frozenset(name.casefold() for name in (*participants, speaker))
    facts: list[FactCandidate] = []
    contents: set[str] = set()
    for raw in split_sentences(message.content):
        sentence = " ".join(raw.translate(_APOSTROPHES).split())
        if _is_question(sentence) or _is_filler(sentence):
            continue
        first_person = _FIRST_PERSON_RE.search(sentence) is not None
        words = _WORD_RE.findall(sentence)
        if len(words) < _MIN_WORDS and not (first_person and _has_content(words)):
            continue
        text = _clean(sentence)
        if not text:
            continue
        resolution = resolve_dates(text, message.ended_at)
        key = _key(text, speaker) if first_person else None
        if first_person:
            content = _attribute_speaker(resolution.text, speaker)
            confidence = ATTRIBUTE_CONFIDENCE if key else FIRST_PERSON_CONFIDENCE
        elif _names(text, speaker):
            content, confidence = resolution.text, NAMED_CONFIDENCE
        else:
            content, confidence = f"{speaker} said: {resolution.text}", REPORTED_CONFIDENCE
        seen = content.rstrip(" .!").casefold()
        if seen in contents:
            continue
        contents.add(seen)
        facts.append(
            FactCandidate(
                content=content,
                message_ids=message.message_ids,
                fact_type=_fact_type(text, resolution, message.ended_at, key),
                entities=_entities(text, speaker, names),
                confidence=confidence,
                occurred_at=resolution.occurred_at,
                key=key,
            )
        )
    return facts


class OfflineFactExtractor:
    """The :class:`~memfuse.layers.extractors.base.FactExtractor` that uses rules only.

    Deterministic and stateless: the same messages always give the same facts, so a retry
    after a crash repeats exactly what the first attempt would have stored. Each fact has
    ``confidence`` 0.8 when it fills an attribute slot (it then has a ``key``), 0.7 for other
    first-person statements, 0.6 when the sentence names its speaker and 0.5 for sentences
    reported as "<speaker> said: ...", since those may be about someone else.
    """

    name = "offline"
    local = True  # rules only: the pipeline may run it inside a step's transaction

    async def extract(self, messages: Sequence[ChunkData]) -> list[FactCandidate]:
        """Facts of every message in order; each fact's lineage is its one message.

        Large batches run in a worker thread so the event loop stays responsive.
        """
        if len(messages) <= INLINE_BATCH:
            return extract_facts(messages)
        return await asyncio.to_thread(extract_facts, messages)


def extract_facts(messages: Sequence[ChunkData]) -> list[FactCandidate]:
    """The extractor's work, synchronously: facts of every message in order."""
    participants = tuple(dict.fromkeys(_speaker_of(message) for message in messages))
    facts: list[FactCandidate] = []
    for message in messages:
        facts.extend(facts_from_message(message, participants))
    return facts
