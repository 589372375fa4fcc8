"""Weight sources: readers for checkpoint formats, registered through the weight-source hook."""
