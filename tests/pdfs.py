"""PDF files for tests, built on the fly (Pillow's PDF writer, or by hand where a test needs a
particular structure: no pages, encryption, an oversized page)."""

from __future__ import annotations

import io

from PIL import Image


def pdf_of(pages: list[Image.Image], resolution: float = 100.0) -> bytes:
    """A PDF with one page per image, ``resolution`` pixels per inch."""
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=resolution)
    return buf.getvalue()


def minimal_pdf(objects: list[str], trailer_extra: str = "") -> bytes:
    """A hand-built PDF of ``objects`` (object 1 is the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R {trailer_extra}>>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def text_pdf(media_boxes: list[tuple[int, int]], lines: int = 3) -> bytes:
    """One page per (width, height) in points, each with ``lines`` lines of Helvetica text."""
    n = len(media_boxes)
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "",  # the page tree, once the page objects are numbered
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for w, h in media_boxes:
        text = " ".join(
            f"BT /F1 18 Tf 30 {h - 50 - 36 * k} Td (Dear Sir, line {k + 1} of the letter) Tj ET"
            for k in range(lines)
        )
        kids.append(f"{len(objects) + 1} 0 R")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {len(objects) + 2} 0 R >>"
        )
        objects.append(f"<< /Length {len(text)} >>\nstream\n{text}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {n} >>"
    return minimal_pdf(objects)


#: A catalog, a page tree and one empty 200 x 100 pt page.
PAGE_OBJECTS = [
    "<< /Type /Catalog /Pages 2 0 R >>",
    "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] >>",
]


def broken_pdf() -> bytes:
    """A PDF header followed by garbage: recognised as a PDF, unreadable as one."""
    return b"%PDF-1.7\n this is not a pdf"


def encrypted_pdf() -> bytes:
    """A one-page PDF under the standard security handler, with no password that opens it."""
    # The user-password hash matches no password we can give.
    encrypt = "<< /Filter /Standard /V 1 /R 2 /O <{}> /U <{}> /P -4 >>".format("11" * 32, "22" * 32)
    file_id = "<00112233445566778899aabbccddeeff>"
    return minimal_pdf([*PAGE_OBJECTS, encrypt], f"/Encrypt 4 0 R /ID [{file_id} {file_id}] ")
