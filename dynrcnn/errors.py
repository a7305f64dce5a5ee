"""Exceptions with messages meant for users: the CLI prints them without a traceback."""


class DynrcnnError(Exception):
    """Base class: the message says what went wrong and what to do."""


class DataError(DynrcnnError):
    """A dataset folder, annotation file, image or download is unusable."""


class ConfigError(DynrcnnError):
    """A preset, ``--set`` override or config file is invalid."""


class CheckpointError(DynrcnnError):
    """A checkpoint is missing, corrupted or belongs to a different run."""
