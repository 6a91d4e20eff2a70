"""The agent's K3s mode: the desired state from the ConfigMap the site's Flux or Argo CD
applied, the runner as a Service, workload readiness and the applier's status in the
report. Everything else (enrolment, tokens, A/B slots, results) is direct mode's.

Only this package imports ``kubernetes`` (the ``k3s`` extra), and only the daemon in
``mode: k3s`` imports this package: a direct-mode device never loads the client.

    api.py        the few cluster calls made (a Protocol), and the real client behind it
    names.py      where things are: the device's namespace, the applier objects' names
    desired.py    ConfigMap -> DesiredState
    status.py     the Flux/Argo CD sync and health status (workload readiness is a
                  health check: agent/health/workloads.py)
    service.py    the runner's Service
    gateway.py    what listens behind it: HTTP on the Service port, relayed to each
                  model runner's Unix socket (standard library only)
    backend.py    the daemon's one object for all of it
"""
