"""Reward and punishment concept vectors (research note 004): the maths in :mod:`.concepts`; the
trial adapter is the ``concept_vectors`` analysis (:mod:`rayexp.analyses.concept_vectors`)."""
