"""Fixtures shared by the tests: the bridge, source files and icechunk-written repositories."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import icechunk as ic
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from datasets import BuiltRepo, build_repo

from vchunkfs.bridge import AsyncioBridge
from vchunkfs.repository import Authorization, Repo, parse_repo_url

T = TypeVar("T")

os.environ.setdefault("ICECHUNK_LOG", "error")
ic.set_logs_filter(os.environ["ICECHUNK_LOG"])


@pytest.fixture(scope="session")
def bridge() -> Iterator[AsyncioBridge]:
    b = AsyncioBridge(name="test-bridge")
    yield b
    b.close()


@pytest.fixture
def run(bridge: AsyncioBridge) -> Callable[[Callable[[], Awaitable[T]]], T]:
    """Run a repository-layer coroutine on the bridge, from a plain test."""
    return bridge.run


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuiltRepo]:
    """A local repository with tag v1, main at day1, branch dev; sources in src/."""
    base = tmp_path_factory.mktemp("local")
    built = build_repo(ic.local_filesystem_storage(str(base / "repo")), base / "src")
    return base / "repo", built


@pytest.fixture
def open_local(local_repo: tuple[Path, BuiltRepo], bridge: AsyncioBridge
               ) -> Callable[..., Repo]:
    """Open the local repository; authorized for its container unless told otherwise."""
    path, built = local_repo

    def opener(authorize: bool = True) -> Repo:
        auth = Authorization.load([built.container_prefix] if authorize else [], environ={})
        return bridge.run(lambda: Repo.open(parse_repo_url(str(path)), authorization=auth))

    return opener
