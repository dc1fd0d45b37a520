"""Referring expressions built from templates, as Ref-EndoVis17/18 make them.

Instruments read "<category> is|are <action>", with " on the <location>" appended when another
object of the same category could be meant; tissue is referred to by its name alone
(ReSurgSAM2's templates).
"""

from __future__ import annotations

from dataclasses import dataclass

from surgray.data.categories import NO_ACTION, action_name, location_name


@dataclass(frozen=True)
class ReferringExpression:
    """One text query for one object; `first_frame` is the frame it was written for."""

    exp_id: str
    text: str
    obj_id: int
    first_frame: int | None = None


def linking_verb(category: str) -> str:
    # Plural-looking names ("forceps", "scissors", "clamps") read "are", as in Ref-EndoVis.
    return "are" if category.endswith("s") else "is"


def instrument_expression(
    category: str, action_id: int, location_id: int | None = None, unique: bool = True
) -> str:
    """ "bipolar forceps are grasping tissue", or "... on the top left" when not unique."""
    text = f"{category} {linking_verb(category)} {action_name(action_id)}"
    if not unique:
        if location_id is None:
            raise ValueError(f"a non-unique {category!r} needs a location to be referred to")
        text += f" on the {location_name(location_id)}"
    return text


def object_expression(
    category: str,
    kind: str,
    action_id: int,
    location_id: int | None = None,
    unique: bool = True,
) -> str:
    """Template text for any object: tissue (or action 0) by name, instruments by action."""
    if kind == "tissue" or action_id == NO_ACTION:
        return category
    return instrument_expression(category, action_id, location_id, unique)
