"""`scan_outputs`: which videos an output prefix holds, from one listing per folder.

On a local folder and on a real S3 server (moto): videos with a marker, with only a status,
only parts, only an export, and none; foreign entries are ignored.
"""

from __future__ import annotations

import uuid

import pytest

from surgray.annotate.output_scan import fingerprint, flat_entries, listed_prints, scan_outputs
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


@pytest.mark.slow
def test_flat_listing_of_masks_on_s3_is_what_find_lists(s3_server):
    """`flat_entries` (s3fs's pages, without find's quadratic folder tree) gives exactly
    what `entries_in(recursive=True)` gives: paths, sizes, ETags; nothing for a missing
    folder; nested and foreign entries as they are."""
    bucket = s3_server.make_bucket(f"flat-{uuid.uuid4().hex[:8]}")
    layout = OutputLayout(f"{bucket}/run", storage=s3_server.storage)
    assert flat_entries(layout, "masks") == {}
    for n in range(5):
        for part in range(n % 3 + 1):
            layout.put_bytes(
                layout.part_uri(f"v{n}", f"part-{part:05d}.parquet"), b"x" * (n + part)
            )
    layout.put_bytes(f"{layout.prefix}/masks/video_id=v1/sub/deeper.bin", b"deep")
    layout.put_bytes(f"{layout.prefix}/masks/loose.txt", b"foreign")
    layout.put_bytes(f"{layout.prefix}/masksx/other.parquet", b"not under masks/")
    flat = flat_entries(layout, "masks")
    found = layout.entries_in("masks", recursive=True)
    assert sorted(flat) == sorted(found) and len(flat) == 1 + 2 + 3 + 1 + 2 + 1 + 1
    assert all(fingerprint(flat[p]) == fingerprint(found[p]) for p in flat)
    assert fingerprint(flat["video_id=v4/part-00001.parquet"])[0] == 5
    assert "video_id=v1/sub/deeper.bin" in flat and "loose.txt" in flat


@pytest.mark.slow
def test_listed_prints_on_s3_are_the_listing_s_fingerprints(s3_server):
    """`listed_prints` (reduced page by page on S3) gives what `entries_in` / `names_in`
    give, fingerprinted: files, files below (recursive), subfolders with `folders`."""
    bucket = s3_server.make_bucket(f"prints-{uuid.uuid4().hex[:8]}")
    layout = OutputLayout(f"{bucket}/run", storage=s3_server.storage)
    assert listed_prints(layout, "_done") == {} == listed_prints(layout, "masks", recursive=True)
    _fill(layout)
    for folder in ("_done", "status", "exports/davis", "exports/overlay_mp4"):
        listed = {n: fingerprint(i) for n, i in layout.entries_in(folder).items()}
        assert listed_prints(layout, folder) == listed
        assert bool(listed) == (folder != "exports/davis")  # davis: a folder, no file
        with_folders = listed_prints(layout, folder, folders=True)
        assert sorted(with_folders) == sorted(layout.names_in(folder))
    assert listed_prints(layout, "exports/davis", folders=True) == {"davis-only": (0, "")}
    deep = {n: fingerprint(i) for n, i in layout.entries_in("masks", recursive=True).items()}
    assert listed_prints(layout, "masks", recursive=True) == deep and len(deep) == 2
    assert all(fp[1] for fp in deep.values())  # S3's ETag, not size alone
