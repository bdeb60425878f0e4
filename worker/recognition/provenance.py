"""What reads the pages: the model's weights digest, the decoding settings, htrq's version.

Stored with each page, returned by the API and written into ALTO and PAGE, so that an
archive can tell which readings came from which model and settings, and read again what a
better model would read better.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from htrq.jobs.claims import ReadBy
from htrq.settings import Settings, stretches_text

_WEIGHTS = ("*.safetensors", "*.bin")
_CHUNK = 4 * 1024 * 1024


def htrq_version() -> str:
    try:
        return version("htrq")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def weights_digest(model_dir: str) -> str | None:
    """SHA-256 of the model's weight file (``sha256sum model.safetensors`` gives the same);
    for several files, of their names and digests. None where the files are not local."""
    folder = Path(model_dir)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_dir, local_files_only=True))
        except Exception:
            return None
    files = sorted({f for pattern in _WEIGHTS for f in folder.glob(pattern)})
    if not files:
        return None
    digests = [(f.name, _file_digest(f)) for f in files]
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{n}:{d}\n" for n, d in digests).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_by(
    settings: Settings, model_dir: str, ctc_weight: float, stretches: tuple[float, ...]
) -> ReadBy:
    """The provenance of this worker's readings (``ctc_weight`` and ``stretches``: those in
    force, 0 for a model without a CTC head, one width for a model that reads squares): the
    decoding settings and those that find and cut the lines. Everything in it but the batch
    size makes a page's reading key (``htrq.jobs.reuse.reading_key``)."""
    return ReadBy(
        model_sha256=weights_digest(model_dir),
        decoding={
            "num_beams": settings.num_beams,
            "ctc_weight": ctc_weight,
            "dtype": settings.dtype if settings.device != "cpu" else "float32",
            "device": settings.device,
            "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size,
            "quantize": settings.quantize,
            "stretches": stretches_text(stretches),
            # What finds and cuts the lines shapes the reading as much as the decoder does:
            # recorded so that a reading can be reused only under the same (htrq.jobs.reuse).
            "segmenter": settings.segmenter,
            "line_margin": settings.line_margin,
            "pdf_dpi": settings.pdf_dpi,
        },
        htrq_version=htrq_version(),
    )
