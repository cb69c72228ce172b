"""``inflect``, imported without typeguard's run-time instrumentation.

inflect decorates its public methods with typeguard's ``@typechecked``, which re-compiles each one at import (1.5 s
of every worker process's start) and checks the argument types of every call (``singular_noun``: 66 -> 21 us per word
measured, the cold-cache cost of every new word the label passes fold). The passes call it with ``str`` only, and
the checks never change a result (tests/test_labels_text.py compares both on a word list in a fresh process). typeguard
itself skips the instrumentation under ``python -O``; this applies the same for inflect's import alone, then restores
``typeguard.typechecked`` for everyone else. If inflect was imported before (the instrumented module is cached), that
one is used: slower, same results.
"""

from __future__ import annotations

import sys

if "inflect" in sys.modules:
    import inflect
else:
    import typeguard

    _typechecked = typeguard.typechecked

    def _unchecked(target=None, **_options):
        return target if target is not None else (lambda fn: fn)

    typeguard.typechecked = _unchecked
    try:
        import inflect
    finally:
        typeguard.typechecked = _typechecked

__all__ = ["inflect"]
