"""A dependency-free token estimate used for budgets (episode size, buffer flushes).

Words and punctuation marks are counted separately, which tracks WordPiece and BPE token
counts of English text within a few percent without loading a tokenizer.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def count_tokens(text: str) -> int:
    """The estimated number of model tokens in ``text``."""
    return len(_TOKEN.findall(text))
