"""Memory planning: the planner, the architecture presets and measured memory."""
