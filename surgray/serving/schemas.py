"""Request and response bodies of the v1 HTTP API (pydantic; unknown request keys are errors).

Coordinates are pixels of the frames the client sends: points are (x, y), boxes are
(x0, y0, x1, y1) corners, result bboxes are COCO (x, y, width, height). Masks travel as COCO RLE
`{"size": [height, width], "counts": str}` (column-major, as pycocotools writes it), so a client
can re-create a lost session from the last masks it received.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from surgray.serving.config import MODEL_NAME_PATTERN

API_VERSION = "v1"
MAX_EXPRESSIONS = 16
MAX_EXPRESSION_CHARS = 200
MAX_POINTS = 64
MAX_PROMPT_OBJECTS = 64
MAX_RLE_CHARS = 4_000_000

ObjectState = Literal["searching", "tracking", "lost"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RleMask(BaseModel):
    """COCO RLE; `counts` is the compressed string, or the uncompressed run list."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[Annotated[int, Field(ge=1, le=65535)], Annotated[int, Field(ge=1, le=65535)]]
    counts: (
        Annotated[str, Field(min_length=1, max_length=MAX_RLE_CHARS)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_RLE_CHARS)]
    )

    @model_validator(mode="after")
    def _runs_cover_mask(self) -> RleMask:
        if isinstance(self.counts, list):
            height, width = self.size
            if sum(self.counts) != height * width:
                raise ValueError(
                    f"uncompressed counts sum to {sum(self.counts)}, size {list(self.size)} "
                    f"needs {height * width}"
                )
        return self


def _clean_expressions(values: list[str]) -> list[str]:
    cleaned = [text.strip() for text in values]
    for index, text in enumerate(cleaned):
        if not text:
            raise ValueError(f"expression {index} is empty")
    return list(dict.fromkeys(cleaned))


Expression = Annotated[str, Field(min_length=1, max_length=MAX_EXPRESSION_CHARS)]
# Stripped, de-duplicated (first occurrence kept), none empty.
Expressions = Annotated[
    list[Expression], Field(max_length=MAX_EXPRESSIONS), AfterValidator(_clean_expressions)
]
Coordinate = Annotated[float, Field(ge=0, le=65535)]


class PromptObject(_Request):
    """One object to track, from clicks, a box and/or a mask (a re-created session's last mask).

    `obj_id` None on create means "assign one"; on `/prompts` an existing id corrects that
    object and a new id adds one. `frame_index` None means the next frame the client sends;
    otherwise it names a frame the session has already processed or the next one.
    """

    obj_id: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    label: Annotated[str, Field(max_length=MAX_EXPRESSION_CHARS)] | None = None
    points: list[tuple[Coordinate, Coordinate]] = Field(default_factory=list, max_length=MAX_POINTS)
    point_labels: list[Literal[0, 1]] = Field(default_factory=list, max_length=MAX_POINTS)
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = None
    mask: RleMask | None = None
    frame_index: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PromptObject:
        if len(self.points) != len(self.point_labels):
            raise ValueError(
                f"points ({len(self.points)}) and point_labels ({len(self.point_labels)}) "
                "must have the same length (1 = foreground, 0 = background)"
            )
        if not self.points and self.box is None and self.mask is None:
            raise ValueError("an object needs points, a box or a mask")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x1 > x0 and y1 > y0):
                raise ValueError(
                    f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {self.box}"
                )
        return self


class CreateSessionRequest(_Request):
    """Text expressions (referring segmentation) and/or prompted objects."""

    model: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)] | None = None  # None = default
    expressions: Expressions = Field(default_factory=list)
    objects: list[PromptObject] = Field(default_factory=list, max_length=MAX_PROMPT_OBJECTS)
    include_png: bool = False  # default for this session's frame results

    @model_validator(mode="after")
    def _something_to_track(self) -> CreateSessionRequest:
        if not self.expressions and not self.objects:
            raise ValueError("give at least one text expression or one prompted object")
        ids = [obj.obj_id for obj in self.objects if obj.obj_id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError(f"obj_id values must be unique, got {ids}")
        return self


class PromptsRequest(_Request):
    """Add objects or correct tracked ones mid-stream."""

    expressions: Expressions = Field(default_factory=list)
    objects: list[PromptObject] = Field(default_factory=list, max_length=MAX_PROMPT_OBJECTS)

    @model_validator(mode="after")
    def _not_empty(self) -> PromptsRequest:
        if not self.expressions and not self.objects:
            raise ValueError("give at least one text expression or one prompted object")
        return self


class ObjectResult(_Response):
    obj_id: int
    label: str | None = None
    state: ObjectState
    score: float  # object presence / referring confidence, 0..1
    predicted_iou: float | None = None
    rle: RleMask
    png_base64: str | None = None  # binary PNG (0/255) of the mask, when asked for
    bbox: tuple[float, float, float, float] | None = None  # (x, y, width, height); None if empty
    area: int


class FrameResult(_Response):
    session_id: str
    frame_index: int
    objects: list[ObjectResult]
    latency_ms: float  # server-side: decode + track + encode


class SessionInfo(_Response):
    session_id: str
    model: str
    frames_processed: int
    max_frames: int
    idle_timeout_s: float
    expressions: list[str] = Field(default_factory=list)
    obj_ids: list[int] = Field(default_factory=list)


class ErrorBody(_Response):
    error: str
    message: str


class ModelInfo(_Response):
    name: str
    variant: str
    image_size: int
    policy: str
    text_prompts: bool
    description: str = ""


class ModelList(_Response):
    models: list[ModelInfo]


class HealthInfo(_Response):
    status: Literal["ok"] = "ok"
    api_version: str = API_VERSION


class SegmentRequest(_Request):
    """`POST /v1/segment` options; sent as query parameters beside the video body."""

    model: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)] | None = None
    expressions: Annotated[Expressions, Field(min_length=1)]
    include_png: bool = False


class SegmentFrameLine(_Response):
    type: Literal["frame"] = "frame"
    frame_index: int
    objects: list[ObjectResult]
    latency_ms: float


class SegmentEndLine(_Response):
    type: Literal["end"] = "end"
    frames: int


class SegmentErrorLine(_Response):
    """Sent in place of the rest of the stream when segmentation stops part-way."""

    type: Literal["error"] = "error"
    error: str
    message: str


NdjsonLine = Annotated[
    SegmentFrameLine | SegmentEndLine | SegmentErrorLine, Field(discriminator="type")
]
_NDJSON = TypeAdapter(NdjsonLine)


def parse_ndjson_line(text: str | bytes) -> SegmentFrameLine | SegmentEndLine | SegmentErrorLine:
    """One line of a `/v1/segment` response stream, as its model."""
    return _NDJSON.validate_json(text)


def ndjson_line(line: SegmentFrameLine | SegmentEndLine | SegmentErrorLine) -> bytes:
    return line.model_dump_json().encode() + b"\n"
