"""Shared fixtures: a private cache per test session, and small real models written as user files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh cache per session keeps tests hermetic (no exports or weights from earlier runs); pytest
    removes old session directories itself."""
    previous = os.environ.get("MODELPORT_CACHE")
    os.environ["MODELPORT_CACHE"] = str(tmp_path_factory.mktemp("modelport-cache"))
    yield
    if previous is None:
        os.environ.pop("MODELPORT_CACHE", None)
    else:
        os.environ["MODELPORT_CACHE"] = previous


@pytest.fixture(scope="session")
def digits():
    """The trained example CNN as a SourceModel with a dynamic batch axis (trained once per session)."""
    from modelport.model import load_model

    return load_model("modelport.examples:digits_cnn", dynamic=["x:0=batch"])


@pytest.fixture(scope="session")
def digits_test_data():
    from modelport.examples import digits_data

    return digits_data("test")


@pytest.fixture
def write_model(tmp_path: Path):
    """Write a model file a user would write, and return its `file.py:factory` reference."""

    def write(body: str, factory: str = "make", name: str = "user_model.py") -> str:
        path = tmp_path / name
        path.write_text("import torch\nfrom torch import nn\n\n" + body)
        return f"{path}:{factory}"

    return write


@pytest.fixture(scope="module")
def outlier_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("outlier") / "outlier.py"
    from tests.outlier import OUTLIER

    path.write_text(OUTLIER)
    return path


@pytest.fixture(scope="module")
def outlier_source(outlier_file):
    from modelport.model import load_model

    return load_model(f"{outlier_file}:make", dynamic=["x:0=batch"])
