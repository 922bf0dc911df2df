"""Every docstring example in ``ibjax/`` runs under the README's test command and is correct."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import ibjax

MODULES = sorted(m.name for m in pkgutil.iter_modules(ibjax.__path__))
WITH_EXAMPLES = [name for name in MODULES if ">>>" in (Path(ibjax.__path__[0]) / f"{name}.py").read_text()]


def test_the_modules_with_examples_are_found():
    assert {"estimators", "losses", "information", "latents", "defaults"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    module = importlib.import_module(f"ibjax.{name}")
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert results.attempted > 0, f"ibjax/{name}.py has '>>>' but doctest found no example"
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples in ibjax/{name}.py failed"
