"""pipes package."""
