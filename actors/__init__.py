"""jobrelay actors package."""
