"""Reasoning formats, answer extraction, staged inference and preference pairs."""
