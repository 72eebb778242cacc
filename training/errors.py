"""The two ways a run stops on its own: a user mistake found before training, or divergence."""


class ConfigError(ValueError):
    """A bad flag, file or value, found before training starts; the message names it."""


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite."""
