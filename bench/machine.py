"""The machine description that every benchmark records beside its figures."""

from __future__ import annotations

import os
import platform


def describe_machine() -> str:
    """'Intel(R) Xeon(R) ... , 2 cores, 23.4 GiB, Linux 6.x, Python 3.11.7'."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            memory = f", {kib / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")
