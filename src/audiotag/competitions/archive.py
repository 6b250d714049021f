"""The ``download: {url, sha256, folder}`` archive of a competition described by its YAML alone.

The archive (zip or tar, told by the URL's suffix) is downloaded into ``competition/<name>/raw/``
(resumed, checked against ``sha256`` when given), extracted there safely (:mod:`audiotag.fetch.extract`)
and its top-level ``folder`` becomes the data folder; ``folder: "."`` (or null) takes raw/ itself, for
an archive whose files lie at its root (Speech Commands).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from audiotag.competitions.file_formats import download_api
from audiotag.config.schema import TableDownload
from audiotag.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def archive_data_dir(spec: TableDownload, dest: Path) -> Path:
    """Where the data lies once ``spec``'s archive is extracted into ``dest``."""
    return dest if spec.folder == "." else dest / spec.folder


def fetch_archive(spec: TableDownload, dest: Path) -> list[Path]:
    """Download ``spec.url`` into ``dest`` and extract it there; the extracted files.

    Refuses a URL whose name is no archive, and an archive without the top-level ``spec.folder``.
    """
    from audiotag.fetch.extract import ARCHIVE_SUFFIXES, archive_format

    api = download_api()
    filename = PurePosixPath(urlsplit(spec.url).path).name
    kind = archive_format(filename)
    if kind is None:
        raise ConfigError(
            f"competition.download.url: {spec.url} does not name an archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )
    archive = Path(api.download(api.RemoteFile(spec.url, filename, sha256=spec.sha256), dest))
    extract = api.extract_zip if kind == "zip" else api.extract_tar
    files = [Path(f) for f in extract(archive, dest) or []]
    if spec.folder == ".":
        if not files:
            raise DataError(f"{archive}: the archive holds no files")
        return files
    tops = sorted({f.relative_to(dest).parts[0] for f in files if len(f.relative_to(dest).parts) > 1})
    if spec.folder not in tops:
        raise DataError(
            f"{archive}: has no top-level folder {spec.folder!r} (found {tops[:10]}); set "
            "competition.download.folder to the archive's folder, or to '.' when its files lie at its root"
        )
    return files
