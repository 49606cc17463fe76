"""perfd.cache.meter: measuring this process's memory and keeping the allocator from hoarding it."""

from __future__ import annotations

import subprocess
import sys

from perfd.cache import meter as memory

# Request-sized blocks freed between small survivors, on several threads (as perfd's socket
# and worker threads do), after one big block has raised glibc's mmap threshold.
WORKLOAD = """
import sys, threading
from perfd.cache import meter as memory
if sys.argv[1] == "fixed":
    assert memory.fix_mmap_threshold()
big = bytearray(8 << 20)
del big
base = memory.rss_bytes()
keep = []
def work():
    for i in range(2000):
        frame = bytes(900_000 + i)
        keep.append(bytes(64))
        del frame
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
memory.release()
print(memory.rss_bytes() - base)
"""


def _growth(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_a_fixed_mmap_threshold_gives_big_blocks_back() -> None:
    """With the threshold fixed, freed request-sized blocks go back to the kernel: RSS stays
    within 2 MiB, where glibc's default (a threshold raised by the first big free) keeps more."""
    fixed, default = _growth("fixed"), _growth("default")
    assert fixed < 2 << 20
    assert default > fixed


def test_rss_is_read_from_proc() -> None:
    """rss_bytes() is this process's resident size, a positive multiple of the page size."""
    rss = memory.rss_bytes()
    assert rss > 0
    assert rss % 4096 == 0
