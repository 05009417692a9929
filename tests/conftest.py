"""Shared fixtures: a temporary PORTRAIT_HOME, a test Dagster instance, the real data sets."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PORTRAIT_HOME; DAGSTER_HOME unset so Portrait places the instance inside it."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("PORTRAIT_HOME", str(path))
    monkeypatch.setenv("DAGSTER_HOME", "")  # empty counts as unset, and is restored afterwards
    return path


@contextlib.contextmanager
def portrait_home(home: Path) -> Iterator[Path]:
    """PORTRAIT_HOME set to `home` for a block (module-scoped fixtures cannot use `monkeypatch`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PORTRAIT_HOME", str(home))
        patch.setenv("DAGSTER_HOME", "")  # empty counts as unset: the instance goes inside the home
        yield home


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or a skip that says what is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data set not found at {path}; see shared/data/README.md")
    return path
