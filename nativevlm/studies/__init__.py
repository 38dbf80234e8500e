"""Scaling studies: the study file, the resumable runner, the fits and their plots."""
