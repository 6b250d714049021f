"""The class vocabulary of a competition described by its YAML alone (``kind: table``, ``kind: folders``),
or by a table file format with a fixed class list (the Freesound competitions).

It is the YAML's (or the file format's) ``classes`` when given (a label outside it is an error naming where
it was found); otherwise the sorted set of training labels, written to
``competition/<name>/vocabulary.json`` at the first prepare and fixed from then on: a later label
outside it is an error naming where it was found, never a silent new score column (delete the file,
and the runs, to start over).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import DataError

log = logging.getLogger(__name__)

VOCABULARY = "vocabulary.json"

Where = Callable[[int], str]  # the place (file and line, folder) of the i-th label list, for messages


class Vocabulary:
    """The explicit ``classes``, or the vocabulary fixed at the first prepare in ``path``."""

    def __init__(
        self,
        path: Path,
        explicit: Sequence[str] | None,
        owner: str,
        described: str = "the classes listed in the competition YAML",
    ) -> None:
        self.path = path
        self.explicit = list(explicit) if explicit is not None else None
        self.owner = owner  # the competition's name, for the log
        self.described = described  # what the explicit classes are, for messages

    @property
    def classes(self) -> list[str]:
        """The vocabulary in score order; an error before the first prepare fixed it."""
        if self.explicit is not None:
            return list(self.explicit)
        saved = self.saved()
        if saved is None:
            raise DataError(
                f"{self.path}: no vocabulary yet; run `./run.sh prepare -c ...` first (it is the sorted set "
                "of training labels, fixed at the first prepare)"
            )
        return saved

    def saved(self) -> list[str] | None:
        """The vocabulary saved at the first prepare, or None when there is none yet."""
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text())
        except ValueError as exc:
            raise DataError(f"{self.path}: not valid JSON ({exc}); delete it to rebuild") from None
        classes = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
            raise DataError(f'{self.path}: expected {{"classes": [names]}}; delete it to rebuild')
        return classes

    def fix(self, labels: Sequence[Sequence[str]], where: Where, *, no_spaces: bool = False) -> list[str]:
        """The explicit classes, the saved vocabulary, or (first prepare) the sorted ``labels``, saved.

        Every label must be in the explicit or saved vocabulary (else an error naming ``where(i)``).
        ``no_spaces``: refuse a new vocabulary with a space in a name (top-k submissions separate labels
        by spaces).
        """
        if self.explicit is not None:
            check_labels(labels, set(self.explicit), where, self.described)
            return list(self.explicit)
        saved = self.saved()
        if saved is not None:
            check_labels(
                labels,
                set(saved),
                where,
                f"the vocabulary saved at the first prepare ({self.path}; runs and caches use it: delete "
                "it and the runs to start over with a new vocabulary)",
            )
            return saved
        vocabulary = sorted({name for names in labels for name in names})
        if not vocabulary:
            raise DataError(f"{self.owner}: no training labels, so no vocabulary to fix")
        if no_spaces:
            for row, names in enumerate(labels):
                spaced = [n for n in names if " " in n]
                if spaced:
                    raise DataError(
                        f"{where(row)}: label {spaced[0]!r} has a space, but top_k_labels separates labels "
                        "by spaces"
                    )
        atomic_write_text(self.path, json.dumps({"classes": vocabulary}, indent=1) + "\n")
        log.info("%s: vocabulary of %d classes written to %s", self.owner, len(vocabulary), self.path)
        return vocabulary


def check_labels(labels: Sequence[Sequence[str]], vocabulary: set[str], where: Where, what: str) -> None:
    """Refuse the first label outside ``vocabulary``, naming ``where(i)`` and ``what`` the vocabulary is."""
    for row, names in enumerate(labels):
        bad = [n for n in names if n not in vocabulary]
        if bad:
            raise DataError(f"{where(row)}: label {bad[0]!r} is not in {what}")


def csv_line(path: Path, first_line: int = 2) -> Where:
    """``where`` for the rows of a CSV file: ``path: line N`` (header = line 1)."""
    return lambda row: f"{path}: line {row + first_line}"
