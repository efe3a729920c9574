"""The image builder's logic without a Docker engine: grouping, sources, Dockerfile, host clone, build plans, CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest
import typer.main
from typer.testing import CliRunner

from envserver.tasks import TaskInstance
from images import builder
from images.cli import app


def _task(instance_id: str, repo: str = "o/r", commit: str = "c0ffee00", **extra) -> TaskInstance:
    return TaskInstance(instance_id=instance_id, repo=repo, base_commit=commit, problem_statement="x", **extra)


def test_group_tasks_shares_images_by_repo_commit_and_install() -> None:
    tasks = [
        _task("o__r-1"),
        _task("o__r-2"),
        _task("o__r-3", commit="deadbeef"),
        _task("o__r-4", install="pip install -e ."),
        _task("p__q-1", repo="p/q"),
    ]
    groups = builder.group_tasks(tasks)
    assert [g.instance_ids for g in groups] == [("o__r-1", "o__r-2"), ("o__r-3",), ("o__r-4",), ("p__q-1",)]
    assert groups[0].tags == ["envserver/sweb.eval.o__r-1:latest", "envserver/sweb.eval.o__r-2:latest"]
    assert groups[2].install == ("pip install -e .",)
    # a default install applies to tasks that do not say
    assert builder.group_tasks([_task("a__b-1")], ["make"])[0].install == ("make",)


def test_install_steps() -> None:
    assert builder.install_steps(_task("a__b-1")) == ()
    assert builder.install_steps(_task("a__b-1", install=True)) is True
    assert builder.install_steps(_task("a__b-1", install=["a", "b"])) == ("a", "b")
    with pytest.raises(builder.BuildError, match="install"):
        builder.install_steps(_task("a__b-1", install=3))


def test_group_key_depends_on_base_image_and_ca() -> None:
    group = builder.group_tasks([_task("a__b-1")])[0]
    assert group.key("sha256:1", None) == group.key("sha256:1", None)
    assert group.key("sha256:1", None) != group.key("sha256:2", None)
    assert group.key("sha256:1", None) != group.key("sha256:1", "cafe")


def test_sources() -> None:
    sources = builder.parse_repo_sources(["o/r=/src/r", "p/q=https://example.invalid/p/q.git"])
    assert sources == {"o/r": "/src/r", "p/q": "https://example.invalid/p/q.git"}
    with pytest.raises(builder.BuildError):
        builder.parse_repo_sources(["no-equals-sign"])
    assert builder.resolve_source("o/r", sources, None) == "/src/r"
    assert builder.resolve_source("x/y", {}, "/mirrors/{owner}__{name}") == "/mirrors/x__y"
    with pytest.raises(builder.BuildError, match="--repo-source x/y="):
        builder.resolve_source("x/y", {}, None)


def test_dockerfile_ca_bundle_is_opt_in() -> None:
    plain = builder.render_dockerfile("envserver/base:bookworm", (), ca_bundle=False)
    assert plain.startswith("FROM envserver/base:bookworm\n")
    assert "PIP_CERT" not in plain and "ca-bundle" not in plain and "pip" not in plain
    assert "COPY testbed/ /testbed/" in plain and "WORKDIR /testbed" in plain and "user.email" in plain
    with_ca = builder.render_dockerfile("b", ("python3 -m pip install -e .",), ca_bundle=True)
    assert "COPY ca-bundle.crt /etc/envserver/ca-bundle.crt" in with_ca
    assert "ENV PIP_CERT=/etc/envserver/ca-bundle.crt" in with_ca
    assert "RUN python3 -m pip install -e ." in with_ca and "PIP_BREAK_SYSTEM_PACKAGES=1" in with_ca


def _git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    return subprocess.run(["git", *env_args, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_prepare_repo_keeps_history_up_to_base_commit_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _git(src, "init", "-q")
    commits = []
    for n in range(3):
        (src / "f.txt").write_text(f"{n}\n")
        _git(src, "add", "f.txt")
        _git(src, "commit", "-qm", f"c{n}")
        commits.append(_git(src, "rev-parse", "HEAD").strip())
        _git(src, "tag", f"v{n}")
    _git(src, "branch", "other", commits[2])
    dest = tmp_path / "testbed"
    builder.prepare_repo(str(src), commits[1], dest)
    assert _git(dest, "rev-parse", "HEAD").strip() == commits[1]
    assert (dest / "f.txt").read_text() == "1\n"
    assert _git(dest, "status", "--porcelain") == ""
    assert _git(dest, "tag").split() == ["v0", "v1"]
    assert _git(dest, "branch", "--format=%(refname:short)").split() == ["main"]
    assert _git(dest, "remote") == ""
    future = subprocess.run(["git", "cat-file", "-e", commits[2]], cwd=dest, capture_output=True, check=False)
    assert future.returncode != 0, "a commit after base_commit is still in the image's repository"
    with pytest.raises(builder.BuildError, match="not in"):
        builder.prepare_repo(str(src), "0" * 40, tmp_path / "again")


class _FakeImages:
    def __init__(self, images: dict[str, SimpleNamespace]) -> None:
        self._images = images

    def get(self, name: str) -> SimpleNamespace:
        if name not in self._images:
            raise docker.errors.ImageNotFound(name)
        return self._images[name]


def test_plan_builds_skips_tags_or_builds() -> None:
    groups = builder.group_tasks([_task("o__r-1"), _task("o__r-2"), _task("p__q-1", repo="p/q")])
    key0 = groups[0].key("base", None)
    current = SimpleNamespace(id="sha256:current", labels={builder.KEY_LABEL: key0})
    stale = SimpleNamespace(id="sha256:stale", labels={builder.KEY_LABEL: "old"})
    client = SimpleNamespace(images=_FakeImages({groups[0].tags[0]: current, groups[1].tags[0]: stale}))
    plans = builder.plan_builds(client, groups, "base", None, force=False)  # type: ignore[arg-type]
    assert [(p.action, p.image_id) for p in plans] == [("tag", "sha256:current"), ("build", None)]
    client.images._images[groups[0].tags[1]] = current
    assert builder.plan_builds(client, groups, "base", None, force=False)[0].action == "skip"  # type: ignore[arg-type]
    assert builder.plan_builds(client, groups, "base", None, force=True)[0].action == "build"  # type: ignore[arg-type]


def test_every_cli_option_has_help() -> None:
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.help, name
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"


def test_cli_sample_tasks_check_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["sample-tasks", "--check"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["build", "--help"])
    assert result.exit_code == 0 and "trust" in result.output


def test_base_skips_an_existing_tag() -> None:
    from images import base

    client = SimpleNamespace(images=_FakeImages({"envserver/base:bookworm": SimpleNamespace(id="sha256:b")}))
    lines: list[str] = []
    assert base.ensure_base(client, "envserver/base:bookworm", log=lines.append) is False  # type: ignore[arg-type]
    assert "exists" in lines[0]


def test_base_bootstrap_needs_root_and_debootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    from images import base

    monkeypatch.setattr(base.os, "geteuid", lambda: 1000)
    with pytest.raises(base.BaseImageError, match="needs root"):
        base.bootstrap(None, "t:x", base.DEFAULT_MIRROR, print)  # type: ignore[arg-type]
    monkeypatch.setattr(base.os, "geteuid", lambda: 0)
    monkeypatch.setattr(base.shutil, "which", lambda name: None)
    with pytest.raises(base.BaseImageError, match="apt-get install -y debootstrap"):
        base.bootstrap(None, "t:x", base.DEFAULT_MIRROR, print)  # type: ignore[arg-type]


def test_base_dockerfile_for_a_registry() -> None:
    from images import base

    assert base.REGISTRY_DOCKERFILE.startswith("FROM debian:bookworm-slim\n")
    assert all(package in base.REGISTRY_DOCKERFILE for package in base.PACKAGES)
    assert "ENV LANG=C.UTF-8" in base.REGISTRY_DOCKERFILE
