"""The trainer's exceptions: one root, one-line subclasses, messages that say what to do."""


class TrainerError(Exception):
    """Root of every error the trainer reports to the user as a one-line message."""


class DataError(TrainerError):
    """The input data cannot be used (missing, empty, non-numeric, wrong shape...)."""


class ConfigError(TrainerError):
    """The options contradict each other or do not fit the data."""


class ArtifactError(TrainerError):
    """A model version is missing, unreadable or does not follow the artifact format."""


class VersionNotFoundError(ArtifactError):
    """The requested model version does not exist in the model directory."""
