"""nix-job: run a Nix command in GitHub Actions with a gated Attic binary cache."""

__version__ = "1.0.0"
