"""Granite 4.0-H plugin (in progress)."""
