"""Tests of the synthetic data generator (agent.synth) and the ``synth`` command."""
