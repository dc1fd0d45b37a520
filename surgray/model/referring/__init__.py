"""The referring head: ReSurgSAM2 (text-referred segmentation) on the SAM2 network.

`resurgsam2.ReSurgSAM2` is a `SAM2Model` with CSTMamba cross-modal fusion (`cstmamba`, built on
the Mamba layers of `mamba` and the scan of `selective_scan`), SAM2S's semantic head, the
text-pixel head, the training-only category probes and the CIFS settings its text objects
start with. It may import `surgray.model.sam2` and `surgray.model.text`, never
`surgray.model.checkpoints`.
"""
