"""Video encode/decode: real files written with PyAV, read back with PyAV and with surgray."""

from __future__ import annotations

import av
import numpy as np
import pytest

from surgray.io.encode import write_video
from surgray.io.errors import VideoError

LEVEL_STEP = 8  # grey level per frame index; survives 4:2:0 lossy coding within +-3


def grey_frames(count: int, height: int = 32, width: int = 48) -> list[np.ndarray]:
    return [np.full((height, width, 3), (i * LEVEL_STEP) % 256, np.uint8) for i in range(count)]


def decoded_levels(path) -> list[int]:
    with av.open(str(path)) as container:
        return [int(round(f.to_ndarray(format="rgb24").mean())) for f in container.decode(video=0)]


@pytest.mark.parametrize(
    ("codec", "suffix"),
    [("libx264", ".mp4"), ("mpeg4", ".mp4"), ("mjpeg", ".avi"), ("libx264", ".mkv")],
)
def test_write_video_round_trip(tmp_path, codec, suffix):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} encoder missing")
    path = tmp_path / f"clip{suffix}"
    result = write_video(path, grey_frames(12), fps=25, codec=codec, quality=2)
    assert (result.frame_count, result.width, result.height) == (12, 48, 32)
    levels = decoded_levels(path)
    assert len(levels) == 12
    assert all(abs(level - i * LEVEL_STEP) <= 3 for i, level in enumerate(levels)), levels


def test_write_video_mp4_faststart_and_no_metadata(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, grey_frames(5), fps=10)
    head = path.read_bytes()[:64]
    # ftyp box first, then moov before any mdat: readers can stream from the start.
    assert head[4:8] == b"ftyp"
    size = int.from_bytes(head[:4], "big")
    assert head[size + 4 : size + 8] == b"moov"
    with av.open(str(path)) as container:
        tags = set(container.metadata) | set(container.streams.video[0].metadata)
    assert not tags & {"title", "comment", "creation_time", "encoder", "artist", "location"}
    assert b"Lavf" not in path.read_bytes()


def test_write_video_quality_and_crf_change_the_size(tmp_path):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    sizes = {}
    for name, kwargs in {
        "q2": {"codec": "mpeg4", "quality": 2},
        "q31": {"codec": "mpeg4", "quality": 31},
        "crf10": {"crf": 10},
        "crf45": {"crf": 45},
    }.items():
        write_video(tmp_path / f"{name}.mp4", noise, fps=10, **kwargs)
        sizes[name] = (tmp_path / f"{name}.mp4").stat().st_size
    assert sizes["q2"] > 3 * sizes["q31"]
    assert sizes["crf10"] > 3 * sizes["crf45"]
    with pytest.raises(VideoError, match="1..31"):
        write_video(tmp_path / "bad.mp4", noise, fps=10, codec="mpeg4", quality=0)


def test_write_video_pads_odd_sizes_and_rejects_bad_frames(tmp_path):
    result = write_video(tmp_path / "odd.mp4", grey_frames(3, 31, 47), fps=5)
    assert (result.width, result.height) == (48, 32)
    with pytest.raises(VideoError, match="frame 1 is"):
        write_video(
            tmp_path / "mixed.mp4", [grey_frames(1)[0], np.zeros((8, 8, 3), np.uint8)], fps=5
        )
    with pytest.raises(VideoError, match="dtype float32"):
        write_video(tmp_path / "float.mp4", [np.zeros((8, 8, 3), np.float32)], fps=5)
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=5)
    # Failed writes leave no partial file behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]
    with pytest.raises(VideoError, match="unsupported output extension"):
        write_video(tmp_path / "clip.xyz", grey_frames(2), fps=5)
    with pytest.raises(VideoError, match="at least 64x64"):
        write_video(tmp_path / "tiny.mkv", grey_frames(2), fps=5, codec="libx265")
    with pytest.raises(VideoError, match="not available"):
        write_video(tmp_path / "clip.mp4", grey_frames(2), fps=5, codec="no-such-codec")


def test_write_video_to_s3(s3_server):
    bucket = s3_server.make_bucket("encode-out")
    uri = f"{bucket}/videos/clip.mp4"
    write_video(uri, grey_frames(6), fps=10, storage=s3_server.storage)
    fs = s3_server.filesystem()
    payload = fs.cat_file(uri)
    assert payload[4:8] == b"ftyp" and len(payload) > 200


def test_write_png_has_no_metadata_chunks(tmp_path):
    from PIL import Image

    from surgray.io.encode import write_png

    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    write_png(tmp_path / "a.png", rgb)
    payload = (tmp_path / "a.png").read_bytes()
    chunks, offset = [], 8
    while offset < len(payload):
        length = int.from_bytes(payload[offset : offset + 4], "big")
        chunks.append(payload[offset + 4 : offset + 8].decode())
        offset += length + 12
    assert chunks[0] == "IHDR" and chunks[-1] == "IEND"
    assert set(chunks) <= {"IHDR", "IDAT", "IEND"}
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgb)


# ---------------------------------------------------------------------------------------------
# Decoding


def level_index(image: np.ndarray) -> int:
    """Frame index encoded by `grey_frames` (levels wrap every 32 frames)."""
    return round(float(image.mean()) / LEVEL_STEP)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("clips")


def make_clip(directory, name, count=60, codec="libx264", fps=25, gop_size=12, size=(64, 64)):
    path = directory / name
    if not path.exists():
        write_video(
            path, grey_frames(count, *size), fps=fps, codec=codec, quality=2, gop_size=gop_size
        )
    return path


@pytest.mark.parametrize(
    ("name", "codec", "exact", "codec_name"),
    [
        ("h264.mp4", "libx264", True, "h264"),
        ("mpeg4.mp4", "mpeg4", True, "mpeg4"),
        ("mjpeg.avi", "mjpeg", True, "mjpeg"),
        ("h264.mkv", "libx264", False, "h264"),
        ("h264.mov", "libx264", True, "h264"),
    ],
)
def test_decode_all_frames_in_order(clip_dir, name, codec, exact, codec_name):
    from surgray.io.video import VideoReader, probe

    path = make_clip(clip_dir, name, codec=codec)
    info = probe(path)
    assert (info.frame_count, info.frame_count_exact) == (60, exact)
    assert (info.fps, info.width, info.height, info.codec) == (25.0, 64, 64, codec_name)
    assert info.duration == pytest.approx(2.4)
    frames = list(VideoReader(path))
    assert [f.index for f in frames] == list(range(60))
    assert [level_index(f.image) for f in frames] == [i % 32 for i in range(60)]
    assert [f.time for f in frames[:3]] == pytest.approx([0.0, 0.04, 0.08])
    assert frames[0].image.shape == (64, 64, 3) and frames[0].image.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "codec_names"),
    [
        ("hevc_12f.mp4", {"hevc"}),
        ("vp9_12f.webm", {"vp9", "libvpx-vp9"}),
        ("av1_12f.mkv", {"av1", "libdav1d", "libaom-av1"}),
    ],
)
def test_decode_committed_fixtures(name, codec_names):
    from pathlib import Path

    from surgray.io.video import VideoReader, probe

    path = Path(__file__).parent / "fixtures" / name
    info = probe(path, count_exact=True)
    assert info.codec in codec_names
    assert (info.frame_count, info.frame_count_exact, info.fps, info.width) == (12, True, 12.0, 64)
    frames = list(VideoReader(path))
    # make_fixtures.py: frame i is grey level 16 * i + 8.
    assert [round((float(f.image.mean()) - 8) / 16) for f in frames] == list(range(12))
    assert [f.index for f in frames] == list(range(12))


def test_frame_range_stride_target_fps_time_range_resize(clip_dir):
    from surgray.io.video import VideoReader

    path = make_clip(clip_dir, "h264.mp4")
    reader = VideoReader(path, start_frame=29, end_frame=41, stride=3)
    frames = list(reader)
    assert [f.index for f in frames] == [29, 32, 35, 38]
    assert [level_index(f.image) for f in frames] == [29, 0, 3, 6]
    assert [f.time for f in frames] == pytest.approx([1.16, 1.28, 1.40, 1.52])
    assert reader.stats.seeked  # started from the keyframe at 24, not from frame 0

    # 25 fps -> 10 fps: first frame of each 0.1 s slot, i.e. floor(i * 0.4) changes.
    indexes = [f.index for f in VideoReader(path, end_frame=25, target_fps=10)]
    assert indexes == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]
    assert [f.index for f in VideoReader(path, target_fps=50, end_frame=4)] == [0, 1, 2, 3]

    # [0.5 s, 1.0 s) at 25 fps holds frames 13 (0.52 s) to 24 (0.96 s).
    assert [f.index for f in VideoReader(path, start_time=0.5, end_time=1.0)] == list(range(13, 25))

    small = list(VideoReader(path, end_frame=2, resize_to=(16, 20)))
    assert [f.image.shape for f in small] == [(16, 20, 3), (16, 20, 3)]
    assert level_index(small[1].image) == 1
    assert next(iter(VideoReader(path, resize_to=24))).image.shape == (24, 24, 3)


@pytest.mark.parametrize("name", ["h264.mp4", "h264.mkv", "mjpeg.avi"])
def test_seeking_gives_the_same_frames_as_decoding_from_the_start(clip_dir, name):
    from surgray.io.video import VideoReader

    path = make_clip(clip_dir, name, codec="mjpeg" if name.endswith(".avi") else "libx264")
    full = {f.index: f.image for f in VideoReader(path)}
    reader = VideoReader(path, start_frame=37, end_frame=45)
    frames = list(reader)
    assert [f.index for f in frames] == list(range(37, 45))
    for frame in frames:
        np.testing.assert_array_equal(frame.image, full[frame.index])


def test_frame_folders_sort_naturally(tmp_path):
    from surgray.io.encode import write_png
    from surgray.io.video import VideoReader, probe

    for i in range(12):
        write_png(tmp_path / "png" / f"frame{i}.png", grey_frames(i + 1, 8, 10)[i])
    (tmp_path / "png" / "notes.txt").write_text("ignored")
    info = probe(tmp_path / "png", folder_fps=6)
    assert (info.frame_count, info.frame_count_exact, info.is_frame_folder) == (12, True, True)
    assert (info.width, info.height, info.codec, info.duration) == (10, 8, "png", 2.0)
    frames = list(VideoReader(tmp_path / "png", folder_fps=6, stride=2, start_frame=1))
    assert [f.index for f in frames] == [1, 3, 5, 7, 9, 11]
    assert [level_index(f.image) for f in frames] == [1, 3, 5, 7, 9, 11]
    assert frames[1].time == pytest.approx(0.5)

    from PIL import Image

    (tmp_path / "jpg").mkdir()
    for i in range(3):
        Image.fromarray(grey_frames(i + 1, 16, 16)[i]).save(tmp_path / "jpg" / f"{i:05d}.jpg")
    frames = list(VideoReader(tmp_path / "jpg", resize_to=(8, 8)))
    assert [level_index(f.image) for f in frames] == [0, 1, 2]
    assert frames[0].image.shape == (8, 8, 3)


# ---------------------------------------------------------------------------------------------
# Object storage, bounded decode-ahead


def _moto(server, action: str, method: str = "POST") -> bytes:
    import urllib.request

    url = f"{server.endpoint_url}/moto-api/recorder/{action}"
    with urllib.request.urlopen(urllib.request.Request(url, method=method)) as response:
        return response.read()


def test_s3_decode_reads_only_the_start_of_a_faststart_mp4(s3_server, tmp_path, capsys):
    """Counts bytes on the server side: moto's request recorder logs every GET's Range."""
    import json
    from pathlib import Path

    from surgray.io.video import VideoReader

    rng = np.random.default_rng(0)
    noise = (rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(300))
    local = tmp_path / "long.mp4"
    write_video(local, noise, fps=25, crf=18)
    size = local.stat().st_size
    assert size > 1_500_000
    bucket = s3_server.make_bucket("decode-in")
    s3_server.filesystem().put_file(str(local), "decode-in/long.mp4")

    recording = Path.cwd() / "moto_recording"  # moto writes its log in the server's cwd
    existed = recording.exists()
    _moto(s3_server, "reset-recording")
    _moto(s3_server, "start-recording")
    try:
        reader = VideoReader(f"{bucket}/long.mp4", storage=s3_server.storage)
        indexes = []
        for frame in reader:
            indexes.append(frame.index)
            if len(indexes) == 10:
                break
        _moto(s3_server, "stop-recording")
        log = [
            json.loads(line) for line in _moto(s3_server, "download-recording", "GET").splitlines()
        ]
    finally:
        _moto(s3_server, "stop-recording")
        if not existed:
            recording.unlink(missing_ok=True)
    assert indexes == list(range(10))
    served = 0
    for entry in log:
        if entry["method"] == "GET" and entry["url"].split("?")[0].endswith("/long.mp4"):
            first, last = entry["headers"]["Range"].removeprefix("bytes=").split("-")
            served += int(last) - int(first) + 1
    fraction = served / size
    with capsys.disabled():
        print(f"\n[s3 partial read] {served} of {size} bytes = {fraction:.1%} for 10 frames")
    assert 0 < served and fraction < 0.25
    assert reader.stats.bytes_fetched == served  # the client's own count agrees


def test_s3_frame_folder_and_write(s3_server, tmp_path):
    from surgray.io.encode import write_png
    from surgray.io.video import VideoReader, probe

    bucket = s3_server.make_bucket("folders")
    for i in (2, 10, 1):
        write_png(
            f"{bucket}/clip/f{i}.png",
            grey_frames(i + 1, 4, 6)[i],
            storage=s3_server.storage,
        )
    assert probe(f"{bucket}/clip", storage=s3_server.storage).frame_count == 3
    frames = list(VideoReader(f"{bucket}/clip", storage=s3_server.storage))
    assert [level_index(f.image) for f in frames] == [1, 2, 10]
    with pytest.raises(VideoError, match=f"{bucket}/absent.mp4: file not found"):
        list(VideoReader(f"{bucket}/absent.mp4", storage=s3_server.storage))
    s3_server.filesystem().pipe_file("folders/empty.mp4", b"")
    with pytest.raises(VideoError, match="empty"):
        probe(f"{bucket}/empty.mp4", storage=s3_server.storage)


def test_decode_ahead_is_bounded_and_stops_on_break(clip_dir):
    import threading
    import time

    from surgray.io.video import VideoReader

    path = make_clip(clip_dir, "long.mp4", count=150)
    reader = VideoReader(path, prefetch=4)
    consumed = 0
    for _frame in reader:
        consumed += 1
        time.sleep(0.002)
        # The queue holds at most `prefetch` frames beyond what the consumer has taken.
        assert reader.stats.frames_put - consumed <= 4
        if consumed == 20:
            time.sleep(0.2)  # give the producer every chance to run ahead
            assert reader.stats.frames_put - consumed <= 4
    assert consumed == 150
    assert 1 <= reader.stats.peak_queue_depth <= 4

    for _frame in reader:
        break
    assert reader.running_threads == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("decode:")]

    with VideoReader(path, prefetch=2) as held:
        iterator = iter(held)
        next(iterator)
        held.close()
        assert held.running_threads == 0
        assert list(iterator) == []  # a closed reader ends the iteration


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_video_errors_naming_the_file(tmp_path, clip_dir):
    from surgray.io.video import VideoReader, probe

    def fails(uri, match):
        with pytest.raises(VideoError, match=match) as info:
            list(VideoReader(uri))
        assert str(uri) in str(info.value)
        with pytest.raises(VideoError, match=match):
            probe(uri)

    fails(tmp_path / "missing.mp4", "file not found")
    (tmp_path / "empty.mp4").write_bytes(b"")
    fails(tmp_path / "empty.mp4", r"empty \(0 bytes\)")
    (tmp_path / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    fails(tmp_path / "text.mp4", "not a readable video container")
    fails("foo://bucket/clip.mp4", "unknown URI scheme 'foo'")
    (tmp_path / "nothing").mkdir()
    fails(tmp_path / "nothing", "no JPEG/PNG frames")

    # Audio only: a container, but nothing to decode as video.
    with av.open(str(tmp_path / "tone.wav"), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        samples = np.zeros((1, 800), np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    fails(tmp_path / "tone.wav", "no video stream")

    # An AVI whose fourcc no FFmpeg decoder claims.
    avi = make_clip(clip_dir, "mjpeg.avi", codec="mjpeg").read_bytes()
    (tmp_path / "alien.avi").write_bytes(avi.replace(b"MJPG", b"QQQQ"))
    fails(tmp_path / "alien.avi", "codec is not supported")


@pytest.mark.parametrize("name", ["noise.mp4", "noise.mkv"])
def test_truncated_videos_are_reported_not_skipped(tmp_path, name):
    from surgray.io.video import VideoReader

    rng = np.random.default_rng(1)
    whole = tmp_path / name
    write_video(
        whole, (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(40)), fps=20
    )
    payload = whole.read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(payload[: len(payload) * 6 // 10])
    with pytest.raises(VideoError, match="truncated") as info:
        for _frame in VideoReader(cut):
            pass
    assert str(cut) in str(info.value)
    # The frames before the cut are still readable when asked for explicitly.
    assert len(list(VideoReader(cut, end_frame=5))) == 5


def test_reader_argument_checks(clip_dir):
    from surgray.io.video import VideoReader

    path = make_clip(clip_dir, "h264.mp4")
    for kwargs, match in [
        ({"stride": 0}, "stride"),
        ({"stride": 2, "target_fps": 5}, "not both"),
        ({"start_frame": 3, "end_time": 1.0}, "not both"),
        ({"start_frame": 5, "end_frame": 2}, "bad frame range"),
        ({"prefetch": 0}, "prefetch"),
        ({"resize_to": (0, 4)}, "resize_to"),
    ]:
        with pytest.raises(ValueError, match=match):
            VideoReader(path, **kwargs)
