"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class AudiotagError(Exception):
    """An error the user can fix: the message names the file, row or setting and what to do."""


class ConfigError(AudiotagError):
    """A configuration file or override is invalid."""


class DataError(AudiotagError):
    """Input data (audio, CSV, cache) is missing or malformed."""


class TrainingError(AudiotagError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""
