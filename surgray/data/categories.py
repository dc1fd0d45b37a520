"""Canonical instrument and tissue category names, Ref-EndoVis actions and locations.

Surgical datasets spell the same instrument many ways ("Bipolar_Forceps", "Maryland_Bipolar_
Forceps_labels", "bipolar forceps"); every reader maps them onto the lower-case, space-separated
names below so training and evaluation code compare categories as plain strings.

Action and location ids follow Ref-EndoVis17/18 (ReSurgSAM2's benchmark): actions 1-13 (0 is
used by Ref-EndoVis18 for tissue, which has no action) and locations 1-9 on a 3x3 grid counted
from the bottom-left cell.
"""

from __future__ import annotations

import re
from typing import Literal

ObjectKind = Literal["instrument", "tissue", "other"]

# EndoVis17/18 instrument types, plus "instrument" for masks whose type is not annotated
# (EndoVis18's raw scene labels only say "instrument part").
INSTRUMENT_CATEGORIES: tuple[str, ...] = (
    "bipolar forceps",
    "prograsp forceps",
    "large needle driver",
    "vessel sealer",
    "grasping retractor",
    "monopolar curved scissors",
    "ultrasound probe",
    "suction instrument",
    "clip applier",
    "instrument",
)

TISSUE_CATEGORIES: tuple[str, ...] = (
    "kidney parenchyma",
    "covered kidney",
    "small intestine",
    "gallbladder",
    "liver",
)

# Labelled things that are neither an instrument nor tissue (EndoVis18 scene classes).
OTHER_CATEGORIES: tuple[str, ...] = ("thread", "clamps", "suturing needle")

ACTIONS: dict[int, str] = {
    1: "idle",
    2: "manipulating tool",
    3: "performing knot tying",
    4: "suturing tissue",
    5: "manipulating tissue",
    6: "grasping tissue",
    7: "retracting tissue",
    8: "cutting tissue",
    9: "suctioning blood",
    10: "clipping tissue",
    11: "sensing vessels",
    12: "transecting vessel",
    13: "cauterizing tissue",
}
NO_ACTION = 0  # Ref-EndoVis18 writes action 0 for tissue

LOCATIONS: dict[int, str] = {
    1: "bottom left",
    2: "bottom center",
    3: "bottom right",
    4: "left",
    5: "center",
    6: "right",
    7: "top left",
    8: "top center",
    9: "top right",
}

# Dataset-specific spellings (already lower-cased, separators turned into spaces, "left"/
# "right"/"labels" removed) that differ from the canonical name.
_ALIASES: dict[str, str] = {
    "maryland bipolar forceps": "bipolar forceps",
    "bipolar": "bipolar forceps",
    "prograsp": "prograsp forceps",
    "needle driver": "large needle driver",
    "large needle drivers": "large needle driver",
    "curved scissors": "monopolar curved scissors",
    "monopolar scissors": "monopolar curved scissors",
    "scissors": "monopolar curved scissors",
    "grasping retractors": "grasping retractor",
    "suction": "suction instrument",
    "suction irrigation": "suction instrument",
    "clip applicator": "clip applier",
    # EndoVis17 names its drop-in ultrasound probe folder "Other".
    "other": "ultrasound probe",
    "us probe": "ultrasound probe",
    "intestine": "small intestine",
    "small intestines": "small intestine",
    "kidney": "kidney parenchyma",
    "gall bladder": "gallbladder",
    "clamp": "clamps",
    "needle": "suturing needle",
    "suture needle": "suturing needle",
    "suture thread": "thread",
}

_DROPPED_TOKENS = {"left", "right", "labels", "label"}


def _simplify(name: str) -> str:
    text = re.sub(r"[_\-./]+", " ", name.strip().lower())
    tokens = [token for token in text.split() if token not in _DROPPED_TOKENS]
    return " ".join(tokens)


def try_canonical_category(name: str) -> str | None:
    """The canonical name for a dataset spelling, or None when it is not a known category."""
    simple = _simplify(name)
    if simple in _ALIASES:
        return _ALIASES[simple]
    if simple in INSTRUMENT_CATEGORIES or simple in TISSUE_CATEGORIES:
        return simple
    if simple in OTHER_CATEGORIES:
        return simple
    return None


def canonical_category(name: str) -> str:
    """Map e.g. "Bipolar_Forceps", "Left_Prograsp_Forceps_labels", "kidney-parenchyma" to the
    canonical category; raises ValueError naming the unknown spelling."""
    canonical = try_canonical_category(name)
    if canonical is None:
        known = ", ".join(INSTRUMENT_CATEGORIES + TISSUE_CATEGORIES + OTHER_CATEGORIES)
        raise ValueError(f"unknown surgical category {name!r}; known categories: {known}")
    return canonical


def category_kind(category: str) -> ObjectKind:
    """Whether a canonical category names an instrument, a tissue or something else."""
    if category in INSTRUMENT_CATEGORIES:
        return "instrument"
    if category in TISSUE_CATEGORIES:
        return "tissue"
    if category in OTHER_CATEGORIES:
        return "other"
    raise ValueError(
        f"{category!r} is not a canonical category; pass it through canonical_category"
    )


def action_name(action_id: int) -> str:
    if action_id not in ACTIONS:
        raise ValueError(f"action id {action_id} is not one of the 13 Ref-EndoVis actions (1-13)")
    return ACTIONS[action_id]


def location_name(location_id: int) -> str:
    if location_id not in LOCATIONS:
        raise ValueError(f"location id {location_id} is not a 3x3 grid cell id (1-9)")
    return LOCATIONS[location_id]


def location_of_point(x: float, y: float, width: int, height: int) -> int:
    """Grid cell (1-9) of image point (x, y); rows count up from the bottom as Ref-EndoVis does."""
    column = min(max(int(3 * x / width), 0), 2)
    row_from_top = min(max(int(3 * y / height), 0), 2)
    return (2 - row_from_top) * 3 + column + 1
