"""The one estimate of LLM tokens from text length (about four characters a token), for the gateway and the mock upstream."""

from __future__ import annotations

__all__ = ["CHARS_PER_TOKEN", "estimate_tokens"]

# English averages about four characters per token in OpenAI's tokenizers. The
# gateway's estimate only sizes a reservation that is settled to the real usage;
# the mock upstream reports it as its usage, so the two agree on a prompt's size.
CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters of text: one per :data:`CHARS_PER_TOKEN` begun (0 for none)."""
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
