#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: docker_stack
short_description: Deploy a Compose stack to a Docker host through the Engine API, idempotently
version_added: 0.1.0
description:
  - Deploys the services of a Compose file (or of an inline O(definition)) to a Docker host
    through its Engine API (the Docker SDK), local or remote (O(docker_host)). Neither the Docker
    CLI nor its compose plugin is needed on any host.
  - Supports a subset of the Compose specification; anything outside it is refused with the
    Compose path that is not supported (for example C(services.api.build)), never ignored.
    Supported in C(services) - C(image), C(command), C(entrypoint), C(environment), C(env_file),
    C(ports) (no ranges), C(volumes) (named and bind, no anonymous ones), C(networks) (with
    C(aliases)), C(labels), C(restart), C(healthcheck), C(depends_on) (C(condition)), C(user),
    C(working_dir), C(stop_grace_period),
    C(deploy.resources.limits.memory) and C(deploy.resources.limits.cpus). At the top level -
    C(services), C(networks) (C(driver), C(internal), C(labels), C(external), C(name)),
    C(volumes) (C(driver), C(labels), C(external), C(name)), C(name), C(version) (ignored, as by
    Compose) and C(x-*) extension fields.
  - Variables are interpolated in every value as Compose does - C(${VAR}), C($VAR),
    C(${VAR:-default}), C(${VAR-default}), C(${VAR:?error}), C(${VAR?error}), C(${VAR:+alt}),
    and C($$) for a literal C($) - from O(env_files), then O(variables), then O(secret_variables).
    A C(${VAR:?error}) whose variable is missing fails the task before anything is touched.
  - Containers, networks and volumes carry the Compose labels (C(com.docker.compose.project),
    C(.service), C(.container-number), C(.oneoff), C(.config-hash), C(.project.config_files),
    C(.project.working_dir), C(.depends_on), C(.version), C(.image)) and Compose's names
    (C(PROJECT-SERVICE-1), C(PROJECT_NETWORK), C(PROJECT_VOLUME)), so that C(docker compose ls)
    and C(docker compose ps) list the stack.
  - Idempotent - the configuration hash of each service decides whether its container is kept or
    recreated, and a per-key digest (label C(io.wakegrid.stack.config-keys)) tells which key
    changed. Only the service whose configuration changed is recreated; its dependants are
    recreated only when their own configuration changed.
  - Services start in C(depends_on) order; each dependency's condition (C(service_started),
    C(service_healthy), C(service_completed_successfully)) is waited for, at most O(timeout)
    seconds.
  - A failed deploy leaves the previous stack running - everything (Compose file, variables,
    images, external networks and volumes) is validated and images are loaded before any
    container is touched; a service that fails to start or to become healthy rolls back this
    run (the new containers are removed, the replaced ones renamed back and restarted) and the
    task fails with the failing service, its health check log and its last log lines, secret
    values masked.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - wakegrid.fleet.docker
attributes:
  check_mode:
    support: full
    details:
      - Reads the host's containers, networks, volumes and images and reports what would be
        created, recreated (and why), started and removed; loads, pulls, creates nothing.
  diff_mode:
    support: full
    details:
      - The diff lists each service's image and configuration hash before and after, and one line
        per action (C(+ create db), C(~ recreate api (changed - environment.LOG_LEVEL)),
        C(- remove worker)). It names changed keys, never their values.
  platform:
    support: full
    platforms: posix
options:
  project_name:
    description:
      - The Compose project name - lowercase letters, digits, C(_) and C(-).
      - Defaults to the C(name) of the Compose document, else to the basename of O(project_src).
    type: str
    aliases: [name]
  project_src:
    description:
      - Directory of the Compose file and its C(.env). Relative bind mounts and C(env_file) paths
        resolve against it; it is the project's working directory in the Compose labels.
      - Read on the host where the module runs (the controller with C(delegate_to=localhost)).
    type: path
  files:
    description:
      - The Compose file, relative to O(project_src) or absolute. Exactly one file (merging
        several is not supported).
      - Defaults to the first of C(compose.yaml), C(compose.yml), C(docker-compose.yaml),
        C(docker-compose.yml) in O(project_src).
      - Mutually exclusive with O(definition).
    type: list
    elements: path
  definition:
    description:
      - The Compose document itself, instead of a file.
    type: dict
  env_files:
    description:
      - Dotenv files (C(KEY=VALUE) lines) whose variables are interpolated into the Compose
        document. Later files override earlier ones.
      - Defaults to C(.env) in O(project_src) when it exists.
    type: list
    elements: path
  variables:
    description:
      - Interpolation variables; they override O(env_files).
    type: dict
    default: {}
  secret_variables:
    description:
      - Interpolation variables whose values are secret (passwords, tokens, from the fleet's
        C({env}), C({file}) or vault forms); they override O(variables).
      - Their values never appear in the module's output, diff or errors - they are masked in
        failure messages, health check logs and log lines.
    type: dict
    default: {}
  state:
    description:
      - V(present) deploys the stack; V(absent) stops and removes its containers and networks
        (and volumes with O(remove_volumes)), found by the project label - no Compose file is
        needed.
    type: str
    choices: [present, absent]
    default: present
  remove_orphans:
    description:
      - Remove the containers of services that are no longer in the Compose document, and the
        project's networks no service uses any more. Without it they are left alone and named in
        RV(warnings_orphans).
    type: bool
    default: true
  remove_volumes:
    description:
      - With O(state=absent), also remove the project's named volumes (their data is lost).
      - Volumes are never removed by O(state=present).
    type: bool
    default: false
  images:
    description:
      - Image tarballs (C(docker save) output, gzip allowed) to load into the Docker host before
        deploying, for hosts that reach no registry.
      - A tarball is sent only when the host lacks its image ID (read from the tarball's
        manifest); its tags are then pointed at that ID.
    type: list
    elements: dict
    default: []
    suboptions:
      src:
        description:
          - Path of the tarball on the host where the module runs.
        type: path
        required: true
  pull:
    description:
      - V(never) uses only images present on the host (or loaded from O(images)); a missing image
        fails the task before anything is touched.
      - V(missing) pulls the images the host lacks from their registry; V(always) pulls every
        image that O(images) does not provide, and recreates the services whose image changed.
      - A registry that does not answer fails the task with the image and the registry's error,
        before anything is touched. Registry credentials are those of the Docker daemon.
    type: str
    choices: [never, missing, always]
    default: never
  wait:
    description:
      - After starting a service, wait until it runs (and, when it has a health check, until it
        is V(healthy)) before the next one, as C(docker compose up --wait). A service others wait
        on to complete (C(service_completed_successfully)) is waited for until it exits 0.
      - Without it, only the C(depends_on) conditions are waited for.
    type: bool
    default: true
  timeout:
    description:
      - Seconds each wait may take (a dependency's condition, a service's health).
    type: int
    default: 120
notes:
  - The configuration hash is wakegrid's own (a SHA-256 of the normalized service); C(docker compose
    up) computes another, so running C(docker compose up) on a stack deployed by this module
    recreates its containers once.
  - One container per service (C(container-number) 1); C(build), C(scale), C(profiles), C(secrets),
    C(configs) and the rest of the specification are refused.
  - Changing only C(depends_on) does not recreate a container (it only orders the start).
  - A C(KEY) without a value in C(environment) takes its value from the interpolation variables,
    and is unset when there is none.
requirements:
  - PyYAML, to read a Compose file (not needed with O(definition))
seealso:
  - module: wakegrid.fleet.docker_container_power
  - module: wakegrid.fleet.docker_container_info
  - name: Docker stacks in wakegrid
    description: Deploying Compose stacks to the fleet's Docker hosts.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/stacks.md
"""

EXAMPLES = r"""
- name: Deploy the workspace stack to vm-docker, images shipped from the controller
  wakegrid.fleet.docker_stack:
    docker_host: tcp://192.168.1.21:2376
    validate_certs: true
    ca_path: /etc/wakegrid/docker-ca.pem
    project_name: workspace
    project_src: /srv/wakegrid/examples/workspace
    images:
      - src: /srv/wakegrid/images/workspace-api.tar
      - src: /srv/wakegrid/images/workspace-postgres.tar
    variables:
      LOG_LEVEL: info
    secret_variables:
      POSTGRES_PASSWORD: "{{ workspace_db_password }}"
      API_TOKEN: "{{ workspace_api_token }}"
    timeout: 180
  delegate_to: localhost
  register: deployed

- name: Show what changed
  ansible.builtin.debug:
    var: deployed.plan

- name: Deploy an inline definition on the local Docker
  wakegrid.fleet.docker_stack:
    project_name: probe
    definition:
      services:
        web:
          image: "busybox:${TAG:-latest}"
          command: httpd -f -p 8080
          ports: ["127.0.0.1:8080:8080"]
          healthcheck:
            test: wget -q -O /dev/null http://127.0.0.1:8080/
            interval: 2s
    variables:
      TAG: "1.36"

- name: Remove the stack and its data
  wakegrid.fleet.docker_stack:
    project_name: workspace
    state: absent
    remove_volumes: true
"""

RETURN = r"""
project:
  description: The Compose project name.
  returned: always
  type: str
  sample: workspace
plan:
  description: What the run did (what it would do in check mode), services in start order.
  returned: always
  type: dict
  contains:
    create:
      description: Services whose container was created.
      type: list
      elements: str
      sample: [db]
    recreate:
      description: Services whose container was recreated, each with the keys that changed
        (V(environment.NAME), V(image), V(image_id) for a new image behind the same tag,
        V(config-hash) for a container created by another tool).
      type: dict
      sample: {"api": ["environment.LOG_LEVEL"]}
    start:
      description: Services whose unchanged container was started (it was not running).
      type: list
      elements: str
      sample: []
    keep:
      description: Services left as they were.
      type: list
      elements: str
      sample: [db]
    remove:
      description: Services no longer in the document whose container was removed (all services
        with O(state=absent)).
      type: list
      elements: str
      sample: []
services:
  description: Each service of the stack after the run, in start order.
  returned: always
  type: list
  elements: dict
  contains:
    service:
      description: Service name.
      type: str
      sample: api
    action:
      description: V(created), V(recreated), V(started), V(kept), V(removed).
      type: str
      sample: recreated
    container_id:
      description: Container ID (V(null) in check mode for a container to create).
      type: str
      sample: 2f6b1c...
    container_name:
      description: Container name.
      type: str
      sample: workspace-api-1
    image:
      description: The image as the Compose document names it.
      type: str
      sample: wakegrid/workspace-api:1
    image_id:
      description: The image ID the container runs.
      type: str
      sample: sha256:9c1e...
    status:
      description: Docker status (V(running), V(exited), ...).
      type: str
      sample: running
    health:
      description: V(starting), V(healthy), V(unhealthy), V(null) without a health check.
      type: str
      sample: healthy
networks:
  description: Networks created and removed by the run (names on the Docker host).
  returned: always
  type: dict
  sample: {"created": ["workspace_default"], "removed": []}
volumes:
  description: Volumes created and removed by the run.
  returned: always
  type: dict
  sample: {"created": ["workspace_pgdata"], "removed": []}
images:
  description: The tarballs of O(images), with the image ID and tags each holds and whether it
    was loaded (V(false) when the host already had that image ID).
  returned: always
  type: list
  elements: dict
  sample: [{"src": "/srv/images/api.tar", "id": "sha256:9c1e...", "tags": ["wakegrid/workspace-api:1"], "loaded": true}]
warnings_orphans:
  description: Containers of services no longer in the document, left running because
    O(remove_orphans=false).
  returned: always
  type: list
  elements: str
  sample: []
api:
  description: How much the run talked to the Engine API after connecting - the number of requests
    and the seconds spent until their answers (a streamed image load or pull counts until its
    first bytes).
  returned: success
  type: dict
  sample: {"calls": 14, "seconds": 0.031}
failed_service:
  description: The service that failed to start or to become healthy.
  returned: on failure of a service
  type: str
  sample: api
health_log:
  description: The failed service's last health check runs, oldest first (secret values masked).
  returned: on failure of a service with a health check
  type: list
  elements: dict
  sample: [{"start": "2026-01-01T10:00:00.1Z", "exit_code": 1, "output": "connection refused"}]
log_tail:
  description: The failed service's last log lines (secret values masked).
  returned: on failure of a service
  type: list
  elements: str
  sample: ["FATAL: password authentication failed"]
rolled_back:
  description: What the failed run undid - containers it created and removed, replaced containers
    it restored.
  returned: on failure after containers were touched
  type: list
  elements: str
  sample: ["removed new workspace-api-1", "restored workspace-api-1"]
"""

import json
import os
import tarfile
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.wakegrid.fleet.plugins.module_utils import compose
from ansible_collections.wakegrid.fleet.plugins.module_utils.docker_api import (
    DOCKER_MUTUALLY_EXCLUSIVE,
    DockerApiError,
    DockerException,
    NotFound,
    check_sdk,
    connect,
    container_logs_tail,
    container_status,
    docker_argument_spec,
    format_health_log,
    has_healthcheck,
    health_log,
    health_status,
    inspect_container,
    run_or_fail,
)

YAML_IMP_ERR = None
try:
    import yaml

    HAS_YAML = True
except ImportError:
    YAML_IMP_ERR = traceback.format_exc()
    HAS_YAML = False

try:
    from docker.types import Mount
except ImportError:
    Mount = None  # check_sdk fails the module first

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
MIN_UPTIME = 1.0  # seconds a container without a health check must keep running to count as up
POLL_INTERVAL = 0.25
OLD_SUFFIX = "-wakegrid-replaced"


class Deploy(object):
    """One run of the module against one Docker host: read, validate, plan, then act (or not)."""

    def __init__(self, module, client):
        self.module = module
        self.params = module.params
        self.client = client
        self.secrets = [str(v) for v in (self.params["secret_variables"] or {}).values() if v is not None]
        self.journal = []  # (kind, data) of what this run changed, for the rollback
        self.result = {
            "changed": False,
            "project": None,
            "plan": {"create": [], "recreate": {}, "start": [], "keep": [], "remove": []},
            "services": [],
            "networks": {"created": [], "removed": []},
            "volumes": {"created": [], "removed": []},
            "images": [],
            "warnings_orphans": [],
        }

    # ----------------------------------------------------------------- reading the inputs

    def mask(self, text):
        return compose.mask(text, self.secrets)

    def fail(self, msg, **extra):
        raise DockerApiError(self.mask(msg), **extra)

    def load_project(self):
        params = self.params
        src = os.path.abspath(params["project_src"]) if params["project_src"] else None
        config_files = []
        if params["definition"] is not None:
            document = params["definition"]
        else:
            if not src and not params["files"]:
                self.fail("give project_src, files or definition")
            names = params["files"] or [n for n in DEFAULT_FILES if os.path.exists(os.path.join(src, n))][:1]
            if not names:
                self.fail("no Compose file in %s (looked for %s)" % (src, ", ".join(DEFAULT_FILES)))
            if len(names) > 1:
                self.fail("files: exactly one Compose file is supported (merging several is not), got %d"
                          % len(names))
            path = os.path.join(src or os.getcwd(), names[0])
            if not HAS_YAML:
                self.module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMP_ERR)
            try:
                with open(path) as handle:
                    document = yaml.safe_load(handle)
            except (IOError, OSError) as exc:
                self.fail("cannot read the Compose file %s: %s" % (path, exc))
            except yaml.YAMLError as exc:
                self.fail("the Compose file %s is not valid YAML: %s" % (path, exc))
            config_files = [os.path.abspath(path)]
            src = src or os.path.dirname(os.path.abspath(path))

        variables = {}
        env_files = params["env_files"]
        if env_files is None:
            env_files = [os.path.join(src, ".env")] if src and os.path.exists(os.path.join(src, ".env")) else []
        overrides = dict((k, str(v)) for k, v in (params["variables"] or {}).items())
        overrides.update((k, str(v)) for k, v in (params["secret_variables"] or {}).items())
        for env_path in env_files:
            env_path = os.path.join(src or os.getcwd(), env_path)
            try:
                variables.update(compose.parse_dotenv(self.read_text(env_path), env_path, dict(variables, **overrides)))
            except compose.ComposeError as exc:
                self.fail("env_files refused: %s" % exc)
        variables.update(overrides)

        name = params["project_name"]
        if not name and src and not (isinstance(document, dict) and document.get("name")):
            name = os.path.basename(src.rstrip("/")).lower()
        try:
            return compose.load_project(document, name, src, config_files, variables, self.read_text)
        except compose.ComposeError as exc:
            self.fail("Compose document refused: %s" % exc)

    def read_text(self, path):
        try:
            with open(path) as handle:
                return handle.read()
        except (IOError, OSError) as exc:
            self.fail("cannot read %s: %s" % (path, exc))

    # ----------------------------------------------------------------- what the host has

    def project_containers(self, name):
        """Containers with the project label: {service: inspect data} and the rest (extras, one-offs)."""
        summaries = self.client.api.containers(all=True, filters={"label": "%s=%s" % (compose.LABEL_PROJECT, name)})
        by_service, extras = {}, []
        for summary in sorted(summaries, key=lambda s: s.get("Created", 0)):
            attrs = inspect_container(self.client, summary["Id"])
            if attrs is None:
                continue
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            service = labels.get(compose.LABEL_SERVICE)
            if labels.get(compose.LABEL_ONEOFF) == "True" or not service:
                continue  # `docker compose run` containers are not the stack's services
            if (service in by_service or labels.get(compose.LABEL_NUMBER, "1") != "1"
                    or attrs["Name"].endswith(OLD_SUFFIX)):
                extras.append(attrs)
            else:
                by_service[service] = attrs
        return by_service, extras

    @staticmethod
    def existing_state(attrs):
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        try:
            digests = json.loads(labels[compose.LABEL_KEY_DIGESTS])
        except (KeyError, ValueError):
            digests = None
        state = attrs.get("State") or {}
        return {
            "config_hash": labels.get(compose.LABEL_CONFIG_HASH),
            "key_digests": digests if isinstance(digests, dict) else None,
            "image_id": attrs.get("Image"),
            "status": container_status(attrs),
            "exit_code": state.get("ExitCode"),
        }

    def image_id(self, reference):
        try:
            return self.client.api.inspect_image(reference)["Id"]
        except NotFound:
            return None

    @staticmethod
    def tarball_manifest(src):
        """(image ID, tags) of a docker-save tarball, from its manifest.json."""
        try:
            with tarfile.open(src, "r:*") as tar:
                manifest = json.load(tar.extractfile("manifest.json"))
        except (IOError, OSError, KeyError, ValueError, tarfile.TarError) as exc:
            raise DockerApiError("images: %s is not a docker save tarball (no readable manifest.json: %s)" % (src, exc))
        if not isinstance(manifest, list) or len(manifest) != 1 or "Config" not in manifest[0]:
            raise DockerApiError("images: %s must hold exactly one image (its manifest.json lists %s)"
                                 % (src, len(manifest) if isinstance(manifest, list) else "none"))
        config = manifest[0]["Config"]
        digest = os.path.basename(config)
        digest = digest[:-len(".json")] if digest.endswith(".json") else digest
        return "sha256:" + digest, list(manifest[0].get("RepoTags") or [])

    def resolve_images(self, project):
        """Service -> image ID, and the loads, tags and pulls needed; fails before any change."""
        tarballs, tag_ids = [], {}
        for entry in self.params["images"] or []:
            src = entry["src"]
            image_id, tags = self.tarball_manifest(src)
            present = self.image_id(image_id) is not None
            retag = [t for t in tags if present and self.image_id(t) != image_id]
            tarballs.append({"src": src, "id": image_id, "tags": tags, "loaded": not present, "retag": retag})
            for tag in tags:
                tag_ids[tag] = image_id
                if ":" not in tag.rsplit("/", 1)[-1]:
                    tag_ids[tag + ":latest"] = image_id
        ids, pulls, missing = {}, [], []
        for name in project["order"]:
            reference = project["services"][name]["image"]
            if reference in tag_ids or reference + ":latest" in tag_ids:
                ids[name] = tag_ids.get(reference) or tag_ids[reference + ":latest"]
                continue
            ids[name] = self.image_id(reference)
            if self.params["pull"] == "always" or (ids[name] is None and self.params["pull"] == "missing"):
                pulls.append((name, reference))
            elif ids[name] is None:
                missing.append("service %s: image %s" % (name, reference))
        if missing:
            self.fail(
                "images missing on %s: %s; ship them with images: [{src: TARBALL}] or set pull: missing "
                "(nothing was changed)" % (self.params["docker_host"], "; ".join(missing))
            )
        return ids, tarballs, pulls

    def check_external(self, project):
        """External networks and volumes must exist; ours must not clash with someone else's."""
        for key, net in project["networks"].items():
            found = self.inspect("network", net["name"])
            if net["external"]:
                if found is None:
                    self.fail("networks.%s: external network %s does not exist on %s" % (key, net["name"],
                              self.params["docker_host"]))
            elif found is not None:
                labels = found.get("Labels") or {}
                if labels.get(compose.LABEL_PROJECT) != project["name"]:
                    self.fail("networks.%s: network %s exists and is not this stack's (declare it external: true)"
                              % (key, net["name"]))
                have = (found.get("Driver"), bool(found.get("Internal")))
                want = (net["driver"] or "bridge", net["internal"])
                if have != want:
                    self.fail(
                        "networks.%s: network %s exists with driver %s, internal %s; the file says %s, %s: "
                        "remove the stack first (state: absent)" % ((key, net["name"]) + have + want)
                    )
        for key, vol in project["volumes"].items():
            found = self.inspect("volume", vol["name"])
            if vol["external"] and found is None:
                self.fail("volumes.%s: external volume %s does not exist on %s" % (key, vol["name"],
                          self.params["docker_host"]))

    def inspect(self, kind, name):
        try:
            return getattr(self.client.api, "inspect_" + kind)(name)
        except NotFound:
            return None

    # ----------------------------------------------------------------- present

    def present(self):
        project = self.load_project()
        self.result["project"] = project["name"]
        existing_attrs, extras = self.project_containers(project["name"])
        image_ids, tarballs, pulls = self.resolve_images(project)
        self.check_external(project)
        existing = dict((s, self.existing_state(a)) for s, a in existing_attrs.items())
        plan = compose.plan(project, existing, image_ids)
        orphans = plan["remove"]
        if not self.params["remove_orphans"]:
            self.result["warnings_orphans"] = [compose.container_name(project["name"], s) for s in orphans]
            if orphans:
                self.module.warn("containers of services no longer in the Compose document are left running "
                                 "(remove_orphans=false): %s" % ", ".join(self.result["warnings_orphans"]))
            plan["remove"] = []
        self.result["plan"] = plan
        self.result["images"] = [dict((k, v) for k, v in t.items() if k != "retag") for t in tarballs]
        unused_networks = self.unused_networks(project) if self.params["remove_orphans"] else []
        missing_networks = [n["name"] for n in project["networks"].values()
                            if not n["external"] and self.inspect("network", n["name"]) is None]
        missing_volumes = [v["name"] for v in project["volumes"].values()
                           if not v["external"] and self.inspect("volume", v["name"]) is None]
        # A pull changes the stack only when the image was missing or its ID changes (seen after the pull).
        missing_images = [p for p in pulls if image_ids.get(p[0]) is None]
        self.result["changed"] = bool(
            plan["create"] or plan["recreate"] or plan["start"] or plan["remove"] or extras or missing_images
            or any(t["loaded"] or t["retag"] for t in tarballs) or missing_networks or missing_volumes
            or unused_networks
        )
        self.result["diff"] = self.diff(project, existing_attrs, plan, image_ids)
        if self.module.check_mode:
            self.result["networks"] = {"created": missing_networks, "removed": unused_networks}
            self.result["volumes"] = {"created": missing_volumes, "removed": []}
            self.result["services"] = self.describe(project, existing_attrs, plan, image_ids)
            return self.result

        # Images first: a missing or unreachable one fails the run before any container is touched.
        for tarball in tarballs:
            if tarball["loaded"]:
                self.load_tarball(tarball)
            for tag in tarball["retag"]:
                repository, dummy, tag_name = tag.rpartition(":")
                self.client.api.tag(tarball["id"], repository, tag_name)
        for service, reference in pulls:
            image_ids[service] = self.pull(service, reference)
        if pulls:  # a pulled image may be new: the plan compares image IDs
            plan = compose.plan(project, existing, image_ids)
            if not self.params["remove_orphans"]:
                plan["remove"] = []
            self.result["plan"] = plan
            self.result["changed"] = self.result["changed"] or bool(plan["recreate"])
            self.result["diff"] = self.diff(project, existing_attrs, plan, image_ids)

        try:
            self.create_resources(project)
            for name in project["order"]:
                self.converge_service(project, name, existing_attrs.get(name), plan, image_ids)
        except Exception as exc:  # roll back whatever failed, then report it
            rolled_back = self.rollback()
            if isinstance(exc, DockerApiError):
                exc.result["rolled_back"] = rolled_back
                exc.msg = self.mask(exc.msg) + ("; rolled back: %s" % ", ".join(rolled_back) if rolled_back else "")
                raise
            raise DockerApiError(
                self.mask("deploying %s failed: %s" % (project["name"], exc))
                + ("; rolled back: %s" % ", ".join(rolled_back) if rolled_back else ""),
                rolled_back=rolled_back,
            )

        # Success: only now drop what the new stack replaced or no longer has.
        for kind, data in self.journal:
            if kind == "replaced":
                self.client.api.remove_container(data["id"], force=True)
        for service in plan["remove"]:
            self.remove_container(existing_attrs[service])
        for attrs in extras:
            self.remove_container(attrs)
        for name in unused_networks:
            self.client.api.remove_network(name)
        self.result["networks"]["removed"] = unused_networks
        self.result["services"] = self.describe(project, existing_attrs, plan, image_ids)
        return self.result

    def unused_networks(self, project):
        wanted = set(n["name"] for n in project["networks"].values())
        found = self.client.api.networks(filters={"label": "%s=%s" % (compose.LABEL_PROJECT, project["name"])})
        unused = []
        for net in found:
            if net["Name"] in wanted:
                continue
            details = self.inspect("network", net["Id"]) or {}
            attached = set((details.get("Containers") or {}).keys())
            orphan_ids = set()
            for service in self.result["plan"]["remove"]:
                orphan_ids.add(compose.container_name(project["name"], service))
            if not attached or all(self.attached_name(c) in orphan_ids for c in attached):
                unused.append(net["Name"])
        return sorted(unused)

    def attached_name(self, container_id):
        attrs = inspect_container(self.client, container_id) or {}
        return (attrs.get("Name") or "").lstrip("/")

    def load_tarball(self, tarball):
        try:
            with open(tarball["src"], "rb") as data:
                for message in self.client.api.load_image(data):
                    if isinstance(message, dict) and message.get("error"):
                        raise DockerApiError("images: loading %s failed: %s" % (tarball["src"], message["error"]))
        except (IOError, OSError) as exc:
            raise DockerApiError("images: cannot read %s: %s" % (tarball["src"], exc))
        if self.image_id(tarball["id"]) is None:
            raise DockerApiError("images: %s was loaded but the host has no image %s afterwards"
                                 % (tarball["src"], tarball["id"]))

    def pull(self, service, reference):
        try:
            # The SDK splits registry:port/repository:tag (or @digest) itself, and adds :latest when untagged.
            for message in self.client.api.pull(reference, stream=True, decode=True):
                if isinstance(message, dict) and message.get("error"):
                    raise DockerApiError(message["error"])
        except (DockerApiError, DockerException) as exc:
            raise DockerApiError(
                "service %s: cannot pull image %s: the registry did not answer or refused: %s "
                "(nothing was changed; without a registry, ship the image with images: [{src: TARBALL}])"
                % (service, reference, getattr(exc, "explanation", None) or exc)
            )
        image_id = self.image_id(reference)
        if image_id is None:
            raise DockerApiError("service %s: image %s is still missing after the pull" % (service, reference))
        return image_id

    def create_resources(self, project):
        labels_base = {compose.LABEL_PROJECT: project["name"], compose.LABEL_VERSION: compose.COMPOSE_VERSION}
        for key, net in sorted(project["networks"].items()):
            if net["external"] or self.inspect("network", net["name"]) is not None:
                continue
            labels = dict(net["labels"], **labels_base)
            labels[compose.LABEL_NETWORK] = key
            self.client.api.create_network(net["name"], driver=net["driver"] or "bridge", internal=net["internal"],
                                           labels=labels, check_duplicate=True)
            self.journal.append(("network", net["name"]))
            self.result["networks"]["created"].append(net["name"])
            self.result["changed"] = True
        for key, vol in sorted(project["volumes"].items()):
            if vol["external"] or self.inspect("volume", vol["name"]) is not None:
                continue
            labels = dict(vol["labels"], **labels_base)
            labels[compose.LABEL_VOLUME] = key
            self.client.api.create_volume(vol["name"], driver=vol["driver"] or "local", labels=labels)
            self.result["volumes"]["created"].append(vol["name"])  # kept on rollback: volumes hold data
            self.result["changed"] = True

    def converge_service(self, project, name, current, plan, image_ids):
        service = project["services"][name]
        for dependency, spec in sorted(service["depends_on"].items()):
            self.wait_for(project, dependency, spec["condition"])
        if name in plan["create"]:
            self.create_container(project, name, image_ids[name])
        elif name in plan["recreate"]:
            was_running = container_status(current) in ("running", "restarting", "paused")
            self.client.api.stop(current["Id"], timeout=service["stop_grace_period"])
            old_name = compose.container_name(project["name"], name)
            self.client.api.rename(current["Id"], old_name + OLD_SUFFIX)
            self.journal.append(("replaced", {"id": current["Id"], "name": old_name, "running": was_running}))
            self.create_container(project, name, image_ids[name])
        elif name in plan["start"]:
            self.client.api.start(current["Id"])
            self.journal.append(("started", current["Id"]))
        else:
            return
        if self.params["wait"]:
            one_shot = name in compose.one_shot_services(project["services"])
            self.wait_for(project, name, "service_completed_successfully" if one_shot else "up")

    @staticmethod
    def mount(project, mount):
        """A named volume is mounted by the project's volume (workspace_pgdata), not by its Compose key:
        Docker would otherwise create an unlabelled volume of that name on the fly."""
        source = mount["source"]
        if mount["type"] == "volume":
            source = project["volumes"][source]["name"]
        return Mount(mount["target"], source, type=mount["type"], read_only=mount["read_only"])

    def create_container(self, project, name, image_id):
        service = project["services"][name]
        container_name = compose.container_name(project["name"], name)
        networks = sorted(service["networks"].items())
        endpoint = dict(
            (project["networks"][key]["name"],
             self.client.api.create_endpoint_config(aliases=[name, container_name] + spec["aliases"]))
            for key, spec in networks[:1]
        )
        port_bindings = {}
        for port in service["ports"]:
            key = "%d/%s" % (port["target"], port["protocol"])
            binding = (port["host_ip"] or "", port["published"] or "") if (port["published"] or port["host_ip"]) else None
            if binding is not None:
                port_bindings.setdefault(key, []).append(binding)
            else:
                port_bindings.setdefault(key, [None])
        restart = service["restart"]
        host_config = self.client.api.create_host_config(
            port_bindings=port_bindings or None,
            mounts=[self.mount(project, m) for m in service["volumes"]] or None,
            restart_policy={"Name": restart["name"], "MaximumRetryCount": restart["max_retries"]} if restart else None,
            mem_limit=service["limits"].get("memory"),
            nano_cpus=service["limits"].get("nano_cpus"),
            network_mode=project["networks"][networks[0][0]]["name"],
        )
        created = self.client.api.create_container(
            service["image"],
            command=service["command"],
            entrypoint=service["entrypoint"],
            environment=["%s=%s" % (k, v) for k, v in sorted(service["environment"].items())],
            labels=compose.container_labels(project, name, service, image_id),
            user=service["user"],
            working_dir=service["working_dir"],
            healthcheck=service["healthcheck"],
            ports=[(p["target"], p["protocol"]) for p in service["ports"]] or None,
            stop_timeout=service["stop_grace_period"],
            name=container_name,
            host_config=host_config,
            networking_config=self.client.api.create_networking_config(endpoint),
            use_config_proxy=False,  # the SDK would add the controller's proxy variables to the environment
        )
        self.journal.append(("created", created["Id"]))
        for key, spec in networks[1:]:
            self.client.api.connect_container_to_network(
                created["Id"], project["networks"][key]["name"], aliases=[name, container_name] + spec["aliases"]
            )
        self.client.api.start(created["Id"])
        return created["Id"]

    def wait_for(self, project, name, condition):
        """Wait until service ``name`` meets ``condition`` (a depends_on condition, or ``up``)."""
        container = compose.container_name(project["name"], name)
        started = time.monotonic()
        deadline = started + self.params["timeout"]
        running_since = None
        while True:
            attrs = inspect_container(self.client, container)
            if attrs is None:
                self.fail("service %s: no container %s to wait for" % (name, container), failed_service=name)
            status = container_status(attrs)
            health = health_status(attrs)
            exit_code = (attrs.get("State") or {}).get("ExitCode")
            if condition == "service_completed_successfully":
                if status == "exited" and exit_code == 0:
                    return
                if status in ("exited", "dead"):
                    self.service_failed(name, attrs, "exited with code %s instead of completing successfully"
                                        % exit_code)
            else:
                if status in ("exited", "dead", "created"):
                    self.service_failed(name, attrs, "%s (exit code %s) while waiting for it to be %s"
                                        % (status, exit_code, "healthy" if condition != "service_started" else "up"))
                if condition == "service_healthy" and not has_healthcheck(attrs):
                    self.service_failed(name, attrs, "has no health check, but a dependant waits for service_healthy")
                if health == "unhealthy" and condition != "service_started":
                    self.service_failed(name, attrs, "is unhealthy")
                if status == "running":
                    if condition == "service_started" or health == "healthy":
                        return
                    if health is None:  # up = keeps running a moment (a crash at start is briefly running)
                        run = (attrs.get("State") or {}).get("StartedAt")
                        if running_since is None or running_since[1] != run:
                            running_since = (time.monotonic(), run)
                        elif time.monotonic() - running_since[0] >= MIN_UPTIME:
                            return
            if time.monotonic() >= deadline:
                what = {"service_completed_successfully": "completed", "service_started": "running"}.get(
                    condition, "healthy" if health else "running")
                self.service_failed(name, attrs, "is not %s after %d s (status %s, health %s)"
                                    % (what, self.params["timeout"], status, health))
            time.sleep(POLL_INTERVAL)

    def service_failed(self, name, attrs, why):
        entries = [dict(e, output=self.mask(e["output"])) for e in health_log(attrs)]
        tail = [self.mask(line) for line in container_logs_tail(self.client, attrs["Id"])]
        msg = "service %s %s" % (name, why)
        if entries:
            msg += "; last health checks: %s" % format_health_log(entries)
        msg += "; last log lines: %s" % (" | ".join(tail[-5:]) or "(none)")
        self.fail(msg, failed_service=name, health_log=entries, log_tail=tail)

    def rollback(self):
        """Undo this run's container changes, newest first; networks it created go too. Best effort."""
        done = []
        for kind, data in reversed(self.journal):
            try:
                if kind == "created":
                    attrs = inspect_container(self.client, data)
                    self.client.api.remove_container(data, force=True)
                    done.append("removed new %s" % ((attrs or {}).get("Name") or data[:12]).lstrip("/"))
                elif kind == "replaced":
                    self.client.api.rename(data["id"], data["name"])
                    if data["running"]:
                        self.client.api.start(data["id"])
                    done.append("restored %s" % data["name"])
                elif kind == "started":
                    self.client.api.stop(data)
                    done.append("stopped %s again" % data[:12])
                elif kind == "network":
                    self.client.api.remove_network(data)
                    done.append("removed network %s" % data)
            except (DockerException, DockerApiError) as exc:
                done.append("FAILED to undo %s %s: %s" % (kind, data.get("name") if isinstance(data, dict) else data,
                                                          exc))
        self.journal = []
        return done

    def remove_container(self, attrs):
        self.client.api.remove_container(attrs["Id"], force=True)

    # ----------------------------------------------------------------- absent

    def absent(self):
        name = self.params["project_name"]
        if not name:
            if self.params["project_src"]:
                name = os.path.basename(os.path.abspath(self.params["project_src"]).rstrip("/")).lower()
            else:
                self.fail("state=absent needs project_name (or project_src)")
        self.result["project"] = name
        label = {"label": "%s=%s" % (compose.LABEL_PROJECT, name)}
        by_service, extras = self.project_containers(name)
        networks = sorted(n["Name"] for n in self.client.api.networks(filters=label))
        volumes = []
        if self.params["remove_volumes"]:
            volumes = sorted(v["Name"] for v in (self.client.api.volumes(filters=label) or {}).get("Volumes") or [])
        self.result["plan"]["remove"] = sorted(by_service)
        self.result["changed"] = bool(by_service or extras or networks or volumes)
        self.result["diff"] = {
            "before": {"services": sorted(by_service), "networks": networks, "volumes": volumes},
            "after": {"services": [], "networks": [], "volumes": []},
        }
        self.result["services"] = [
            {"service": s, "action": "removed", "container_id": a["Id"], "container_name": a["Name"].lstrip("/"),
             "image": (a.get("Config") or {}).get("Image"), "image_id": a.get("Image"), "status": None, "health": None}
            for s, a in sorted(by_service.items())
        ]
        self.result["networks"]["removed"] = networks
        self.result["volumes"]["removed"] = volumes
        if self.module.check_mode:
            return self.result
        for attrs in list(by_service.values()) + extras:
            if container_status(attrs) in ("running", "restarting", "paused"):
                self.client.api.stop(attrs["Id"])
            self.remove_container(attrs)
        for network in networks:
            self.client.api.remove_network(network)
        for volume in volumes:
            self.client.api.remove_volume(volume)
        return self.result

    # ----------------------------------------------------------------- reporting

    def diff(self, project, existing_attrs, plan, image_ids):
        def view(attrs):
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            return {"image": (attrs.get("Config") or {}).get("Image"),
                    "config_hash": (labels.get(compose.LABEL_CONFIG_HASH) or "")[:12]}

        before = dict((s, view(a)) for s, a in existing_attrs.items())
        after = dict((s, view(a)) for s, a in existing_attrs.items() if s not in plan["remove"])
        for name in plan["create"] + list(plan["recreate"]):
            service = project["services"][name]
            after[name] = {"image": service["image"], "config_hash": compose.config_hash(service)[:12]}
        return {"before": {"services": before}, "after": {"services": after},
                "prepared": compose.plan_summary(plan)}

    def describe(self, project, existing_attrs, plan, image_ids):
        actions = {}
        for name in plan["create"]:
            actions[name] = "created"
        for name in plan["recreate"]:
            actions[name] = "recreated"
        for name in plan["start"]:
            actions[name] = "started"
        services = []
        for name in project["order"] + plan["remove"]:
            container = compose.container_name(project["name"], name)
            # In check mode a service to create has no container yet; one to recreate shows its current one.
            attrs = None if self.module.check_mode and name in plan["create"] else inspect_container(self.client,
                                                                                                     container)
            if name in plan["remove"]:
                attrs = existing_attrs.get(name)
            services.append({
                "service": name,
                "action": "removed" if name in plan["remove"] else actions.get(name, "kept"),
                "container_id": (attrs or {}).get("Id"),
                "container_name": container,
                "image": project["services"][name]["image"] if name in project["services"] else
                ((attrs or {}).get("Config") or {}).get("Image"),
                "image_id": (attrs or {}).get("Image") or image_ids.get(name),
                "status": None if attrs is None or name in plan["remove"] else container_status(attrs),
                "health": None if attrs is None or name in plan["remove"] else health_status(attrs),
            })
        return services


def count_api_requests(client):
    """Count the requests made to the Engine API and the time until each answered, for RV(api)."""
    usage = {"calls": 0, "seconds": 0.0}
    send = client.api.send

    def timed_send(request, **kwargs):
        started = time.monotonic()
        try:
            return send(request, **kwargs)
        finally:
            usage["calls"] += 1
            usage["seconds"] += time.monotonic() - started

    client.api.send = timed_send
    return usage


def run(module):
    client = connect(module.params, cleanup=module.add_cleanup_file)
    usage = count_api_requests(client)
    deploy = Deploy(module, client)
    if module.params["state"] == "absent":
        result = deploy.absent()
    else:
        result = deploy.present()
    if not module._diff:
        result.pop("diff", None)
    result["api"] = {"calls": usage["calls"], "seconds": round(usage["seconds"], 3)}
    return result


def main():
    argument_spec = docker_argument_spec()
    argument_spec.update(
        project_name=dict(type="str", aliases=["name"]),
        project_src=dict(type="path"),
        files=dict(type="list", elements="path"),
        definition=dict(type="dict"),
        env_files=dict(type="list", elements="path"),
        variables=dict(type="dict", default={}),
        secret_variables=dict(type="dict", default={}, no_log=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        remove_orphans=dict(type="bool", default=True),
        remove_volumes=dict(type="bool", default=False),
        images=dict(type="list", elements="dict", default=[], options=dict(src=dict(type="path", required=True))),
        pull=dict(type="str", choices=["never", "missing", "always"], default="never"),
        wait=dict(type="bool", default=True),
        timeout=dict(type="int", default=120),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=DOCKER_MUTUALLY_EXCLUSIVE + [("files", "definition")],
        supports_check_mode=True,
    )
    check_sdk(module)
    result = run_or_fail(module, lambda: run(module))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
