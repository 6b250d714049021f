"""The ``download: {url, sha256, folder}`` archive of a competition described by its YAML alone.

The archive (zip or tar, told by the URL's suffix) is downloaded into ``competition/<name>/raw/``
(resumed, checked against ``sha256`` when given), extracted there safely (:mod:`audiotag.fetch.extract`)
and its top-level ``folder`` becomes the data folder; ``folder: "."`` (or null) takes raw/ itself, for
an archive whose files lie at its root (Speech Commands). :class:`OwnDataset` is what the two kinds
described by their YAML alone (``kind: table``, ``kind: folders``) share: that name, and those files.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import urlsplit

from audiotag.competitions.file_formats import FileCompetition, download_api
from audiotag.config.competition_parts import TableDownload
from audiotag.config.schema import CompetitionConfig
from audiotag.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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


class OwnDataset(FileCompetition):
    """A dataset named by its YAML, used in place from data_dir or fetched from its ``download`` archive."""

    data_dir_holds: ClassVar[str]  # what the data folder holds, for the refusal without one

    def __init__(self, cfg: CompetitionConfig, root: Path | None = None) -> None:
        self.name = cfg.name  # type: ignore[misc]
        super().__init__(cfg, root)

    @property
    def source(self) -> str:
        return self.sources[0]

    @property
    def raw_dir(self) -> Path:
        """data_dir when given; else, with ``download``, the archive's folder (or raw/) once extracted."""
        if self.data_dir is None and self.cfg.download is not None:
            return self.dir / "raw" / self.cfg.download.folder  # folder ".": raw/ itself
        return super().raw_dir

    def incomplete(self) -> bool:
        """Whether the downloaded files lack something (then the archive is fetched again)."""
        return bool(self.missing_files(self.source))

    def obtain(self) -> None:
        if self.data_dir is None and self.cfg.download is None:
            raise ConfigError(
                f"competition {self.name} (kind: {self.kind}) has no data_dir: set data_dir in its YAML or "
                f"pass --data-dir PATH (the folder holding {self.data_dir_holds})"
            )
        if self.data_dir is None and self.cfg.download is not None and self.incomplete():
            log.info("%s: downloading %s into %s", self.name, self.cfg.download.url, self.dir / "raw")
            self.download(self.source)
        super().obtain()  # in place from data_dir, or the files in raw_dir (checked complete)

    def download(self, source: str) -> None:
        spec = self.cfg.download
        if spec is None:  # pragma: no cover - obtain refuses a competition without data_dir or download
            raise DataError(f"{self.name}: a kind: {self.kind} competition without download is used in place")
        fetch_archive(spec, self.dir / "raw")

    @property
    def sample_submission_path(self) -> Path:
        if self.cfg.sample_submission:
            return self.raw_dir / self.cfg.sample_submission
        return self.dir / "sample_submission.csv"
