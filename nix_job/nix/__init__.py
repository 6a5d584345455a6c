"""Nix: settings, daemon, nix.conf delivery and restore, detection, installation, the store."""
