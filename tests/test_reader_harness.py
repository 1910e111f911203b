"""Every real reader on every sample store form: what it made of ``sst`` and ``time``.

The expected table below is what was observed with the readers scripts/setup-readers
installs (docs/readers.md has the matrix on a mounted repository). A reader that is not
installed fails its cells: the test command installs every one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from readers.expected import DECODES, EXPECTED, expected_cell, require_reader
from readers.harness import READERS, Expected, ReaderResult, classify
from readers.samples import FILL, FORMS, SCALE_FACTOR, Form, write_sample

NTIME = 2
ARRAYS = ("sst", "time")

@pytest.fixture(scope="session")
def sample_stores(tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[Form, tuple[Path, dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("reader-samples")
    return {form: (root / form, write_sample(root / form, form, NTIME)) for form in FORMS}


def expected_for(truth: dict[str, np.ndarray], array: str) -> Expected:
    if array == "sst":
        return Expected(truth["sst"], fill_value=FILL, scale_factor=SCALE_FACTOR)
    return Expected(truth[array])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("array", ARRAYS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reader_name", list(READERS))
def test_reader_matrix(sample_stores: dict[Form, tuple[Path, dict[str, np.ndarray]]],
                       reader_name: str, form: Form, array: str) -> None:
    reader = require_reader(reader_name)
    store, truth = sample_stores[form]
    result = reader.read(store, array)
    got = classify(result, expected_for(truth, array))
    verdict, fragment = expected_cell(reader_name, form, array)
    assert (got.verdict, fragment in got.detail) == (verdict, True), (
        f"{reader_name} {reader.version()} on {form}/{array}: {got.verdict}: {got.detail}"
        f"\n{result.log[-1000:]}")
    if got.verdict == "pass" and array == "sst":
        assert (result.scaled, result.masked) == DECODES.get(reader_name, (False, False))


def test_every_reader_is_in_the_table() -> None:
    named = {reader for reader, _ in EXPECTED} | set(DECODES)
    assert named <= set(READERS)


# ---------------------------------------------------------------- classify itself

RAW = np.array([[100, -999], [250, 7]], dtype=np.int16)
TRUTH = Expected(RAW, fill_value=-999, scale_factor=0.01, add_offset=1.0)


def test_classify_raw_pass_and_wrong() -> None:
    assert classify(ReaderResult("r", "1", RAW.copy()), TRUTH).verdict == "pass"
    wrong = RAW.copy()
    wrong[1, 1] = 8
    got = classify(ReaderResult("r", "1", wrong), TRUTH)
    assert got.verdict == "wrong"
    assert "1 of 4 values differ; at (1, 1)" in got.detail


def test_classify_scaled_and_masked() -> None:
    decoded = np.array([[2.0, np.nan], [3.5, 1.07]])
    assert classify(ReaderResult("r", "1", decoded, scaled=True, masked=True),
                    TRUTH).verdict == "pass"
    # scaled but the fill value not masked: -999 * 0.01 + 1 where the fill is
    unmasked = np.array([[2.0, -8.99], [3.5, 1.07]])
    assert classify(ReaderResult("r", "1", unmasked, scaled=True), TRUTH).verdict == "pass"
    # a reader that says it masked but did not
    assert classify(ReaderResult("r", "1", unmasked, scaled=True, masked=True),
                    TRUTH).verdict == "wrong"


def test_classify_refusal_and_shape() -> None:
    refused = classify(ReaderResult("r", "1", error="ERROR 1: no"), TRUTH)
    assert (refused.verdict, refused.detail) == ("refused", "ERROR 1: no")
    flat = classify(ReaderResult("r", "1", RAW.ravel()), TRUTH)
    assert flat.verdict == "wrong"
    assert "shape" in flat.detail
    with pytest.raises(ValueError):
        ReaderResult("r", "1")
