"""Backends: each module registers its own (``fedgen.registry.BUILTIN`` says which), and a
run imports only the one it names; the vertical backend's table tasks would otherwise load
pandas into every worker and ClientApp."""
