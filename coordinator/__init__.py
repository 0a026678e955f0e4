"""TCC transaction coordinator."""
