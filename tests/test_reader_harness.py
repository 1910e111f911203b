"""Every real reader on every sample store form: what it made of ``sst`` and ``time``.

The expected table below is what was observed with the readers scripts/setup-readers
installs (docs/readers-draft.md has the same matrix with versions). A reader that is not
installed here is skipped, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from readers.harness import READERS, Expected, ReaderResult, Verdict, classify
from readers.samples import FILL, FORMS, SCALE_FACTOR, Form, write_sample

NTIME = 2
ARRAYS = ("sst", "time")

# (reader, form) -> (verdict, a fragment of the error line or of how the values differ),
# for sst; TIME_DIFFERS has the cells where time (float32, 1-D) goes another way.
# Cells not listed pass.
EXPECTED: dict[tuple[str, Form], tuple[Verdict, str]] = {
    # The netCDF4 wheel's netCDF-C 4.10.1 reads Zarr v2 only: no zarr.json support.
    ("netcdf4-python", "v3"): ("refused", "NetCDF: Unknown file format"),
    ("netcdf4-python", "v3-decoded"): ("refused", "NetCDF: Unknown file format"),
    # tensorstore 0.1.86: zarr3 has no numcodecs.* codecs; zarr (v2) has no filters at all.
    ("tensorstore", "v3"): ("refused", '"numcodecs.shuffle" is not registered'),
    ("tensorstore", "v2"): ("refused", "filters are not supported"),
    # GDAL 3.12's Zarr driver: shuffle works as a v2 filter, not as a v3 numcodecs codec.
    ("gdal-python", "v3"): ("refused", "Unsupported codec: numcodecs.shuffle"),
    # Debian's GDAL 3.6 knows only a pre-release Zarr v3 layout: a v3 group opens as an
    # empty group ("Cannot find array"), and 3.6 has no shuffle filter for v2.
    ("gdalmdiminfo", "v3"): ("refused", "Cannot find array sst"),
    ("gdalmdiminfo", "v2"): ("refused", "Filter shuffle not handled"),
    ("gdalmdiminfo", "v3-decoded"): ("refused", "Cannot find array sst"),
    ("gdal_translate", "v3"): ("refused", "No such file or directory"),
    ("gdal_translate", "v2"): ("refused", "Filter shuffle not handled"),
    ("gdal_translate", "v3-decoded"): ("refused", "No such file or directory"),
    # Debian's netCDF-C 4.9.0: no Zarr v3 (the group reads as empty), and no filter
    # plugins, so shuffle+zlib chunks are taken as raw: sst prints garbage, then segfaults.
    ("ncdump", "v3"): ("refused", "sst: No such variable"),
    ("ncdump", "v2"): ("refused", "ncdump killed by SIGSEGV"),
    ("ncdump", "v3-decoded"): ("refused", "sst: No such variable"),
    # zarr.js reads Zarr v2 only, and ignores the filters: shuffled bytes come back as is.
    ("zarr.js", "v3"): ("refused", "array not found at path sst"),
    ("zarr.js", "v2"): ("wrong", "values differ"),
    ("zarr.js", "v3-decoded"): ("refused", "array not found at path sst"),
}
TIME_DIFFERS: dict[tuple[str, Form], tuple[Verdict, str]] = {
    # a chunk smaller than the values asked for does not crash ncdump: wrong numbers
    ("ncdump", "v2"): ("wrong", "2 of 2 values differ"),
}

# Whether each reader applies scale_factor/add_offset and masks the fill value, on sst.
DECODES: dict[str, tuple[bool, bool]] = {
    "xarray": (True, True),
    "netcdf4-python": (True, True),
    "ncdump": (False, True),  # prints "_" for the fill value
}


def expected_cell(reader: str, form: Form, array: str) -> tuple[Verdict, str]:
    if array == "time" and (reader, form) in TIME_DIFFERS:
        return TIME_DIFFERS[reader, form]
    verdict, detail = EXPECTED.get((reader, form), ("pass", ""))
    return verdict, detail.replace("sst", array)


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
    reader = READERS[reader_name]
    reason = reader.missing()
    if reason is not None:
        pytest.skip(reason)
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
