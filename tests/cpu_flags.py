"""What the test machine's CPU has (tests that only mean something on some CPUs skip elsewhere)."""


def has_avx512():
    """Whether /proc/cpuinfo lists AVX-512F (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False
