"""The review page in a real browser: Debian's Chromium driven by Playwright, against the Ray
Serve application (token auth, the shipped demo checkpoint) on 127.0.0.1.

Live: sign in, upload a demo clip, type an expression, click a point, wait for masks, check
that the canvas shows mask pixels exactly where the session API's answers put them, undo a
click by keyboard, correct on frame 20 (re-tracked to the end of the 48-frame clip), save,
reload, and find the revision. Review: a store written by the annotate job, worst-first list,
a correction saved as a revision while the job's own files stay byte-identical, an export,
and a second reviewer's save that makes this page's next save a visible conflict (409).

Screenshots go to a temporary folder, or to $SURGRAY_UI_SCREENSHOTS (the README's come from
`SURGRAY_UI_SCREENSHOTS=docs pytest tests/test_ui_browser.py`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _local_http import import_serve_app, serve_http

ray = pytest.importorskip("ray")
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install playwright"
)
import_serve_app()

CHROMIUM = os.environ.get("SURGRAY_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"BROWSER TESTS SKIPPED: no Chromium at {CHROMIUM}; install it with "
        "`apt-get install -y chromium` (scripts/setup.sh does when apt-get can) or set "
        "SURGRAY_CHROMIUM to a Chromium binary",
        allow_module_level=True,
    )

TOKEN = "ui-browser-token-0123456789"
SESSION_KEY = "ui-browser-session-key-0123456789"
FRAMES, SIZE, SEED = 48, 128, 0
JOB_FRAMES = 12
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 400_000
pytestmark = pytest.mark.timeout(600)  # a busy 2-core machine; typically ~1 minute a test


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "revisions" not in p.parts
    }


@pytest.fixture(scope="module")
def shots():
    folder = os.environ.get("SURGRAY_UI_SCREENSHOTS")
    temp = None if folder else tempfile.mkdtemp(prefix="srt-shots")
    path = Path(folder or temp)
    path.mkdir(parents=True, exist_ok=True)
    yield path
    if temp:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def stage(ray_cluster):
    """A demo clip (MP4 + ground truth), and an annotation store the annotate job wrote."""
    from surgray.annotate.config import AnnotateConfig
    from surgray.annotate.pipeline import run_annotate
    from surgray.demo_inputs import MASK_CHECKPOINT, write_clip

    root = Path(tempfile.mkdtemp(prefix="srt-ui", dir="/tmp"))
    clip = write_clip(root / "demo", FRAMES, SIZE, SEED)
    short = write_clip(root / "short", JOB_FRAMES, SIZE, SEED + 1)
    manifest = root / "manifest.jsonl"
    row = {
        "video_uri": str(short.video),
        "video_id": "case-017",
        "prompts": json.dumps({"objects": list(short.mask_objects)}),
    }
    manifest.write_text(json.dumps(row) + "\n")
    config = AnnotateConfig.from_dict(
        {
            "inputs": {"manifest": str(manifest)},
            "output": {"prefix": str(root / "job-out")},
            "model": {"variant": "micro", "checkpoint": str(MASK_CHECKPOINT), "image_size": SIZE},
            "actors": {"count": 1, "num_cpus": 0.5, "torch_threads": 1},
            "privacy": {"hash_video_ids": False},
        }
    )
    run_annotate(config)
    assert (root / "job-out" / "_done" / "case-017.json").exists()
    try:
        yield root, clip
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def base_url(stage):
    from ray import serve

    from serve.app import build_app_from_args

    root, _ = stage
    env = {"SURGRAY_API_TOKENS": TOKEN, "SURGRAY_SESSION_KEY": SESSION_KEY}
    review = {
        "sources": [
            {"name": "job", "uri": str(root / "job-out"), "description": "annotate job output"},
            {"name": "live", "uri": str(root / "live"), "description": "saved live sessions"},
        ],
        "live_source": "live",
    }
    with serve_http() as url:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SURGRAY_API_TOKENS", TOKEN)
            app = build_app_from_args(
                {
                    "replicas": 1,
                    "ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": env}},
                    "review": review,
                }
            )
        serve.run(app, name="surgray-ui", route_prefix="/")
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    page.goto(base_url + "/")
    yield page
    context.close()
    assert not errors, errors


def screenshot(page, path: Path) -> None:
    """A 1280x800 screenshot, kept small (a 256-colour palette PNG)."""
    from PIL import Image

    page.screenshot(path=str(path))
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)


def sign_in(page) -> None:
    page.fill("#token", TOKEN)
    page.click("#sign-in")
    page.wait_for_selector("#who:not([hidden])")
    assert page.inner_text("#who").startswith("signed in as token-")


def wait_tracked(page, offset: int | None = None) -> None:
    """Until the page's tracking run (from frame `offset`) reached the end; fails at once with
    the page's message when it shows an error."""
    check = "S.run && S.run.done" + (f" && S.run.offset === {offset}" if offset is not None else "")
    page.wait_for_function(
        f"(() => {{ const S = window.surgray; return ({check}) || "
        "document.getElementById('status').className === 'error'; })()"
    )
    footer = page.locator("#status")
    assert footer.get_attribute("class") != "error", footer.inner_text()


def overlay_alpha(page) -> np.ndarray:
    """The mask layer of the canvas as drawn (alpha > 0 where a mask is shown)."""
    data = page.evaluate(
        """() => { const c = document.getElementById('overlay');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""
    )
    return np.asarray(data, dtype=np.uint8).reshape(SIZE, SIZE, 4)[..., 3]


def click_image(page, x: float, y: float, button: str = "left") -> None:
    box = page.locator("#marks").bounding_box()
    page.mouse.click(
        box["x"] + x * box["width"] / SIZE, box["y"] + y * box["height"] / SIZE, button=button
    )


def test_live_upload_text_click_correct_save_and_reload(page, stage, shots):
    from surgray.io.masks import decode_rle

    _, clip = stage
    answers: dict[str, dict[int, list]] = {}

    def keep(response) -> None:  # every frame result the session API sent the page
        if response.request.method == "POST" and response.url.endswith("/frames"):
            body = response.json()
            answers.setdefault(body["session_id"], {})[body["frame_index"]] = body

    page.on("response", keep)
    sign_in(page)
    page.set_input_files("#upload", str(clip.video))
    page.wait_for_function(f"window.surgray.frames.length === {FRAMES}")
    expression = next(iter(clip.expressions))
    page.fill("#expression", expression)
    page.click("#find button")
    page.wait_for_function("window.surgray.run && window.surgray.run.sid")
    # A click on the largest object of frame 0 starts a new object there; tracking restarts
    # from frame 0 with both the expression and the click.
    target = _click_target(clip)
    page.keyboard.press("Home")
    page.click("#new-object")
    click_image(page, *target)
    wait_tracked(page, offset=0)
    latencies = [
        o["latency_ms"] for o in answers[page.evaluate("window.surgray.lastSession")].values()
    ]
    print(f"\nserver latency per frame: median {np.median(latencies):.0f} ms")
    screenshot(page, shots / "ui-live.png")
    objects = page.evaluate(
        "[...window.surgray.objects.values()].map(o => [o.obj_id, o.label, o.text])"
    )
    assert any(o[2] and o[1] == expression for o in objects) and any(not o[2] for o in objects)

    # The canvas shows mask pixels exactly where the API's answers of the last run put them.
    run = answers[page.evaluate("window.surgray.lastSession")]
    for frame in (0, 10, FRAMES - 1):
        page.keyboard.press("Home")
        for _ in range(frame):
            page.keyboard.press("ArrowRight")
        assert page.evaluate("window.surgray.cur") == frame
        union = np.zeros((SIZE, SIZE), dtype=bool)
        for obj in run[frame]["objects"]:
            union |= decode_rle([obj["rle"]])[0]
        shown = overlay_alpha(page) > 0
        assert union.any() or frame > 0, "the click gave no mask on its own frame"
        assert np.array_equal(shown, union), (
            f"frame {frame}: {np.sum(shown != union)} pixels differ"
        )

    # Keyboard: undo a click on frame 20, then correct there for real and time the round trip.
    page.keyboard.press("Home")
    for _ in range(20):
        page.keyboard.press("ArrowRight")
    new_id = max(o[0] for o in objects if not o[2])
    page.click(f"#objects tbody tr[data-id='{new_id}']")
    clicks = page.evaluate("window.surgray.clicks.length")
    click_image(page, *target, button="right")
    page.wait_for_function(f"window.surgray.clicks.length === {clicks + 1}")
    page.keyboard.press("z")
    page.wait_for_function(f"window.surgray.clicks.length === {clicks}")
    started = time.perf_counter()
    click_image(page, *target)
    wait_tracked(page, offset=20)
    round_trip = time.perf_counter() - started
    print(f"\ncorrection round trip (click on frame 20, re-track frames 20-47): {round_trip:.2f} s")
    assert page.evaluate("window.surgray.masks.slice(20).every(m => Object.keys(m).length > 0)")

    page.click("#save")
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('Saved revision 1')"
    )
    saved_id = page.evaluate("window.surgray.live.videoId")
    page.reload()
    page.wait_for_selector("#who:not([hidden])")  # the token stayed in this tab's sessionStorage
    page.click("#tab-review")
    page.select_option("#source", "live")
    page.click(f"#videos tbody tr[data-id='{saved_id}']")
    page.wait_for_function(
        f"window.surgray.review.detail && window.surgray.frames.length === {FRAMES}"
    )
    assert page.input_value("#revision") == "1"
    assert "token-" in page.inner_text("#revision-info")
    assert page.evaluate("window.surgray.masks.filter(m => Object.keys(m).length).length") == FRAMES


def _click_target(clip) -> tuple[float, float]:
    """A pixel well inside the largest object of the clip's first frame."""
    from surgray.io.masks import decode_rle

    best = max(clip.mask_objects, key=lambda o: decode_rle([o["mask_rle"]])[0].sum())
    inner = decode_rle([best["mask_rle"]])[0]
    while True:  # erode (4-neighbourhood) until one more step would leave nothing
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        if not shrunk.any():
            break
        inner = shrunk
    ys, xs = np.nonzero(inner)
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    return float(x) + 0.5, float(y) + 0.5


def test_review_a_job_store_correct_save_and_export(page, stage, shots, base_url):
    root, _ = stage
    store = root / "job-out"
    before = _digests(store)
    sign_in(page)
    page.click("#tab-review")
    page.select_option("#source", "job")
    page.wait_for_selector("#videos tbody tr[data-id='case-017']")
    page.click("#videos tbody tr[data-id='case-017']")
    page.wait_for_function(
        f"window.surgray.review.detail && window.surgray.frames.length === {JOB_FRAMES}"
    )
    assert page.input_value("#revision") == "0"
    # Scrub with the keyboard, then correct object 1 from frame 5 on.
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    screenshot(page, shots / "ui-review.png")
    page.click("#objects tbody tr[data-id='1']")
    mask = page.evaluate("window.surgray.masks[5][1] ? 1 : 0")
    assert mask == 1
    click_image(page, SIZE * 0.5, SIZE * 0.5)
    wait_tracked(page, offset=5)
    page.click("#save")
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('Saved revision 1')"
    )
    screenshot(page, shots / "ui-review-saved.png")
    assert _digests(store) == before  # the job's parts, status and marker are untouched
    record = json.loads((store / "revisions" / "video_id=case-017" / "r-00001.json").read_text())
    assert record["parent"] == 0 and record["objects_changed"] == [1]
    assert record["frames_changed"] == list(range(5, JOB_FRAMES))
    assert record["author"].startswith("token-") and TOKEN not in json.dumps(record)
    assert page.input_value("#revision") == "1"

    with page.expect_download() as download:
        page.click("#export button[data-format='davis']")
    payload = Path(download.value.path()).read_bytes()
    names = zipfile.ZipFile(io.BytesIO(payload)).namelist()
    assert len(names) == JOB_FRAMES and names[0] == "case-017/00000.png"

    # A second reviewer saves revision 2 meanwhile; this page's next save (from revision 1)
    # is refused with a conflict it shows, and nothing is overwritten.
    import httpx

    rle = page.evaluate("window.surgray.masks[6][1].rle")
    other = {"source": "job", "video_id": "case-017", "parent": 1, "corrections": [
        {"obj_id": 2, "from_frame": 6, "masks": [{"frame_idx": 6, "obj_id": 2, "rle": rle}]}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {TOKEN}"}
    saved = httpx.post(f"{base_url}/ui/api/review/save", json=other, headers=headers, timeout=60)
    assert saved.status_code == 201 and saved.json()["revision"] == 2
    page.keyboard.press("ArrowLeft")
    page.click("#objects tbody tr[data-id='1'] td:first-child")
    click_image(page, SIZE * 0.25, SIZE * 0.25)
    wait_tracked(page)
    page.click("#save")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Conflict')")
    assert "revision 2 is the latest" in page.inner_text("#status")
    assert not (store / "revisions" / "video_id=case-017" / "r-00003.json").exists()
