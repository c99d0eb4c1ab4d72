"""Offline wheelhouse for air-gapped GPU nodes: ``build`` makes it, ``install_offline`` installs it."""
