"""Composition vs reweighting: the maths of each signal, as small pure functions on arrays.

DESIGN.md ("Composition vs reweighting") defines the question; each module here computes one
signal from arrays (policies, exact target distributions, features), never from a model, so each
has a unit test on a constructed case with a known answer (tests/test_composition*.py):

- :mod:`.targets`: exact P(target = k | context) of a reward, and of the best single-factor observer;
- :mod:`.ceilings`: expected / greedy reward against the Bayes optimum, best single factor,
  last-k-tokens lookup and uniform; the composition margin;
- :mod:`.interaction`: the share of the policy's variance that is interaction between two factors
  (2x2 resampling of each factor's history);
- :mod:`.reweighting`: how well the post-RL policy is predicted from the pre-RL full distribution,
  and kappa, the interaction left in what that prediction misses (the verdict's score);
- :mod:`.readout`: reward reachable by a linear readout of frozen features;
- :mod:`.update`: update sparsity by depth and the equal-norm random perturbation (the null);
- :mod:`.uncertainty`: per-unit values of ratio statistics, so paired bootstraps cover them;
- :mod:`.verdict`: composition / reweighting / inconclusive over seeds, and why.

The adapters are :mod:`rayexp.analyses.composition` (one trial) and :mod:`rayexp.analyses.verdict`
(a group of trials, one per seed). Nothing here imports torch at module level except inside
:func:`.update.random_perturbation`.
"""
