"""What deploys the worker: compose's Prometheus and Grafana files, the Kubernetes
manifests, and :mod:`deploy.sync_alerts`, which keeps the alert rules of both one."""
