"""Checkpoint loading and saving: reference-saved files, strict errors, S3, init_from."""

from __future__ import annotations

import json

import pytest
import torch
from sam2.build_sam import _load_checkpoint as reference_load_checkpoint

import surgray
from devtools.sam2_reference import build_reference, randomize_
from surgray.model.checkpoints.sam2_checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    build_model,
    check_state_dict,
    infer_variant,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)
from surgray.model.checkpoints.variants import get_variant, micro_config
from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.network import SAM2Model


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    """A micro reference network with random weights, saved the way Meta's code saves."""
    ref = build_reference(micro_config(), video=False)
    randomize_(ref, seed=5)
    path = tmp_path_factory.mktemp("ckpt") / "reference.pt"
    torch.save({"model": ref.state_dict()}, path)
    return ref, path


def _same_outputs(ref, ours: SAM2Model) -> None:
    torch.manual_seed(0)
    images = torch.randn(1, 3, ours.image_size, ours.image_size)
    with torch.no_grad():
        expected = ref.forward_image(images)
        got = ours.encode_images(images)
        for a, b in zip(expected["backbone_fpn"], got.backbone_fpn):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        _, feats, _, sizes = ref._prepare_backbone_features(expected)
        feats[-1] = feats[-1] + ref.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, *s) for f, s in zip(feats, sizes)]
        clicks = (torch.tensor([[[40.0, 60.0]]]), torch.tensor([[1]], dtype=torch.int32))
        ref_low, *_ = ref._forward_sam_heads(
            maps[-1], {"point_coords": clicks[0], "point_labels": clicks[1]}, None, maps[:-1], True
        )
        ours_out = ours.predict_masks(ours.frame_features(got, 0), clicks, None, True)
    assert ref_low.abs().mean() > 1e-2
    torch.testing.assert_close(ours_out.low_res_multimasks, ref_low, rtol=0, atol=1e-4)


def test_reference_checkpoint_loads_strictly_with_same_outputs(reference_checkpoint):
    ref, path = reference_checkpoint
    model = build_model(micro_config(), checkpoint=path)
    assert not model.training
    _same_outputs(ref, model)


def test_bare_and_ddp_prefixed_state_dicts_load(reference_checkpoint, tmp_path):
    ref, _ = reference_checkpoint
    bare = tmp_path / "bare.pth"
    torch.save(ref.state_dict(), bare)
    _same_outputs(ref, build_model("micro", checkpoint=str(bare)))
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ddp)
    report = load_checkpoint(SAM2Model(micro_config()), ddp)
    assert report.loaded == len(ref.state_dict()) and report.initialised == []


def _write_altered(reference_checkpoint, tmp_path, alter) -> str:
    ref, _ = reference_checkpoint
    state = dict(ref.state_dict())
    alter(state)
    path = tmp_path / "altered.pt"
    torch.save({"model": state}, path)
    return str(path)


def test_missing_key_is_named(reference_checkpoint, tmp_path):
    path = _write_altered(reference_checkpoint, tmp_path, lambda s: s.pop("no_obj_ptr"))
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(SAM2Model(micro_config()), path)
    message = str(err.value)
    assert "1 missing keys: no_obj_ptr" in message and "'micro'" in message and path in message
    assert "unexpected" not in message


def test_unexpected_keys_are_named_and_counted(reference_checkpoint, tmp_path):
    def add(state):
        for i in range(7):
            state[f"extra_head.{i}.weight"] = torch.zeros(2)

    path = _write_altered(reference_checkpoint, tmp_path, add)
    with pytest.raises(
        CheckpointMismatchError, match=r"7 unexpected keys: extra_head\.0\.weight.*\(2 more\)"
    ):
        load_checkpoint(SAM2Model(micro_config()), path)


def test_shape_mismatch_names_both_shapes(reference_checkpoint, tmp_path):
    path = _write_altered(
        reference_checkpoint,
        tmp_path,
        lambda s: s.update(maskmem_tpos_enc=torch.zeros(5, 1, 1, 16)),
    )
    with pytest.raises(
        CheckpointMismatchError,
        match=r"1 shape mismatches: maskmem_tpos_enc \(checkpoint \[5, 1, 1, 16\] vs model \[7, 1, 1, 16\]\)",
    ):
        load_checkpoint(SAM2Model(micro_config()), path)


def test_checkpoint_of_another_variant_says_which_it_looks_like(reference_checkpoint):
    _, path = reference_checkpoint
    with torch.device("meta"):
        tiny = SAM2Model(get_variant("sam2.1_hiera_tiny"))
    with pytest.raises(CheckpointMismatchError, match="looks like variant 'micro'") as err:
        load_checkpoint(tiny, path)
    assert "'sam2.1_hiera_tiny'" in str(err.value)
    # A SAM2.0 state dict offered to a SAM2.1 model: told apart by the 2.1-only keys.
    with torch.device("meta"):
        v20 = SAM2Model(get_variant("sam2_hiera_small")).state_dict()
        v21 = SAM2Model(get_variant("sam2.1_hiera_small"))
    assert infer_variant(v20) == "sam2_hiera_small"
    with pytest.raises(
        CheckpointMismatchError, match="looks like variant 'sam2_hiera_small'"
    ) as err:
        check_state_dict(v21, v20, "sam2_hiera_s_endo18.pth")
    assert "no_obj_embed_spatial" in str(err.value)


def test_corrupt_and_missing_files_give_clear_errors(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    not_weights = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_weights)
    model = SAM2Model(micro_config())
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match=f"{bad}: not a readable PyTorch checkpoint"):
            load_checkpoint(model, bad)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_checkpoint(model, not_weights)
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointNotFoundError, match=f"{missing}: file not found"):
        load_checkpoint(model, missing)
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError for generic handlers
        build_model("micro", checkpoint=missing)


def test_loads_from_s3_and_saves_there(reference_checkpoint, s3_server):
    ref, path = reference_checkpoint
    bucket = s3_server.make_bucket("surgray-ckpt")
    fs = s3_server.filesystem()
    fs.put(str(path), f"{bucket}/official/reference.pt")
    options = s3_server.storage
    model = build_model("micro", checkpoint=f"{bucket}/official/reference.pt", storage=options)
    _same_outputs(ref, model)

    save_checkpoint(
        model,
        f"{bucket}/runs/1/model.pt",
        storage=options,
        extra_metadata={"step": 3},
    )
    state, metadata = read_state_dict(f"{bucket}/runs/1/model.pt", storage=options)
    assert metadata["step"] == 3 and metadata["variant"] == "micro"
    assert set(state) == set(ref.state_dict())
    with pytest.raises(CheckpointNotFoundError, match="surgray-ckpt/none.pt: object not found"):
        read_state_dict(f"{bucket}/none.pt", storage=options)


def test_saved_checkpoint_round_trips_and_loads_into_the_reference(reference_checkpoint, tmp_path):
    ref, path = reference_checkpoint
    cfg = micro_config(image_size=96)
    model = build_model(cfg, checkpoint=path)
    target = tmp_path / "out" / "ours.pt"
    save_checkpoint(model, target)
    state, metadata = read_state_dict(target)
    assert metadata["variant"] == "micro"
    assert metadata["surgray_version"] == surgray.__version__
    assert ModelConfig.model_validate(json.loads(metadata["config"])) == cfg
    for key, value in ref.state_dict().items():
        assert torch.equal(state[key], value), key
    # Meta's own loader accepts our files (it reads the "model" entry strictly).
    fresh = build_reference(micro_config(), video=False)
    reference_load_checkpoint(fresh, str(target))
    _same_outputs(fresh, build_model("micro", checkpoint=target))


def test_init_from_tolerates_only_listed_new_modules(reference_checkpoint, tmp_path, caplog):
    ref, path = reference_checkpoint
    sam2s = micro_config().updated(memory={"num_long_term_embeddings": 3})
    with pytest.raises(CheckpointMismatchError, match="1 missing keys: long_term_tpos_enc"):
        build_model(sam2s, checkpoint=path)
    model = SAM2Model(sam2s)
    initial = model.long_term_tpos_enc.detach().clone()
    with caplog.at_level("INFO", logger="surgray.model.checkpoints.sam2_checkpoint"):
        report = load_checkpoint(model, path, init_from=["long_term_tpos_enc"])
    assert report.initialised == ["long_term_tpos_enc"]
    assert "long_term_tpos_enc" in caplog.text
    assert torch.equal(model.long_term_tpos_enc, initial)
    assert torch.equal(model.no_mem_embed, ref.no_mem_embed)
    # Listing a new module does not excuse other missing keys.
    partial = _write_altered(reference_checkpoint, tmp_path, lambda s: s.pop("no_mem_pos_enc"))
    with pytest.raises(CheckpointMismatchError, match="1 missing keys: no_mem_pos_enc"):
        load_checkpoint(SAM2Model(sam2s), partial, init_from=["long_term_tpos_enc"])


def test_loaders_build_the_network_a_checkpoint_was_saved_with(tmp_path):
    from surgray.model.checkpoints.sam2_checkpoint import CheckpointError, stored_or_variant_config
    from surgray.model.checkpoints.variants import get_variant, micro_config

    # A setting with no trace in the weights: a bare variant would silently differ.
    cfg = micro_config(128).updated(prompting={"multimask_output_for_tracking": False})
    path = tmp_path / "tuned.pt"
    save_checkpoint(SAM2Model(cfg), path)
    _, metadata = read_state_dict(path)
    built = stored_or_variant_config("micro", metadata, image_size=96)
    assert built.prompting.multimask_output_for_tracking is False
    assert built.image_size == 96
    assert stored_or_variant_config("micro", None).prompting.multimask_output_for_tracking
    with pytest.raises(CheckpointError, match="saved for variant 'micro'.*'tiny'"):
        stored_or_variant_config("tiny", metadata)
    assert get_variant("tiny").name == "sam2.1_hiera_tiny"
    assert get_variant("b+").name == "sam2.1_hiera_base_plus"


def test_shipped_checkpoints_read_by_name():
    from pathlib import Path

    from surgray.model.checkpoints.sam2_checkpoint import read_state_dict

    shipped = Path(surgray.__file__).parent / "assets" / "demo" / "model.pt"
    by_name, metadata = read_state_dict("demo:model")
    by_path, _ = read_state_dict(shipped)
    assert metadata is not None and by_name.keys() == by_path.keys()
    assert all(torch.equal(by_name[k], by_path[k]) for k in by_path)
    with pytest.raises(CheckpointError, match="shipped: demo:model, demo:referring"):
        read_state_dict("demo:large")
