"""Text that is safe to store, show and write into XML, whatever produced it."""

from __future__ import annotations

import re
import unicodedata

#: What XML 1.0 forbids in a document: C0 controls but tab, newline and carriage return,
#: lone surrogates, U+FFFE and U+FFFF. lxml refuses to parse an ALTO or PAGE file holding any.
XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: Controls of any kind (C0, DEL, C1) and line or paragraph separators: never part of a name.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: What ends a line in some convention: a correction holding one is two lines, not one.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
#: A tenant model's name (``POST /v1/models``): what a job's ``model`` field names, so safe in
#: a URL, a log line and a queue's view of it.
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}"
#: Longest correction of one line, in characters: far beyond any written line (the decoder
#: writes 96 tokens at most), short enough that a line stays a line.
MAX_LINE_CHARS = 1000


def xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids (everything else kept)."""
    return XML_FORBIDDEN.sub("", text)


def clean_line_text(text: str) -> str:
    """A recognised line as stored: no control characters (a model may write them), one
    line, no surrounding spaces."""
    return _CONTROLS.sub("", text).strip()


def clean_correction(text: str) -> str:
    """A person's reading of one line as stored: NFC, no control characters (a tab pasted
    from a spreadsheet), no surrounding spaces.

    Raises :class:`ValueError` for text of several lines or longer than
    :data:`MAX_LINE_CHARS`: a correction belongs to one line of the page, and becomes one
    row of a ``lines.tsv`` training folder.
    """
    if _LINE_BREAKS.search(text):
        raise ValueError("a correction is one line: it may not hold a line break")
    # NFC: "é" typed as e + combining accent and as one character must train the same label.
    cleaned = clean_line_text(unicodedata.normalize("NFC", text))
    if len(cleaned) > MAX_LINE_CHARS:
        raise ValueError(f"a correction is at most {MAX_LINE_CHARS} characters")
    return cleaned


def clean_filename(name: str, max_chars: int = 255) -> str:
    """An upload's file name as stored: its last path part, NFC, no control characters,
    at most ``max_chars`` characters (the extension kept), any other Unicode kept.

    A name that is nothing after that becomes ``upload``.
    """
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROLS.sub("", name).strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name) > max_chars:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: max_chars - len(ext) - 1] + "." + ext
        else:
            name = name[:max_chars]
    return name
