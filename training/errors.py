"""The ways a run stops on its own: a user mistake found before training, divergence, or a
checkpoint that could not be written."""


class ConfigError(ValueError):
    """A bad flag, file or value, found before training starts; the message names it."""


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written in full; the message names the intact checkpoint."""


def mxnet_reason(err):
    """The line of an MXNetError that says what went wrong (MXNet puts a traceback first)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("MXNetError:"):
            return line[len("MXNetError:"):].strip()
    return lines[-1] if lines else type(err).__name__
