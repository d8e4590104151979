"""The errors mpt raises for bad input: each message says what is wrong and how to fix it.

Each class states the exit code ``mpt`` ends with when it is raised (``exit_code``): the
one place that says it.
"""

USAGE = 2  # the command line asks for something that cannot be: fix the arguments
DATA = 3  # a file or model the arguments name is missing, unreadable or malformed


class MptError(Exception):
    """Base of every user-facing error; the CLI prints it as one line and exits with its
    ``exit_code``. Raised as itself: an option or argument that does not hold (usage)."""

    exit_code = USAGE


class SpecError(MptError, ValueError):
    """A compression spec string that does not parse or names an impossible setting."""

    exit_code = USAGE


class DataError(MptError):
    """A data set that cannot be found or read."""

    exit_code = DATA


class ModelError(MptError):
    """A model that cannot be found or loaded."""

    exit_code = DATA


class BaselineError(MptError):
    """A baseline CSV that is missing or malformed."""

    exit_code = DATA


class ResultsError(MptError):
    """A results JSONL file that is missing or malformed beyond a torn last line."""

    exit_code = DATA


class BackendError(MptError):
    """A library backend that ran and failed; the message carries the library's last word.
    Data, not usage: the command line was valid, and what failed is the library's work on
    the model it was given (as llama.cpp's converter failing on a model is a ModelError)."""

    exit_code = DATA


class FitError(MptError, ValueError):
    """Points the phase-transition fitter cannot fit (too few, all collapsed, no dense
    point, several settings mixed): the fix is in the file. Bad fitting options are
    usage errors (``MptError``)."""

    exit_code = DATA
