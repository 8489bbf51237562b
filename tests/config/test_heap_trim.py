"""Once started, the gateway gives the memory that reading its config freed back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# In a fresh interpreter: 80 MB of blocks the C allocator serves, 15 in 16 of them freed as a parse's temporaries are
# (what is left in use keeps every page of the heap otherwise), then the settle step of a starting gateway.
_PROBE = textwrap.dedent(
    """
    from tollgate.process.server import _settle_heap
    def rss():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
    blocks = [bytes(4000) for _ in range(20_000)]
    kept = blocks[::16]
    del blocks
    before = rss()
    _settle_heap()
    print(before, rss(), len(kept))
    """
)


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc_trim")
def test_settling_the_heap_gives_freed_memory_back() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    before, after, kept = (int(v) for v in out.stdout.split())
    assert kept == 1_250
    assert before - after > 40, f"{before} -> {after} MiB"  # about 70 of the 75 MB freed go back


# A reload through the admin API: the state's reload frees what it read, as a reload of a large file does.
_RELOAD_PROBE = textwrap.dedent(
    """
    import asyncio
    from tollgate.process.server import reload_here
    def rss():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
    class Runtime:
        version = 2
    class State:
        runtime = Runtime()
        kept = []
        async def reload(self):
            blocks = [bytes(4000) for _ in range(20_000)]
            self.kept = blocks[::16]
            self.before = rss()
            return True, []
    state = State()
    status, body = asyncio.run(reload_here(state))
    print(status, state.before, rss(), len(state.kept))
    """
)


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc_trim")
def test_a_reload_gives_the_memory_it_freed_back() -> None:
    out = subprocess.run([sys.executable, "-c", _RELOAD_PROBE], capture_output=True, text=True, check=True)
    status, before, after, kept = (int(v) for v in out.stdout.split())
    assert status == 200 and kept == 1_250
    assert before - after > 40, f"{before} -> {after} MiB"
