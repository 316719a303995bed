"""Checks and wiring that span several built components of one experiment (layer 5).

Whether a strategy, its transforms, the task and the backend compose soundly cannot
be asked of any one of them, so these checks sit above all of them, beside
``fedgen.experiment`` which calls them before round 1:

- ``privacy``: client-level DP and DP-SGD soundness; calibrates the noise, attaches
  DP-SGD to the task and returns the run's ``PrivacyAccounting``;
- ``secagg``: where secure aggregation may sit, and the bounds it binds;
- ``compression``: where an update codec may sit (clip, secagg, DP), and its shared seed.
"""
