"""Participant toolkit and sample services."""
