"""Where a tool may write its output file (`-o PATH`): a new path or a regular file, never a
special file replaced by a regular one."""
import os
import stat

from .checkpoint import remove_dead_temporaries
from .errors import ConfigError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def output_path(path, flag="-o"):
    """The file to write for `flag PATH`: PATH itself when it is new or a regular file, the
    target of a symbolic link (written through: the link stays). Special files (FIFOs, devices,
    sockets, folders) and missing or read-only folders are a ConfigError. The hidden
    temporaries that a killed earlier write to the same file left are removed."""
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as err:
        raise ConfigError(f"{flag} {path}: {err.strerror or err}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise ConfigError(f"{flag} {path}: is {kind}; give a regular file or a new path")
    if mode is not None and not os.access(target, os.W_OK):
        raise ConfigError(f"{flag} {path}: {target} is not writable")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: folder {folder} is not writable")
    remove_dead_temporaries(folder, os.path.basename(target))
    return target
