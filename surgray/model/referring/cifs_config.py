"""`CIFSConfig`: the thresholds of ReSurgSAM2's stage switch (credible initial frame selection).

It lives with the model because a referring model records its default switch in
`ReferringConfig.cifs` (and a checkpoint's metadata); the state machine that applies it is
`surgray.tracking.cifs.CredibleFrameSelector`, where the fields are explained.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CIFSConfig(BaseModel):
    """Thresholds of the stage switch; defaults are ReSurgSAM2's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    score_threshold: float = Field(0.9, ge=0.0, le=1.0)  # delta_o, on sigmoid(object score)
    iou_threshold: float = Field(0.7, ge=0.0, le=1.0)  # delta_iou, on the predicted IoU
    window: int = Field(5, ge=1)  # N_w: consecutive candidates needed
    # While tracking: sigmoid(object score) below this means the object is not seen.
    lost_score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # Consecutive unseen frames before searching again; None: never (as the released code).
    lost_patience: int | None = Field(30, ge=1)
