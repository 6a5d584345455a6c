# A NixOS module for nix-job watch-store: upload every new store path of this machine to an
# Attic cache (docs/watch-store.md). Import it and set services.nix-job-watch-store.*.
#
# Run it only on builders you trust: it uploads whatever this machine's store registers, and
# the cache signs it. The token file is read by systemd (as root) and handed over with
# LoadCredential=; keep it out of the Nix store (sops-nix, agenix, or a file you install).
{ config, lib, utils, ... }:

let
  cfg = config.services.nix-job-watch-store;
  args = [
    "${cfg.package}/bin/nix-job" "watch-store"
    "--server" cfg.server
    "--cache" cfg.cache
    "--jobs" (toString cfg.jobs)
    "--shutdown-timeout" (toString cfg.shutdownTimeout)
  ]
  ++ lib.optionals (cfg.exclude != null) [ "--exclude" cfg.exclude ]
  ++ cfg.extraArgs;
in
{
  options.services.nix-job-watch-store = {
    enable = lib.mkEnableOption "uploading this machine's new store paths to an Attic cache";

    package = lib.mkOption {
      type = lib.types.package;
      description = "A package providing bin/nix-job (nix-job and its runtime dependencies).";
    };

    server = lib.mkOption {
      type = lib.types.str;
      example = "https://cache.example.com/";
      description = "The Attic server's root URL.";
    };

    cache = lib.mkOption {
      type = lib.types.str;
      example = "main";
      description = "The cache to upload to.";
    };

    tokenFile = lib.mkOption {
      type = lib.types.str;
      example = "/run/secrets/attic-token";
      description = ''
        A root-readable file holding an Attic token with `r` and `w` on the cache. A string,
        not a path, so that it is never copied into the world-readable Nix store. The service
        gets a private copy at start: restart it after rotating the token.
      '';
    };

    exclude = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "-source$";
      description = "Never upload store paths matching this regular expression.";
    };

    jobs = lib.mkOption {
      type = lib.types.ints.between 1 64;
      default = 4;
      description = "Concurrent uploads.";
    };

    shutdownTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 30;
      description = "Seconds SIGTERM waits for uploads; the rest is journaled.";
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "--status-interval" "5" "--catch-up-hours" "48" ];
      description = "More command-line flags (docs/watch-store.md, Reference).";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.nix-job-watch-store = {
      description = "nix-job watch-store (upload this builder's new store paths to Attic)";
      documentation = [ "https://github.com/nix-job/nix-job/blob/main/docs/watch-store.md" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      requires = [ "nix-daemon.socket" ];
      path = [ config.nix.package ];
      # Validity and path info through the daemon: a dynamic user cannot open the database.
      # nix.settings.allowed-users must admit it (the default "*" does; the service needs no
      # trusted-users entry).
      environment.NIX_REMOTE = "daemon";
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        # The token path is appended unescaped: %d is systemd's credentials directory.
        ExecStart = "${utils.escapeSystemdExecArgs args} --token-file %d/attic-token";
        DynamicUser = true;
        StateDirectory = "nix-job-watch-store";
        StateDirectoryMode = "0700";
        LoadCredential = [ "attic-token:${cfg.tokenFile}" ];
        WatchdogSec = 60;
        Restart = "on-failure";
        RestartSec = 5;
        RestartPreventExitStatus = 2;
        KillMode = "mixed";
        TimeoutStopSec = cfg.shutdownTimeout + 30;

        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
        UMask = "0077";
      };
    };
  };
}
