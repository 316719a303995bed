"""The round loop and what runs around it: backends, callbacks, checkpoints.

``Federation`` (``fedgen.engine.federation``) is the one loop over rounds; backends
(``fedgen.engine.backends``) run the clients' work, callbacks evaluate, checkpoint
and log. Import from the submodules: this package re-exports nothing, so importing
one backend never loads the others.
"""
