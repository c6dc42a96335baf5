"""jobrelay protocol package."""
