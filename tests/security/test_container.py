"""The image runs as an unprivileged user (tests/deploy checks the Dockerfile's shape; this
checks the user its command really runs as, and that compose does not override it)."""

from __future__ import annotations

import re

from tests.deploy.files import Instruction, dockerfile_instructions, load_compose, our_services

ROOT_IDS = {"root", "0"}


def _final_stage() -> list[Instruction]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def test_a_non_root_user_is_set_before_the_command() -> None:
    stage = _final_stage()
    keywords = [i.keyword for i in stage]
    assert "CMD" in keywords or "ENTRYPOINT" in keywords
    start = min(keywords.index(k) for k in ("CMD", "ENTRYPOINT") if k in keywords)
    users = [i.arguments for i in stage[:start] if i.keyword == "USER"]
    assert users, "no USER before the command: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ROOT_IDS and group not in ROOT_IDS, users[-1]
    later = [i.arguments for i in stage[start:] if i.keyword == "USER"]
    assert all(u.partition(":")[0] not in ROOT_IDS for u in later), later


def test_the_user_is_created_unprivileged_in_the_image() -> None:
    stage = _final_stage()
    user = [i.arguments for i in stage if i.keyword == "USER"][-1].partition(":")[0]
    runs = " ".join(i.arguments for i in stage if i.keyword == "RUN")
    # Created as a system user with that name or uid, and never given a uid/gid of 0.
    assert re.search(rf"useradd\b[^;&]*(--uid {user}\b|\b{user}\s*(&&|$))", runs), runs
    assert not re.search(r"--(uid|gid)\s+0\b|usermod\b|\bsudo\b|chmod\s+[0-7]*[4-7][0-7]{3}", runs)


def test_compose_does_not_run_our_image_as_root() -> None:
    for name, service in our_services(load_compose()).items():
        user = str(service.get("user", "")).partition(":")[0]
        assert user not in ROOT_IDS, f"service {name} runs as {service['user']!r}"
        assert not service.get("privileged"), f"service {name} is privileged"
