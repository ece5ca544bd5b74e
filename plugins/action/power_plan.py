# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Observe the fleet's real power state and plan a start or a shutdown, on the controller.

Documentation: plugins/modules/power_plan.py. The work is done by the wakegrid Python package
(wakegrid.observe.power observes, wakegrid.graph plans, wakegrid.actuate shapes the steps,
wakegrid.render prints the plan); this plugin is the Ansible edge: arguments, the fleet file
of the inventory, and Proxmox token secrets read with the wakegrid.fleet.fleet_secret lookup.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template

try:
    from wakegrid.actuate import plan_data
    from wakegrid.graph import PlanError, start_plan, stop_plan
    from wakegrid.model import FleetError, load_fleet
    from wakegrid.observe.power import as_observed, nodes_to_observe, observe_power, unknown_nodes, up_nodes
except ImportError as exc:
    WAKEGRID_IMPORT_ERROR = exc
else:
    WAKEGRID_IMPORT_ERROR = None

ARGUMENT_SPEC = dict(
    node=dict(type='str', required=True),
    operation=dict(type='str', required=True, choices=['start', 'stop']),
    include_dependants=dict(type='bool', default=False),
    force_infrastructure=dict(type='bool', default=False),
    confirm=dict(type='list', elements='str', default=[]),
    in_use=dict(type='dict', default={}),
    fleet_file=dict(type='path'),
    probe_timeout=dict(type='float', default=1.0),
    api_timeout=dict(type='float', default=10.0),
)


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        if WAKEGRID_IMPORT_ERROR is not None:
            raise AnsibleActionFail(
                'the wakegrid Python package is required on the controller: pip install wakegrid '
                '(from a checkout of the repository: pip install -e <checkout>); import failed with: %s'
                % WAKEGRID_IMPORT_ERROR
            )
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)

        fleet_file = args['fleet_file'] or task_vars.get('wakegrid_fleet_file')
        if not fleet_file:
            raise AnsibleActionFail(
                'no fleet file: use a wakegrid fleet file as inventory (it sets wakegrid_fleet_file) or give fleet_file'
            )
        try:
            fleet = load_fleet(fleet_file)
        except FleetError as exc:
            raise AnsibleActionFail(to_text(exc))
        except OSError as exc:
            raise AnsibleActionFail('cannot read the fleet file %s: %s' % (fleet_file, exc.strerror))

        node, operation = args['node'], args['operation']
        for name in [node] + list(args['confirm']) + list(args['in_use']):
            if name not in fleet.nodes:
                raise AnsibleActionFail('unknown node %r (nodes: %s)' % (name, ', '.join(fleet.nodes)))

        names = nodes_to_observe(fleet, node, operation)
        states = observe_power(
            fleet,
            names,
            proxmox_secret=self._secrets(fleet, fleet_file, names, task_vars),
            timeout=args['probe_timeout'],
            api_timeout=args['api_timeout'],
        )
        up, unknown = up_nodes(states), unknown_nodes(states)
        # A migrated guest is planned, and acted on, where it runs now, not where the fleet prefers it.
        fleet = as_observed(fleet, states)
        try:
            if operation == 'start':
                plan = start_plan(fleet, node, up, unknown=unknown)
            else:
                in_use = dict((name, to_text(why)) for name, why in args['in_use'].items())
                plan = stop_plan(
                    fleet,
                    node,
                    up,
                    in_use,
                    unknown=unknown,
                    include_dependants=args['include_dependants'],
                    confirmed=args['confirm'],
                    force_infrastructure=args['force_infrastructure'],
                )
        except PlanError as exc:
            raise AnsibleActionFail(to_text(exc))

        result.update(plan_data(fleet, plan, states))
        result['changed'] = False
        return result

    def _secrets(self, fleet, fleet_file, names, task_vars):
        """The token secrets of the Proxmox hosts of ``names``' guests, read as a task would read them.

        Through the wakegrid.fleet.fleet_secret lookup, the one way a secret of the fleet reaches
        Ansible, from the fleet file planned with, here in the task's thread: the observer probes
        in worker threads, where templating is not meant to run.
        """
        templar = self._templar.copy_with_new_env(available_variables=task_vars)
        secrets = {}
        for name in names:
            node = fleet.nodes[name]
            if node.kind not in ('vm', 'lxc'):
                continue
            # A guest may run on any machine of its parent's Proxmox cluster (it migrated): the
            # observer asks them too (wakegrid.observe.power), with their own tokens.
            cluster = fleet.cluster_of(node.parent)
            machines = [node.parent] + [m for m in (fleet.cluster_members(cluster) if cluster else ()) if m != node.parent]
            for machine in machines:
                if machine in secrets:
                    continue
                expression = 'lookup("wakegrid.fleet.fleet_secret", %r, fleet_file=%r)' % (
                    fleet.nodes[machine].proxmox.token_secret.where, fleet_file)
                try:
                    secrets[machine] = to_text(templar.evaluate_expression(trust_as_template(expression)))
                except Exception as exc:  # the lookup's error names the fleet path and the source, never a value
                    secrets[machine] = ValueError(to_text(exc))

        def secret(machine):
            value = secrets.get(machine) or ValueError('not read')
            if isinstance(value, Exception):
                raise value
            return value

        return secret
