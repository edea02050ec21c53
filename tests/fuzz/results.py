"""Inputs tried per fuzz target in this pytest session; conftest prints them as a table at the end."""

RESULTS: list[dict] = []
