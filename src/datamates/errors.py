"""The exception hierarchy. Every user mistake is a DatamatesError: the CLI prints its message on
one line and exits with code 2. Anything else is a bug and keeps its traceback."""


class DatamatesError(Exception):
    """Base class: a problem the user can fix. The message names the file, line or key and what
    to do about it."""

    exit_code = 2


class ConfigError(DatamatesError):
    """A config key is unknown, has the wrong type, or is out of range."""


class InputError(DatamatesError):
    """Input data is malformed: a bad JSON line, a missing field, an empty pool, duplicate ids."""


class ArtifactMissing(DatamatesError):
    """A stage needs an artifact that an earlier stage has not produced."""


class IncompatibleArtifacts(DatamatesError):
    """Two artifacts do not belong together: different pools, tokenizers or architectures."""


class NumericalError(DatamatesError):
    """A NaN or inf where a finite number is required; nothing was written."""


class OutputConflict(DatamatesError):
    """The output folder cannot be written: it holds something that is not an artifact of this
    kind (it would be deleted), or another process is writing it (the lock is held)."""


class CorruptArtifact(DatamatesError):
    """A file of an artifact cannot be read as what it claims to be (a truncated or corrupt
    safetensors file, an ids array of objects); nothing was loaded from it."""
