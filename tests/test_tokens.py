"""The token estimate: its fast path for ASCII text counts exactly what the pattern counts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memfuse.tokens import count_tokens, count_tokens_by_pattern


def test_every_pair_of_ascii_characters_counts_as_the_pattern_does() -> None:
    for first in range(128):
        for second in range(128):
            text = f"{chr(first)}a{chr(second)}{chr(first)} {chr(second)}"
            assert count_tokens(text) == count_tokens_by_pattern(text), (first, second)


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_text_counts_as_the_pattern_does(text: str) -> None:
    assert count_tokens(text) == count_tokens_by_pattern(text)


@given(st.text())
def test_any_text_counts_as_the_pattern_does(text: str) -> None:
    assert count_tokens(text) == count_tokens_by_pattern(text)


def test_words_and_marks_are_tokens() -> None:
    assert count_tokens("I'm flying to Lisbon.") == 7
    assert count_tokens("") == 0
    assert count_tokens("  \t\x1c ") == 0
    assert count_tokens("Olá, São Paulo!") == 5
