"""The ways a run stops on its own: a user mistake found before training, divergence, or a
checkpoint that could not be written."""


class ConfigError(ValueError):
    """A bad flag, file or value, found before training starts; the message names it."""


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written in full; the message names the intact checkpoint."""
