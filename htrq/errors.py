"""Errors a user can act on: a stable code plus a message that says what to do."""


class PageError(Exception):
    """A page that cannot be processed because of its input; retrying will not help.

    ``code`` is stored on the page row and returned by the API (``invalid_image``,
    ``too_large``, ``unsupported_format``, ``empty_image``, ``encrypted_pdf``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
