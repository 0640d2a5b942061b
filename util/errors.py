"""Errors a user can act on: every entry point prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, weights, checkpoint), reported in one line."""


class ConfigError(UserError):
    """A configuration file or command-line override is invalid."""


class DataError(UserError):
    """A dataset file, split list, image or mask is missing or malformed."""


class WeightsError(UserError):
    """A weight file or checkpoint is missing, unreadable, or belongs to another model."""
