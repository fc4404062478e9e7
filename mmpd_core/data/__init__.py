"""Datasets: the embedded procedural benchmark and readers of the official real layouts."""
