"""Fixtures shared by every suite. Importing from ``support`` works because pytest puts tests/ on sys.path."""
