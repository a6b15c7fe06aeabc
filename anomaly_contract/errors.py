"""The exceptions of both processes: one root, one-line subclasses, messages that say what to do."""


class AnomalyError(Exception):
    """Root of every error reported to the user as a one-line message (trainer and worker)."""


class DataError(AnomalyError):
    """The input data cannot be used (missing, empty, non-numeric, wrong shape...)."""


class ConfigError(AnomalyError):
    """The options contradict each other or do not fit the data."""


class ArtifactError(AnomalyError):
    """A model version is missing, unreadable or does not follow the artifact format."""


class VersionNotFoundError(ArtifactError):
    """The requested model version does not exist in the model directory."""


class TopicReadError(ArtifactError):
    """The model topic could not be read (broker unreachable, timeout); retry later."""
