"""Reading: page images in, text with confidences out (pure: no Celery, no database, no
storage).

The pipeline (``pipeline.py``) renders a page (``render.py`` for PDFs), has
:mod:`worker.segmentation` find and cut its lines, and hands every crop to the line reader
(``reading.py``): trimmed (``lineimage.py``), wide lines split and re-joined
(``splitting.py``), recognised by the model (``recognizer.py``, loaded by ``loading.py``,
decoded with ``decoding.py`` and ``ctc_prefix.py``). ``provenance.py`` says what read a page.
"""
