"""`scan_outputs`: which videos an output prefix holds, from one listing per folder.

On a local folder and on a real S3 server (moto): videos with a marker, with only a status,
only parts, only an export, and none; foreign entries are ignored.
"""

from __future__ import annotations

import uuid

import pytest

from surgray.annotate.output_scan import scan_outputs
from surgray.annotate.outputs import OutputLayout
from surgray.io.storage import LOCAL


def _fill(layout: OutputLayout) -> None:
    layout.put_bytes(layout.marker_uri("complete"), b"{}")
    layout.put_bytes(layout.part_uri("complete", "part-00000-00000.parquet"), b"x")
    layout.put_bytes(layout.status_uri("status-only"), b"{}")
    layout.put_bytes(layout.part_uri("parts-only", "part-00000-00000.parquet"), b"x")
    layout.put_bytes(layout.export_uri("overlay-only", "overlay_mp4"), b"x")
    layout.put_bytes(f"{layout.export_uri('davis-only', 'davis')}/00000.png", b"x")
    layout.put_bytes(layout.export_uri("sav-only", "sav_json"), b"{}")
    layout.put_bytes(f"{layout.prefix}/_done/notes.txt", b"foreign")  # not a marker
    layout.put_bytes(f"{layout.prefix}/_summary.json", b"{}")


def _check(layout: OutputLayout) -> None:
    scan = scan_outputs(layout)
    assert scan.markers == {"complete"}
    assert scan.present == {
        "complete", "status-only", "parts-only", "overlay-only", "davis-only", "sav-only"
    }  # fmt: skip
    assert scan.untouched(["complete", "new1", "parts-only", "new2"]) == ["new1", "new2"]


def test_scan_of_a_local_prefix(tmp_path):
    layout = OutputLayout(tmp_path / "out", storage=LOCAL)
    assert scan_outputs(layout).present == frozenset()  # nothing there yet: no error
    _fill(layout)
    _check(layout)


@pytest.mark.slow
def test_scan_of_an_s3_prefix(s3_server):
    bucket = s3_server.make_bucket(f"scan-{uuid.uuid4().hex[:8]}")
    layout = OutputLayout(f"{bucket}/run", storage=s3_server.storage)
    assert scan_outputs(layout).present == frozenset()
    _fill(layout)
    _check(layout)
