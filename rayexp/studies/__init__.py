"""One folder per study (docs/design.md §4-5), each found by :mod:`rayexp.registry`:
``composition`` (does RL compose belief states or reweight them), ``objective`` (task vectors:
can the reward be read from the weights), ``welfare`` (reward and punishment concept vectors),
``development`` (the LLC over training) and ``rare`` (a gated capability RL must find).
The contract a folder follows is :mod:`rayexp.study`."""
