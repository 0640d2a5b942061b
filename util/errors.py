"""Errors a user can act on: every entry point prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, weights, checkpoint), reported in one line."""


class ConfigError(UserError):
    """A configuration file or command-line override is invalid."""


class DataError(UserError):
    """A dataset file, split list, image or mask is missing or malformed."""


class OutputError(UserError):
    """An output folder is a file, under a file, or cannot be written."""


class WeightsError(UserError):
    """A weight file or checkpoint is missing, unreadable, or belongs to another model."""


def short_reason(error: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message (library messages often add advice for other cases)."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0][:limit] if text else type(error).__name__
