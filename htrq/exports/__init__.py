"""Results out: plain text, JSON, ALTO and PAGE XML (``formats.py``, pure), the searchable PDF
(``pdf.py``), the page as an image for people (``page_images.py``), and the tenant's pages
loaded for an export (``results.py``)."""
