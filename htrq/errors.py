"""Errors a user can act on: a stable code plus a message that says what to do."""

import re
from typing import Self


class PageError(Exception):
    """A page that cannot be processed because of its input; retrying will not help.

    ``code`` is stored on the page row and returned by the API (``invalid_image``,
    ``too_large``, ``unsupported_format``, ``empty_image``, ``encrypted_pdf``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[Self], tuple[str, str]]:
        # Pickled whole (a PDF page's error comes back from its render process).
        return (type(self), (self.code, self.message))


#: Codes of input that will never read, however often it is tried: retry leaves these pages
#: alone. ``model_error`` (the recognizer failed) is the one failure worth trying again.
PERMANENT_CODES = frozenset(
    {
        "empty_file",
        "empty_image",
        "encrypted_pdf",
        "extreme_aspect",
        "invalid_image",
        "invalid_pdf",
        "too_large",
        "too_many_lines",
        "too_slow",
        "processing_failed",
        "unsupported_format",
        "blob_missing",
        "unknown_model",
    }
)

#: An absolute path inside a message (OpenCV and Python put source and file paths there).
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


def public_message(exc: BaseException, limit: int = 200) -> str:
    """What an exception may tell a client: its first line, no server paths, bounded."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _PATH.sub("<path>", text)[:limit]
