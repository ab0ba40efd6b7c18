"""Anchors of the benchmark suite: the systems this project is measured against, each set up by a script."""
