"""Lets the frontend/ folder ship inside the wheel as package data (no Python here)."""
