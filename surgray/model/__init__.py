"""The networks, by concept (each subpackage's `__init__` says what it may import):

- `surgray.model.sam2`: the SAM2 / SAM2.1 network, our implementation, state-dict compatible
  with the official checkpoints; imports no other part of `surgray.model`.
- `surgray.model.text`: CLIP text encoding (frozen CLIP folders, the embedded text tower, the
  tokenizer files); imports no other part of `surgray.model`.
- `surgray.model.referring`: ReSurgSAM2's referring head on SAM2 (CSTMamba and its selective
  scan, the semantic, text-pixel and probe heads); imports `sam2` and `text`.
- `surgray.model.checkpoints`: the variant tables, shipped checkpoints, and reading, checking,
  saving and building networks from checkpoints; may import all three.
- `surgray.model.quantize`: int8 linear layers for CPU inference, for any of these networks.
"""
