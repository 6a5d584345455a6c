# Two chained derivations for nix-job's own GitLab pipeline (.gitlab-ci.yml) and its local run
# (tests/gitlab/test_component.py). No nixpkgs, and shell builtins only: the builder is the
# image's /bin/sh, and an image such as nixos/nix has no coreutils outside /nix/store.
# `salt` makes every pipeline build new store paths.
{ salt ? "nix-job-selftest" }:
let
  step = name: dep: derivation {
    inherit name dep salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''echo "$salt $name $dep" > "$out"'' ];
  };
in
step "nix-job-selftest-second" (step "nix-job-selftest-first" "")
