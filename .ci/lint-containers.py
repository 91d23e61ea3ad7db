#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine (none runs on these machines): it parses, every
service builds or names an image, `depends_on` names services that exist with a valid condition,
named volumes are declared, commands are exec-form lists, and the service the others wait for
with `service_completed_successfully` is a one-shot (no restart). The Dockerfile is checked by
hadolint (run by .ci/run).

    python3 .ci/lint-containers.py [docker-compose.yml]
"""

import sys
from pathlib import Path

import yaml

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docker-compose.yml")
    compose = yaml.safe_load(path.read_text())
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
    for problem in problems:
        print(f"{path.name}: {problem}")
    if problems:
        return 1
    print(f"{path.name}: {len(services)} services check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
