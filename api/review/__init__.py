"""The review page's files, served as they are (no build step): ``static/review.html`` at
``/review/{job_id}``, its script and style sheet under ``/review/static/``."""

from pathlib import Path

#: The folder served at ``/review/static``.
STATIC_DIR = Path(__file__).parent / "static"
#: The page itself; it reads its job id from its own address.
PAGE = STATIC_DIR / "review.html"
