"""The one error type for mistakes a user can make (bad config, missing data, wrong weights).

The CLI prints an FtlError as a single line and exits with code 2; anything else is a bug and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class FtlError(Exception):
    """A user-caused error: the message names what is wrong and how to fix it."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
