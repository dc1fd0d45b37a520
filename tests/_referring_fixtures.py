"""Shared builders for the referring tests: a tiny CLIP text model with its tokenizer files,
a tiny ReSurgSAM2 on the micro SAM2 network, and a way to script the decoder's scores."""

from __future__ import annotations

import json
import math
import pathlib

import torch

from devtools.sam2_reference import randomize_
from surgray.model.checkpoints.variants import micro_config
from surgray.model.referring.config import ReferringConfig
from surgray.model.referring.cstmamba import CSTMambaConfig
from surgray.model.referring.resurgsam2 import ReSurgSAM2
from surgray.model.referring.semantic_head import SemanticHeadConfig
from surgray.model.text.encoder import TextEncoder

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MERGES = ["t h", "th e</w>", "g r", "gr a", "s p", "sp e", "spe r</w>", "n e", "e d", "l e</w>"]
CATEGORIES = ("grasper", "needle driver")


def write_tiny_clip(directory: pathlib.Path, with_tokenizer: bool = True) -> pathlib.Path:
    """A random 2-layer, 32-wide CLIP text model saved the transformers way."""
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab: dict[str, int] = {}
    for token in list(LETTERS) + [c + "</w>" for c in LETTERS]:
        vocab[token] = len(vocab)
    for merge in MERGES:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    if with_tokenizer:
        (directory / "vocab.json").write_text(json.dumps(vocab))
        (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(directory)
    return directory


def tiny_referring_config(**changes) -> ReferringConfig:
    semantic = SemanticHeadConfig(d_model=32, memory_dim=16, text_dim=32, num_heads=2, mlp_dim=64)
    base = {
        "fusion": CSTMambaConfig.tiny(),
        "semantic_head": semantic,
        "categories": CATEGORIES,
    }
    return ReferringConfig(**(base | changes))


def tiny_model(clip_dir: pathlib.Path, size: int = 64, seed: int = 3, **changes) -> ReSurgSAM2:
    torch.set_num_threads(1)
    model = ReSurgSAM2(micro_config(size), tiny_referring_config(**changes))
    randomize_(model, seed)
    model.text_encoder = TextEncoder.from_pretrained(clip_dir)
    return model.eval()


@torch.no_grad()
def script_scores(model: ReSurgSAM2, object_score: float, iou: float) -> None:
    """Make every decoder pass return this object-score logit and this IoU for every mask:
    the last layers of both heads keep only their bias."""
    decoder = model.sam_mask_decoder
    score_head = decoder.pred_obj_score_head
    last = score_head.layers[-1] if hasattr(score_head, "layers") else score_head
    last.weight.zero_()
    last.bias.fill_(object_score)
    iou_last = decoder.iou_prediction_head.layers[-1]
    iou_last.weight.zero_()
    iou_last.bias.fill_(math.log(iou / (1.0 - iou)))  # the head ends with a sigmoid
