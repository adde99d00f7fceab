"""Data sources: generated 2D toys, embedded digits, and readers of image files."""
