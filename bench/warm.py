"""Figure 3: pushing paths the cache already holds: the drain time and the requests sent.

The cache is seeded with the real NARs (``put_path``) of paths added with ``nix-store --add``.
"""

from __future__ import annotations

import base64
import hashlib
import json

from bench.common import (
    DoubleProcess,
    Figure,
    Profile,
    Workspace,
    at_most,
    nar_of_regular_file,
    stats,
    timer,
)
from nix_job.push.command import push_once


def warm_cache(ws: Workspace, profile: Profile) -> Figure:
    """push_once of ``warm_paths`` paths that are all in the cache already."""
    directory = ws.dir / "warm-data"
    directory.mkdir()
    tag = ws.salt()
    contents = [f"nix-job bench {tag} warm path {i}\n".encode() for i in range(profile.warm_paths)]
    files = []
    for i, data in enumerate(contents):
        file = directory / f"nixjob-bench-warm-{tag}-{i}"
        file.write_bytes(data)
        files.append(file)
    paths = ws.add_files(files)
    infos = ws.store.query_infos(paths)
    seed = ws.dir / "warm-seed.jsonl"
    with seed.open("w") as out:
        for path, data in zip(paths, contents, strict=True):
            nar = nar_of_regular_file(data)
            if infos[path].nar_hash != "sha256:" + hashlib.sha256(nar).hexdigest():
                raise RuntimeError(f"the NAR built for {path} does not match Nix's narHash")
            item = {"store_path": path, "nar_b64": base64.b64encode(nar).decode()}
            out.write(json.dumps(item) + "\n")
    drains: list[float] = []
    walls: list[float] = []
    requests: list[float] = []
    for _ in range(profile.warm_repeats):
        process = DoubleProcess(ws.dir, seed=seed)
        with process as double:
            client = double.client(profile.jobs)
            config = client.cache_config()
            with timer() as wall:
                report = push_once(
                    paths,
                    store=ws.store,
                    client=client,
                    upstream_key_names=config.upstream_cache_key_names,
                    jobs=profile.jobs,
                    timeout_s=120,
                )
        if report.already_cached.paths != len(paths) or report.pushed.paths != 0:
            raise RuntimeError(
                f"warm benchmark: {report.already_cached.paths} of {len(paths)} were found "
                f"cached and {report.pushed.paths} were uploaded"
            )
        drains.append(report.drain_seconds)
        walls.append(wall[0])
        by_endpoint: dict[str, int] = process.log.get("by_endpoint", {})
        sent = sum(n for key, n in by_endpoint.items() if "/cache-config/" not in key)
        requests.append(sent)
    return at_most(
        "warm_drain_s",
        f"Warm cache: drain of a push of {len(paths)} paths all already cached",
        "s",
        stats(drains),
        0.15,
        paths=len(paths),
        push_once_wall_s=stats(walls).to_json(),
        requests_sent=stats(requests).to_json(),
    )
