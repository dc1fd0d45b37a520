"""A video's provenance as a pipeline row carries it: without the prompts, which the row
holds already in its `prompts_json` column.

Video rows and work rows travel through Ray Data with the video's prompts (the actor tracks
from them) and its provenance (what the actor writes into the mask rows and the marker).
`Provenance.prompts_json` is those same prompts, so a row with the whole provenance carried
its prompts twice: twice the bytes per row in the object store for mask prompts (RLE), which
dominate a row's size. The provenance column leaves them out; the actor puts them back from
the row's own prompts (`row_provenance`), so the provenance it writes is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from surgray.annotate.provenance import Provenance

PROVENANCE_COLUMN = "provenance_json"  # each row carries its video's provenance to the actor
PROMPTS_COLUMN = "prompts_json"
_CARRIED_BY_ROW = "prompts_json"  # the provenance field the row's prompts column stands for


def provenance_column(provenance: Provenance) -> str:
    """The provenance column's value: the provenance less its prompts."""
    data = provenance.as_dict()
    data.pop(_CARRIED_BY_ROW)
    return json.dumps(data)


def row_provenance(row: Mapping[str, Any]) -> Provenance:
    """The whole provenance of a row's video: its provenance column plus the row's prompts
    (a column that still holds the prompts, as older rows did, is taken as it is)."""
    data = json.loads(str(row[PROVENANCE_COLUMN]))
    data.setdefault(_CARRIED_BY_ROW, str(row[PROMPTS_COLUMN]))
    return Provenance.from_dict(data)
