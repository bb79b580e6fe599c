"""Deterministic synthetic data generator (cli.md `synth`)."""
