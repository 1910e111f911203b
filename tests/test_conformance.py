"""One conformance suite run over all four presentations, in-process.

In the manner of zarr-python's store tests: the same class of checks runs over
``v3``, ``v2``, ``v2-decoded`` and ``v3-decoded`` of the unit repository (partial
edge chunks, native and inline chunks, a missing chunk, nested groups), on the
contract in vchunkfs/presentation/base.py: ``stat`` sizes equal the bytes ``read``
returns, reads at and past the end are short or empty, byte ranges are slices of
the whole file, listings name exactly the stat'able entries once each, missing
names are None or NotFoundError, and every error is a VchunkfsError.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from vchunkfs.errors import NotFoundError, VchunkfsError
from vchunkfs.presentation.base import Presentation, make_presentation
from vchunkfs.presentation.names import NAMES
from vchunkfs.repository import Authorization, Repo, parse_repo_url
from vchunkfs.repository.snapshot import Entry

pytestmark = pytest.mark.timeout(120)

Run = Callable[[Callable[[], Awaitable[Any]]], Any]


def walk(run: Run, p: Presentation) -> tuple[dict[str, Entry], set[str]]:
    """Every file of ``p`` (path -> listed entry) and every directory, by listing."""
    files: dict[str, Entry] = {}
    dirs: set[str] = {""}
    todo = [""]
    while todo:
        d = todo.pop()
        entries = run(lambda d=d: p.list_dir(d))
        names = [e.name for e in entries]
        assert len(names) == len(set(names)), (p.name, d, names)
        for e in entries:
            assert e.name and "/" not in e.name, (p.name, d, e)
            path = f"{d}/{e.name}" if d else e.name
            if e.is_dir:
                dirs.add(path)
                todo.append(path)
            else:
                files[path] = e
    return files, dirs


@pytest.fixture(scope="module")
def repo(local_repo: Any, bridge: Any) -> Repo:
    path, built = local_repo
    auth = Authorization.load([built.container_prefix], environ={})
    return bridge.run(lambda: Repo.open(parse_repo_url(str(path)), authorization=auth))


@pytest.fixture(scope="module", params=["v1", "main", "dev"])
def view(request: pytest.FixtureRequest, repo: Repo, bridge: Any) -> Any:
    return bridge.run(lambda: repo.view(request.param))


@pytest.mark.parametrize("name", NAMES)
class TestPresentationConformance:
    @pytest.fixture
    def p(self, name: str, view: Any) -> Presentation:
        return make_presentation(name, view)

    @pytest.fixture
    def tree(self, p: Presentation, run: Run) -> tuple[dict[str, Entry], set[str]]:
        files, dirs = walk(run, p)
        assert files, p.name
        return files, dirs

    def test_listing_entries_are_the_statable_names(self, p: Presentation, run: Run,
                                                    tree: Any) -> None:
        files, dirs = tree
        for path, listed in files.items():
            st = run(lambda path=path: p.stat(path))
            assert st is not None and not st.is_dir, (p.name, path)
            assert st.size == listed.size, (p.name, path, st, listed)
            known = p.stat_known(path)
            if isinstance(known, Entry):
                assert (known.is_dir, known.size) == (False, st.size), (p.name, path)
        for path in dirs:
            st = run(lambda path=path: p.stat(path))
            assert st is not None and st.is_dir, (p.name, path)

    def test_stat_size_is_the_bytes_read(self, p: Presentation, run: Run, tree: Any) -> None:
        files, _ = tree
        for path, e in files.items():
            data = run(lambda path=path, e=e: p.read(path, 0, e.size + 100))
            assert len(data) == e.size, (p.name, path, e.size, len(data))
            # a second read returns the same bytes
            assert run(lambda path=path, e=e: p.read(path, 0, e.size)) == data, (p.name, path)

    def test_read_at_and_past_the_end(self, p: Presentation, run: Run, tree: Any) -> None:
        files, _ = tree
        for path, e in files.items():
            assert run(lambda path=path, e=e: p.read(path, e.size, 10)) == b"", (p.name, path)
            assert run(lambda path=path, e=e: p.read(path, e.size + 1000, 10)) == b""
            if e.size:
                whole = run(lambda path=path, e=e: p.read(path, 0, e.size))
                tail = run(lambda path=path, e=e: p.read(path, e.size - 1, 10))
                assert tail == whole[-1:], (p.name, path)
            assert run(lambda path=path: p.read(path, 0, 0)) == b"", (p.name, path)

    def test_byte_ranges_are_slices_of_the_file(self, p: Presentation, run: Run,
                                                tree: Any) -> None:
        files, _ = tree
        rng = random.Random(f"{p.name}/{p.view.snapshot_id}")
        for path, e in sorted(files.items()):
            whole = run(lambda path=path, e=e: p.read(path, 0, e.size))
            for _ in range(6):
                off = rng.randrange(0, e.size + 2)
                n = rng.randrange(0, e.size + 2)
                got = run(lambda path=path, off=off, n=n: p.read(path, off, n))
                assert got == whole[off:off + n], (p.name, path, off, n)

    def test_missing_names(self, p: Presentation, run: Run, tree: Any) -> None:
        files, dirs = tree
        some_dir = sorted(dirs)[-1]
        some_file = sorted(files)[0]
        missing = ["nope", "nope/deeper", f"{some_dir}/nope".lstrip("/"),
                   f"{some_file}/below", "sst/c/999/0/0/0", "sst/999.0.0.0", "grp/nope/zarr.json"]
        for path in missing:
            if path in files or path in dirs:
                continue
            assert run(lambda path=path: p.stat(path)) is None, (p.name, path)
            known = p.stat_known(path)
            assert not isinstance(known, Entry), (p.name, path, known)
            with pytest.raises(NotFoundError):
                run(lambda path=path: p.list_dir(path))
            with pytest.raises(NotFoundError):
                run(lambda path=path: p.read(path, 0, 10))
        # a file is not a directory
        with pytest.raises(NotFoundError):
            run(lambda: p.list_dir(some_file))

    def test_errors_are_vchunkfs_errors(self, p: Presentation, run: Run, tree: Any) -> None:
        files, dirs = tree
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: p.read("nope", 0, 1),
            lambda: p.list_dir("nope"),
            lambda: p.list_dir(sorted(files)[0]),
            lambda: p.read("", 0, 1),
        ]
        for d in sorted(dirs)[:3]:
            calls.append(lambda d=d: p.read(d, 0, 1))
        for call in calls:
            try:
                run(call)
            except VchunkfsError:
                pass
            except Exception as exc:
                pytest.fail(f"{p.name}: {type(exc).__name__} is not a VchunkfsError: {exc}")
