"""The SAM2 network: Segment Anything 2 / 2.1 (and the SAM2S additions), our own implementation.

Hiera image encoder with its FPN neck, prompt encoder, mask decoder (two-way transformer),
memory attention and memory encoder, object pointers, and the step logic that turns memories
and prompts into masks (`network.SAM2Model.track_frame`), plus the single-image predictor.
Parameter names and shapes follow Meta's `SAM2Base`, so official checkpoints load strictly.
It is the ground floor of `surgray.model`: it imports nothing of `surgray.model.text`,
`surgray.model.referring` or `surgray.model.checkpoints`.
"""
