"""jobrelay storage package."""
