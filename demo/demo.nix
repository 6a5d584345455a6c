# A small chain of derivations for ./scripts/demo: no nixpkgs needed (builtins.derivation and
# the host's /bin/sh, which works because the demo's Nix runs with sandbox = false).
# `salt` makes every demo invocation build new store paths.
{ salt ? "nix-job-demo" }:
let
  step = name: deps: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      export PATH=/usr/bin:/bin
      mkdir -p "$out"
      echo "${salt} ${name}" > "$out/id"
      ${builtins.concatStringsSep "\n" (map (d: "cat ${d}/id >> \"$out/inputs\"") deps)}
      head -c 262144 /dev/urandom > "$out/payload"
      sleep 1
    '' ];
  };
  toolchain = step "demo-toolchain" [ ];
  library = step "demo-library" [ toolchain ];
  app = step "demo-app" [ toolchain library ];
in
app
