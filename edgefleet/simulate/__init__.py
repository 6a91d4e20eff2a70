"""``edgefleet simulate``: a fleet of simulated devices against a real controller.

Each simulated device has a real P-256 key, enrols with a real CSR, trades signed
assertions for access tokens and sends the same wire messages as the agent
(``edgefleet.wire``), over real HTTPS. What it does not do is serve models: its
behaviour (offline, flapping, slow, uploading, failing updates) is drawn from the
command line, deterministically from ``--seed``.

    config      the run's settings and their checks (bad input is a ConfigError)
    behaviours  which device does what
    stats       latencies, errors and shed load, in total and per time bucket
    wire        the shared HTTPS pool: timing, error kinds, Retry-After
    operator    the operator calls: check the token, the site, a registration token
    device      one simulated device: enrol, token, desired, status, results, updates
    procstat    the controller's CPU and RSS from /proc
    run         the whole run: set up, enrol, loop, report
    report      the JSON report
    chart       the PNG chart (Pillow)
"""
