"""Groups: hub and member sides of group messaging (arrives with its own issue)."""
