"""Reading inputs safely: md5 checks, downloads, tar members that stay inside the archive,
and a restricted unpickler that admits plain data only."""

import hashlib
import importlib.util
import io
import os
import pickle
import posixpath
import tarfile
import urllib.error
import urllib.request
import zlib

from .writer import PARTIAL, DataError, Progress, log, remove_files


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path, expected, downloaded=False):
    log(f"verifying md5 of {path}")
    actual = md5sum(path)
    if actual != expected:
        hint = (
            "the download was removed; run again to fetch it anew"
            if downloaded
            else "the file is truncated, corrupt or a different release; use the official file, "
            "or --no-verify for a re-packed file in the same format"
        )
        if downloaded:
            remove_files([path])
        raise DataError(f"md5 mismatch for {path}: expected {expected}, got {actual}; {hint}")


def download(url, dest):
    """Fetches url to dest (via a temporary name); a failure names --from as the offline route
    and leaves no folder it created."""
    folder = os.path.dirname(dest)
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    log(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest + PARTIAL, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            progress = Progress(os.path.basename(dest) + " (MiB)", total >> 20)
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                done += len(block)
                progress.update(done >> 20)
        os.replace(dest + PARTIAL, dest)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        remove_files([dest + PARTIAL])
        if created and not os.listdir(folder):
            os.rmdir(folder)
        raise DataError(
            f"could not download {url} ({reason}). Without internet access, download the "
            "file elsewhere and pass it with --from"
        ) from None
    finally:
        remove_files([dest + PARTIAL])


def locate_input(given, name, url, md5, out_dir, verify):
    """The local file to read: `given` (from --from), or a download into out_dir; md5-checked
    unless told not to."""
    if given is not None:
        if not os.path.isfile(given):
            raise DataError(f"--from: {given} does not exist or is not a file (expected {name})")
        path, downloaded = given, False
    else:
        path, downloaded = os.path.join(out_dir, name), True
        if os.path.isfile(path):
            log(f"using earlier download {path}")
        else:
            download(url, path)
    if verify:
        verify_md5(path, md5, downloaded)
    return path


def _check_member(archive, member):
    name = posixpath.normpath(member.name)
    if name.startswith("/") or name == ".." or name.startswith("../") or ":" in name.split("/")[0]:
        raise DataError(
            f"{archive}: refusing unsafe tar member {member.name!r}: "
            "its path escapes the archive folder"
        )
    if member.issym() or member.islnk():
        raise DataError(f"{archive}: refusing unsafe tar member {member.name!r}: it is a link")
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive}: refusing unsafe tar member {member.name!r}: not a regular file"
        )


def read_tar_members(archive, wanted):
    """{name: bytes} for the members in `wanted`, read in memory after every member passed the
    safety checks."""
    found = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(archive, member)
                # normpath: a re-packed archive may spell members "./cifar-10-batches-py/...".
                name = posixpath.normpath(member.name)
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive} is truncated or corrupt ({e}); download it again") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: not the expected archive")
    return found


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's pickles hold (numpy arrays, dtypes, plain containers): loading
    an untrusted pickle must never be able to call arbitrary functions. _codecs.encode is how
    Python 3 writes bytes at protocol 2, i.e. in a re-packed archive. numpy >= 2 names its
    array rebuilders numpy._core.*, numpy < 2 numpy.core.*: both are admitted and resolved in
    whichever this numpy has (_frombuffer is what numpy writes at protocol 5)."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")} | {
        (f"{package}.{module}", name)
        for package in ("numpy.core", "numpy._core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy."):
            package = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
            module = package + "." + module.rsplit(".", 1)[1]
        return super().find_class(module, name)


def load_plain_pickle(data, where):
    try:
        return _PlainDataUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{where}: refusing to unpickle: {e} (CIFAR files hold only plain data)"
        ) from None
    except Exception as e:  # garbage input can raise nearly anything from inside pickle
        raise DataError(f"{where} is not a valid pickle ({type(e).__name__}: {e})") from None
