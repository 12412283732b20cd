"""Runs the tutorial of docs/testing.md: every ```python block, in order, as one module.

The tutorial's ``test_*`` functions become tests of this module, so the documentation
cannot drift from the code.
"""

from __future__ import annotations

from tests.testing.tutorial import tutorial

globals().update({k: v for k, v in vars(tutorial).items() if k.startswith("test_")})


def test_the_tutorial_has_its_tests() -> None:
    names = [k for k in vars(tutorial) if k.startswith("test_")]
    assert len(names) >= 6, names
