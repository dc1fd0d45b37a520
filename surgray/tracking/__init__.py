"""Per-video tracker state, memory policies and the streaming tracker."""
