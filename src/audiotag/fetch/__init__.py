"""Getting files onto the disk: one module per host or format.

- :mod:`~audiotag.fetch.http`: :func:`download` over HTTP with resume (``Range`` guarded by
  ``If-Range``), retries, size/MD5/SHA-256 checks, ``.part`` files, locks and stamps, and the small
  helpers the other modules share (progress bars, free-space check, offline mode, ``human_size``).
- :mod:`~audiotag.fetch.zenodo`: the files of a Zenodo record, from its JSON listing.
- :mod:`~audiotag.fetch.splitzip`: joining an Info-ZIP split archive (``x.z01 ... x.zip``) into one zip.
- :mod:`~audiotag.fetch.extract`: safe zip and tar extraction (zip-slip and links refused, atomic, recorded
  when done).
- :mod:`~audiotag.fetch.kaggle`: the Kaggle API client (credentials, redaction, errors), the
  download of a competition's files and the scores of this account's submissions.
- :mod:`~audiotag.fetch.weights`: pretrained weights files: the :class:`Checkpoint` record, the
  cache, downloads and verification (published hashes, or trust on first use).

These modules import only :mod:`audiotag.core` and each other: what needs a higher layer (reading a
state dict with torch) comes in as an argument.
"""
