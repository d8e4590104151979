"""The errors mpt raises for bad input: each message says what is wrong and how to fix it."""


class MptError(Exception):
    """Base of every user-facing error; the CLI prints it as one line and exits 2."""


class SpecError(MptError, ValueError):
    """A compression spec string that does not parse or names an impossible setting."""


class DataError(MptError):
    """A data set that cannot be found or read."""


class ModelError(MptError):
    """A model that cannot be found or loaded."""


class BaselineError(MptError):
    """A baseline CSV that is missing or malformed."""


class ResultsError(MptError):
    """A results JSONL file that is malformed beyond a torn last line."""


class BackendError(MptError):
    """A library backend that ran and failed; the message carries the library's last word."""


class FitError(MptError, ValueError):
    """A curve the phase-transition fitter cannot fit."""
