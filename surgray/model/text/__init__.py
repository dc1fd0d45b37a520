"""Text encoding: CLIP text features for referring segmentation.

A frozen CLIP text model loaded from a transformers or open_clip folder (`encoder`), a small
CLIP-architecture tower built and trained inside a model (`tower`), the open_clip weight and
tokenizer formats (`open_clip_format`) and the folder handling (`files`). It knows nothing of
images: it imports nothing of `surgray.model.sam2`, `surgray.model.referring` or
`surgray.model.checkpoints`.
"""
