"""Normalized density: AIS for the conditional EBMs (issue 4, in progress)."""
