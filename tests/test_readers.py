"""Every real reader on every presentation of a mounted OISST-like month.

Values are compared with h5py on the netCDF files (raw integers; scaled and
masked where the reader says it applies scale_factor and _FillValue). The
expected verdicts are the table in readers/expected.py; the observed matrix is
written to .cache/readers-matrix.md, which scripts/update-readers-doc copies
into docs/readers.md, and test_docs_match_the_observed_matrix keeps the two in
step.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from commands import PROJECT, ingest_days
from datasets import read_h5
from mounting import mounted
from readers.expected import DECODES, expected_cell, require_reader
from readers.harness import READERS, Expected, Verdict, classify
from readers.samples import FORMS

pytestmark = pytest.mark.timeout(600)
ARRAYS = ("sst", "time")
MATRIX = PROJECT / ".cache" / "readers-matrix.md"
DOC = PROJECT / "docs" / "readers.md"

Observed = dict[tuple[str, str, str], tuple[Verdict, str]]  # (reader, form, array) -> cell


@pytest.fixture(scope="module")
def mounted_month(tmp_path_factory):
    """Three OISST-like days (180 x 360), ingested, mounted with every presentation."""
    base = tmp_path_factory.mktemp("readers")
    repo, prefix, files = ingest_days(base, 3)
    truth = {
        "sst": Expected(np.concatenate([read_h5(f, "sst") for f in files]), fill_value=-999.0,
                        scale_factor=float(np.float32(0.01))),
        "time": Expected(np.concatenate([read_h5(f, "time") for f in files])),
    }
    observed: Observed = {}
    with mounted(repo, base / "m", f"authorize={prefix}", "presentation=all") as m:
        yield m.path, truth, observed
    assert "Traceback" not in m.log_text()
    if len(observed) == len(READERS) * len(FORMS) * len(ARRAYS):
        MATRIX.parent.mkdir(exist_ok=True)
        MATRIX.write_text(render_matrix(observed, str(base / "m")))


@pytest.mark.parametrize("array", ARRAYS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reader_name", list(READERS))
def test_reader_on_the_mount(mounted_month, reader_name, form, array):
    mnt, truth, observed = mounted_month
    reader = require_reader(reader_name)
    result = reader.read(mnt / form, array)
    got = classify(result, truth[array])
    observed[reader_name, form, array] = (got.verdict, got.detail)
    # the ingested time coordinate is stored uncompressed (VirtualiZarr loads it)
    verdict, fragment = expected_cell(reader_name, form, array, uncompressed=array == "time")
    assert (got.verdict, fragment in got.detail) == (verdict, True), (
        f"{reader_name} {reader.version()} on {form}/{array}: {got.verdict}: {got.detail}"
        f"\n{result.log[-1000:]}")
    if got.verdict == "pass" and array == "sst":
        assert (result.scaled, result.masked) == DECODES.get(reader_name, (False, False))


def render_matrix(observed: Observed, mountpoint: str) -> str:
    """The matrix as a markdown table: one row per reader, one column per presentation."""
    lines = ["| reader | version | " + " | ".join(f"`{f}`" for f in FORMS) + " |",
             "|---|---|" + "---|" * len(FORMS)]
    for name, reader in READERS.items():
        cells = []
        for form in FORMS:
            verdict, detail = observed[name, form, "sst"]
            t_verdict, t_detail = observed[name, form, "time"]
            detail, t_detail = (d.replace(mountpoint, "MNT") for d in (detail, t_detail))
            cell = _cell(verdict, detail)
            if (t_verdict, _short(t_detail)) != (verdict, _short(detail)):
                cell += f"; time: {_cell(t_verdict, t_detail)}"
            cells.append(cell)
        lines.append(f"| {name} | {reader.version()} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(verdict: str, detail: str) -> str:
    if verdict == "pass":
        return "pass"
    word = "**WRONG VALUES**" if verdict == "wrong" else "refused"
    return f"{word}: {_short(detail)}"


def _short(detail: str) -> str:
    text = detail.replace("|", "/").replace("sst", "VAR").replace("time", "VAR")
    text = re.sub(r"\s+", " ", text)
    # long errors (tensorstore's) say what failed at the end
    return text if len(text) <= 160 else text[:60] + " ... " + text[-95:]


def test_docs_match_the_observed_matrix():
    """docs/readers.md holds the verdicts the readers gave (versions may differ by machine)."""
    doc = DOC.read_text()
    match = re.search(r"<!-- matrix:begin -->\n(.*?)<!-- matrix:end -->", doc, re.S)
    assert match, "docs/readers.md has no generated matrix (scripts/update-readers-doc)"
    rows = {}
    for line in match.group(1).splitlines()[2:]:
        cols = [c.strip() for c in line.strip("|").split("|")]
        rows[cols[0]] = cols[2:]
    assert set(rows) == set(READERS)
    for name in READERS:
        for form, cell in zip(FORMS, rows[name], strict=True):
            want, _ = expected_cell(name, form, "sst")
            got = "pass" if cell.startswith("pass") else (
                "wrong" if cell.startswith("**WRONG") else "refused")
            assert got == want, (name, form, cell)

