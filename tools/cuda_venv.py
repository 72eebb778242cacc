"""Make mxnet-cu112 find NVIDIA's CUDA library wheels, and check that it does, without a GPU.

    python tools/cuda_venv.py link    # run by `make venv CUDA=112`
    python tools/cuda_venv.py check   # `make cuda-venv-check`: exit 1 unless everything resolves

mxnet-cu112's libmxnet.so links against libcudart.so.11.0, libcublas.so.11, libcudnn.so.8, ...
and looks for them on its RPATH, `$ORIGIN` (its own directory), before the system's. NVIDIA's
wheels put each library in site-packages/nvidia/<package>/lib, which nothing searches. `link`
places a relative symlink to every one of those libraries in the mxnet package directory, so the
dynamic loader finds them when `import mxnet` loads libmxnet.so: no LD_LIBRARY_PATH, no system
CUDA, no code at start-up. Libraries loaded later by name (cuDNN's sub-libraries, NVRTC's
builtins) resolve the same way. Run with the venv's Python; it never imports mxnet, which fails
on a machine without the NVIDIA driver (libcuda.so.1).
"""
import argparse
import collections
import glob
import importlib.metadata
import importlib.util
import mmap
import os
import re
import struct
import subprocess
import sys

MXNET_DIST = "mxnet-cu112"
DRIVER_LIBRARY = "libcuda.so.1"  # the driver's own library: installed with the driver, not pip
# Not expected inside the venv: glibc, the GCC runtime (libquadmath for the libgfortran that
# both mxnet wheels bundle, libgomp) and zlib (cuDNN 8.9), as the CPU mxnet needs them too.
SYSTEM_LIBRARY = re.compile(r"(linux-vdso|ld-linux[-\w]*|libc|libm|libdl|libpthread|librt|"
                            r"libstdc\+\+|libgcc_s|libgomp|libquadmath|libz)\.so(\.\d+)*$")


class SetupError(RuntimeError):
    pass


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SetupError(f"no {name} package in {sys.prefix}")
    return list(spec.submodule_search_locations)


def mxnet_dir():
    try:
        importlib.metadata.version(MXNET_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise SetupError(f"{MXNET_DIST} is not installed in {sys.prefix} "
                         "(make venv CUDA=112)") from None
    return package_dir("mxnet")[0]


def cuda_libraries():
    """{file name: path} of every shared library in the nvidia/*/lib folders of the wheels."""
    libraries = {}
    for root in package_dir("nvidia"):
        for path in sorted(glob.glob(os.path.join(root, "*", "lib", "*.so*"))):
            name = os.path.basename(path)
            if name in libraries:
                raise SetupError(f"{name} is in two NVIDIA wheels: {libraries[name]} and {path}")
            libraries[name] = path
    if not libraries:
        raise SetupError(f"no NVIDIA library wheels in {sys.prefix} (make venv CUDA=112)")
    return libraries


def link():
    target_dir = mxnet_dir()
    libraries = cuda_libraries()
    for name, path in libraries.items():
        link_path = os.path.join(target_dir, name)
        if os.path.lexists(link_path) and not os.path.islink(link_path):
            raise SetupError(f"{link_path} is a file of the mxnet wheel, not a link; "
                             f"it would shadow {path}")
        temp = link_path + ".tmp-link"
        if os.path.lexists(temp):
            os.remove(temp)
        os.symlink(os.path.relpath(path, target_dir), temp)
        os.replace(temp, link_path)
    print(f"linked {len(libraries)} CUDA libraries from NVIDIA's wheels into {target_dir}")


def ldd(path):
    """[(name, resolved path or None)] for every library the loader would load for `path`,
    searched as at `import mxnet`: without LD_LIBRARY_PATH or LD_PRELOAD."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    result = subprocess.run(["ldd", path], env=env, capture_output=True, text=True)
    if result.returncode != 0 and "not found" not in result.stdout:
        raise SetupError(f"ldd {path} failed: {result.stderr.strip() or result.stdout.strip()}")
    rows = []
    for line in result.stdout.splitlines():
        match = re.match(r"\s*(\S+)(?: => (not found|\S+))?", line)
        if match:
            name, where = match.groups()
            if name.startswith("linux-vdso"):
                where = "(kernel)"
            # the loader itself has no arrow: "/lib64/ld-linux-x86-64.so.2 (0x...)"
            where = where or name
            rows.append((os.path.basename(name), None if where == "not found" else where))
    return rows


FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)


def gpu_code(path):
    """{'sm': [XY, ...], 'ptx': [XY, ...]}: the GPU code embedded in a CUDA binary, read from its
    fatbin headers (what `cuobjdump --list-elf/--list-ptx` lists; the layout is NVIDIA's,
    undocumented: magic, version 1, header size 16, size; then entries of kind 1 = PTX,
    2 = machine code, with the sm number 28 bytes into each entry's header)."""
    found = collections.defaultdict(set)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = data.find(FATBIN_MAGIC)
        while pos != -1:
            version, header_size, size = struct.unpack_from("<HHQ", data, pos + 4)
            if version != 1 or header_size != 16:
                pos = data.find(FATBIN_MAGIC, pos + 4)
                continue
            entry, end = pos + header_size, pos + header_size + size
            while entry < end:
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
                (arch,) = struct.unpack_from("<I", data, entry + 28)
                found[{1: "ptx", 2: "sm"}.get(kind, "other")].add(arch)
                if entry_header == 0:
                    break
                entry += entry_header + payload
            pos = data.find(FATBIN_MAGIC, end)
    return {kind: sorted(archs) for kind, archs in found.items()}


def check():
    """Print where each library of libmxnet.so (and of every CUDA library it may load by name)
    resolves; True when the CUDA ones are all inside the venv and only libcuda.so.1 is missing."""
    target_dir = mxnet_dir()
    prefix = os.path.realpath(sys.prefix)
    libmxnet = os.path.join(target_dir, "libmxnet.so")
    libraries = cuda_libraries()
    objects = [libmxnet] + sorted(libraries.values())
    seen, problems = {}, []
    for obj in objects:
        # A CUDA library stands for itself too: cuDNN and NVRTC load some of theirs by name.
        own = [] if obj == libmxnet else [(os.path.basename(obj), obj)]
        for name, where in ldd(obj) + own:
            if name in seen:
                continue
            real = os.path.realpath(where) if where and where != "(kernel)" else where
            if real is None:
                status = "driver (not in the venv)" if name == DRIVER_LIBRARY else "MISSING"
            elif real.startswith(prefix + os.sep):
                status = "venv"
            elif SYSTEM_LIBRARY.match(name):
                status = "system"
            else:
                status = "OUTSIDE THE VENV"
            seen[name] = (status, real or "not found")
            if status in ("MISSING", "OUTSIDE THE VENV"):
                problems.append(f"{name}: {status.lower()} ({real or 'not found'}, "
                                f"needed via {os.path.basename(obj)})")
    width = max(len(name) for name in seen)
    print(f"libraries of {libmxnet} and of the CUDA libraries it loads "
          f"(LD_LIBRARY_PATH unset):")
    for name, (status, real) in seen.items():
        shown = os.path.relpath(real, prefix) if status == "venv" else real
        print(f"  {name:<{width}}  {status:<24}  {shown}")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    code = gpu_code(libmxnet)
    print(f"GPU code in libmxnet.so: machine code for "
          f"{', '.join(f'sm_{a}' for a in code.get('sm', [])) or 'none'}; PTX for "
          f"{', '.join(f'compute_{a}' for a in code.get('ptx', [])) or 'none'}")
    venv_count = sum(status == "venv" for status, _ in seen.values())
    if not problems:
        print(f"OK: {venv_count} libraries resolve inside {prefix}; the rest are the system's "
              f"C/C++ runtime and the driver's {DRIVER_LIBRARY}")
    return not problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("link", "check"))
    args = parser.parse_args(argv)
    try:
        if args.action == "link":
            link()
            return 0
        return 0 if check() else 1
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
