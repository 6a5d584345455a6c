"""nix-job: run a Nix command in GitHub Actions with a gated Attic binary cache."""

__version__ = "0.1.0"
