"""A released ReSurgSAM2 checkpoint computes what ReSurgSAM2's own code computes.

The fixtures (tests/fixtures/resurgsam2/) were made by `scripts/resurgsam2_parity_fixtures.py`
running THEIR inference code (their `build_sam2_video_predictor`, `init_state`,
`add_new_text`, `propagate_in_video`) on CPU at a reduced size with seeded random weights; the
command is in that script. Here the same weights, in their layout, go through
`build_resurgsam2(cfg, checkpoint=...)` with no other argument, and surgray's tracker runs the
same clips. Every stage is compared at 1e-4: text features, fusion with 0, 1 and 2 history
frames, stage-1 outputs, the frame CIFS selects, tracked masks, scores, pointers and the
long-term memory, on a clip where CIFS selects a frame, one where the tracked object is lost
(their loop keeps tracking, as the released preset does), and our `lost` path, where stage 1
takes over again, against their loop started afresh there.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from surgray.model.checkpoints.referring_checkpoint import build_resurgsam2, to_resurgsam2_layout
from surgray.model.checkpoints.resurgsam2_released import PRESET_NAME
from surgray.model.checkpoints.variants import micro_config
from surgray.model.referring.resurgsam2 import ReSurgSAM2
from surgray.model.text.encoder import TextEncoder
from surgray.tracking.tracker import Tracker

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "resurgsam2"
META = json.loads((FIXTURES / "meta.json").read_text())
TOL = 1e-4
# Memory features are stored in bf16 by both sides: equal fp32 values up to 1e-6 may round to
# neighbouring bf16 values, one bf16 step apart (2^-8 relative).
BF16_STEP = 2.0**-7


def parity_config():
    """The reduced network of the fixtures: surgray's micro SAM2 with the decoder sizes their
    code hard-codes (8 heads, 2048-wide MLP, 256-wide IoU head)."""
    return micro_config(META["image_size"]).updated(
        mask_decoder={"transformer": {"mlp_dim": 2048, "num_heads": 8}, "iou_head_hidden_dim": 256}
    )


def load(name: str):
    return torch.load(FIXTURES / name, weights_only=False)


def frames_of(kind: str) -> np.ndarray:
    return np.load(FIXTURES / f"{kind}_frames.npz")["frames"]


def video_masks(ref: dict) -> np.ndarray:
    return np.unpackbits(ref["video_masks"], axis=-1)[..., : META["image_size"]].astype(bool)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.numel() == b.numel(), (a.shape, b.shape)
    return (a.reshape(-1) - b.reshape(-1)).abs().max().item() if a.numel() else 0.0


@pytest.fixture(scope="module")
def model() -> ReSurgSAM2:
    torch.set_num_threads(1)
    net = build_resurgsam2(parity_config(), checkpoint=FIXTURES / "released.pt")
    net.text_encoder = TextEncoder.from_pretrained(FIXTURES / "clip")
    return net


class Run:
    """surgray's tracker over a clip, recording each frame's per-stage outputs."""

    def __init__(self, model: ReSurgSAM2, kind: str, cifs: dict | None = None) -> None:
        self.frames: dict[int, dict] = {}
        fusions: list[tuple[int, torch.Tensor, torch.Tensor]] = []

        def hook(_module, args, output):
            fusions.append((len(args[2]), output.image_features, output.sparse_tokens))

        handle = model.cross_modal_fusion.register_forward_hook(hook)
        try:
            clip = frames_of(kind)
            tracker = Tracker(model)
            state = tracker.start(kind, clip.shape[1:3], num_frames=len(clip))
            tracker.add_text(state, 1, META["text"], cifs=cifs)
            obj = state.objects[1]
            selector = state.referring.objects[1].selector
            for t, frame in enumerate(clip):
                fusions.clear()
                result = tracker.step(state, frame).get(1)
                out = obj.last
                entry = next((e for e in obj.policy.held_entries() if e.frame_idx == t), None)
                record = {
                    "kind": out.kind,
                    "low_res": out.low_res_logits,
                    "score": out.object_score,
                    "iou": out.predicted_iou,
                    "mask": result.mask,
                    "state": result.state,
                    "long_term": list(getattr(obj.policy, "long_term_frames", [])),
                    "selected": selector.selected.frame_idx if selector.selected else None,
                }
                if entry is not None and not entry.is_conditioning:
                    record.update(obj_ptr=entry.obj_ptr, memory=entry.features)
                if fusions:
                    record.update(
                        history=fusions[0][0], fusion=fusions[0][1], fusion_cls=fusions[0][2]
                    )
                if out.kind == "referred":
                    record["obj_ptr"] = selector_payload_pointer(state, t)
                self.frames[t] = record
        finally:
            handle.remove()


def selector_payload_pointer(state, frame_idx: int) -> torch.Tensor | None:
    """The stage-1 pointer of `frame_idx` when CIFS holds it (or selected it)."""
    selector = state.referring.objects[1].selector
    for candidate in [*selector._window, selector.selected]:
        if candidate is not None and candidate.frame_idx == frame_idx:
            return candidate.payload.obj_ptr
    return None


@pytest.fixture(scope="module")
def cifs_run(model) -> Run:
    return Run(model, "cifs")


@pytest.fixture(scope="module")
def lost_run(model) -> Run:
    return Run(model, "lost")


@pytest.fixture(scope="module")
def restart_run(model) -> Run:
    return Run(model, "lost", cifs={"lost_patience": META["patience"]})


def compare_frames(run: Run, ref: dict, frames: range, offset: int = 0) -> dict[str, float]:
    """Max differences per stage between surgray's frames and theirs (frame t <-> t - offset)."""
    records = {r["frame"] + offset: r for r in ref["records"]}
    masks = video_masks(ref)
    diffs: dict[str, float] = {}

    def note(stage: str, value: float) -> None:
        diffs[stage] = max(diffs.get(stage, 0.0), value)

    for t in frames:
        ours, theirs = run.frames[t], records[t]
        stage = "stage 1" if theirs["stage"] == "referring" else "tracked"
        assert ours["kind"] == ("referred" if stage == "stage 1" else "tracked"), t
        note(f"{stage} low-res logits", max_diff(ours["low_res"], theirs["low_res"]))
        note(f"{stage} object score", abs(ours["score"] - float(theirs["score"])))
        their_iou = theirs["iou"] if stage == "stage 1" else theirs["ious"].max()
        note(f"{stage} predicted IoU", abs(ours["iou"] - float(their_iou)))
        if ours.get("obj_ptr") is not None:
            note(f"{stage} object pointer", max_diff(ours["obj_ptr"], theirs["obj_ptr"]))
        flipped = int((ours["mask"] != masks[t - offset]).sum())
        note(f"{stage} video-mask pixels flipped", float(flipped))
        if stage == "stage 1":
            theirs_image = theirs["fusion_image"][:, 0]  # [h*w, C]
            ours_image = ours["fusion"][0].flatten(1).transpose(0, 1)
            assert ours["history"] == theirs["history"], t
            name = f"fusion, {theirs['history']} history frame(s)"
            note(f"{name}: image", max_diff(ours_image, theirs_image))
            note(f"{name}: class token", max_diff(ours["fusion_cls"][:, :1], theirs["fusion_cls"]))
        else:
            # (The frame an object is given up on leaves no memory: it searches again.)
            if "memory" in ours or ours["state"] != "searching":
                memory_step = BF16_STEP * theirs["memory"].abs().max().item()
                assert max_diff(ours["memory"], theirs["memory"]) <= memory_step, t
            nxt = records.get(t + 1)
            if nxt is not None and nxt["stage"] == "tracked" and t + 1 in frames:
                # Theirs offers frame t to the long-term pool when tracking t + 1; we when
                # frame t is added: the bank is the same between the two frames.
                assert ours["long_term"] == [f + offset for f in nxt["long_mem"]], t
    return diffs


def assert_within(diffs: dict[str, float]) -> None:
    bad = {k: v for k, v in diffs.items() if v > (0 if "flipped" in k else TOL)}
    assert not bad, bad


# ------------------------------------------------------------------------------ the preset
def test_a_released_checkpoint_builds_the_released_configuration(model):
    referring = model.referring_cfg
    assert referring.preset == PRESET_NAME
    assert referring.fusion.grn_norm == "tokens_and_channels"
    assert referring.fusion.forward_text_emb and referring.tracked_text_token
    assert (referring.fusion.text_dim, referring.fusion.text_hidden_dim) == (32, 64)
    assert referring.cifs.lost_patience is None and referring.cifs.window == 5
    assert referring.text_memory_policy == {
        "name": "dlm",
        "bank_size": 3,
        "candidate_pool": 5,
        "iou_gate": 0.95,
        "similarity": "width_axis",
    }
    assert model.cfg.prompting.fill_hole_area == 0
    assert model.cfg.memory.binarize_mask_from_pts_for_mem_enc is False
    assert model.cfg.mask_decoder.dynamic_multimask_via_stability is False
    assert model.cfg.memory.storage_dtype == "bf16"


def test_the_published_fusion_sizes_are_read_back_from_its_tensors():
    """At the published size (Hiera-S neck 256, CLIP B/32 512, 2048-wide projections) the
    preset reads back our defaults, except the GRN, which is the release's."""
    from surgray.model.checkpoints.resurgsam2_released import released_fusion_config
    from surgray.model.referring.cstmamba import CSTMamba, CSTMambaConfig

    fusion = CSTMamba(CSTMambaConfig())
    ours = {f"cross_modal_fusion.{k}": v for k, v in fusion.state_dict().items()}
    read = released_fusion_config(to_resurgsam2_layout(ours))
    assert read == CSTMambaConfig(grn_norm="tokens_and_channels")


def test_load_network_runs_a_released_file_with_the_preset(tmp_path):
    """The annotate job and Serve build through `load_network`: a released-layout file of a
    registered variant gets the preset too, with the text folder the caller names."""
    from surgray.model.checkpoints.network_loading import load_network
    from surgray.model.referring.config import ReferringConfig
    from surgray.model.referring.cstmamba import CSTMambaConfig

    source = ReSurgSAM2(micro_config(128), ReferringConfig(fusion=CSTMambaConfig.tiny()))
    path = tmp_path / "released.pt"
    torch.save({"model": to_resurgsam2_layout(source.state_dict())}, path)
    net = load_network(path, "micro", image_size=128, text_encoder="/clip/b32")
    assert isinstance(net, ReSurgSAM2)
    assert net.referring_cfg.preset == PRESET_NAME
    assert net.referring_cfg.text_encoder == "/clip/b32"
    sizes = ("d_model", "text_dim", "text_hidden_dim", "depth", "mlp_dim", "d_state", "d_conv")
    sizes += ("expand", "dwmlp_ratio", "num_frames", "fusion_hidden_dim")
    tiny, read = CSTMambaConfig.tiny(), net.referring_cfg.fusion
    assert {k: getattr(read, k) for k in sizes} == {k: getattr(tiny, k) for k in sizes}
    assert read.grn_norm == "tokens_and_channels"
    assert net.cfg.memory.binarize_mask_from_pts_for_mem_enc is False
    for key, value in source.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_text_objects_get_the_released_memory_and_text_token(model):
    """Text objects use the preset's DLM whatever the video's policy, and their selections
    carry the text token; the wrapped policy still copies and pickles (sessions do)."""
    import copy
    import pickle

    from surgray.model.referring.tracking import TextMemorySelection

    tracker = Tracker(model, {"name": "recent"})
    state = tracker.start("v", (128, 128), num_frames=4)
    tracker.add_text(state, 1, META["text"])
    policy = state.objects[1].policy
    assert (policy.cfg.name, policy.cfg.bank_size, policy.cfg.similarity) == (
        "dlm",
        3,
        "width_axis",
    )
    selection = policy.select(0)
    assert isinstance(selection, TextMemorySelection)
    token = model.text_prompt_token(model.encode_text([META["text"]]))[0]
    assert torch.equal(selection.decoder_tokens, token)
    for clone in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        assert isinstance(clone.select(0), TextMemorySelection)


def test_our_checkpoints_keep_what_they_recorded():
    """The shipped demo model records its config: no preset, nothing of the release's."""
    from surgray.model.checkpoints.network_loading import load_network

    net = build_resurgsam2("micro", checkpoint="demo:referring", load_text_encoder=False)
    referring = net.referring_cfg
    assert referring.preset is None and referring.tracked_text_token is False
    assert referring.text_memory_policy is None
    assert referring.fusion.grn_norm == "tokens"
    assert net.cfg.memory.binarize_mask_from_pts_for_mem_enc is True
    # Its recorded network (one tracked mask, not micro's default 3) whichever way it loads.
    assert net.cfg.prompting.multimask_output_for_tracking is False
    loaded = load_network("demo:referring", "micro")
    assert loaded.cfg == net.cfg and loaded.referring_cfg == referring


# ------------------------------------------------------------------------------ stages
def text_diffs(model: ReSurgSAM2) -> dict[str, float]:
    ref = load("text.pt")
    text = model.encode_text([META["text"]])
    ids = model.text_encoder.tokenizer(META["text"], return_tensors="pt")["input_ids"]
    assert ids.tolist() == ref["input_ids"].tolist()
    fusion = model.cross_modal_fusion
    return {
        "CLIP tokens": max_diff(text.tokens, ref["last_hidden_state"]),
        "CLIP pooled": max_diff(text.pooled, ref["pooler_output"]),
        "token_projection (tokens)": max_diff(
            fusion.token_projection(text.tokens), ref["text_emb_sentence"]
        ),
        "token_projection (pooled)": max_diff(
            fusion.token_projection(text.pooled)[:, None], ref["text_emb_cls"]
        ),
        "language_fusion_mlp": max_diff(model.text_prompt_token(text), ref["language_fusion"]),
    }


def test_text_features_match(model):
    assert_within(text_diffs(model))


def test_cifs_clip_matches_stage_by_stage(cifs_run):
    ref = load("cifs_outputs.pt")
    diffs = compare_frames(cifs_run, ref, range(len(frames_of("cifs"))))
    assert_within(diffs)
    histories = {r["history"] for r in ref["records"] if r["stage"] == "referring"}
    assert histories == {0, 1, 2}  # fusion without history, with one and with two frames
    # CIFS: a non-credible frame, then a full window, and the same frame selected.
    [selected] = ref["cond_frames"]
    first_tracked = min(r["frame"] for r in ref["records"] if r["stage"] == "tracked")
    assert cifs_run.frames[first_tracked - 1]["selected"] == selected
    assert cifs_run.frames[first_tracked]["kind"] == "tracked"
    assert cifs_run.frames[len(cifs_run.frames) - 1]["long_term"] == ref["long_mem"]


def test_lost_clip_keeps_tracking_like_their_loop(lost_run):
    """The released loop never searches again: tracked frames with a negative object score
    are reported lost and tracking goes on, memories and long-term bank included."""
    ref = load("lost_outputs.pt")
    diffs = compare_frames(lost_run, ref, range(len(frames_of("lost"))))
    assert_within(diffs)
    states = [lost_run.frames[t]["state"] for t in sorted(lost_run.frames)]
    assert "lost" in states and "searching" not in states[ref["cond_frames"][0] + 1 :]


def test_our_lost_path_searches_again_like_their_loop_started_afresh(restart_run):
    """With `lost_patience` the object searches again after that many lost frames: stage 1
    with the two frames before as sensory memory and an empty CIFS window, which is their
    loop started on the clip two frames earlier (where stage 1 finds nothing credible)."""
    lost, restart = load("lost_outputs.pt"), load("restart_outputs.pt")
    first = META["restart"]
    assert restart["restart"] == first and restart["offset"] == first - 2
    assert restart_run.frames[first - 1]["state"] == "searching"
    before = compare_frames(restart_run, lost, range(first))
    after = compare_frames(restart_run, restart, range(first, len(frames_of("lost"))), first - 2)
    assert_within(before | after)
    [selected] = restart["cond_frames"]
    assert restart_run.frames[len(restart_run.frames) - 1]["selected"] == selected + first - 2


def test_a_clicked_object_beside_the_text_object_changes_neither(model, cifs_run):
    """Objects of one frame run in one call: the text object's rows take the text-token path
    and a clicked object's the plain one; each gets what it gets alone."""

    def run(with_text: bool, with_clicks: bool) -> dict[int, list[torch.Tensor]]:
        clip = frames_of("cifs")
        tracker = Tracker(model)
        state = tracker.start("mixed", clip.shape[1:3], num_frames=len(clip))
        if with_text:
            tracker.add_text(state, 1, META["text"])
        if with_clicks:
            tracker.add_points(state, 2, 0, [[40, 64]], [1])
        logits: dict[int, list[torch.Tensor]] = {1: [], 2: []}
        for frame in clip:
            tracker.step(state, frame)
            for obj_id, obj in state.objects.items():
                logits[obj_id].append(obj.last.low_res_logits)
        return logits

    both, clicks_only = run(True, True), run(False, True)
    text_alone = [cifs_run.frames[t]["low_res"] for t in range(len(cifs_run.frames))]
    assert max(max_diff(a, b) for a, b in zip(both[1], text_alone)) <= 1e-5
    assert max(max_diff(a, b) for a, b in zip(both[2], clicks_only[2])) <= 1e-5


# ------------------------------------------------------------------------------ the causes
def test_either_released_setting_alone_breaks_parity(model):
    """The two settings the issue found: GRN over tokens only changes the fusion; without
    the text token the tracked frames drift. (So the comparisons above can fail.)"""
    ref = load("cifs_outputs.pt")
    weights = model.state_dict()
    for change, stage in (("grn", "fusion"), ("token", "tracked")):
        referring = model.referring_cfg
        if change == "grn":
            fusion = referring.fusion.model_copy(update={"grn_norm": "tokens"})
            referring = referring.model_copy(update={"fusion": fusion})
        else:
            referring = referring.model_copy(update={"tracked_text_token": False})
        other = ReSurgSAM2(model.cfg, referring)
        other.load_state_dict(weights)
        other.text_encoder = model.text_encoder
        run = Run(other.eval(), "cifs")
        diffs = compare_frames_loosely(run, ref)
        assert diffs[stage] > 1e-2, (change, diffs)


def compare_frames_loosely(run: Run, ref: dict) -> dict[str, float]:
    diffs = {"fusion": 0.0, "tracked": 0.0}
    for theirs in ref["records"]:
        ours = run.frames[theirs["frame"]]
        if theirs["stage"] == "referring" and "fusion" in ours:
            ours_image = ours["fusion"][0].flatten(1).transpose(0, 1)
            value = max_diff(ours_image, theirs["fusion_image"][:, 0])
            diffs["fusion"] = max(diffs["fusion"], value)
        elif theirs["stage"] == "tracked" and ours["kind"] == "tracked":
            value = max_diff(ours["low_res"], theirs["low_res"])
            diffs["tracked"] = max(diffs["tracked"], value)
    return diffs


def stage_table() -> str:
    """The measured differences, one row per stage (`python tests/test_resurgsam2_released.py`)."""
    net = build_resurgsam2(parity_config(), checkpoint=FIXTURES / "released.pt")
    net.text_encoder = TextEncoder.from_pretrained(FIXTURES / "clip")
    first = META["restart"]
    restart = Run(net, "lost", cifs={"lost_patience": META["patience"]})
    sections = {
        "text (token ids identical)": text_diffs(net),
        "CIFS clip": compare_frames(
            Run(net, "cifs"), load("cifs_outputs.pt"), range(len(frames_of("cifs")))
        ),
        "lost clip (released: keeps tracking)": compare_frames(
            Run(net, "lost"), load("lost_outputs.pt"), range(len(frames_of("lost")))
        ),
        f"our lost path, frames >= {first} (their loop afresh)": compare_frames(
            restart,
            load("restart_outputs.pt"),
            range(first, len(frames_of("lost"))),
            first - 2,
        ),
    }
    rows = ["| clip | stage | max abs difference |", "|---|---|---|"]
    for section, diffs in sections.items():
        for stage, value in sorted(diffs.items()):
            shown = f"{int(value)}" if "flipped" in stage else f"{value:.1e}"
            rows.append(f"| {section} | {stage} | {shown} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(stage_table())
