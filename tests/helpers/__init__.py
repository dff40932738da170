"""Helpers shared by the molecule verifiers and the lab tests."""
