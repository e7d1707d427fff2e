"""The docker compose stack (docker-compose.yml, docker/, .env.example) stays consistent with the code.

No Docker here: the compose file is parsed with yaml.safe_load and ${VAR:-default} references are resolved to their
defaults (what `docker compose up` does without a .env). Connection ids come from backorders.settings, the Airflow
version from requirements.txt, the rules folder from the repository: renaming any of them fails a test here.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from backorders import settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-init", "airflow-worker", "flower"}
DEFAULT_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-init", "postgres", "backorders-db", "mailpit"}
CELERY_SERVICES = {"redis", "airflow-worker", "flower"}
COMMANDS = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
    "flower": ["celery", "flower"],
}
IMAGE_AIRFLOW_HOME = "/opt/airflow"   # AIRFLOW_HOME of the apache/airflow images
REQUIRED_CONN_IDS = [settings.CONN_ID, settings.SMTP_CONN_ID]
ALL_CONN_IDS = [settings.CONN_ID, settings.SMTP_CONN_ID, settings.PAYMENTS_CONN_ID]


# ------------------------------------------------------------------------------------------------ helpers
_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
_WHOLE_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-[^}]*)?\}")


def conn_env(conn_id: str) -> str:
    """Environment variable Airflow reads a connection from."""
    return "AIRFLOW_CONN_" + conn_id.upper()


def interpolate(value, env: dict | None = None):
    """Resolve compose ${VAR}, ${VAR:-default}, ${VAR-default} and $$ like docker compose, with `env` as the .env."""
    if not isinstance(value, str):
        return value
    env = env or {}
    parts = value.split("$$")

    def sub(m: re.Match) -> str:
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        have = env.get(name)
        if op in (":-", "-"):
            return have if (have if op == ":-" else have is not None) else arg
        if op in (":+", "+"):
            return arg if (have if op == ":+" else have is not None) else ""
        if op in (":?", "?") and not have:
            raise KeyError(f"{name}: {arg}")
        return have or ""

    return "$".join(_REF.sub(sub, p) for p in parts)


def references(text: str) -> list[tuple[str, str | None]]:
    """(variable, default) of every interpolation in a text; `$$` escapes are not references."""
    out = []
    for part in text.split("$$"):
        for m in _REF.finditer(part):
            name = m.group("name") or m.group("bare")
            out.append((name, m.group("arg") if m.group("op") in (":-", "-") else None))
    return out


def env_of(svc: dict) -> dict[str, str]:
    """A service's environment as a dict of raw (uninterpolated) strings."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def resolved_env(svc: dict, dotenv: dict | None = None) -> dict[str, str]:
    return {k: interpolate(v, dotenv) for k, v in env_of(svc).items()}


def mounts(svc: dict) -> list[tuple[str, str]]:
    """(source, container target) of a service's volumes, short or long syntax."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out.append((v.get("source", ""), v["target"]))
        else:
            bits = v.split(":")
            out.append((bits[0], bits[1]))
    return out


def bind_target(svc: dict, host_dir: str) -> str | None:
    """Container path where a repository folder (e.g. ./include) is mounted, or None."""
    want = (ROOT / host_dir).resolve()
    for src, dst in mounts(svc):
        if src.startswith((".", "/")) and (ROOT / src).resolve() == want:
            return dst.rstrip("/")
    return None


def depends(svc: dict) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}


def command_of(svc: dict) -> list[str]:
    cmd = svc.get("command")
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def host_ports(svc: dict) -> dict[int, int]:
    """Published ports: container port -> host port (defaults of ${...} resolved)."""
    out = {}
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out[int(p["target"])] = int(interpolate(str(p.get("published", p["target"]))))
            continue
        bits = interpolate(str(p)).split("/")[0].split(":")
        out[int(bits[-1])] = int(bits[-2]) if len(bits) >= 2 else int(bits[-1])
    return out


def healthcheck_text(svc: dict) -> str:
    test = (svc.get("healthcheck") or {}).get("test")
    if not test or (isinstance(test, list) and test[0] == "NONE"):
        return ""
    return " ".join(test[1:]) if isinstance(test, list) else test


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    out = []
    for line in lines:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, args in dockerfile_instructions():
        if instr == "ENV":
            for item in shlex.split(args):
                if "=" in item:
                    k, v = item.split("=", 1)
                    env[k] = v
    return env


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD without --from (sources relative to the build context)."""
    out = []
    for instr, args in dockerfile_instructions():
        if instr not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(args)]
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def repo_file_for(container_path: str) -> Path | None:
    """The repository file that ends up at a container path through a COPY of the Dockerfile."""
    for sources, dest in dockerfile_copies():
        for src in sources:
            if dest.rstrip("/") == container_path or (dest.endswith("/") and dest + Path(src).name == container_path):
                return ROOT / src
    return None



# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def airflow_services(services) -> dict:
    """Services running the image built from docker/Dockerfile."""
    out = {}
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if (ROOT / context / dockerfile).resolve() == DOCKERFILE.resolve():
            out[name] = svc
    return out


@pytest.fixture(scope="module")
def env_example() -> tuple[dict[str, str], set[str]]:
    """(assignments, documented names) of .env.example; a commented `# NAME=...` line documents NAME too."""
    values, documented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2).strip().strip("'\"")
            documented.add(m.group(1))
            continue
        m = re.match(r"^\s*#\s*([A-Za-z_][A-Za-z0-9_]*)=", line)
        if m:
            documented.add(m.group(1))
    return values, documented


# ------------------------------------------------------------------------------------------------ services
def test_required_services_exist(services):
    missing = DEFAULT_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_airflow_services_use_the_project_image(airflow_services):
    assert set(airflow_services) == AIRFLOW_SERVICES, (
        f"services built from docker/Dockerfile: {sorted(airflow_services)}, expected {sorted(AIRFLOW_SERVICES)}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_airflow_service_commands(services, name):
    assert name in services, f"no service {name}"
    assert command_of(services[name]) == COMMANDS[name], f"{name}: command {command_of(services[name])}"


def test_airflow_init_migrates_both_databases(services):
    init = services["airflow-init"]
    script = None
    for word in command_of(init) + command_of({"command": init.get("entrypoint")}):
        if word.startswith("/"):
            script = repo_file_for(word) or next(
                (ROOT / src / PurePosixPath(word).relative_to(dst) for src, dst in mounts(init)
                 if src.startswith(".") and PurePosixPath(word).is_relative_to(dst)), None)
            if script is not None:
                break
    text = script.read_text() if script is not None else "\n".join(command_of(init))
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^\s*set -[a-z]*e", code, re.M) or "&&" in code, "airflow-init must stop at the first failure"
    assert re.search(r"\bairflow db migrate\b", code), "airflow-init does not run `airflow db migrate`"
    assert re.search(r"\bpython3? -m backorders db migrate\b", code), \
        "airflow-init does not run `python -m backorders db migrate`"


def test_backorders_cli_has_db_migrate(capsys):
    """The command airflow-init runs exists in the project's CLI."""
    from backorders.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["db", "--help"])
    assert exc.value.code == 0
    assert re.search(r"\{[^}]*\bmigrate\b[^}]*\}", capsys.readouterr().out)


def test_simple_auth_manager_and_admin_user(services, airflow_services):
    for name, svc in airflow_services.items():
        env = resolved_env(svc)
        manager = env.get("AIRFLOW__CORE__AUTH_MANAGER", "")
        assert manager.rsplit(".", 1)[-1] == "SimpleAuthManager", f"{name}: auth manager {manager!r}"
    api, init = resolved_env(services["airflow-apiserver"]), resolved_env(services["airflow-init"])
    users = dict(u.split(":")[:2] for u in api["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    admin = init.get("AIRFLOW_ADMIN_USERNAME")
    assert users.get(admin) == "admin", f"airflow-init writes the password of {admin!r}, users are {users}"
    # the password file airflow-init writes is the one the API server reads: same path, on a shared named volume
    path = api["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    assert init["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == path
    folder = str(PurePosixPath(path).parent)
    vol = {dst: src for src, dst in mounts(services["airflow-apiserver"])}.get(folder)
    assert vol and not vol.startswith((".", "/")), f"{folder} is not a named volume of airflow-apiserver"
    assert {dst: src for src, dst in mounts(services["airflow-init"])}.get(folder) == vol


def test_simple_auth_manager_class_exists(services):
    """The configured class path exists in the installed Airflow (same version as the image)."""
    pytest.importorskip("airflow")
    import importlib.util

    manager = resolved_env(services["airflow-apiserver"])["AIRFLOW__CORE__AUTH_MANAGER"]
    module, _, cls = manager.rpartition(".")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    assert re.search(rf"^class {re.escape(cls)}\b", Path(spec.origin).read_text(), re.M), manager


# ------------------------------------------------------------------------------------------------ connections
@pytest.mark.parametrize("conn_id", REQUIRED_CONN_IDS)
def test_every_airflow_service_gets_the_connection(airflow_services, conn_id):
    var = conn_env(conn_id)
    for name, svc in airflow_services.items():
        env = resolved_env(svc)
        assert env.get(var), f"{name}: {var} (connection {conn_id!r} of backorders.settings) is not set"


def test_db_connection_env_name_matches_settings():
    assert settings.CONN_ENV == conn_env(settings.CONN_ID)


def test_optional_payments_connection_passes_through_from_env(airflow_services, env_example):
    var = conn_env(settings.PAYMENTS_CONN_ID)
    for name, svc in airflow_services.items():
        raw = env_of(svc).get(var)
        assert raw is not None, f"{name}: {var} is not passed in (connection {settings.PAYMENTS_CONN_ID!r})"
        assert any(ref == var for ref, _ in references(raw)), f"{name}: {var} should come from .env, is {raw!r}"
        assert interpolate(raw) == "", f"{name}: {var} must stay undefined unless .env sets it"
    assert var in env_example[1], f".env.example does not document {var}"


def test_no_connection_the_code_does_not_know(airflow_services):
    known = {conn_env(c) for c in ALL_CONN_IDS}
    for name, svc in airflow_services.items():
        stale = {k for k in env_of(svc) if k.startswith("AIRFLOW_CONN_")} - known
        assert not stale, f"{name}: {sorted(stale)} match no connection id in backorders.settings"


def test_db_connection_points_at_backorders_db(services, airflow_services):
    from backorders.db import url_from_airflow_conn

    bdb = services["backorders-db"]
    benv, braw = resolved_env(bdb), env_of(bdb)
    for name, svc in airflow_services.items():
        raw = env_of(svc)[conn_env(settings.CONN_ID)]
        url = urlsplit(interpolate(raw))
        assert url.scheme in ("postgres", "postgresql"), f"{name}: {url.scheme}"
        assert url.hostname == "backorders-db", f"{name}: {conn_env(settings.CONN_ID)} points at {url.hostname}"
        assert url.port in (None, 5432)
        assert url.username == benv["POSTGRES_USER"]
        assert url.path.lstrip("/") == benv["POSTGRES_DB"]
        assert url.password == benv["POSTGRES_PASSWORD"]
        # the same .env variable sets the server's password and the connection's
        raw_pw = raw.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
        assert raw_pw == braw["POSTGRES_PASSWORD"], f"{name}: password {raw_pw!r} vs {braw['POSTGRES_PASSWORD']!r}"
        # and the project's own parser accepts it
        assert urlsplit(url_from_airflow_conn(interpolate(raw))).hostname == "backorders-db"


def test_smtp_connection_points_at_mailpit(services, airflow_services):
    mailpit_ports = {int(str(p).split(":")[-1]) for p in services["mailpit"].get("ports") or []} \
        | {int(p) for p in services["mailpit"].get("expose") or []}
    for name, svc in airflow_services.items():
        url = urlsplit(resolved_env(svc)[conn_env(settings.SMTP_CONN_ID)])
        assert url.scheme in ("smtp", "email"), f"{name}: {url.scheme}"
        assert url.hostname == "mailpit", f"{name}: {conn_env(settings.SMTP_CONN_ID)} points at {url.hostname}"
        assert url.port == 1025 and 1025 in mailpit_ports
        extra = {k: v[-1].lower() for k, v in parse_qs(url.query).items()}
        # Mailpit speaks plain SMTP: neither SMTP over SSL nor STARTTLS
        assert extra.get("disable_ssl") == "true" and extra.get("disable_tls") == "true", f"{name}: {extra}"


def test_metadata_db_connection_points_at_postgres(services, airflow_services):
    pg = resolved_env(services["postgres"])
    for name, svc in airflow_services.items():
        url = urlsplit(resolved_env(svc)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert url.scheme.startswith("postgresql") and url.hostname == "postgres", f"{name}: {url.geturl()}"
        assert (url.username, url.password, url.path.lstrip("/")) == \
            (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])


# ------------------------------------------------------------------------------------------------ mounts, paths
def test_rules_dir_is_the_mounted_include_rules(airflow_services):
    assert (ROOT / "include" / "rules" / "channels.yaml").is_file(), "include/rules/channels.yaml is missing"
    for name, svc in airflow_services.items():
        env = resolved_env(svc)
        include = bind_target(svc, "include")
        assert include, f"{name}: ./include is not mounted"
        assert env.get("BACKORDERS_RULES_DIR") == include + "/rules", \
            f"{name}: BACKORDERS_RULES_DIR={env.get('BACKORDERS_RULES_DIR')!r}, ./include is at {include}"
        # backorders.settings reads include/ (sql, templates) under BACKORDERS_HOME
        home = env.get("BACKORDERS_HOME") or dockerfile_env().get("BACKORDERS_HOME")
        assert home and f"{home}/include" == include, f"{name}: BACKORDERS_HOME={home!r}, ./include at {include}"
        pythonpath = env.get("PYTHONPATH") or dockerfile_env().get("PYTHONPATH", "")
        assert home in pythonpath.split(":"), f"{name}: PYTHONPATH={pythonpath!r} lacks {home}"


def _airflow_folder(svc: dict, key: str, sub: str) -> str:
    env = resolved_env(svc)
    if env.get(f"AIRFLOW__CORE__{key}"):
        return env[f"AIRFLOW__CORE__{key}"].rstrip("/")
    home = env.get("AIRFLOW_HOME") or dockerfile_env().get("AIRFLOW_HOME") or IMAGE_AIRFLOW_HOME
    return f"{home.rstrip('/')}/{sub}"


def test_dags_and_plugins_mounted_at_airflow_folders(airflow_services):
    assert (ROOT / "dags" / "backorder_cycle.py").is_file()
    for name, svc in airflow_services.items():
        assert bind_target(svc, "dags") == _airflow_folder(svc, "DAGS_FOLDER", "dags"), \
            f"{name}: ./dags is at {bind_target(svc, 'dags')}, the DAGs folder is {_airflow_folder(svc, 'DAGS_FOLDER', 'dags')}"
        assert bind_target(svc, "plugins") == _airflow_folder(svc, "PLUGINS_FOLDER", "plugins"), \
            f"{name}: ./plugins is not mounted at the plugins folder"


def test_core_airflow_settings(airflow_services):
    for name, svc in airflow_services.items():
        raw, env = env_of(svc), resolved_env(svc)
        assert raw.get("AIRFLOW__CORE__EXECUTOR") == "${AIRFLOW_EXECUTOR:-LocalExecutor}", name
        assert interpolate(raw["AIRFLOW__CORE__EXECUTOR"], {"AIRFLOW_EXECUTOR": "CeleryExecutor"}) == "CeleryExecutor"
        assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false", name
        assert env.get("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "").lower() in ("true", "false"), name
        assert env.get("AIRFLOW__API_AUTH__JWT_SECRET"), f"{name}: no JWT secret"
        assert env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL") == "http://airflow-apiserver:8080/execution/", name


def test_all_airflow_services_share_secrets(airflow_services):
    """Components sign and check each other's tokens: one JWT secret and API secret key for all."""
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        values = {env_of(svc).get(key) for svc in airflow_services.values()}
        assert len(values) == 1, f"{key} differs between Airflow services: {values}"


# ------------------------------------------------------------------------------------------------ image
def _from_image() -> str:
    args = {}
    for instr, rest in dockerfile_instructions():
        if instr == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip().strip("'\"")
        elif instr == "FROM":
            image = [w for w in rest.split() if not w.startswith("--")][0]
            return interpolate(image, args)
    raise AssertionError("docker/Dockerfile has no FROM")


def _pin(path: Path, package: str) -> str:
    m = re.search(rf"^{re.escape(package)}==([^\s;#]+)", path.read_text(), re.M | re.I)
    assert m, f"{path.name} does not pin {package}"
    return m.group(1)


def test_dockerfile_airflow_version_matches_requirements():
    image = _from_image()
    repo, _, tag = image.partition(":")
    assert repo == "apache/airflow", image
    version = tag.split("-")[0]
    assert version == _pin(ROOT / "requirements.txt", "apache-airflow"), f"{image} vs requirements.txt"
    assert version == _pin(ROOT / "constraints.txt", "apache-airflow"), f"{image} vs constraints.txt"


def test_dockerfile_python_matches_project():
    tag = _from_image().partition(":")[2]
    m = re.search(r"python(\d+)\.(\d+)", tag)
    assert m, f"pin the Python of the image: {tag}"
    image_py = (int(m.group(1)), int(m.group(2)))
    req = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert req and image_py >= (int(req.group(1)), int(req.group(2)))
    # constraints.txt is a pip freeze of one Python version: the image runs that one
    frozen = re.search(r"Python (\d+)\.(\d+)", (ROOT / "constraints.txt").read_text().splitlines()[0])
    if frozen:
        assert image_py == (int(frozen.group(1)), int(frozen.group(2))), "constraints.txt was frozen on another Python"


def test_dockerfile_installs_pinned_requirements_and_the_project():
    runs = [args for instr, args in dockerfile_instructions() if instr == "RUN"]
    copies = dockerfile_copies()
    copied = {Path(src).name: dest for sources, dest in copies for src in sources}
    for sources, _ in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"docker/Dockerfile copies {src}, which is not in the repository"

    def dest_of(name: str) -> str:
        assert name in copied, f"docker/Dockerfile does not copy {name}"
        dest = copied[name]
        return dest + name if dest.endswith("/") else dest

    req, con = dest_of("requirements.txt"), dest_of("constraints.txt")
    assert any(re.search(rf"pip install\b.*-r\s+{re.escape(req)}\b", r) and re.search(rf"-c\s+{re.escape(con)}\b", r)
               for r in runs), "requirements.txt is not installed with -c constraints.txt"
    project = str(PurePosixPath(dest_of("pyproject.toml")).parent)
    assert dest_of("backorders") == f"{project}/backorders"
    editable = any(re.search(rf"pip install\b.*-e\s+{re.escape(project)}/?(\s|$)", r) for r in runs)
    on_path = project in dockerfile_env().get("PYTHONPATH", "").split(":")
    assert editable or on_path, "the backorders package is neither pip-installed (-e) nor on PYTHONPATH"


def test_build_context_leaves_out_local_state():
    """The context is the repository root: .venv, .pgdata (unreadable) and .git must not be sent."""
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.relative_to(ROOT)} is missing"
    rules = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for path in (".venv", ".pgdata", ".git", ".airflow"):
        assert (rules and rules[0] in ("*", "**") and f"!{path}" not in rules) or path in rules, path
    for sources, _ in dockerfile_copies():
        for src in sources:
            if rules and rules[0] in ("*", "**"):
                assert f"!{src.rstrip('/')}" in rules, f"{src} is copied but not allowed by {ignore.name}"


# ------------------------------------------------------------------------------------------------ health, deps
def test_databases_have_healthchecks(services):
    for name in ("postgres", "backorders-db"):
        svc = services[name]
        assert svc["image"].split(":")[0] == "postgres" and svc["image"].split(":")[1].split(".")[0] == "16", name
        check = healthcheck_text(svc)
        assert "pg_isready" in check, f"{name}: no pg_isready healthcheck"
        user = resolved_env(svc)["POSTGRES_USER"]
        assert re.search(rf"-U\s+{re.escape(user)}\b", check), f"{name}: healthcheck user is not {user}"
    for name in CELERY_SERVICES & {"redis"}:
        assert "ping" in healthcheck_text(services[name])


def test_business_db_is_separate_and_published_on_5433(compose, services):
    vols = {name: {src for src, dst in mounts(services[name]) if dst == "/var/lib/postgresql/data"}
            for name in ("postgres", "backorders-db")}
    assert len(vols["backorders-db"]) == 1 and vols["backorders-db"] != vols["postgres"], vols
    assert vols["backorders-db"] <= set(compose.get("volumes") or {}), "backorders-db needs its own named volume"
    assert host_ports(services["backorders-db"]).get(5432) == 5433


def test_published_ports(services):
    assert host_ports(services["airflow-apiserver"]).get(8080) == 8080
    assert host_ports(services["mailpit"]) == {1025: 1025, 8025: 8025}
    assert services["mailpit"]["image"].split(":")[0] == "axllent/mailpit"


def test_apiserver_healthcheck(services):
    check = healthcheck_text(services["airflow-apiserver"])
    urls = [urlsplit(w) for w in check.split() if w.startswith("http")]
    assert urls, "airflow-apiserver: no HTTP healthcheck"
    assert urls[0].port == 8080 and urls[0].path in ("/api/v2/version", "/api/v2/monitor/health"), check


def test_depends_on_conditions(services, airflow_services):
    for name, svc in services.items():
        for dep, cond in depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond in ("service_started", "service_healthy", "service_completed_successfully")
            if cond == "service_healthy":
                assert healthcheck_text(services[dep]), f"{name} waits for {dep} to be healthy: it has no healthcheck"
            if cond == "service_completed_successfully":
                assert services[dep].get("restart", "no") in ("no", False), f"{dep} must run once"
    for name in airflow_services:
        deps = depends(services[name])
        assert deps.get("postgres") == "service_healthy", f"{name} must wait for postgres"
        if name != "airflow-init":
            assert deps.get("airflow-init") == "service_completed_successfully", f"{name} must wait for airflow-init"
    init = depends(services["airflow-init"])
    assert init.get("backorders-db") == "service_healthy", "airflow-init migrates backorders-db: it must wait for it"
    # the services that run tasks reach the business database and the SMTP server
    for name in ("airflow-scheduler", "airflow-worker"):
        deps = depends(services[name])
        assert deps.get("backorders-db") == "service_healthy", name
        assert deps.get("mailpit") in ("service_healthy", "service_started"), name
    assert depends(services["airflow-worker"]).get("redis") == "service_healthy"


# ------------------------------------------------------------------------------------------------ secrets, .env
_SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|(^|_)KEY$", re.I)


def test_no_plaintext_secrets(services):
    for name, svc in services.items():
        for key, raw in env_of(svc).items():
            if _SECRET_KEY.search(key) and not key.endswith(("_FILE", "_PATH", "_DIR")):
                assert _WHOLE_REF.fullmatch(raw), f"{name}: {key} must be a ${{VAR:-default}} reference, is {raw!r}"
            if "://" in raw:
                netloc = re.split(r"[/?#]", raw.split("://", 1)[1], maxsplit=1)[0]
                if "@" in netloc:
                    password = netloc.rsplit("@", 1)[0].partition(":")[2]
                    assert password == "" or _WHOLE_REF.fullmatch(password), \
                        f"{name}: {key} has a plaintext password {password!r}"
    for instr, args in dockerfile_instructions():
        if instr in ("ENV", "ARG"):
            assert not _SECRET_KEY.search(args.split("=", 1)[0]), f"docker/Dockerfile: secret in {instr} {args}"


def test_env_example_documents_every_variable(env_example):
    values, documented = env_example
    used = references(COMPOSE_FILE.read_text())
    names = {n for n, _ in used}
    missing = names - documented
    assert not missing, f".env.example does not document {sorted(missing)}"
    stale = {n for n in values if n not in names and not n.startswith("COMPOSE_")}
    assert not stale, f".env.example sets {sorted(stale)}, which docker-compose.yml does not use"


def test_env_example_values_are_the_compose_defaults(env_example):
    """`cp .env.example .env` starts the same stack as no .env at all; a variable has one default everywhere."""
    values, _ = env_example
    defaults: dict[str, set] = {}
    for name, default in references(COMPOSE_FILE.read_text()):
        defaults.setdefault(name, set()).add(default)
    for name, seen in defaults.items():
        assert len(seen) == 1, f"{name} has different defaults in docker-compose.yml: {seen}"
        default = next(iter(seen))
        if name in values:
            assert values[name] == (default or ""), f".env.example: {name}={values[name]!r}, compose default {default!r}"


# ------------------------------------------------------------------------------------------------ celery profile
def test_celery_profile_services(services):
    for name in CELERY_SERVICES:
        assert name in services, f"no service {name}"
        assert services[name].get("profiles") == ["celery"], f"{name} must be in the celery profile only"
    in_profile = {n for n, s in services.items() if "celery" in (s.get("profiles") or [])}
    assert in_profile == CELERY_SERVICES, f"celery profile: {sorted(in_profile)}"
    for name in DEFAULT_SERVICES:
        assert not services[name].get("profiles"), f"{name} must start with a plain `docker compose up`"


def test_default_services_do_not_need_profile_services(services):
    profiled = {n for n, s in services.items() if s.get("profiles")}
    for name, svc in services.items():
        if not svc.get("profiles"):
            needed = set(depends(svc)) & profiled
            assert not needed, f"{name} (default profile) depends on {sorted(needed)} (not started by default)"


def test_celery_broker_is_the_redis_service(airflow_services, services):
    for name, svc in airflow_services.items():
        broker = urlsplit(resolved_env(svc).get("AIRFLOW__CELERY__BROKER_URL", ""))
        assert broker.scheme == "redis" and broker.hostname == "redis", f"{name}: broker {broker.geturl()!r}"
        assert (broker.port or 6379) == 6379


def test_business_database_has_the_embedded_servers_settings(services):
    """The compose PostgreSQL runs with the settings the embedded server gets (backorders/embedded_pg.py SETTINGS)."""
    from backorders.embedded_pg import SETTINGS

    words = shlex.split(services["backorders-db"]["command"])
    assert words[0] == "postgres"
    given = dict(words[i + 1].split("=", 1) for i in range(1, len(words), 2) if words[i] == "-c")
    assert given == SETTINGS
    assert services["backorders-db"].get("shm_size"), "parallel hash joins need a /dev/shm bigger than the default"
