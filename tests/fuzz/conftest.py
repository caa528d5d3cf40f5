"""Fuzzing with Hypothesis: each target feeds a parser or a server what a hostile peer or
a broken file could send, and checks it answers with its own errors only.

Profiles (chosen by ``COVE_FUZZ_PROFILE``, default ``ci``):

* ``ci``: a short bounded pass, ``make test``'s (200 examples a target, no deadline,
  the failing example printed as a blob to replay with ``@reproduce_failure``). It
  replays the corpus and never writes to it, so test runs leave the repository as they
  found it.
* ``fuzz``: ``make fuzz``'s long run: ``COVE_FUZZ_EXAMPLES`` examples a target (20 000
  unless set), or, with ``COVE_FUZZ_SECONDS=N``, passes of ``COVE_FUZZ_EXAMPLES`` (1 000
  unless set) until N seconds have gone by for each target. Failing examples are saved
  in the corpus.

The corpus, ``tests/fuzz/corpus``, is Hypothesis's example database kept in the
repository, and every run replays it first. The fuzz profile adds the minimal example of
each failure it finds (commit it with the fix) and never deletes one, so a bug fixed
stays a case every run tries; Hypothesis's other entries (the shrinker's intermediate
examples) are not kept. An entry belongs to its target's source: one whose target was
edited since is no longer read, and may be deleted by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

CORPUS = Path(__file__).parent / "corpus"
PROFILE = os.environ.get("COVE_FUZZ_PROFILE", "ci")
SECONDS = float(os.environ.get("COVE_FUZZ_SECONDS") or 0)
_examples = os.environ.get("COVE_FUZZ_EXAMPLES")



class _Corpus(DirectoryBasedExampleDatabase):
    """The corpus for the fuzz profile: keeps each bug's minimal failing example for good.

    Hypothesis deletes an entry once it passes (the bug is fixed): here it stays, a
    regression case. It also keeps a target's non-minimal failures and its pareto front
    (the ``.secondary`` and ``.pareto`` keys): many files a bug, of no use once it is
    fixed, so they are not written; and an example the shrinker improved on (moved to
    ``.secondary``) is removed, the smaller one taking its place.
    """

    def save(self, key: bytes, value: bytes) -> None:
        if not key.endswith((b".secondary", b".pareto")):
            super().save(key, value)

    def delete(self, key: bytes, value: bytes) -> None:
        pass

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        super().delete(src, value)
        self.save(dest, value)


_common: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    # The targets make a small folder tree or a socket pair per example, on purpose.
    "suppress_health_check": [HealthCheck.too_slow],
}
settings.register_profile(
    "ci", max_examples=200, database=ReadOnlyDatabase(DirectoryBasedExampleDatabase(CORPUS)),
    **_common)
settings.register_profile(
    "fuzz", max_examples=int(_examples or (1000 if SECONDS else 20000)),
    database=_Corpus(CORPUS), **_common)
if PROFILE not in ("ci", "fuzz"):
    raise pytest.UsageError(f"COVE_FUZZ_PROFILE={PROFILE!r}: use ci or fuzz")
settings.load_profile(PROFILE)

_passes: dict[str, int] = {}


def _is_hypothesis_test(fn: Callable[..., Any]) -> bool:
    return getattr(fn, "is_hypothesis_test", False)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """With COVE_FUZZ_SECONDS (fuzz profile), run a target's passes until its time is up."""
    if PROFILE != "fuzz" or not SECONDS or not _is_hypothesis_test(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    deadline = time.monotonic() + SECONDS
    passes = 0
    while True:
        pyfuncitem.obj(**args)
        passes += 1
        if time.monotonic() >= deadline:
            break
    _passes[pyfuncitem.nodeid] = passes
    return True


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for nodeid, passes in _passes.items():
        terminalreporter.write_line(
            f"fuzz: {nodeid}: {passes} passes of {settings().max_examples} examples "
            f"in {SECONDS:.0f} s")
