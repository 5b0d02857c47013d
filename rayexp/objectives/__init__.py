"""Objectives in weight diffs: rewards that differ from the pretraining objective, and exact returns of
policies under them (:mod:`.returns`)."""
