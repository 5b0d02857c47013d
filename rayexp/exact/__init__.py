"""Exact rewards from exact beliefs (docs/design.md §6 rule 7), shared by the studies:
:mod:`.targets` (P(target = k | context) of a reward, and of the best single-factor observer) and
:mod:`.ceilings` (expected / greedy reward against the Bayes optimum, best single factor,
last-k-tokens lookup and uniform; the composition margin)."""
