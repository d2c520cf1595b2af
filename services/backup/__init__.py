"""Backup: store-and-forward for offline recipients (arrives with its own issue)."""
