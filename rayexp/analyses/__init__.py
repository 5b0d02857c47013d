"""Generic analyses, which any study's trials can run: ``weight_diff``, ``policy_kl`` (one trial)
and ``seed_spread`` (across trials). The contract they follow is :mod:`rayexp.analysis`; study
analyses live in their study's folder (:mod:`rayexp.studies`)."""
