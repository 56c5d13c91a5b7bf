"""Collaborative training: one training job split across several providers, paid per accepted contribution."""
