"""Category probes: two linear classifiers that supervise what the referring head grounds on.

Training-only heads over a category vocabulary (`ReferringConfig.grounding_categories`):

- `text` names an expression's category from each of the fusion's sparse tokens (the class
  token and the fused text embedding), so the text path cannot settle on "instrument or
  tissue" alone;
- `pixel` names each pixel's category (index 0: no listed object) from the stride-16 image
  features the fusion reads, so those features carry what tells one category from another.

Inference never calls them; they are saved with the model so that a run resumes exactly.
Their losses are `surgray.train.grounding`.
"""

from __future__ import annotations

from torch import nn


class CategoryProbes(nn.Module):
    """`text`: [.., C] -> [.., K] logits; `pixel`: [B, C, h, w] -> [B, 1 + K, h, w] logits."""

    def __init__(self, d_model: int, num_categories: int) -> None:
        super().__init__()
        if num_categories < 1:
            raise ValueError("category probes need at least one category")
        self.num_categories = num_categories
        self.text = nn.Linear(d_model, num_categories)
        self.pixel = nn.Conv2d(d_model, 1 + num_categories, kernel_size=1)
