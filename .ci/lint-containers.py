#!/usr/bin/env python3
"""Checks docker-compose.yml and the Dockerfile without a Docker engine (none runs on these
machines). The compose file parses, every service builds or names an image, `depends_on` names
services that exist with a valid condition, named volumes are declared, commands are exec-form
lists, and the service the others wait for with `service_completed_successfully` is a one-shot
(no restart). And what keeps the deployment safe:
- the image is built once: one service has `build:` and names the `image:` every other service
  running the binary uses (without a `build:` of its own);
- every base image (compose `image:`, Dockerfile `FROM`) is pinned by digest, and both files say
  how to refresh the digests (`docker buildx imagetools inspect`);
- every published port is bound to 127.0.0.1 (the example keys and the development KEK are public);
- every replica (a service running the binary's default command, `serve`) reads the
  key-encryption key from a compose secret (`NEO_KEY_ENCRYPTION_KEY_FILE=/run/secrets/<secret>`,
  the secret declared at the top level), never from `NEO_KEY_ENCRYPTION_KEY`;
- every replica's `stop_grace_period` is longer than the service's shutdown grace
  (`server.shutdown_grace_seconds` in config/default.toml, or the replica's
  NEO_SERVER_SHUTDOWN_GRACE_SECONDS), so Docker's SIGKILL never cuts the drain short.
The Dockerfile's style is checked by hadolint (run by .ci/run).

    python3 .ci/lint-containers.py [docker-compose.yml]
"""

import re
import sys
import tomllib
from pathlib import Path

import yaml

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
REFRESH_HINT = "docker buildx imagetools inspect"
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")


def seconds(duration) -> float | None:
    """A compose duration (`30s`, `1m30s`, `1500ms`, or a number of seconds) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    match = DURATION.match(str(duration).strip())
    if not match or not any(match.groups()):
        return None
    h, m, s, ms = (int(g) if g else 0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def environment(service) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def published_host_ip(port) -> str | None:
    """The host address a `ports:` entry binds (None: every address)."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).rsplit(":", 2)
    if len(parts) == 3:
        return parts[0].strip("[]") or None
    return None


def check_dockerfile(path: Path, problems: list) -> None:
    text = path.read_text()
    stages = set()
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if not args:
            continue
        image = args[0]
        if len(args) >= 3 and args[1].upper() == "AS":
            stages.add(args[2])
        if image in stages or image == "scratch":
            continue
        if not DIGEST.search(image):
            problems.append(f"{path.name}: FROM {image} is not pinned by digest (@sha256:...)")
    if REFRESH_HINT not in text:
        problems.append(f"{path.name}: no comment on refreshing the digests ({REFRESH_HINT})")


def check_deployment(compose: dict, text: str, root: Path, problems: list) -> None:
    services = compose.get("services") or {}
    builders = [name for name, s in services.items() if "build" in s]
    if len(builders) != 1:
        problems.append(f"one service must build the image, not {len(builders)} ({', '.join(builders)})")
        return
    built = services[builders[0]].get("image")
    if not built:
        problems.append(f"{builders[0]}: builds the image without naming it (image:), so others cannot share it")
        return
    default = tomllib.loads((root / "config" / "default.toml").read_text())
    grace = float(default["server"]["shutdown_grace_seconds"])
    declared_secrets = set((compose.get("secrets") or {}).keys())
    replicas = 0
    for name, service in services.items():
        image = service.get("image", "")
        if image != built and not DIGEST.search(image):
            problems.append(f"{name}: image {image} is not pinned by digest (@sha256:...)")
        for port in service.get("ports") or []:
            if published_host_ip(port) != "127.0.0.1":
                problems.append(f"{name}: port {port} is not published on 127.0.0.1 only")
        if image != built or "command" in service:
            continue
        # A replica: the binary's default command, `serve`.
        replicas += 1
        env = environment(service)
        if "NEO_KEY_ENCRYPTION_KEY" in env:
            problems.append(f"{name}: the key-encryption key is in the environment; use a secret file")
        kek_file = str(env.get("NEO_KEY_ENCRYPTION_KEY_FILE") or "")
        secrets = [s if isinstance(s, str) else s.get("source") for s in service.get("secrets") or []]
        if not kek_file.startswith("/run/secrets/") or kek_file.removeprefix("/run/secrets/") not in secrets:
            problems.append(f"{name}: NEO_KEY_ENCRYPTION_KEY_FILE does not name one of its secrets (/run/secrets/<name>)")
        for secret in secrets:
            if secret not in declared_secrets:
                problems.append(f"{name}: secret {secret} is not declared")
        own_grace = float(env.get("NEO_SERVER_SHUTDOWN_GRACE_SECONDS") or grace)
        stop = seconds(service.get("stop_grace_period", "10s"))
        if stop is None or stop <= own_grace:
            problems.append(
                f"{name}: stop_grace_period {service.get('stop_grace_period', '10s (the default)')} "
                f"is not longer than the shutdown grace ({own_grace:g} s)"
            )
    if replicas == 0:
        problems.append(f"no service runs the built image {built} as a replica")
    if REFRESH_HINT not in text:
        problems.append(f"no comment on refreshing the digests ({REFRESH_HINT})")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    path = Path(sys.argv[1] if len(sys.argv) > 1 else root / "docker-compose.yml")
    text = path.read_text()
    compose = yaml.safe_load(text)
    problems = []
    services = compose.get("services") or {}
    volumes = set((compose.get("volumes") or {}).keys())
    if not services:
        problems.append("no services")
    for name, service in services.items():
        if "build" not in service and "image" not in service:
            problems.append(f"{name}: neither build nor image")
        command = service.get("command")
        if command is not None and not isinstance(command, list):
            problems.append(f"{name}: command is not an exec-form list")
        depends = service.get("depends_on") or {}
        for dependency, spec in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            if dependency not in services:
                problems.append(f"{name}: depends on unknown service {dependency}")
            condition = (spec or {}).get("condition", "service_started")
            if condition not in CONDITIONS:
                problems.append(f"{name}: unknown condition {condition}")
            if condition == "service_completed_successfully" and services.get(dependency, {}).get("restart", "no") not in ("no", False):
                problems.append(f"{name}: waits for {dependency} to complete, but it restarts")
        for mount in service.get("volumes") or []:
            source = str(mount).split(":")[0]
            if source and not source.startswith((".", "/")) and source not in volumes:
                problems.append(f"{name}: volume {source} is not declared")
        for key in ("healthcheck",):
            check = service.get(key)
            if check and not isinstance(check.get("test"), list):
                problems.append(f"{name}: healthcheck test is not a list")
    check_deployment(compose, text, root, problems)
    dockerfile_problems = []
    check_dockerfile(path.parent / "Dockerfile", dockerfile_problems)
    for problem in problems:
        print(f"{path.name}: {problem}")
    for problem in dockerfile_problems:
        print(problem)
    problems += dockerfile_problems
    if problems:
        return 1
    print(f"{path.name}: {len(services)} services check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
