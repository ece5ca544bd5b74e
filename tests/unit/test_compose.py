"""plugins/module_utils/compose.py: the Compose subset, interpolation, config hash and the deploy plan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_collection import module_utils  # the helper next to this file, whatever the rootdir or import mode

compose = module_utils("compose")
ComposeError = compose.ComposeError


def load(document: dict, variables: dict | None = None, env_files: dict | None = None, working_dir="/srv/app"):
    def read(path):
        return (env_files or {})[path]

    return compose.load_project(document, "demo", working_dir, [working_dir + "/compose.yaml"], variables, read)


def refusal(document: dict, variables: dict | None = None) -> str:
    with pytest.raises(ComposeError) as info:
        load(document, variables)
    return str(info.value)


def one(service: dict, **top) -> dict:
    return load({"services": {"svc": service}, **top})["services"]["svc"]


# --------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "a"),
        ("$A-x", "a-x"),
        ("${UNSET}", ""),
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${UNSET-dflt}", "dflt"),
        ("${A:+alt}", "alt"),
        ("${UNSET:+alt}", ""),
        ("${UNSET:-$A}", "a"),
        ("${UNSET:-${EMPTY:-${A}}}", "a"),
        ("${A:-${MISSING:?not evaluated}}", "a"),
        ("cost $$5 and $${A}", "cost $5 and ${A}"),
        ("${A:?must be set}", "a"),
    ],
)
def test_interpolation_forms(text, expected):
    assert compose.interpolate_string(text, {"A": "a", "EMPTY": ""}, "p") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${MISSING:?set it in .env}", "x.y: required variable MISSING is missing a value: set it in .env"),
        ("${EMPTY:?}", "x.y: required variable EMPTY is missing a value"),
        ("${MISSING?}", "required variable MISSING"),
        ("${1BAD}", "invalid interpolation format ${1BAD}"),
        ("50$ off", "a lone $"),
    ],
)
def test_interpolation_errors_name_the_path(text, message):
    with pytest.raises(ComposeError) as info:
        compose.interpolate_string(text, {"EMPTY": ""}, "x.y")
    assert message in str(info.value)


def test_empty_is_set_for_the_question_mark_without_colon():
    assert compose.interpolate_string("${EMPTY?}", {"EMPTY": ""}, "p") == ""


def test_interpolation_reaches_nested_values_with_their_path():
    document = {"services": {"api": {"image": "img", "environment": ["TOKEN=${TOKEN:?needed}"]}}}
    assert "services.api.environment[0]: required variable TOKEN" in refusal(document)
    service = load(document, {"TOKEN": "t"})["services"]["api"]
    assert service["environment"] == {"TOKEN": "t"}


def test_dotenv_parsing():
    text = "\n".join(
        [
            "# comment",
            "export A=1",
            "B='literal ${A} $$'",
            'C="line\\nnext ${A}"',
            "D=plain ${A} # trailing comment",
            "E=",
            "",
        ]
    )
    assert compose.parse_dotenv(text) == {
        "A": "1",
        "B": "literal ${A} $$",
        "C": "line\nnext 1",
        "D": "plain 1",
        "E": "",
    }


def test_dotenv_refuses_a_line_without_equals_and_names_it():
    with pytest.raises(ComposeError) as info:
        compose.parse_dotenv("A=1\nnot a pair\n", source="/srv/.env")
    assert "/srv/.env line 2" in str(info.value)


# --------------------------------------------------------------------------- the subset


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"services": {"api": {"image": "i", "build": "."}}}, "services.api.build: not supported"),
        ({"services": {"api": {"image": "i", "container_name": "x"}}}, "services.api.container_name: not supported"),
        (
            {"services": {"api": {"image": "i", "deploy": {"replicas": 2}}}},
            "services.api.deploy.replicas: not supported",
        ),
        (
            {"services": {"api": {"image": "i", "deploy": {"resources": {"reservations": {}}}}}},
            "services.api.deploy.resources.reservations: not supported",
        ),
        (
            {"services": {"api": {"image": "i", "healthcheck": {"test": "true", "start_interval": "1s"}}}},
            "services.api.healthcheck.start_interval: not supported",
        ),
        ({"services": {"api": {"image": "i"}}, "secrets": {}}, "secrets: not supported"),
        ({"services": {"api": {"build": "."}}}, "services.api.build: not supported"),
        ({"services": {"api": {"command": "x"}}}, "services.api.image: is required"),
        ({"services": {}}, "services: at least one service is required"),
        ({"services": {"api": {"image": "i", "ports": ["8000-8010:80"]}}}, "port ranges are not supported"),
        ({"services": {"api": {"image": "i", "ports": ["70000:80"]}}}, "published port must be 1-65535"),
        ({"services": {"api": {"image": "i", "volumes": ["/data"]}}}, "anonymous volumes are not supported"),
        (
            {"services": {"api": {"image": "i", "volumes": ["undeclared:/data"]}}},
            "services.api.volumes[0]: volume 'undeclared' is not declared",
        ),
        ({"services": {"api": {"image": "i", "networks": ["back"]}}}, "services.api.networks.back: network 'back'"),
        ({"services": {"api": {"image": "i", "depends_on": ["db"]}}}, "services.api.depends_on.db: no service named"),
        (
            {"services": {"api": {"image": "i", "depends_on": {"api": {"condition": "service_ready"}}}}},
            "condition: must be one of",
        ),
        (
            {"services": {"api": {"image": "i"}, "w": {"image": "i", "depends_on": {"api": {"restart": True}}}}},
            "services.w.depends_on.api.restart: restart: true is not supported",
        ),
        ({"services": {"api": {"image": "i", "restart": "sometimes"}}}, "services.api.restart: must be no, always"),
        ({"services": {"api": {"image": "i", "stop_grace_period": "soon"}}}, "must be a duration"),
        (
            {"services": {"api": {"image": "i", "labels": {"com.docker.compose.project": "x"}}}},
            "this label is set by the module itself",
        ),
        ({"services": {"api": {"image": "i"}}, "networks": {"n": {"ipam": {}}}}, "networks.n.ipam: not supported"),
        (["services"], "a Compose file is a mapping"),
    ],
)
def test_outside_the_subset_is_refused_with_its_path(document, message):
    assert message in refusal(document)


def test_extension_fields_and_version_are_accepted():
    project = load({"version": "3.9", "x-common": {"any": 1}, "services": {"api": {"image": "i", "x-note": "n"}}})
    assert list(project["services"]) == ["api"]


def test_two_spellings_normalize_and_hash_the_same():
    short = one(
        {
            "image": "i",
            "environment": ["A=1", "B=2"],
            "labels": ["l=v"],
            "ports": ["127.0.0.1:8080:80"],
            "volumes": ["data:/data:ro", "./conf:/etc/app"],
            "command": "serve --port 80",
            "healthcheck": {"test": "curl -f localhost", "interval": "1m30s"},
            "depends_on": [],
        },
        volumes={"data": None},
    )
    long = one(
        {
            "image": "i",
            "environment": {"B": 2, "A": "1"},
            "labels": {"l": "v"},
            "ports": [{"target": 80, "published": "8080", "host_ip": "127.0.0.1"}],
            "volumes": [
                {"type": "bind", "source": "./conf", "target": "/etc/app"},
                {"type": "volume", "source": "data", "target": "/data", "read_only": True},
            ],
            "command": ["serve", "--port", "80"],
            "healthcheck": {"test": ["CMD-SHELL", "curl -f localhost"], "interval": 90},
        },
        volumes={"data": {}},
    )
    assert short == long
    assert compose.config_hash(short) == compose.config_hash(long)
    assert short["volumes"][1] == {"type": "bind", "source": "/srv/app/conf", "target": "/etc/app", "read_only": False}
    assert short["healthcheck"]["interval"] == 90 * 10**9


def test_values_are_parsed():
    service = one(
        {
            "image": "i",
            "ports": ["80", "[::1]:53:53/udp", "0.0.0.0::443"],
            "restart": "on-failure:3",
            "stop_grace_period": "1m30s",
            "deploy": {"resources": {"limits": {"memory": "512m", "cpus": "0.5"}}},
            "healthcheck": {"disable": True},
            "user": 1000,
        }
    )
    assert service["ports"] == [
        {"target": 53, "published": 53, "host_ip": "::1", "protocol": "udp"},
        {"target": 80, "published": None, "host_ip": None, "protocol": "tcp"},
        {"target": 443, "published": None, "host_ip": "0.0.0.0", "protocol": "tcp"},
    ]
    assert service["restart"] == {"name": "on-failure", "max_retries": 3}
    assert service["stop_grace_period"] == 90
    assert service["limits"] == {"memory": 512 * 1024**2, "nano_cpus": 500_000_000}
    assert service["healthcheck"] == {"test": ["NONE"]}
    assert service["user"] == "1000"


def test_env_file_then_environment_then_bare_keys_from_the_variables():
    project = load(
        {"services": {"api": {"image": "i", "env_file": "api.env", "environment": ["B=from-env", "C", "GONE"]}}},
        variables={"C": "from-variables"},
        env_files={"/srv/app/api.env": "A=from-file\nB=from-file\nGONE=x\n"},
    )
    assert project["services"]["api"]["environment"] == {"A": "from-file", "B": "from-env", "C": "from-variables"}


def test_networks_and_volumes_get_compose_names():
    project = load(
        {
            "services": {
                "api": {"image": "i", "networks": {"front": {"aliases": ["web"]}, "default": None}},
                "db": {"image": "i"},
            },
            "networks": {"front": {"internal": True}, "unused": {}, "shared": {"external": True}},
            "volumes": {"data": {}, "legacy": {"name": "old-data"}},
        }
    )
    assert project["networks"] == {
        "front": {"name": "demo_front", "external": False, "driver": None, "labels": {}, "internal": True},
        "default": {"name": "demo_default", "external": False, "driver": None, "labels": {}, "internal": False},
    }  # unused networks are not created
    assert project["volumes"]["data"]["name"] == "demo_data"
    assert project["volumes"]["legacy"]["name"] == "old-data"
    assert project["services"]["api"]["networks"] == {"front": {"aliases": ["web"]}, "default": {"aliases": []}}


def test_project_name_rules():
    with pytest.raises(ComposeError) as info:
        compose.load_project({"services": {"a": {"image": "i"}}}, "My Stack")
    assert "project name 'My Stack'" in str(info.value)
    assert compose.load_project({"name": "fromfile", "services": {"a": {"image": "i"}}}, None)["name"] == "fromfile"


# --------------------------------------------------------------------------- order


def test_start_order_follows_depends_on():
    project = load(
        {
            "services": {
                "web": {"image": "i", "depends_on": ["api"]},
                "api": {"image": "i", "depends_on": {"db": {"condition": "service_healthy"}, "cache": None}},
                "db": {"image": "i"},
                "cache": {"image": "i"},
                "alone": {"image": "i"},
            }
        }
    )
    order = project["order"]
    assert sorted(order) == ["alone", "api", "cache", "db", "web"]
    for name, service in project["services"].items():
        for dependency in service["depends_on"]:
            assert order.index(dependency) < order.index(name)


def test_a_dependency_cycle_is_refused_with_the_cycle():
    message = refusal(
        {
            "services": {
                "a": {"image": "i", "depends_on": ["b"]},
                "b": {"image": "i", "depends_on": ["c"]},
                "c": {"image": "i", "depends_on": ["a"]},
            }
        }
    )
    assert "dependency cycle: a -> b -> c -> a" in message


# --------------------------------------------------------------------------- hash, labels and plan


def stack(**api_changes):
    api = {"image": "api:1", "environment": {"LOG_LEVEL": "info", "TOKEN": "t"}, "depends_on": ["db"]}
    api.update(api_changes)
    return load(
        {"services": {"db": {"image": "pg:16", "volumes": ["data:/var/lib/pg"]}, "api": api}, "volumes": {"data": {}}}
    )


def running(project, image_ids=None, status="running"):
    """The existing state of a stack deployed from ``project``, as the module reads it back from labels."""
    return {
        name: {
            "config_hash": compose.config_hash(service),
            "key_digests": compose.key_digests(service),
            "image_id": (image_ids or {}).get(name, "sha256:" + name),
            "status": status,
            "exit_code": 0,
        }
        for name, service in project["services"].items()
    }


IDS = {"db": "sha256:db", "api": "sha256:api"}


def test_an_unchanged_stack_keeps_everything():
    project = stack()
    assert compose.plan(project, running(project), IDS) == {
        "create": [],
        "recreate": {},
        "start": [],
        "keep": ["db", "api"],
        "remove": [],
    }


def test_a_changed_variable_recreates_only_its_service_and_names_the_key():
    deployed = stack()
    changed = stack(environment={"LOG_LEVEL": "debug", "TOKEN": "t"})
    result = compose.plan(changed, running(deployed), IDS)
    assert result["recreate"] == {"api": ["environment.LOG_LEVEL"]}
    assert result["keep"] == ["db"]


def test_a_dependency_change_does_not_recreate_its_dependants():
    deployed = stack()
    changed = load(
        {
            "services": {
                "db": {"image": "pg:17", "volumes": ["data:/var/lib/pg"]},
                "api": {"image": "api:1", "environment": {"LOG_LEVEL": "info", "TOKEN": "t"}, "depends_on": ["db"]},
            },
            "volumes": {"data": {}},
        }
    )
    result = compose.plan(changed, running(deployed), IDS)
    assert result["recreate"] == {"db": ["image"]}
    assert result["keep"] == ["api"]


def test_plan_creates_removes_starts_and_follows_new_image_ids():
    deployed = running(stack())
    deployed["old"] = dict(deployed["db"])
    deployed["db"]["status"] = "exited"
    project = load(
        {
            "services": {
                "db": {"image": "pg:16", "volumes": ["data:/var/lib/pg"]},
                "api": {"image": "api:1", "environment": {"LOG_LEVEL": "info", "TOKEN": "t"}, "depends_on": ["db"]},
                "new": {"image": "i"},
            },
            "volumes": {"data": {}},
        }
    )
    result = compose.plan(project, deployed, {"db": "sha256:db", "api": "sha256:api2", "new": "sha256:new"})
    assert result == {
        "create": ["new"],
        "recreate": {"api": ["image_id"]},
        "start": ["db"],
        "keep": [],
        "remove": ["old"],
    }
    assert compose.plan_summary(result) == (
        "+ create new\n~ recreate api (changed: image_id)\n> start db (not running)\n- remove old\n"
    )


def test_a_container_from_another_tool_is_recreated_once_for_its_hash():
    project = stack()
    existing = running(project)
    existing["api"].update(config_hash="compose-computed", key_digests=None)
    assert compose.plan(project, existing, IDS)["recreate"] == {"api": ["config-hash"]}


def test_a_completed_one_shot_service_is_kept_not_restarted():
    project = load(
        {
            "services": {
                "migrate": {"image": "i"},
                "app": {"image": "i", "depends_on": {"migrate": {"condition": "service_completed_successfully"}}},
            }
        }
    )
    existing = running(project, {"migrate": "sha256:i", "app": "sha256:i"})
    existing["migrate"]["status"] = "exited"
    ids = {"migrate": "sha256:i", "app": "sha256:i"}
    assert compose.plan(project, existing, ids)["keep"] == ["migrate", "app"]
    existing["migrate"]["exit_code"] = 1
    assert compose.plan(project, existing, ids)["start"] == ["migrate"]


def test_depends_on_only_orders_and_does_not_change_the_hash():
    a = stack()
    b = stack(depends_on={"db": {"condition": "service_healthy"}})
    assert compose.config_hash(a["services"]["api"]) == compose.config_hash(b["services"]["api"])
    assert compose.depends_on_label(b["services"]["api"]) == "db:service_healthy:false"


def test_container_labels_are_the_compose_ones():
    project = stack()
    labels = compose.container_labels(project, "api", project["services"]["api"], "sha256:api")
    assert labels["com.docker.compose.project"] == "demo"
    assert labels["com.docker.compose.service"] == "api"
    assert labels["com.docker.compose.container-number"] == "1"
    assert labels["com.docker.compose.oneoff"] == "False"
    assert labels["com.docker.compose.project.config_files"] == "/srv/app/compose.yaml"
    assert labels["com.docker.compose.project.working_dir"] == "/srv/app"
    assert labels["com.docker.compose.depends_on"] == "db:service_started:false"
    assert labels["com.docker.compose.config-hash"] == compose.config_hash(project["services"]["api"])
    assert "t" not in labels[compose.LABEL_KEY_DIGESTS].split('"')  # digests, never values
    assert compose.container_name("demo", "api") == "demo-api-1"


def test_mask_hides_every_secret_longest_first():
    assert compose.mask("token=abc123 and abc", ["abc", "abc123", ""]) == "token=******** and ********"
    assert compose.mask(None, ["x"]) is None
