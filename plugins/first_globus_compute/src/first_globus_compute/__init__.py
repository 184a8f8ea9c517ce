"""first-globus-compute: Globus for first-proxy.

Backend ``globus_compute`` runs inference on HPC clusters through Globus Compute: each call
is a task of a registered function that posts the request to the inference server beside
it, and streamed answers are posted back to the gateway while they are generated.
"""

from .plugin import check_config, dispatch, register_backends, report_status, shutdown, startup

__all__ = ["check_config", "dispatch", "register_backends", "report_status", "shutdown", "startup"]
