"""Deployment files stay valid: Kubernetes manifests, the Dockerfile, example configs.

- every manifest in ``config/k8s`` validates against the Kubernetes JSON schema (strict:
  unknown fields are errors), offline, with the schemas the ``kubernetes-validate`` package
  ships, and a deliberately broken copy is refused;
- the Dockerfile installs with the very script CI runs (``scripts/install.sh``);
- every flag in the manifests' container args exists in that command's ``--help``, every
  ``$(VAR)`` they use is defined, every path they pass is mounted;
- the example TOML files load through each daemon's own config loader.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from cachenode.config import SETTINGS as NODE_SETTINGS
from cachenode.config import load_config as load_node_config
from clientlib.config import SettingsTable
from mountd.config import SETTINGS as MOUNT_SETTINGS
from mountd.config import load_config as load_mount_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "config" / "k8s"
BIN = Path(sys.executable).parent
COMMANDS = ("cachenode", "mountd", "cachectl", "s3gate")
# Oldest Kubernetes the manifests claim to support (CronJob timeZone is GA from 1.27) and
# the newest one the validator knows.
K8S_VERSIONS = ("1.28.0", latest_version())
# Manifests applied on their own, not through kustomization.yaml (see its comments).
STANDALONE = {"secret.yaml", "warmup-job.yaml"}


# --------------------------------------------------------------------------- helpers


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name}: no YAML document"
    return docs


def validate_file(path: Path) -> None:
    """Every document of ``path`` against every supported Kubernetes version, strictly."""
    for doc in load_docs(path):
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


@cache
def all_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((p.name, d) for p in manifest_files() for d in load_docs(p))


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc["kind"]
    if kind in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file name, pod spec, container) for every container and init container."""
    found = []
    for name, doc in all_docs():
        spec = pod_spec(doc)
        if spec is None:
            continue
        for c in spec.get("initContainers", []) + spec["containers"]:
            found.append((name, spec, c))
    return found


def ringcache_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [t for t in containers() if t[2].get("command", [""])[0] in COMMANDS]


def configmap_data() -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d.get("data", {}) for _, d in all_docs() if d["kind"] == "ConfigMap"
    }


def container_env(c: dict[str, Any]) -> dict[str, str | None]:
    """Variables the container sees: its env (None when taken from a field or secret), and
    every key of the ConfigMaps it takes with envFrom."""
    env: dict[str, str | None] = {e["name"]: e.get("value") for e in c.get("env", [])}
    maps = configmap_data()
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
    return env


@cache
def _help_texts() -> dict[tuple[str, ...], str]:
    """``--help`` of every command and cachectl subcommand the manifests run, started in
    parallel (each one imports the whole client stack)."""
    wanted = {(c,) for c in COMMANDS}
    for _, _, c in ringcache_containers():
        if c["command"][0] == "cachectl":
            wanted.add(("cachectl", next(a for a in c["args"] if not a.startswith("-"))))
    procs = {
        cmd: subprocess.Popen(
            [str(BIN / cmd[0]), *cmd[1:], "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd in sorted(wanted)
    }
    texts = {}
    for cmd, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{' '.join(cmd)} --help failed: {err}"
        texts[cmd] = out
    return texts


def help_text(*command: str) -> str:
    return _help_texts()[command]


def help_flags(*command: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text(*command)))


def flags_of(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


# --------------------------------------------------------------------------- manifests


def test_there_are_manifests() -> None:
    kinds = {d["kind"] for _, d in all_docs()}
    assert {"DaemonSet", "Job", "CronJob", "Secret", "ConfigMap"} <= kinds


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    validate_file(path)


def _break(doc: dict[str, Any], how: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    spec = pod_spec(doc)
    assert spec is not None
    container = spec["containers"][0]
    if how == "unknown field":  # a typo: strict schemas refuse fields they do not know
        spec["terminationGracePeriodSecond"] = 150
    elif how == "wrong type":
        container["ports"][0]["containerPort"] = "seventy-seventy"
    elif how == "missing required":
        del container["name"]
    elif how == "map for a list":
        container["env"] = {"HOST_IP": "10.0.0.1"}
    return doc


@pytest.mark.parametrize(
    "how", ["unknown field", "wrong type", "missing required", "map for a list"]
)
def test_a_broken_manifest_is_refused(tmp_path: Path, how: str) -> None:
    original = K8S / "cachenode-daemonset.yaml"
    (doc,) = load_docs(original)
    validate_file(original)
    broken = tmp_path / original.name
    broken.write_text(yaml.safe_dump(_break(doc, how)))
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_file(broken)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in manifest_files()}
    assert listed <= files, f"listed but missing: {sorted(listed - files)}"
    assert listed | STANDALONE == files, f"neither listed nor standalone: {files - listed}"
    assert not listed & STANDALONE
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {c["image"].split(":")[0] for _, _, c in containers()}
    assert used <= images, "kustomize would not rewrite every image"


def test_the_placeholder_secret_could_never_run_a_cluster() -> None:
    (secret,) = load_docs(K8S / "secret.yaml")
    value = secret["stringData"]["cluster-secret"]
    assert "REPLACE" in value.upper()
    assert len(value.encode()) < 16, "cachenode must refuse the placeholder (MIN_SECRET_BYTES)"


def test_container_flags_exist_in_help() -> None:
    checked = set()
    for name, _, c in ringcache_containers():
        command, args = c["command"], c.get("args", [])
        flags = flags_of(args)
        known = help_flags(command[0])
        if command[0] == "cachectl":
            # cachectl [global flags] SUBCOMMAND [flags]
            sub = next(a for a in args if not a.startswith("-"))
            assert f"\n    {sub} " in help_text("cachectl"), f"{name}: no subcommand {sub}"
            known = known | help_flags("cachectl", sub)
        unknown = flags - known
        assert not unknown, f"{name}: {command[0]} has no {sorted(unknown)}"
        checked.add(command[0])
    assert checked == set(COMMANDS)


def test_ringcache_variables_name_real_settings() -> None:
    """RINGCACHE_<SETTING> given to a container is a flag of its command."""
    for name, _, c in ringcache_containers():
        for var in container_env(c):
            if var.startswith("RINGCACHE_"):
                flag = "--" + var.removeprefix("RINGCACHE_").lower().replace("_", "-")
                assert flag in help_flags(c["command"][0]), f"{name}: {var} sets nothing"


def test_referenced_variables_are_defined() -> None:
    for name, _, c in containers():
        env = container_env(c)
        for arg in c.get("command", []) + c.get("args", []):
            for var in re.findall(r"\$\((\w+)\)", arg):
                assert var in env, f"{name}: {c['name']} uses $({var}) but does not define it"


def test_paths_in_args_are_mounted() -> None:
    for name, _, c in ringcache_containers():
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        for arg in c.get("args", []):
            if arg.startswith("/"):
                path = arg.split(":", 1)[0]
                assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (
                    f"{name}: {path} is not on a volume of {c['name']}"
                )


def _node() -> tuple[dict[str, Any], dict[str, Any]]:
    ((_, spec, c),) = [t for t in ringcache_containers() if t[2]["command"][0] == "cachenode"]
    return spec, c


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_cachenode_drains_before_it_is_killed() -> None:
    spec, c = _node()
    args = c["args"]
    grace = float(_arg(args, "--drain-grace"))
    timeout = float(_arg(args, "--shutdown-timeout"))
    # leave the ring and wait for idle (at most the timeout), then let requests finish
    assert spec["terminationGracePeriodSeconds"] >= grace + 2 * timeout
    port = int(_arg(args, "--listen").rsplit(":", 1)[1])
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    # liveness must not fail on the 503 of a draining node
    assert c["livenessProbe"]["httpGet"]["path"] != "/healthz"
    assert spec["hostNetwork"] is True
    assert _arg(args, "--advertise") == f"$(HOST_IP):{port}"
    host_ip = next(e for e in c["env"] if e["name"] == "HOST_IP")
    assert host_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert c["securityContext"].get("privileged") is not True
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_mountd_propagates_its_mount_to_the_host() -> None:
    ((_, spec, c),) = [t for t in ringcache_containers() if t[2]["command"][0] == "mountd"]
    mountpoint = c["args"][1]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == mountpoint]
    assert mount["mountPropagation"] == "Bidirectional"
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "hostPath" in volume
    assert c["securityContext"]["privileged"] is True
    assert "--foreground" in c["args"]
    assert "fusermount3 -u" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"])


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def script_runs(text: str) -> list[str]:
    """Paths of the shell scripts a shell text runs (``bash X``, ``sh X`` or ``./X``)."""
    runs = []
    for command in re.split(r"&&|\|\||;|\n", text):
        words = shlex.split(command, comments=True)
        while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
            words.pop(0)
        while words[:1] in (["bash"], ["sh"], ["exec"]):
            words = [w for w in words[1:] if not w.startswith("-")]
        if words and words[0].endswith(".sh"):
            runs.append(words[0].removeprefix("./"))
    return runs


def test_dockerfile_installs_with_the_script_ci_runs() -> None:
    ci = script_runs((ROOT / ".ci" / "run").read_text())
    assert "scripts/install.sh" in ci
    instructions = dockerfile_instructions()
    runs = [r for word, args in instructions if word == "RUN" for r in script_runs(args)]
    assert runs.count("scripts/install.sh") == 1, runs
    # the whole context is copied into WORKDIR, so the script finds the repository
    copies = [args for word, args in instructions if word == "COPY"]
    assert any(re.fullmatch(r"\.\s+\S+", a) for a in copies), copies
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("scripts/install.sh", "pyproject.toml", "README.md", "cachenode/config.py"):
        assert not any(
            fnmatch.fnmatch(needed, pat) or needed.startswith(pat + "/") for pat in ignored
        ), needed
    assert ".venv" in ignored  # the image makes its own


def test_dockerfile_base_user_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    (base,) = [args for word, args in instructions if word == "FROM"]
    major_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert base == f"python:{major_minor}-slim-bookworm"
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = [args for word, args in instructions if word in ("CMD", "ENTRYPOINT")]
    assert cmd == ['["cachenode", "--help"]']
    text = (ROOT / "Dockerfile").read_text()
    assert "RINGCACHE_INSTALL_PROFILE=runtime" in text
    for command in COMMANDS:  # the build fails unless every command starts
        assert f".venv/bin/{command} --help >/dev/null" in text, command
    assert not re.search(r"(?i)^\s*(ARG|ENV)\s+\S*(SECRET|TOKEN|PASSWORD|AWS_)", text, re.M)


def _run_install(tmp_path: Path, profile: str | None) -> list[str]:
    """Run scripts/install.sh against stub apt-get and pip; the apt-get calls it made."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "install.sh").write_text((ROOT / "scripts" / "install.sh").read_text())
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls"
    for tool in ("apt-get", "sudo"):
        stub = stubs / tool
        if tool == "sudo":
            stub.write_text('#!/bin/sh\nexec "$@"\n')
        else:
            stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
        stub.chmod(0o755)
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    for tool in ("python", "pip"):
        (venv / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (venv / tool).chmod(0o755)
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    if profile is not None:
        env["RINGCACHE_INSTALL_PROFILE"] = profile
    subprocess.run(["bash", str(repo / "scripts" / "install.sh")], env=env, check=True, timeout=30)
    return log.read_text().splitlines()


BENCH = {"nginx-light", "wrk", "rclone", "s3fs", "prometheus", "chromium"}
RUNTIME = {"etcd-server", "fuse3", "libfuse3-dev", "pkg-config", "gcc", "python3-dev"}


def test_install_profiles(tmp_path: Path) -> None:
    ci = _run_install(tmp_path / "ci", None)
    (ci_apt,) = [c for c in ci if c.startswith("install")]
    assert set(ci_apt.split()) >= RUNTIME | BENCH
    assert any(c.startswith("pip install") and " -e " in c for c in ci), ci
    image = _run_install(tmp_path / "image", "runtime")
    (image_apt,) = [c for c in image if c.startswith("install")]
    assert set(image_apt.split()) >= RUNTIME
    assert not BENCH & set(image_apt.split())
    with pytest.raises(subprocess.CalledProcessError):
        _run_install(tmp_path / "typo", "runtim")


# --------------------------------------------------------------------------- TOML examples


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("RINGCACHE_"):
            monkeypatch.delenv(var)


def relocate(example: Path, tmp_path: Path, uncomment: bool) -> Path:
    """A copy of ``example`` whose absolute paths live under ``tmp_path`` (and exist as
    directories, or as token files holding a test secret), with its commented-out
    ``# key = value`` settings switched on if asked."""
    text = example.read_text()
    if uncomment:
        # A commented alternative of a setting replaces it, as a user would switch it.
        alternatives = set(re.findall(r"(?m)^# (\w+) = ", text))
        text = re.sub(r"(?m)^(\w+) = .*$", lambda m: "" if m[1] in alternatives else m[0], text)
        text = re.sub(r"(?m)^# (\w+ = )", r"\1", text)

    def move(match: re.Match[str]) -> str:
        path = tmp_path / match.group(1).lstrip("/")
        if path.suffix in (".secret", ".pem", ".password") or path.name == "token":
            path.parent.mkdir(parents=True, exist_ok=True)
            filler = "-----BEGIN CERTIFICATE-----\n" if path.suffix == ".pem" else ""
            path.write_text(filler + "0123456789abcdef0123456789abcdef\n")
        elif not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
        return f'"{path}'

    text = re.sub(r'"(/[^":]*)', move, text)
    out = tmp_path / example.name
    out.write_text(text)
    tomllib.loads(text)
    return out


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("uncomment", [False, True], ids=["as-is", "uncommented"])
def test_cachenode_example_config_loads(tmp_path: Path, uncomment: bool) -> None:
    config = load_node_config(
        ["--config", str(relocate(ROOT / "config" / "cachenode.toml", tmp_path, uncomment))]
    )
    assert len(config.cache_dirs) == 2
    assert config.cluster == "research"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("uncomment", [False, True], ids=["as-is", "uncommented"])
def test_mountd_example_config_loads(tmp_path: Path, uncomment: bool) -> None:
    config = load_mount_config(
        ["--config", str(relocate(ROOT / "config" / "mountd.toml", tmp_path, uncomment))]
    )
    assert config.source == "s3://research-data"
    assert config.local_cache_bytes == 20 * 1024**3
    assert config.allow_other is True
    assert config.read_only is uncomment


@pytest.mark.parametrize(
    ("example", "table"),
    [("mountd.toml", MOUNT_SETTINGS), ("cachenode.toml", NODE_SETTINGS)],
    ids=["mountd", "cachenode"],
)
def test_example_config_shows_every_setting(example: str, table: SettingsTable) -> None:
    text = (ROOT / "config" / example).read_text()
    shown = set(re.findall(r"(?m)^#? ?(\w+) = ", text))
    assert shown == set(table.toml_keys)
